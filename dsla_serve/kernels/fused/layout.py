"""Where each sequence and chunk lives in the flat token axis, and where its boundary states go.

All kernels see the inputs as a flat token axis [B*T, heads, dim]: sequence n occupies tokens
[bos_n, eos_n), either B equal-length rows (bos_n = n*T) or packed sequences given by `cu_seqlens`.
A sequence of L tokens has ceil(L / chunk) chunks and ceil(L / chunk) + 1 chunk *boundaries*; the
chunk-level state kernels write one state per boundary (boundary 0 = initial state, the last = final
state), so boundary j of sequence n sits at row `boundary_offsets[n] + j` of a [NB, H, K, V] buffer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..inputs import PackedSequences


@dataclass(frozen=True)
class ChunkLayout:
    """Chunking of N sequences for the chunk kernels.

    Attributes:
        num_seqs: N.
        seq_len: T for equal-length rows (0 when varlen).
        chunk_size: tokens per chunk (BT).
        num_chunks: total chunks over all sequences (the grid size of per-chunk kernels).
        num_boundaries: total boundary states, num_chunks + N.
        cu_seqlens: [N + 1] int32 on the device, or None for equal-length rows.
        chunk_indices: [num_chunks, 2] int32 (sequence, chunk within it), or None.
        boundary_offsets: [N] int32 first boundary row of each sequence, or None.
    """

    num_seqs: int
    seq_len: int
    chunk_size: int
    num_chunks: int
    num_boundaries: int
    cu_seqlens: torch.Tensor | None
    chunk_indices: torch.Tensor | None
    boundary_offsets: torch.Tensor | None

    @property
    def is_varlen(self) -> bool:
        return self.cu_seqlens is not None

    @staticmethod
    def build(batch: int, seq_len: int, chunk_size: int,
              cu_seqlens: torch.Tensor | PackedSequences | None) -> "ChunkLayout":
        if cu_seqlens is None:
            per_seq = -(-seq_len // chunk_size)
            return ChunkLayout(batch, seq_len, chunk_size, batch * per_seq, batch * (per_seq + 1),
                               None, None, None)
        if isinstance(cu_seqlens, PackedSequences):  # offsets on the host; one layout per chunk size
            key = ("chunk layout", chunk_size)
            if key not in cu_seqlens.cache:
                cu_seqlens.cache[key] = ChunkLayout._packed(torch.tensor(cu_seqlens.offsets), chunk_size,
                                                            cu_seqlens.cu_seqlens)
            return cu_seqlens.cache[key]
        # A tensor of offsets: the grid needs the chunk count, so they are read on the host, which waits
        # for the GPU (prefill/training only; the decode kernels never take this path).
        return ChunkLayout._packed(cu_seqlens.detach().to("cpu", torch.int64), chunk_size,
                                   cu_seqlens.detach().to(torch.int32))

    @staticmethod
    def _packed(offsets: torch.Tensor, chunk_size: int, device_offsets: torch.Tensor) -> "ChunkLayout":
        """offsets: [N + 1] int64 on the host; device_offsets: the same, int32 on the kernels' device."""
        device = device_offsets.device
        lengths = offsets[1:] - offsets[:-1]
        per_seq = (lengths + chunk_size - 1) // chunk_size
        n = len(lengths)
        seq_of_chunk = torch.repeat_interleave(torch.arange(n), per_seq)
        first_chunk = torch.cumsum(per_seq, 0) - per_seq
        chunk_in_seq = torch.arange(int(per_seq.sum())) - first_chunk[seq_of_chunk]
        chunk_indices = torch.stack([seq_of_chunk, chunk_in_seq], 1).to(torch.int32)
        boundary_offsets = (first_chunk + torch.arange(n)).to(torch.int32)
        return ChunkLayout(
            num_seqs=n,
            seq_len=0,
            chunk_size=chunk_size,
            num_chunks=int(per_seq.sum()),
            num_boundaries=int(per_seq.sum()) + n,
            cu_seqlens=device_offsets,
            chunk_indices=chunk_indices.to(device),
            boundary_offsets=boundary_offsets.to(device),
        )

    def kernel_args(self) -> tuple:
        """(cu_seqlens, chunk_indices, boundary_offsets, T) as the kernels take them."""
        return self.cu_seqlens, self.chunk_indices, self.boundary_offsets, self.seq_len

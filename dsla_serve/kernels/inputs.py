"""Checks and reshaping shared by the PyTorch DSLA ops: input validation, variable-length packing.

Packed variable-length input (`cu_seqlens`, B = 1) is handled by scattering the sequences into a
zero-padded batch [N, T_max, ...]: a padded token has k = v = 0 and log-decay 0, so it leaves the
states unchanged and its output is simply dropped when the batch is gathered back.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True, eq=False)  # compared by identity: a field is a tensor, and the cache is per object
class PackedSequences:
    """N sequences packed on one token axis, described once on the host: pass it as `cu_seqlens` to
    `chunk_dsla` in place of the [N + 1] tensor. The Triton kernels need the chunk count before they
    launch, so a `cu_seqlens` tensor on the GPU is read back (the host waits for the GPU) on every call;
    the engine calls every DSLA layer of a step with the same segments, so it builds one of these per
    step and the chunk bookkeeping derived from it is made once and kept here (`cache`).

    offsets: (0, o_1, ..., o_N) token offsets on the host; cu_seqlens: the same as an int32 [N + 1]
    tensor on the device (the kernels' dtype: the chunk layout uses it as it is).
    """

    offsets: tuple[int, ...]
    cu_seqlens: torch.Tensor
    cache: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of(cls, offsets: Sequence[int], device: torch.device | str) -> "PackedSequences":
        offsets = tuple(int(o) for o in offsets)
        if len(offsets) < 2 or offsets[0] != 0 or any(b < a for a, b in zip(offsets, offsets[1:])):
            raise ValueError(f"PackedSequences: offsets must rise from 0 without decreasing, got {list(offsets)}")
        return cls(offsets, torch.tensor(offsets, dtype=torch.int32).to(device))

    @property
    def num_seqs(self) -> int:
        return len(self.offsets) - 1


def cu_seqlens_tensor(cu_seqlens):
    """The [N + 1] tensor of a `cu_seqlens` argument (a tensor, a `PackedSequences` or None)."""
    return cu_seqlens.cu_seqlens if isinstance(cu_seqlens, PackedSequences) else cu_seqlens


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """States and sums are fp32, or fp64 for fp64 inputs (used by the float64 tests)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _is_capturing(x: torch.Tensor) -> bool:
    return x.is_cuda and torch.cuda.is_current_stream_capturing()


def _check_values(x: torch.Tensor) -> bool:
    """Whether to read tensor values in the checks. Reading a CUDA tensor's values syncs the host with
    the GPU (two or three times per DSLA layer per step), so on CUDA only with DSLA_CHECK_VALUES=1."""
    if x.is_cuda:
        return os.environ.get("DSLA_CHECK_VALUES") == "1" and not _is_capturing(x)
    return True


def check_inputs(q, k, v, g1, g2, mix, initial_state=None, cu_seqlens=None, op: str = "dsla") -> int:
    """Validate the arguments of a DSLA op; returns N, the number of sequences (states).

    Expected: q, g1, g2 [B, T, H, K]; k [B, T, Hk, K]; v [B, T, Hk, V] with H % Hk == 0;
    mix [2] or [H, 2]; initial_state None or a pair of [N, H, K, V]; cu_seqlens None or a 1-D
    integer tensor [N + 1] from 0 to T (then B must be 1). Raises ValueError naming the argument.
    """
    for name, x in (("q", q), ("k", k), ("v", v), ("g1", g1), ("g2", g2)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"{op}: {name} must be 4-D [B, T, heads, dim], got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"{op}: {name} must be a floating-point tensor, got {x.dtype}")
        if x.device != q.device:
            raise ValueError(f"{op}: {name} is on {x.device} but q is on {q.device}")
    B, T, H, K = q.shape
    Hk, V = k.shape[2], v.shape[3]
    for name, g in (("g1", g1), ("g2", g2)):
        if g.shape != q.shape:
            raise ValueError(f"{op}: {name} must have q's shape {tuple(q.shape)}, got {tuple(g.shape)}")
    if k.shape[:2] != (B, T) or k.shape[3] != K:
        raise ValueError(f"{op}: k must be [B={B}, T={T}, Hk, K={K}], got {tuple(k.shape)}")
    if v.shape[:3] != (B, T, Hk):
        raise ValueError(f"{op}: v must be [B={B}, T={T}, Hk={Hk}, V], got {tuple(v.shape)}")
    if Hk == 0 or H % Hk != 0:
        raise ValueError(f"{op}: query heads ({H}) must be a multiple of key/value heads ({Hk})")
    if not isinstance(mix, torch.Tensor) or mix.shape not in ((2,), (H, 2)):
        shape = tuple(mix.shape) if isinstance(mix, torch.Tensor) else type(mix).__name__
        raise ValueError(f"{op}: mix must be a tensor of shape [2] or [H={H}, 2], got {shape}")

    N = B
    if cu_seqlens is not None:
        if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 \
                or cu_seqlens.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"{op}: cu_seqlens must be a 1-D int32/int64 tensor [N + 1], got "
                             f"{cu_seqlens!r}")
        if B != 1:
            raise ValueError(f"{op}: with cu_seqlens the batch size must be 1 (packed sequences), got B={B}")
        if not _is_capturing(cu_seqlens):
            c = cu_seqlens.tolist()
            if c[0] != 0 or c[-1] != T or any(b < a for a, b in zip(c, c[1:])):
                raise ValueError(f"{op}: cu_seqlens must rise from 0 to T={T} without decreasing, got {c}")
        N = cu_seqlens.numel() - 1

    if initial_state is not None:
        if not isinstance(initial_state, (tuple, list)) or len(initial_state) != 2:
            raise ValueError(f"{op}: initial_state must be a pair (s1, s2), got {type(initial_state).__name__}")
        for name, s in zip(("initial_state[0]", "initial_state[1]"), initial_state):
            if not isinstance(s, torch.Tensor) or tuple(s.shape) != (N, H, K, V):
                shape = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
                raise ValueError(f"{op}: {name} must be [N={N}, H={H}, K={K}, V={V}], got {shape}")

    if _check_values(q):
        for name, g in (("g1", g1), ("g2", g2)):
            lowest, highest = torch.aminmax(g) if g.numel() else (g.new_zeros(()), g.new_zeros(()))
            if not (bool(highest <= 0) and bool(lowest > float("-inf"))):  # also fails for NaN
                bad = g[~((g <= 0) & (g > float("-inf")))][0].item()
                raise ValueError(f"{op}: {name} holds log-decays and must be finite and <= 0, "
                                 f"found {bad:.4g}")
    return N


def mix_weights(mix: torch.Tensor, H: int, dtype: torch.dtype) -> torch.Tensor:
    """mix [2] or [H, 2] -> [H, 2] in `dtype` (a broadcast view when mix is [2])."""
    m = mix.to(dtype)
    return m.expand(H, 2) if m.dim() == 2 else m.view(1, 2).expand(H, 2)


@dataclass
class VarlenLayout:
    """Where each packed token of a [1, T, ...] input sits in the padded batch [N, T_max, ...]."""

    seq: torch.Tensor  # [T] int64: sequence index of each packed token
    pos: torch.Tensor  # [T] int64: position of each packed token inside its sequence
    num_seqs: int
    max_len: int

    @classmethod
    def from_cu_seqlens(cls, cu_seqlens: torch.Tensor) -> "VarlenLayout":
        cu = cu_seqlens.to(torch.int64)
        lengths = cu[1:] - cu[:-1]
        seq = torch.repeat_interleave(torch.arange(lengths.numel(), device=cu.device), lengths)
        pos = torch.arange(seq.numel(), device=cu.device) - cu[:-1][seq]
        max_len = int(lengths.max().item()) if lengths.numel() else 0
        return cls(seq=seq, pos=pos, num_seqs=lengths.numel(), max_len=max_len)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """[1, T, *rest] packed -> [N, T_max, *rest], zeros where a sequence is shorter (autograd-safe)."""
        out = x.new_zeros(self.num_seqs, self.max_len, *x.shape[2:])
        return out.index_put((self.seq, self.pos), x[0])

    def unpad(self, y: torch.Tensor) -> torch.Tensor:
        """[N, T_max, *rest] padded -> [1, T, *rest] packed."""
        return y[self.seq, self.pos].unsqueeze(0)

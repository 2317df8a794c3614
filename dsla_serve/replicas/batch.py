"""`ForwardBatch`: the flat token batch of one engine step, as device tensors plus host metadata.

Tokens are laid out prefill first, then decode: `P` prompt tokens from `S` prefill segments (a chunk
of one sequence each, consecutive positions), then `B` decode tokens (one per running sequence).
Every token writes its key/value at (kv_slots, kv_pos) of each softmax layer's cache; decode rows read
their slot's first `dec_lengths` positions; DSLA layers read and write rows of the state pools.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..kernels import PackedSequences


@dataclass(frozen=True)
class Segment:
    """One prefill chunk: tokens [offset, offset + length) of the batch, positions start.. of `slot`."""

    offset: int
    slot: int
    start: int
    length: int

    @property
    def end(self) -> int:
        return self.start + self.length


@dataclass
class ForwardBatch:
    """Inputs of one forward pass (N = P + B tokens)."""

    input_ids: torch.Tensor  # [N] int64
    positions: torch.Tensor  # [N] int64
    kv_slots: torch.Tensor  # [N] int64 cache slot each token's key/value goes to
    kv_pos: torch.Tensor  # [N] int64 position in that slot
    segments: list[Segment]  # S prefill segments (host)
    prefill_state_slots: torch.Tensor | None  # [S] int64 state-pool rows of the segments
    cu_seqlens: PackedSequences | None  # the S segments' offsets, host and device, when S > 1
    dec_slots: torch.Tensor  # [B] int64 cache slot of each decode row
    dec_lengths: torch.Tensor  # [B] int64 keys visible to each decode row (position + 1)
    dec_state_slots: torch.Tensor  # [B] int64 state-pool row of each decode row
    logit_rows: torch.Tensor | None  # [M] int64 rows whose logits are wanted; None = all
    num_prefill_tokens: int  # P
    num_decode: int  # B
    max_len: int  # host bound on dec_lengths

    @classmethod
    def build(cls, prefill: list[tuple[int, int, list[int]]], decode: list[tuple[int, int, int]],
              logit_rows: list[int] | None, device: torch.device) -> "ForwardBatch":
        """prefill: (slot, start position, tokens) per segment; decode: (slot, position, token) per row;
        logit_rows: indices into the flat batch (None = all rows)."""
        ids, pos, slots, segments = [], [], [], []
        for slot, start, tokens in prefill:
            segments.append(Segment(offset=len(ids), slot=slot, start=start, length=len(tokens)))
            ids += tokens
            pos += range(start, start + len(tokens))
            slots += [slot] * len(tokens)
        P = len(ids)
        for slot, position, token in decode:
            ids.append(token)
            pos.append(position)
            slots.append(slot)
        host = torch.tensor([ids, pos, slots], dtype=torch.int64)
        dev = host.to(device, non_blocking=True)
        seg_slots = torch.tensor([s.slot for s in segments], dtype=torch.int64).to(device)
        cu = None
        if len(segments) > 1:
            cu = PackedSequences.of([0] + [s.offset + s.length for s in segments], device)
        dec_slots = dev[2, P:]
        return cls(
            input_ids=dev[0], positions=dev[1], kv_slots=dev[2], kv_pos=dev[1], segments=segments,
            prefill_state_slots=seg_slots if segments else None, cu_seqlens=cu,
            dec_slots=dec_slots, dec_lengths=dev[1, P:] + 1, dec_state_slots=dec_slots,
            logit_rows=None if logit_rows is None else torch.tensor(logit_rows, dtype=torch.int64).to(device),
            num_prefill_tokens=P, num_decode=len(decode),
            max_len=max((p + 1 for _, p, _ in decode), default=1))

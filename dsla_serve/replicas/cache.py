"""The engine's cache: preallocated per-slot keys/values for softmax layers, a state pool for DSLA layers.

Layout (why contiguous per-slot rather than paged blocks): a slot is one sequence's whole context,
`k[layer]` is [slots, Hk, max_model_len + 1, D], so a prefill chunk attends to `k[layer][slot, :, :end]`
(a plain strided view, no gather, straight into SDPA) and the decode kernel reads each sequence's keys
as one contiguous run. Paging would save memory only for sequences shorter than `max_model_len`; the
memory planner instead sizes the slot count for the worst case, which is what an SLO-bound replica
needs (admission never fails mid-sequence, nothing is ever preempted). The price is that short
requests reserve the full context; `max_model_len` is the knob.

Scratch space for padded CUDA-graph rows: every slot has one extra key/value position (index
`max_model_len`) and the state pools one extra row (index `num_slots`). A padding row of a decode
batch writes there and reads nothing that matters, so it can never touch a live sequence.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import torch

STATE_DTYPE = torch.float32


@dataclass(frozen=True)
class LayerShape:
    """Attention shape of one decoder layer: query heads, key/value heads, head dim."""

    heads: int
    kv_heads: int
    head_dim: int


@dataclass(frozen=True)
class CacheSpec:
    """What one depth of one model caches: softmax layers' keys/values and DSLA layers' states."""

    kv_layers: dict[int, LayerShape]
    dsla_layers: dict[int, LayerShape]
    kv_dtype: torch.dtype
    max_model_len: int

    @property
    def kv_bytes_per_token(self) -> int:
        """Key + value bytes of one token over all softmax layers."""
        item = torch.empty((), dtype=self.kv_dtype).element_size()
        return sum(2 * s.kv_heads * s.head_dim * item for s in self.kv_layers.values())

    @property
    def state_bytes_per_seq(self) -> int:
        """Bytes of the two fp32 states of one sequence over all DSLA layers (K = V = head_dim)."""
        item = torch.empty((), dtype=STATE_DTYPE).element_size()
        return sum(2 * s.heads * s.head_dim * s.head_dim * item for s in self.dsla_layers.values())

    @property
    def bytes_per_slot(self) -> int:
        """Cache bytes reserved per concurrent sequence (its scratch key/value position included)."""
        return (self.max_model_len + 1) * self.kv_bytes_per_token + self.state_bytes_per_seq

    @property
    def fixed_bytes(self) -> int:
        """Bytes independent of the slot count: the scratch row of the state pools."""
        return self.state_bytes_per_seq

    def pool_bytes(self, num_slots: int) -> int:
        return self.fixed_bytes + num_slots * self.bytes_per_slot


class CachePool:
    """Preallocated cache tensors for `num_slots` concurrent sequences, and the free-slot list.

    k[i], v[i]: [num_slots, Hk, max_model_len + 1, D] in the KV dtype, for each softmax layer i.
    s1[i], s2[i]: [num_slots + 1, H, D, D] fp32 (history and recency states) for each DSLA layer i.
    """

    def __init__(self, spec: CacheSpec, num_slots: int, device: torch.device | str):
        if num_slots < 1:
            raise ValueError(f"the cache needs at least one slot, got num_slots={num_slots}")
        self.spec = spec
        self.num_slots = num_slots
        self.device = torch.device(device)
        L = spec.max_model_len + 1
        self.k: dict[int, torch.Tensor] = {}
        self.v: dict[int, torch.Tensor] = {}
        for i, s in spec.kv_layers.items():
            # zeros, not empty: the PyTorch decode path multiplies masked-out positions by 0, and
            # uninitialised memory may hold NaN (NaN * 0 = NaN)
            self.k[i] = torch.zeros(num_slots, s.kv_heads, L, s.head_dim, dtype=spec.kv_dtype, device=self.device)
            self.v[i] = torch.zeros_like(self.k[i])
        self.s1: dict[int, torch.Tensor] = {}
        self.s2: dict[int, torch.Tensor] = {}
        for i, s in spec.dsla_layers.items():
            self.s1[i] = torch.zeros(num_slots + 1, s.heads, s.head_dim, s.head_dim, dtype=STATE_DTYPE,
                                     device=self.device)
            self.s2[i] = torch.zeros_like(self.s1[i])
        self._free = list(range(num_slots))
        heapq.heapify(self._free)

    @property
    def scratch_slot(self) -> int:
        """State-pool row that padding rows update."""
        return self.num_slots

    @property
    def scratch_pos(self) -> int:
        """Key/value position that padding rows write."""
        return self.spec.max_model_len

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_slots - len(self._free)

    def allocate(self) -> int:
        """Take the lowest free slot (so live slots stay packed low) and zero its DSLA states."""
        if not self._free:
            raise RuntimeError("no free cache slot")
        slot = heapq.heappop(self._free)
        for i in self.s1:
            self.s1[i][slot].zero_()
            self.s2[i][slot].zero_()
        return slot

    def release(self, slot: int) -> None:
        if not 0 <= slot < self.num_slots or slot in self._free:
            raise ValueError(f"slot {slot} is not an allocated slot")
        heapq.heappush(self._free, slot)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for d in (self.k, self.v, self.s1, self.s2) for t in d.values())

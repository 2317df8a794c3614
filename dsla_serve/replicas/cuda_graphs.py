"""CUDA graphs of the decode step, one per batch-size bucket, captured lazily on first use.

A decode step of B sequences runs the graph of the smallest bucket >= B. Its static inputs are
filled with the B real rows followed by padding rows that point at scratch space (cache position
`max_model_len` of slot 0, state-pool row `num_slots`, one visible key), so a padding row never
touches a live sequence. Everything inside is graph-safe: the decode attention and the DSLA pool
kernel take their bounds and slots from device tensors, and no op synchronises with the host.
"""

from __future__ import annotations

import bisect

import torch

from .batch import ForwardBatch
from .runner import ModelRunner


def batch_buckets(max_batch: int) -> list[int]:
    """1, 2, 4, 8, then multiples of 8 up to 64, of 16 beyond; always ending at max_batch."""
    sizes = [b for b in (1, 2, 4) if b < max_batch]
    b = 8
    while b < max_batch:
        sizes.append(b)
        b += 8 if b < 64 else 16
    return sizes + [max_batch]


class _Graph:
    def __init__(self, size: int, device: torch.device):
        self.size = size
        # rows: token, position, kv slot, kv position, decode slot, decode length, state slot
        self.inputs = torch.zeros(7, size, dtype=torch.int64, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None

    def batch(self, max_len: int) -> ForwardBatch:
        x = self.inputs
        return ForwardBatch(input_ids=x[0], positions=x[1], kv_slots=x[2], kv_pos=x[3], segments=[],
                            prefill_state_slots=None, cu_seqlens=None, dec_slots=x[4], dec_lengths=x[5],
                            dec_state_slots=x[6], logit_rows=None, num_prefill_tokens=0,
                            num_decode=self.size, max_len=max_len)


class DecodeGraphs:
    """Captured decode steps for `runner`, keyed by batch bucket."""

    def __init__(self, runner: ModelRunner, max_batch: int):
        pool = runner.pool
        self.runner = runner
        self.device = pool.device
        self.buckets = batch_buckets(max_batch)
        self.max_len = pool.spec.max_model_len + 1
        self._pad = [0, pool.scratch_pos, 0, pool.scratch_pos, 0, 1, pool.scratch_slot]
        self._graphs: dict[int, _Graph] = {}
        self._mempool = torch.cuda.graph_pool_handle()

    def bucket(self, batch_size: int) -> int:
        return self.buckets[bisect.bisect_left(self.buckets, batch_size)]

    @torch.inference_mode()
    def run(self, rows: list[tuple[int, int, int]]) -> torch.Tensor:
        """rows: (slot, position, token) per sequence -> logits [B, V] (a view of a static buffer)."""
        B = len(rows)
        g = self._graphs.get(self.bucket(B)) or self._capture(self.bucket(B))
        data = [[token, position, slot, position, slot, position + 1, slot] for slot, position, token in rows]
        data += [self._pad] * (g.size - B)
        g.inputs.copy_(torch.tensor(data, dtype=torch.int64).t())
        g.graph.replay()
        return g.logits[:B]

    def _capture(self, size: int) -> _Graph:
        g = _Graph(size, self.device)
        g.inputs.copy_(torch.tensor([self._pad] * size, dtype=torch.int64).t())  # all padding rows
        batch = g.batch(self.max_len)
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(2):  # compile Triton kernels, warm cuBLAS, outside the capture
                self.runner.forward(batch)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        g.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g.graph, pool=self._mempool), torch.inference_mode():
            g.logits = self.runner.forward(batch)
        self._graphs[size] = g
        return g

"""CUDA graphs of the decode step, one per batch-size bucket, captured lazily on first use.

A decode step of B sequences runs the graph of the smallest bucket >= B: one step that returns the
logits (`run`), or k greedy steps back to back that return the tokens (`run_greedy`, `greedy_steps`:
k steps for one launch and one host round trip). Its static inputs are
filled with the B real rows followed by padding rows that point at scratch space (cache position
`max_model_len` of slot 0, state-pool row `num_slots`, one visible key), so a padding row never
touches a live sequence. Everything inside is graph-safe: the decode attention and the DSLA pool
kernel take their bounds and slots from device tensors, and no op synchronises with the host.
"""

from __future__ import annotations

import bisect

import torch

from .decode_inputs import DecodeInputs, greedy_steps
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
    """One captured decode pass: `steps` 0 returns logits, k >= 1 runs k greedy steps (`greedy_steps`)."""

    def __init__(self, size: int, steps: int, device: torch.device, pad: list[int]):
        self.size = size
        self.steps = steps
        self.inputs = DecodeInputs(size, device, pad)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.output: torch.Tensor | None = None  # logits [size, V] or tokens [steps, size]


class DecodeGraphs:
    """Captured decode passes for `runner`, keyed by batch bucket and number of greedy steps."""

    def __init__(self, runner: ModelRunner, max_batch: int):
        pool = runner.pool
        self.runner = runner
        self.device = pool.device
        self.buckets = batch_buckets(max_batch)
        self.max_len = pool.spec.max_model_len + 1
        self._pad = [0, pool.scratch_pos, 0, pool.scratch_pos, 0, 1, pool.scratch_slot]
        self._graphs: dict[tuple[int, int], _Graph] = {}  # (bucket, greedy steps or 0)
        self._mempool = torch.cuda.graph_pool_handle()

    def bucket(self, batch_size: int) -> int:
        return self.buckets[bisect.bisect_left(self.buckets, batch_size)]

    def graph(self, batch_size: int, steps: int) -> _Graph:
        """The graph for `batch_size` rows and `steps` greedy steps (0: one step's logits), captured now if
        it is not yet: the only call that captures, so the only one a capture failure comes from."""
        size = self.bucket(batch_size)
        return self._graphs.get((size, steps)) or self._capture(size, steps)

    @torch.inference_mode()
    def run(self, rows: list[tuple[int, int, int]]) -> torch.Tensor:
        """rows: (slot, position, token) per sequence -> logits [B, V] (a view of a static buffer)."""
        g = self._replay(rows, 0)
        return g.output[:len(rows)]

    @torch.inference_mode()
    def run_greedy(self, rows: list[tuple[int, int, int]], steps: int) -> list[list[int]]:
        """rows as in `run` -> the greedy tokens of `steps` decode steps, [steps][B] on the host (the
        rows' positions must leave room for `steps` more tokens)."""
        g = self._replay(rows, steps)
        return g.output[:, :len(rows)].tolist()

    def _replay(self, rows: list[tuple[int, int, int]], steps: int) -> _Graph:
        g = self.graph(len(rows), steps)
        g.inputs.fill(rows)
        g.graph.replay()
        return g

    def _forward(self, g: _Graph) -> torch.Tensor:
        if g.steps == 0:
            return self.runner.forward(g.inputs.batch(self.max_len))
        return greedy_steps(self.runner, g.inputs, g.steps, self.max_len)

    def _capture(self, size: int, steps: int) -> _Graph:
        g = _Graph(size, steps, self.device, self._pad)
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(2):  # compile Triton kernels, warm cuBLAS, outside the capture
                g.inputs.fill([])  # all padding rows (greedy steps leave them where they are)
                self._forward(g)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        g.inputs.fill([])
        g.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g.graph, pool=self._mempool), torch.inference_mode():
            g.output = self._forward(g)
        self._graphs[(size, steps)] = g
        return g

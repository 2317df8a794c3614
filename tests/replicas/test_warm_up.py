"""Engine.warm_up: before serving, the prefill forms the first requests would compile on a GPU (one
segment alone, several packed in one step) and decode steps run, single and in a greedy pass; the
latency figures start afresh."""

from __future__ import annotations

import dsla_serve.replicas.runner as runner
from dsla_serve.replicas import Engine

from .helpers import tiny_converted


def test_warm_up_runs_a_packed_prefill_and_leaves_the_figures_empty(monkeypatch):
    packed = []
    real = runner.chunk_dsla

    def recording(*args, cu_seqlens=None, **kwargs):
        packed.append(cu_seqlens is not None and cu_seqlens.num_seqs > 1)
        return real(*args, cu_seqlens=cu_seqlens, **kwargs)

    monkeypatch.setattr(runner, "chunk_dsla", recording)
    engine = Engine(tiny_converted(), depth=2, max_model_len=64, max_num_seqs=4, decode_steps=4)
    passes = []
    run_length = engine._greedy_run
    engine._greedy_run = lambda work: passes.append(run_length(work)) or passes[-1]
    seconds = engine.warm_up()
    assert seconds > 0
    assert False in packed and True in packed  # a segment alone, then several in one step
    assert passes.count(4) == 2 and 1 in passes  # a greedy pass (the graph a GPU captures) for each batch size
    stats = engine.stats()
    assert stats.requests_total == 0 and stats.ttft_p95_s is None and not engine.has_unfinished()
    out = engine.generate([[5, 6, 7]], use_tqdm=False)[0]  # serves as before
    assert out.error is None and out.outputs[0].token_ids and engine.stats().requests_total == 1


def test_warm_up_with_one_slot_and_a_short_context():
    engine = Engine(tiny_converted(), depth=1, max_model_len=8, max_num_seqs=1)
    assert engine.warm_up() > 0 and engine.stats().requests_total == 0

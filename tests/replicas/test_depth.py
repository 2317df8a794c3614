"""Depth changes while serving (drain), the memory planner, and artifact layers published while serving."""

import time

import pytest

from dsla_serve.model import Artifact, ArtifactError, cache_bytes_per_token, dsla_state_bytes
from dsla_serve.replicas import DepthUnavailableError, Engine, SamplingParams

from .helpers import ORDER, hf_greedy, random_prompts, tiny_converted

GREEDY = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)


def _alone(model, depth, prompt, params=GREEDY):
    return _alone_many(model, depth, [prompt], [params])[0]


def _alone_many(model, depth, prompts, params):
    """Each prompt run by itself (one at a time) on a fresh engine at `depth`."""
    engine = Engine(model, depth=depth, max_model_len=64, max_num_seqs=1)
    return [engine.generate([p], q, use_tqdm=False)[0].outputs[0].token_ids for p, q in zip(prompts, params)]


def test_a_request_pinned_to_a_depth_runs_at_that_depth_or_not_at_all():
    engine = Engine(tiny_converted("llama", seed=8), depth=0, max_model_len=64, max_num_seqs=1)
    prompts = random_prompts(3, seed=3, low=5, high=15)
    with pytest.raises(DepthUnavailableError, match="serves depth 0"):
        engine.add_request(prompts[0], GREEDY, depth=2)
    running = engine.add_request(prompts[0], GREEDY, depth=0)
    engine.step()
    pinned = engine.add_request(prompts[1], GREEDY, depth=0)  # waits: one slot
    free = engine.add_request(prompts[2], GREEDY)
    engine.set_depth(2)
    with pytest.raises(DepthUnavailableError, match="draining"):
        engine.add_request(prompts[1], GREEDY, depth=0)
    assert running.result().outputs[0].finish_reason == "length"  # drained at depth 0
    failed = pinned.result()
    assert failed.outputs[0].finish_reason == "error" and "depth 0 is no longer served" in failed.error
    assert failed.outputs[0].token_ids == []  # never ran at depth 2
    assert free.result().outputs[0].token_ids == _alone(tiny_converted("llama", seed=8), 2, prompts[2])


def test_set_depth_drains_running_requests_then_switches():
    model = tiny_converted("llama", seed=8)
    prompts = random_prompts(3, seed=3, low=5, high=15)
    engine = Engine(model, depth=0, max_model_len=64, max_num_seqs=4)
    old = [engine.add_request(p, GREEDY) for p in prompts[:2]]
    engine.step()
    engine.step()
    engine.set_depth(3)
    assert engine.depth == 0 and engine.draining and engine.stats().pending_depth == 3
    new = engine.add_request(prompts[2], GREEDY)
    engine.step()
    assert engine.stats().waiting == 1  # held back while draining
    outs_old = [s.result() for s in old]
    out_new = new.result()
    assert engine.depth == 3 and not engine.draining
    assert engine.plan.depth == 3 and engine.plan.num_dsla_layers == 3
    for p, o in zip(prompts[:2], outs_old):
        assert o.outputs[0].token_ids == _alone(model, 0, p)  # finished at the old depth
    assert out_new.outputs[0].token_ids == _alone(model, 3, prompts[2]) == hf_greedy(model, 3, prompts[2], 10)


def test_set_depth_under_load_loses_no_request():
    model = tiny_converted("qwen2", seed=9)
    engine = Engine(model, depth=0, max_model_len=64, max_num_seqs=3, max_queue=64)
    prompts = random_prompts(12, seed=5, low=3, high=20)
    params = [SamplingParams(temperature=0, max_tokens=5 + i % 4, ignore_eos=True) for i in range(12)]
    engine.start()
    try:
        streams = [engine.add_request(p, q) for p, q in zip(prompts[:6], params[:6])]
        time.sleep(0.05)
        engine.set_depth(2)
        streams += [engine.add_request(p, q) for p, q in zip(prompts[6:9], params[6:9])]
        engine.set_depth(4, wait=True, timeout=60)
        streams += [engine.add_request(p, q) for p, q in zip(prompts[9:], params[9:])]
        outs = [s.result() for s in streams]
    finally:
        engine.stop()
    assert engine.depth == 4
    alone = {d: _alone_many(model, d, prompts, params) for d in (0, 2, 4)}
    for i, (q, o) in enumerate(zip(params, outs)):
        tokens = o.outputs[0].token_ids
        assert o.outputs[0].finish_reason == "length" and len(tokens) == q.max_tokens
        assert tokens in [alone[d][i] for d in (0, 2, 4)]  # whole, at one depth
    for i in range(9, 12):
        assert outs[i].outputs[0].token_ids == alone[4][i]
    stats = engine.stats()
    assert stats.completed == 12 and stats.failed == 0 and stats.aborted == 0


def test_planner_admits_more_sequences_when_deeper():
    model = tiny_converted("llama", seed=0, order=list(range(8)), num_layers=8, max_position_embeddings=8192)
    budget = 48 * 1024**2
    seqs = {}
    for depth in (0, 4, 8):
        engine = Engine(model, depth=depth, max_model_len=4096, memory_budget_bytes=budget, max_num_seqs=10_000)
        plan = engine.plan
        assert plan.bytes_per_seq == 4097 * cache_bytes_per_token(model, depth) + dsla_state_bytes(model, depth)
        assert engine.pool.nbytes() == plan.cache_bytes <= budget
        assert plan.limited_by == "memory"
        seqs[depth] = plan.max_seqs
    assert seqs[0] < seqs[4] < seqs[8]
    assert seqs[0] == 48 * 1024**2 // (4097 * 8 * 2 * 2 * 16 * 4)  # 8 layers x K,V x 2 heads x 16 dims x fp32


def test_artifact_layers_published_while_serving(tmp_path):
    trained = tiny_converted("llama", seed=21)
    art = Artifact.create(tmp_path / "art", trained, base_model_id="tiny:llama", config=None, order=ORDER)
    for layer in ORDER[:2]:
        art.append_layer(trained, layer, {"ppl_ratio": 1.0})

    base = tiny_converted("llama", seed=21, order=[])  # same base weights, nothing converted
    engine = Engine(base, artifact=tmp_path / "art", depth=2, max_model_len=64, max_num_seqs=2)
    assert engine.max_depth == 2 and engine.stats().available_depths == [0, 1, 2]
    prompt = [7, 7, 1, 2, 3]
    engine.start()
    try:
        running = engine.add_request(prompt, SamplingParams(temperature=0, max_tokens=40, ignore_eos=True))
        art.append_layer(trained, ORDER[2], {"ppl_ratio": 1.1})
        assert engine.refresh_artifact() == [ORDER[2]]
        assert engine.max_depth == 3 and engine.depth == 2
        assert engine.refresh_artifact() == []
        engine.set_depth(3, wait=True, timeout=60)
        out = engine.add_request(prompt, GREEDY).result()
        assert running.result().outputs[0].finish_reason == "length"
    finally:
        engine.stop()
    assert out.outputs[0].token_ids == hf_greedy(trained, 3, prompt, 10)
    with pytest.raises(ValueError, match="without an artifact"):
        Engine(tiny_converted("llama"), max_model_len=16, max_num_seqs=1).refresh_artifact()


def test_stats_for_routing():
    engine = Engine(tiny_converted("llama"), depth=2, max_model_len=32, max_num_seqs=2, max_queue=7)
    engine.generate([[1, 2, 3]] * 3, GREEDY, use_tqdm=False)
    s = engine.stats()
    assert s.depth == 2 and s.max_depth == 4 and s.available_depths == [0, 1, 2, 3, 4]
    assert s.queue_cap == 7 and s.max_num_seqs == 2 and s.running == 0 and s.waiting == 0
    assert s.completed == 3 and s.requests_total == 3 and s.generated_tokens == 30
    assert s.ttft_p50_s > 0 and s.ttft_p95_s >= s.ttft_p50_s and s.tpot_p50_s > 0
    assert s.tokens_per_s > 0 and s.cache_usage == 0.0 and s.cache_token_usage == 0.0 and engine.plan.depth == 2


def test_engine_started_without_artifact_attaches_one_published_later(tmp_path):
    trained = tiny_converted("llama", seed=23)
    base = tiny_converted("llama", seed=23, order=[])  # same base weights, nothing converted
    engine = Engine(base, depth=0, max_model_len=64, max_num_seqs=2)
    assert engine.artifact is None and engine.max_depth == 0
    prompt = [5, 9, 2, 4]
    engine.start()
    try:
        running = engine.add_request(prompt, SamplingParams(temperature=0, max_tokens=40, ignore_eos=True))
        art = Artifact.create(tmp_path / "art", trained, base_model_id="tiny:llama", config=None, order=ORDER)
        art.append_layer(trained, ORDER[0], {"ppl_ratio": 1.0})
        assert engine.refresh_artifact(tmp_path / "art") == [ORDER[0]]  # attached in place, between steps
        assert engine.artifact is not None and engine.max_depth == 1 and engine.depth == 0
        assert engine.refresh_artifact(tmp_path / "art") == []  # the same artifact: a plain refresh
        engine.set_depth(1, wait=True, timeout=60)
        out = engine.add_request(prompt, GREEDY).result()
        assert running.result().outputs[0].finish_reason == "length"  # not dropped by the attach
    finally:
        engine.stop()
    assert out.outputs[0].token_ids == hf_greedy(trained, 1, prompt, 10)
    other = Artifact.create(tmp_path / "other", trained, base_model_id="tiny:llama", config=None, order=ORDER)
    with pytest.raises(ValueError, match="cannot switch"):
        engine.refresh_artifact(other.path)
    stranger = Engine(tiny_converted("llama", seed=24, order=[]), max_model_len=16, max_num_seqs=1)
    with pytest.raises(ArtifactError, match="base model mismatch"):
        stranger.refresh_artifact(tmp_path / "art")  # made for other weights: refused, nothing attached
    assert stranger.artifact is None and stranger.max_depth == 0

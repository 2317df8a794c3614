"""Bad or over-long requests fail alone with a clear message; a full queue refuses clearly."""

import pytest

from dsla_serve.replicas import Engine, PromptTooLongError, QueueFullError, SamplingParams

from .helpers import random_prompts, tiny_converted

GREEDY = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)


@pytest.fixture(scope="module")
def engine():
    return Engine(tiny_converted("llama", seed=4), depth=1, max_model_len=40, max_num_seqs=3, max_queue=4)


def test_over_long_prompt_fails_alone_in_generate(engine):
    good = random_prompts(3, seed=1, low=5, high=20)
    too_long = list(range(50))
    outs = engine.generate(good[:1] + [too_long] + good[1:], GREEDY, use_tqdm=False)
    bad = outs[1]
    assert bad.finished and bad.outputs[0].finish_reason == "error"
    assert "50 tokens" in bad.error and "max_model_len=40" in bad.error
    for prompt, out in zip(good, outs[:1] + outs[2:]):
        assert out.error is None
        assert out.outputs[0].token_ids == engine.generate([prompt], GREEDY, use_tqdm=False)[0].outputs[0].token_ids


def test_prompt_plus_max_tokens_over_the_limit(engine):
    with pytest.raises(PromptTooLongError, match=r"prompt \(38 tokens\) \+ max_tokens \(6\) = 44 exceeds max_model_len=40"):
        engine.add_request(list(range(38)), GREEDY)
    assert not engine.has_unfinished()  # nothing was queued


@pytest.mark.parametrize("prompt,match", [([], "empty"), ([1, 999], r"token ids must be in \[0, 259\)"),
                                          (["a", "b"], "prompt must be")])
def test_bad_prompts_are_refused(engine, prompt, match):
    with pytest.raises((ValueError, TypeError), match=match):
        engine.add_request(prompt, GREEDY)


def test_string_prompt_needs_a_tokenizer():
    engine = Engine(tiny_converted("llama"), max_model_len=32, max_num_seqs=1)
    with pytest.raises(ValueError, match="no tokenizer"):
        engine.add_request("hello", GREEDY)
    with pytest.raises(ValueError, match="SamplingParams.stop needs a tokenizer"):
        engine.add_request([1, 2], SamplingParams(stop="x"))


def test_queue_full_then_room_again(engine):
    streams = [engine.add_request([1, 2, 3], GREEDY) for _ in range(4)]
    with pytest.raises(QueueFullError, match=r"queue is full \(4 requests, max_queue\)"):
        engine.add_request([1, 2, 3], GREEDY)
    engine.step()  # three are admitted into the three slots, one still waits
    assert engine.stats().running == 3 and engine.stats().waiting == 1
    streams.append(engine.add_request([1, 2, 3], GREEDY))
    outs = [s.result() for s in streams]
    assert all(o.outputs[0].finish_reason == "length" for o in outs)
    assert len({tuple(o.outputs[0].token_ids) for o in outs}) == 1


def test_duplicate_request_id(engine):
    engine.add_request([1, 2], GREEDY, request_id="same")
    with pytest.raises(ValueError, match="request_id 'same' is already in use"):
        engine.add_request([1, 2], GREEDY, request_id="same")
    while engine.has_unfinished():
        engine.step()


@pytest.mark.parametrize("kwargs,match", [({"max_num_seqs": 0}, "max_num_seqs"), ({"max_queue": -1}, "max_queue"),
                                          ({"prefill_chunk_tokens": 0}, "prefill_chunk_tokens"),
                                          ({"depth": 5}, r"depth must be an int in \[0, 4\]"),
                                          ({"max_model_len": 1}, "max_model_len"),
                                          ({"memory_budget_bytes": 1000}, "does not fit one sequence")])
def test_bad_engine_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Engine(tiny_converted("llama"), **{"max_model_len": 32, **kwargs})


def test_set_depth_that_cannot_fit_is_refused_at_once():
    model = tiny_converted("llama", seed=4)
    per_token_d4 = 0  # at depth 4 every layer is DSLA: no KV; at depth 0 a sequence needs 4097 KiB
    engine = Engine(model, depth=4, max_model_len=4096, memory_budget_bytes=1024**2, max_num_seqs=2)
    assert engine.plan.kv_bytes_per_token == per_token_d4
    with pytest.raises(ValueError, match="does not fit one sequence of max_model_len=4096 at depth 0"):
        engine.set_depth(0)
    assert engine.depth == 4 and not engine.draining

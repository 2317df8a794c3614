"""Greedy decode steps back to back (`decode_steps`): the same tokens as one step at a time, fewer passes,
tokens after a stop dropped, and single steps wherever a pass of several could change the result."""

import pytest
import torch

from dsla_serve.replicas import Engine, SamplingParams
from dsla_serve.replicas.decode_inputs import DecodeInputs, greedy_steps

from .helpers import tiny_converted

PROMPTS = [[5, 6, 7, 8, 9], [40, 41], [100, 101, 102, 103, 104, 105, 106]]


def engine(decode_steps, max_model_len=64, max_num_seqs=4):
    """-> (engine at depth 2, the steps of each of its passes as they run: 1 for a prefill or single step)."""
    e = Engine(tiny_converted("llama"), depth=2, max_model_len=max_model_len, max_num_seqs=max_num_seqs,
               decode_steps=decode_steps)
    passes = []
    run_length = e._greedy_run
    e._greedy_run = lambda work: passes.append(run_length(work)) or passes[-1]
    return e, passes


def tokens(outs):
    return [o.outputs[0].token_ids for o in outs]


def test_several_steps_a_pass_give_the_same_greedy_tokens_in_fewer_passes():
    params = SamplingParams(temperature=0, max_tokens=11, ignore_eos=True)
    one, passes_one = engine(1)
    want = tokens(one.generate(PROMPTS, params, use_tqdm=False))
    four, passes_four = engine(4)
    assert tokens(four.generate(PROMPTS, params, use_tqdm=False)) == want  # depth 2: DSLA states advanced in place
    # a prefill pass gives the first token, then 10 tokens: passes of 4, 4, then 2 single steps
    assert passes_one == [1] * 11 and passes_four == [1, 4, 4, 1, 1]
    assert all(len(t) == 11 for t in want)


def test_a_stop_inside_a_pass_drops_the_tokens_after_it():
    free = tokens(engine(1)[0].generate([PROMPTS[0]], SamplingParams(temperature=0, max_tokens=12, ignore_eos=True),
                                        use_tqdm=False))[0]
    stop = free[6]  # reached in the second pass of 4 (tokens 1-4, 5-8)
    first = free.index(stop)
    e, _ = engine(4)
    out = e.generate([PROMPTS[0]], SamplingParams(temperature=0, max_tokens=12, stop_token_ids=[stop]),
                     use_tqdm=False)[0].outputs[0]
    assert out.token_ids == free[:first + 1] and out.finish_reason == "stop" and out.stop_reason == stop
    # the slot is free again and a new request decodes from fresh states
    again = e.generate([PROMPTS[1]], SamplingParams(temperature=0, max_tokens=9, ignore_eos=True), use_tqdm=False)
    assert tokens(again) == tokens(engine(1)[0].generate([PROMPTS[1]], SamplingParams(
        temperature=0, max_tokens=9, ignore_eos=True), use_tqdm=False))


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=0.8, max_tokens=9, ignore_eos=True, seed=3),
    SamplingParams(temperature=0, max_tokens=9, ignore_eos=True, logprobs=2),
])
def test_sampled_rows_and_logprobs_decode_one_step_a_pass(params):
    e, passes = engine(4)
    want = e.generate([PROMPTS[0]], params, use_tqdm=False)[0].outputs[0]
    assert passes == [1] * 9
    one = engine(1)[0].generate([PROMPTS[0]], params, use_tqdm=False)[0].outputs[0]
    assert one.token_ids == want.token_ids and (params.logprobs is None or one.logprobs == want.logprobs)


def test_a_waiting_request_keeps_single_steps_and_a_pass_may_reach_the_context_end():
    e, passes = engine(4, max_num_seqs=1)
    params = SamplingParams(temperature=0, max_tokens=9, ignore_eos=True)
    e.generate(PROMPTS[:2], params, use_tqdm=False)  # one slot: the second request waits during the first
    assert passes == [1] * 9 + [1, 4, 4]  # single steps while the second waits; then nothing waits
    # the context's end: 7 prompt tokens + 5 = max_model_len; the pass of 4 feeds positions 7..10
    short = SamplingParams(temperature=0, max_tokens=5, ignore_eos=True)
    e, passes = engine(4, max_model_len=12, max_num_seqs=1)
    want = tokens(engine(1, max_model_len=12, max_num_seqs=1)[0].generate([PROMPTS[2]], short, use_tqdm=False))
    assert tokens(e.generate([PROMPTS[2]], short, use_tqdm=False)) == want and passes == [1, 4]


def test_decode_inputs_advance_live_rows_only_and_check_their_size():
    x = DecodeInputs(3, torch.device("cpu"), pad=[0, 99, 0, 99, 0, 1, 7])
    x.fill([(2, 10, 5), (0, 4, 6)])
    x.advance_(torch.tensor([11, 12, 13]))
    assert x.tensor[:, 0].tolist() == [11, 11, 2, 11, 2, 12, 2, 1]
    assert x.tensor[:, 2].tolist() == [13, 99, 0, 99, 0, 1, 7, 0]  # padding stays at its scratch position
    with pytest.raises(ValueError, match="4 rows for decode inputs of size 3"):
        x.fill([(0, 0, 0)] * 4)
    with pytest.raises(ValueError, match="without a padding row"):
        DecodeInputs(2, torch.device("cpu")).fill([(0, 0, 0)])


def test_greedy_steps_equal_single_steps_from_the_same_cache():
    e, _ = engine(1)
    stream = e.add_request(PROMPTS[0], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
    e.step()  # prefill: the first token
    req = e._live[stream.request_id]
    row = (req.slot, req.num_computed, req.output_ids[-1])
    saved = {name: {i: t.clone() for i, t in d.items()} for name, d in vars(e.pool).items()
             if name in ("k", "v", "s1", "s2")}
    x = DecodeInputs(1, torch.device("cpu"))
    x.fill([row])
    got = greedy_steps(e.runner, x, 3, row[1] + 3)[:, 0].tolist()
    for name, d in saved.items():  # back to the cache after the prefill
        for i, t in d.items():
            getattr(e.pool, name)[i].copy_(t)
    want, (slot, position, token) = [], row
    for _ in range(3):
        x.fill([(slot, position, token)])
        token = int(e.runner.forward(x.batch(position + 1)).argmax(-1))
        want.append(token)
        position += 1
    assert got == want
    assert x.tensor[:, 0].tolist()[:2] == [want[1], row[1] + 2]  # greedy_steps left its inputs at step 3's
    with pytest.raises(ValueError, match="decode_steps must be an int >= 1"):
        Engine(tiny_converted("llama"), max_model_len=16, decode_steps=0)

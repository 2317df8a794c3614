"""Sampling options: seeds, top-k/top-p, stop strings and token ids, max_tokens, EOS, logprobs, echo."""

import pytest
import torch

from dsla_serve.replicas import Engine, SamplingParams

from .helpers import hf_log_softmax, random_prompts, tiny_converted, tokenizer

DEPTH = 2


@pytest.fixture(scope="module")
def model():
    return tiny_converted("llama", seed=11)


@pytest.fixture()
def engine(model):
    return Engine(model, tokenizer=tokenizer(), depth=DEPTH, max_model_len=96, max_num_seqs=6,
                  prefill_chunk_tokens=9)


def _one(engine, prompt, params):
    return engine.generate([prompt], params, use_tqdm=False)[0].outputs[0]


def test_same_seed_same_text_whatever_the_batch(engine):
    prompt = [72, 101, 108, 108, 111]
    params = SamplingParams(temperature=0.9, top_p=0.95, top_k=100, seed=1234, max_tokens=16, ignore_eos=True)
    alone = _one(engine, prompt, params).token_ids
    others = random_prompts(4, seed=2)
    batch = engine.generate(others[:2] + [prompt] + others[2:],
                            [SamplingParams(temperature=1.0, max_tokens=20, ignore_eos=True)] * 2 + [params]
                            + [SamplingParams(temperature=0.7, seed=5, max_tokens=9, ignore_eos=True)] * 2,
                            use_tqdm=False)
    assert batch[2].outputs[0].token_ids == alone
    other_seed = SamplingParams(temperature=0.9, top_p=0.95, top_k=100, seed=99, max_tokens=16, ignore_eos=True)
    assert _one(engine, prompt, other_seed).token_ids != alone


def test_top_k_one_and_tiny_top_p_are_greedy(engine):
    prompt = [1, 2, 3, 4]
    greedy = _one(engine, prompt, SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)).token_ids
    assert _one(engine, prompt, SamplingParams(temperature=2.0, top_k=1, seed=3, max_tokens=10,
                                               ignore_eos=True)).token_ids == greedy
    assert _one(engine, prompt, SamplingParams(temperature=2.0, top_p=1e-6, seed=4, max_tokens=10,
                                               ignore_eos=True)).token_ids == greedy


def test_top_k_restricts_to_the_k_most_likely(engine, model):
    """Every sampled token with top_k=3 is among the 3 most likely under the model's own logits."""
    prompt = [9, 8, 7]
    out = _one(engine, prompt, SamplingParams(temperature=5.0, top_k=3, seed=0, max_tokens=12, ignore_eos=True))
    lsm = hf_log_softmax(model, DEPTH, prompt + out.token_ids)
    for t, tok in enumerate(out.token_ids):
        assert tok in lsm[len(prompt) - 1 + t].topk(3).indices.tolist()


def test_max_tokens_and_length_finish(engine):
    out = _one(engine, [5, 6], SamplingParams(temperature=0, max_tokens=7, ignore_eos=True))
    assert len(out.token_ids) == 7 and out.finish_reason == "length"


def test_stop_token_ids_and_eos(model):
    engine = Engine(model, tokenizer=tokenizer(), depth=DEPTH, max_model_len=96, max_num_seqs=2)
    prompt = [40, 41, 42]
    greedy = _one(engine, prompt, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)).token_ids
    stop_id = greedy[4]
    out = _one(engine, prompt, SamplingParams(temperature=0, max_tokens=12, stop_token_ids=[stop_id]))
    first = greedy.index(stop_id)
    assert out.token_ids == greedy[:first + 1] and out.finish_reason == "stop" and out.stop_reason == stop_id
    engine.eos_ids = {stop_id}  # as if the model's EOS were this token
    out = _one(engine, prompt, SamplingParams(temperature=0, max_tokens=12))
    assert out.token_ids == greedy[:first + 1] and out.finish_reason == "stop"
    assert len(_one(engine, prompt, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)).token_ids) == 12


def test_stop_strings_cut_the_text(engine):
    prompt = "Once upon"
    free = _one(engine, prompt, SamplingParams(temperature=0, max_tokens=30, ignore_eos=True))
    text = free.text
    k = next(i for i in range(3, len(text) - 2) if "\ufffd" not in text[i:i + 2])
    stop = text[k:k + 2]
    cut = _one(engine, prompt, SamplingParams(temperature=0, max_tokens=30, ignore_eos=True, stop=[stop, "\x00\x01"]))
    assert cut.finish_reason == "stop" and cut.stop_reason == stop
    assert cut.text == text[:text.index(stop)]
    assert free.token_ids[:len(cut.token_ids)] == cut.token_ids
    kept = _one(engine, prompt, SamplingParams(temperature=0, max_tokens=30, ignore_eos=True, stop=stop,
                                               include_stop_str_in_output=True))
    assert kept.text == text[:text.index(stop) + 2]


def test_logprobs_equal_log_softmax_of_hf_logits(engine, model):
    prompt = random_prompts(1, seed=6, low=12, high=13)[0]
    out = _one(engine, prompt, SamplingParams(temperature=0, max_tokens=8, logprobs=3, ignore_eos=True))
    lsm = hf_log_softmax(model, DEPTH, prompt + out.token_ids)
    assert len(out.logprobs) == 8
    for t, (tok, entry) in enumerate(zip(out.token_ids, out.logprobs)):
        row = lsm[len(prompt) - 1 + t]
        assert set(row.topk(3).indices.tolist()) <= set(entry) and tok in entry
        for i, lp in entry.items():
            assert lp == pytest.approx(row[i].item(), abs=1e-4)
    assert out.cumulative_logprob == pytest.approx(sum(e[t] for t, e in zip(out.token_ids, out.logprobs)))


def test_sampled_logprobs_are_of_the_raw_distribution(engine, model):
    prompt = [3, 1, 4, 1, 5]
    out = _one(engine, prompt, SamplingParams(temperature=1.5, seed=8, max_tokens=5, logprobs=0, ignore_eos=True))
    lsm = hf_log_softmax(model, DEPTH, prompt + out.token_ids)
    for t, (tok, entry) in enumerate(zip(out.token_ids, out.logprobs)):
        assert list(entry) == [tok]
        assert entry[tok] == pytest.approx(lsm[len(prompt) - 1 + t, tok].item(), abs=1e-4)


def test_echo_prompt_logprobs_for_loglikelihood(engine, model):
    """echo + max_tokens=0 scores the prompt only (lm-eval's loglikelihood), across prefill chunks of 9."""
    prompt = random_prompts(1, seed=12, low=30, high=31)[0]
    out = engine.generate([prompt], SamplingParams(echo=True, logprobs=2, max_tokens=0), use_tqdm=False)[0]
    assert out.finished and out.outputs[0].token_ids == [] and out.outputs[0].finish_reason == "length"
    lsm = hf_log_softmax(model, DEPTH, prompt)
    assert len(out.prompt_logprobs) == len(prompt) and out.prompt_logprobs[0] is None
    for t in range(1, len(prompt)):
        entry, row = out.prompt_logprobs[t], lsm[t - 1]
        assert prompt[t] in entry and set(row.topk(2).indices.tolist()) <= set(entry)
        for i, lp in entry.items():
            assert lp == pytest.approx(row[i].item(), abs=1e-4)
    # with generation too: the prompt scores are the same and generation proceeds
    both = engine.generate([prompt], SamplingParams(temperature=0, prompt_logprobs=0, max_tokens=3, ignore_eos=True),
                           use_tqdm=False)[0]
    assert [e and e[prompt[t]] for t, e in enumerate(both.prompt_logprobs)] == \
        pytest.approx([e and e[prompt[t]] for t, e in enumerate(out.prompt_logprobs)], abs=1e-5)
    assert len(both.outputs[0].token_ids) == 3


@pytest.mark.parametrize("field,value", [("temperature", -0.1), ("top_p", 0.0), ("top_p", 1.5), ("top_k", -2),
                                         ("max_tokens", -1), ("stop", [""]), ("logprobs", -1),
                                         ("prompt_logprobs", 1.5), ("seed", "x"), ("stop_token_ids", [-3])])
def test_bad_sampling_params_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"SamplingParams.{field}"):
        SamplingParams(**{field: value})


def test_max_tokens_zero_needs_prompt_scoring():
    with pytest.raises(ValueError, match="max_tokens"):
        SamplingParams(max_tokens=0)


def test_sampler_rows_are_independent_of_the_batch():
    """The sampler alone: a seeded row draws the same token whatever rows surround it."""
    from dsla_serve.replicas.sampler import sample

    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    p = SamplingParams(temperature=1.0, top_p=0.8, seed=7)
    alone, _ = sample(logits[2:3], [p], [torch.Generator().manual_seed(7)])
    gens = [torch.Generator().manual_seed(s) for s in (1, 2, 7, 3)]
    together, _ = sample(logits, [SamplingParams(temperature=0.5)] * 2 + [p, SamplingParams(temperature=0)], gens)
    assert together[2] == alone[0]
    assert together[3] == int(logits[3].argmax())


def test_sampler_takes_model_dtype_logits_as_their_float32_copy():
    """Greedy rows of bf16 logits take the argmax without a float32 copy: the same tokens (ties included)
    and, when asked, the same log-probabilities as the float32 copy gives."""
    from dsla_serve.replicas.sampler import sample

    logits = torch.randn(3, 64, generator=torch.Generator().manual_seed(1)).bfloat16()
    logits[1, 10] = logits[1, 40] = logits[1].max() + 1  # a tie: the first index wins in both
    greedy = [SamplingParams(temperature=0)] * 3
    gens = [torch.Generator().manual_seed(0) for _ in range(3)]
    tokens, lps = sample(logits, greedy, gens)
    assert tokens == logits.float().argmax(-1).tolist() and tokens[1] == 10 and lps == [None] * 3
    asked = [SamplingParams(temperature=0, logprobs=2)] * 3
    assert sample(logits, asked, gens) == sample(logits.float(), asked, gens)

"""The engine on the reference real model in fp32: greedy tokens equal Hugging Face `generate` at depth 0
and with one converted layer (depth 1), for a chat prompt (BPE, special tokens, GQA groups of 3, tied
embeddings), the two prompts' prefills packed in one step (their offsets one `PackedSequences`), the
converted layer read out with the mix its runner computed once; EOS from the tokenizer (`<|im_end|>`)
ends the answer. Decoding runs greedy passes of 4 steps (`decode_steps`, the CUDA default), so the
answer's EOS comes inside a pass and the tokens computed after it are dropped."""

import torch

import dsla_serve.replicas.runner as runner
from dsla_serve.kernels import PackedSequences
from dsla_serve.model import DSLAConfig, convert
from dsla_serve.replicas import Engine, SamplingParams

from ..model.helpers import randomize_dsla
from ..reference import chat_ids, load_reference
from .helpers import hf_greedy

TOKENS = 10


def test_greedy_equals_hf_generate_at_depth_0_and_1(monkeypatch):
    packed = []
    real = runner.chunk_dsla

    def recording(*args, cu_seqlens=None, **kwargs):
        packed.append(cu_seqlens)
        return real(*args, cu_seqlens=cu_seqlens, **kwargs)

    monkeypatch.setattr(runner, "chunk_dsla", recording)
    model, tokenizer = load_reference()
    torch.manual_seed(0)
    convert(model, [3], DSLAConfig())
    randomize_dsla(model, scale=0.05)
    prompts = [chat_ids(tokenizer), chat_ids(tokenizer, [{"role": "user", "content": "Name a colour."}])]
    engine = Engine(model, tokenizer=tokenizer, depth=0, max_model_len=128, max_num_seqs=2, decode_steps=4)
    passes = []
    run_length = engine._greedy_run
    engine._greedy_run = lambda work: passes.append(run_length(work)) or passes[-1]
    for depth in (0, 1):
        engine.set_depth(depth, wait=True)
        outs = engine.generate(prompts, SamplingParams(temperature=0, max_tokens=TOKENS, ignore_eos=True),
                               use_tqdm=False)
        for prompt, out in zip(prompts, outs):
            assert out.outputs[0].token_ids == hf_greedy(model, depth, prompt, TOKENS), depth
    assert passes == [1, 4, 4, 1] * 2  # the packed prefill gives token 1; 9 more in passes of 4, 4, 1
    twin = engine.runner.dsla[3]  # depth 1: layer 3 converted, its readout mix computed when the runner was built
    assert list(engine.runner.readout_mix) == [3]
    assert torch.equal(engine.runner.readout_mix[3], twin.readout_mix())
    lengths = [len(p) for p in prompts]
    assert any(isinstance(c, PackedSequences) and c.offsets == (0, lengths[0], sum(lengths)) for c in packed)
    engine.set_depth(0, wait=True)
    answer = engine.generate([prompts[0]], SamplingParams(temperature=0, max_tokens=32), use_tqdm=False)[0].outputs[0]
    assert answer.finish_reason == "stop" and answer.text.strip() == "The capital of France is Paris."
    assert answer.token_ids[-1] in engine.eos_ids and len(answer.token_ids) % 4 != 1  # EOS inside a pass

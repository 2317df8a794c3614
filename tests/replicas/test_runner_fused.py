"""The runner's CUDA forward pass (fused block kernels, merged projections) on the CPU under the Triton
interpreter: a whole engine run against HF generate. The kernels themselves: tests/kernels/test_block.py."""

import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _interpret(script: str) -> None:
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "DSLA_BACKEND": "torch", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-3000:]


def test_engine_with_fused_kernels_equals_hf_generate():
    _interpret("""
        import torch
        from dsla_serve.replicas import Engine, SamplingParams
        from tests.replicas.helpers import hf_greedy, random_prompts, tiny_converted
        model = tiny_converted("llama", seed=3)
        from dsla_serve.replicas.runner import ModelRunner
        engine = Engine(model, depth=2, max_model_len=32, max_num_seqs=2, prefill_chunk_tokens=8)
        # what CUDA gets (fused kernels, merged q/k/v and gate/up weights); the interpreter runs it here
        engine.runner = ModelRunner(model, engine.pool, engine.runner.dsla, fused=True)
        assert len(engine.runner.qkv) == 2 and len(engine.runner.dsla_proj) == 2 and len(engine.runner.gate_up) == 4
        prompts = random_prompts(2, seed=1, low=5, high=14)
        outs = engine.generate(prompts, SamplingParams(temperature=0, max_tokens=4, ignore_eos=True), use_tqdm=False)
        for p, o in zip(prompts, outs):
            assert o.outputs[0].token_ids == hf_greedy(model, 2, p, 4), (p, o.outputs[0].token_ids)
        print("ok")
    """)


def test_one_row_passes_run_every_projection_as_gemv():
    """Batch-1 decode (and a prefill's one logit row) through the Triton `gemv`: the same greedy tokens
    as HF generate, at a depth with DSLA and softmax layers, and every kind of projection took it."""
    _interpret("""
        import collections
        import dsla_serve.kernels.block as block
        from dsla_serve.replicas import Engine, SamplingParams
        from dsla_serve.replicas.runner import ModelRunner
        from tests.replicas.helpers import hf_greedy, random_prompts, tiny_converted
        calls = collections.Counter()
        real = block.gemv
        def counted(x, weight, bias=None, **kw):
            calls[(tuple(weight.shape), kw.get("silu_mul_input", False))] += 1
            return real(x, weight, bias, **kw)
        block.gemv = counted
        model = tiny_converted("llama", seed=3)
        engine = Engine(model, depth=2, max_model_len=32, max_num_seqs=1, prefill_chunk_tokens=8)
        engine.runner = ModelRunner(model, engine.pool, engine.runner.dsla, fused=True)
        assert engine.runner.use_gemv
        prompt = random_prompts(1, seed=2, low=9, high=10)[0]
        out = engine.generate([prompt], SamplingParams(temperature=0, max_tokens=5, ignore_eos=True), use_tqdm=False)
        assert out[0].outputs[0].token_ids == hf_greedy(model, 2, prompt, 5), out[0].outputs[0].token_ids
        c = model.config
        hd = c.hidden_size // c.num_attention_heads
        want = {(c.vocab_size, c.hidden_size), (c.hidden_size, c.intermediate_size), (2 * c.intermediate_size, c.hidden_size),
                ((c.num_attention_heads + 2 * c.num_key_value_heads) * hd, c.hidden_size), (c.hidden_size, c.hidden_size)}
        shapes = {s for s, _ in calls}
        assert want <= shapes, (want - shapes, calls)
        passes, L = calls[((c.vocab_size, c.hidden_size), False)], c.num_hidden_layers
        assert passes >= 5, calls  # every decode step, and the prefill chunk of one row
        assert calls[((c.hidden_size, c.intermediate_size), True)] == passes * L, calls  # down, activation at the load
        # this tiny model's DSLA merged q/k/v/gates (2 layers) has gate/up's shape: both counted here
        assert calls[((2 * c.intermediate_size, c.hidden_size), False)] == passes * (L + 2), calls
        print("ok")
    """)


def test_reference_model_with_fused_kernels_and_gemv_equals_hf_generate():
    """SmolLM2-135M-Instruct (GQA 9/3, head dim 64, tied embeddings) through the runner's CUDA forward
    pass at depth 1 (layer 3 converted to DSLA), one sequence: the fused block kernels and merged
    projections, and the prefill's logit row and the decode step run every projection as `gemv`, all
    under the Triton interpreter (attention and the DSLA ops take their PyTorch forms on the CPU). Greedy
    tokens equal HF generate in float32, and their log-probabilities equal HF's to 1e-4. The gemv runs 64 rows per program here instead of 4 (the same kernel; its
    launch settings are tested on these shapes in tests/kernels/test_block.py): at 4 the interpreter
    needs about 12 minutes."""
    _interpret("""
        import collections
        import sys
        import torch
        import dsla_serve.kernels.block as block
        from dsla_serve.model import DSLAConfig, convert
        from dsla_serve.replicas import Engine, SamplingParams
        from dsla_serve.replicas.runner import ModelRunner
        from tests.model.helpers import randomize_dsla
        from tests.reference import chat_ids, load_reference
        from tests.replicas.helpers import hf_greedy
        settings = sys.modules["dsla_serve.kernels.block.gemv"]
        default = settings.launch_settings
        settings.launch_settings = lambda act: dict(default(act), BLOCK_N=64)
        calls = collections.Counter()
        real = block.gemv
        def counted(x, weight, bias=None, **kw):
            calls[tuple(weight.shape)] += 1
            return real(x, weight, bias, **kw)
        block.gemv = counted
        model, tokenizer = load_reference()
        torch.manual_seed(0)
        convert(model, [3], DSLAConfig())
        randomize_dsla(model, scale=0.05)
        engine = Engine(model, tokenizer=tokenizer, depth=1, max_model_len=64, max_num_seqs=1)
        engine.runner = ModelRunner(model, engine.pool, engine.runner.dsla, fused=True)
        prompt = chat_ids(tokenizer)
        params = SamplingParams(temperature=0, max_tokens=2, ignore_eos=True, logprobs=1)
        got = engine.generate([prompt], params, use_tqdm=False)[0].outputs[0]
        tokens = hf_greedy(model, 1, prompt, 2)
        assert got.token_ids == tokens, got.token_ids
        with torch.no_grad():  # and the log-probabilities of those tokens, to float32 rounding
            logits = model(torch.tensor([prompt + tokens])).logits[0, len(prompt) - 1:-1]
        want = torch.log_softmax(logits.double(), -1)[torch.arange(2), torch.tensor(tokens)]
        have = torch.tensor([lp[t] for lp, t in zip(got.logprobs, tokens)], dtype=torch.float64)
        assert torch.allclose(have, want, rtol=0, atol=1e-4), (have, want)
        c = model.config
        assert calls[(c.vocab_size, c.hidden_size)] == 2, calls  # lm_head: the prefill's row, the decode step
        assert calls[(c.hidden_size, c.intermediate_size)] == c.num_hidden_layers, calls  # down, one step
        assert calls[(c.hidden_size, c.hidden_size)] == c.num_hidden_layers, calls  # o, softmax and DSLA
        assert sum(calls.values()) == 2 + 4 * c.num_hidden_layers, calls  # + merged q/k/v (/gates), gate/up
        print("ok")
    """)

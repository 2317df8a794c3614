"""The fused Triton kernels of the CUDA forward pass, run on the CPU by the Triton interpreter: each
against the PyTorch / Hugging Face ops it replaces, and a whole engine run with them against HF generate."""

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


def test_kernels_match_the_ops_they_replace():
    _interpret("""
        import torch
        import torch.nn.functional as F
        from transformers.models.llama.modeling_llama import LlamaRMSNorm
        from dsla_serve.replicas.runner import _rotate
        from dsla_serve.replicas.triton_fused import add_rmsnorm, rope_kv_write, silu_mul
        g = torch.Generator().manual_seed(0)
        for dtype, tol in ((torch.float32, 1e-6), (torch.float16, 1e-3)):
            N, C = 5, 96
            norm = LlamaRMSNorm(C, eps=1e-5).to(dtype)
            norm.weight.data = torch.randn(C, generator=g).to(dtype)
            h, a = torch.randn(2, N, C, generator=g).to(dtype)
            h2, y = add_rmsnorm(h, a, norm.weight, norm.variance_epsilon)
            assert torch.equal(h2, h + a)
            torch.testing.assert_close(y, norm(h + a), rtol=tol, atol=tol)
            torch.testing.assert_close(add_rmsnorm(h, None, norm.weight, 1e-5)[1], norm(h), rtol=tol, atol=tol)

            gate, up = torch.randn(2, N, 3000, generator=g).to(dtype)
            torch.testing.assert_close(silu_mul(gate, up), F.silu(gate) * up, rtol=tol, atol=tol)

            H, Hk, D, P, L = 4, 2, 16, 3, 10
            q, k, v = torch.randn(N, H, D, generator=g).to(dtype), *torch.randn(2, N, Hk, D, generator=g).to(dtype)
            cos, sin = torch.randn(2, N, D, generator=g).to(dtype)
            slots, pos = torch.tensor([2, 0, 2, 1, 0]), torch.tensor([0, 3, 1, 9, 4])
            kc, vc = torch.zeros(2, P, Hk, L, D, dtype=dtype)
            ref_k, ref_v = kc.clone(), vc.clone()
            ref_q = _rotate(q, cos, sin)
            ref_k[slots, :, pos] = _rotate(k, cos, sin)
            ref_v[slots, :, pos] = v
            rope_kv_write(q, k, v, cos, sin, kc, vc, slots, pos)
            for got, ref in ((q, ref_q), (kc, ref_k), (vc, ref_v)):
                torch.testing.assert_close(got, ref, rtol=tol, atol=tol)
        print("ok")
    """)


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
        assert len(engine.runner.qkv) == 2 and len(engine.runner.gate_up) == 4
        prompts = random_prompts(2, seed=1, low=5, high=14)
        outs = engine.generate(prompts, SamplingParams(temperature=0, max_tokens=4, ignore_eos=True), use_tqdm=False)
        for p, o in zip(prompts, outs):
            assert o.outputs[0].token_ids == hf_greedy(model, 2, p, 4), (p, o.outputs[0].token_ids)
        print("ok")
    """)

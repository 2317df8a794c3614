"""The fused block kernels (`dsla_serve.kernels.block`) against the PyTorch / Hugging Face ops they
replace, run on the CPU by the Triton interpreter, at a power-of-two head dim and at 80 and 96; `gemv`
also on the reference model's own decode-step rows."""

import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _interpret(script: str) -> None:
    """Run `script` in a fresh interpreter with the Triton interpreter on; it prints "ok" when it passes."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-3000:]


def test_block_kernels_match_the_ops_they_replace():
    pytest.importorskip("triton")
    script = textwrap.dedent("""
        import torch
        import torch.nn.functional as F
        from transformers.models.llama.modeling_llama import LlamaRMSNorm
        from dsla_serve.replicas.runner import _rotate
        from dsla_serve.kernels.block import add_rmsnorm, gemv, rope_kv_write, silu_mul
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

            # one row: K not a multiple of the K tile, N not of the row block, bias or not, the MLP's
            # activation at the load; a weight that is a row slice of a wider one (its row stride)
            for K, Nout, bias in ((1100, 37, True), (3000, 64, False)):
                wide = torch.randn(Nout, K + 8, generator=g).to(dtype)
                w, b = wide[:, :K], (torch.randn(Nout, generator=g).to(dtype) if bias else None)
                x = torch.randn(1, K, generator=g).to(dtype)
                torch.testing.assert_close(gemv(x, w, b), F.linear(x, w, b), rtol=4 * tol, atol=4 * tol * K ** 0.5)
                xa = torch.randn(1, 2 * K, generator=g).to(dtype)
                torch.testing.assert_close(gemv(xa, w, b, silu_mul_input=True),
                                           F.linear(silu_mul(xa[:, :K], xa[:, K:]), w, b),
                                           rtol=4 * tol, atol=4 * tol * K ** 0.5)

            for D in (16, 80, 96):  # head dims that are not a power of two are padded and masked
                H, Hk, P, L = 4, 2, 3, 10
                q, k, v = torch.randn(N, H, D, generator=g).to(dtype), *torch.randn(2, N, Hk, D, generator=g).to(dtype)
                cos, sin = torch.randn(2, N, D, generator=g).to(dtype)
                slots, pos = torch.tensor([2, 0, 2, 1, 0]), torch.tensor([0, 3, 1, 9, 4])
                kc, vc = torch.full((2, P, Hk, L, D), float("nan"), dtype=dtype)
                ref_k, ref_v = kc.clone(), vc.clone()
                ref_q = _rotate(q, cos, sin)
                ref_k[slots, :, pos] = _rotate(k, cos, sin)
                ref_v[slots, :, pos] = v
                rope_kv_write(q, k, v, cos, sin, kc, vc, slots, pos)
                for got, ref in ((q, ref_q), (kc, ref_k), (vc, ref_v)):  # NaN where nothing was written
                    torch.testing.assert_close(got, ref, rtol=tol, atol=tol, equal_nan=True)
        print("ok")
    """)
    _interpret(script)


def test_gemv_on_the_reference_models_decode_step(tmp_path):
    """SmolLM2-135M-Instruct's own one-row projections: the inputs its first layer and lm_head receive at a
    batch-1 decode step (recorded from the engine on the CPU after a chat prompt), through `gemv` under the
    interpreter with the model's weights (q/k/v merged as the runner merges them, the down projection with
    the activation at its load), in float32 and bfloat16: equal to F.linear to rounding, and the same
    greedy token from lm_head."""
    pytest.importorskip("triton")
    import torch

    from dsla_serve.replicas import Engine, SamplingParams

    from ..reference import chat_ids, load_reference

    model, tokenizer = load_reference()
    layer = model.model.layers[0]
    seen = {}

    def record(name, output=False):
        def hook(module, args, out):
            seen[name] = (out if output else args[0]).detach().clone()
        return hook

    for name, module, output in (("x", layer.self_attn.q_proj, False), ("o", layer.self_attn.o_proj, False),
                                 ("gate", layer.mlp.gate_proj, True), ("up", layer.mlp.up_proj, True),
                                 ("h", model.lm_head, False)):
        module.register_forward_hook(record(name, output))
    engine = Engine(model, tokenizer=tokenizer, max_model_len=256, max_num_seqs=1)
    engine.generate([chat_ids(tokenizer)], SamplingParams(temperature=0, max_tokens=2, ignore_eos=True), use_tqdm=False)
    assert all(v.shape[0] == 1 for v in seen.values()), {k: v.shape for k, v in seen.items()}  # the decode step
    torch.save(seen, tmp_path / "rows.pt")
    _interpret(f"""
        import torch
        import torch.nn.functional as F
        from dsla_serve.kernels.block import gemv, silu_mul
        from dsla_serve.kernels.block.gemv import launch_settings
        from dsla_serve.replicas.merged_weights import merge_linears
        from tests.reference import load_reference
        seen = torch.load({str(tmp_path / "rows.pt")!r})
        model, _ = load_reference()
        layer = model.model.layers[0]
        attn, mlp = layer.self_attn, layer.mlp
        for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
            qkv = [w.to(dtype) if w is not None else None for w in merge_linears([attn.q_proj, attn.k_proj, attn.v_proj])]
            x, o, h = (seen[k].to(dtype) for k in ("x", "o", "h"))
            gu = torch.cat([seen["gate"], seen["up"]], dim=1).to(dtype)
            cases = [(x, qkv[0], qkv[1], False), (o, attn.o_proj.weight.to(dtype), None, False),
                     (gu, mlp.down_proj.weight.to(dtype), None, True), (h, model.lm_head.weight.to(dtype), None, False)]
            for inp, w, b, act in cases:
                # lm_head's 49152 rows in blocks of 64, not 4: the interpreter runs each program in Python
                settings = dict(launch_settings(act), BLOCK_N=64) if w.shape[0] > 10000 else None
                got = gemv(inp, w, b, silu_mul_input=act, settings=settings)
                a = silu_mul(inp[:, :w.shape[1]], inp[:, w.shape[1]:]) if act else inp
                want = F.linear(a.float(), w.float(), None if b is None else b.float())
                err = ((got.float() - want).norm() / want.norm()).item()
                assert err < tol, (dtype, tuple(w.shape), act, err)
            assert got.float().argmax() == want.argmax(), dtype  # lm_head: the same greedy token
        print("ok")
    """)

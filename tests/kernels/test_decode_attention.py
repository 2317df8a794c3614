"""The decode attention over the slot cache: PyTorch form against a direct computation, and the Triton
kernel against the PyTorch form under the Triton interpreter (CPU)."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from dsla_serve.kernels.attention import decode_attention_torch


def _direct(q, k_cache, v_cache, slots, lengths, scale):
    B, H, D = q.shape
    G = H // k_cache.shape[1]
    out = torch.empty_like(q)
    for b in range(B):
        for h in range(H):
            L = int(lengths[b])
            k = k_cache[slots[b], h // G, :L]
            v = v_cache[slots[b], h // G, :L]
            out[b, h] = torch.softmax(k @ q[b, h] * scale, dim=0) @ v
    return out


@pytest.mark.parametrize("H,Hk", [(4, 4), (4, 2), (8, 1)])
def test_torch_form_matches_direct(H, Hk):
    g = torch.Generator().manual_seed(H + Hk)
    P, L, D, B = 5, 33, 16, 3
    q = torch.randn(B, H, D, generator=g, dtype=torch.float64)
    k = torch.randn(P, Hk, L, D, generator=g, dtype=torch.float64)
    v = torch.randn(P, Hk, L, D, generator=g, dtype=torch.float64)
    k[:, :, 20:] = float("nan")  # never read: beyond every length below
    slots, lengths = torch.tensor([4, 0, 2]), torch.tensor([1, 20, 13])
    out = decode_attention_torch(q, k.nan_to_num(), v.nan_to_num(), slots, lengths, D**-0.5, L)
    torch.testing.assert_close(out, _direct(q, k, v, slots, lengths, D**-0.5))


def test_triton_kernel_matches_torch_form_in_interpreter():
    pytest.importorskip("triton")
    script = textwrap.dedent("""
        import torch
        import dsla_serve.kernels.attention.decode_triton as ta
        from dsla_serve.kernels.attention import decode_attention_torch
        ta._num_sms = lambda device: 4  # CPU tensors: pretend a 4-SM GPU (forces several splits)
        g = torch.Generator().manual_seed(0)
        cases = [(3, 4, 2, 16, 5, 70, torch.float32), (2, 4, 4, 32, 3, 33, torch.float32),
                 (1, 8, 1, 16, 2, 40, torch.float32), (2, 4, 2, 16, 3, 90, torch.float16),
                 (2, 4, 2, 80, 3, 50, torch.float32)]  # a head dim that is not a power of two
        for B, H, Hk, D, P, L, dtype in cases:  # (the interpreter's bf16 tl.dot is broken; fp16 stands in)
            q = torch.randn(B, H, D, generator=g).to(dtype)
            k, v = torch.randn(2, P, Hk, L + 1, D, generator=g).to(dtype)
            slots = torch.randperm(P, generator=g)[:B]
            lengths = torch.randint(1, L + 1, (B,), generator=g)
            ref = decode_attention_torch(q.double(), k.double(), v.double(), slots, lengths, D ** -0.5, L)
            out = ta.decode_attention_triton(q, k, v, slots, lengths, D ** -0.5, L)
            err = ((out.double() - ref).norm() / ref.norm()).item()
            assert err < (1e-5 if dtype == torch.float32 else 2e-3), (B, H, Hk, D, dtype, err)
        # short rows under a long static bound (a graph captured for max_model_len): each row's keys are
        # spread over the splits by its own length, and splits left without keys must not count
        B, H, Hk, D, P, L = 4, 4, 1, 16, 4, 300  # 4 splits on the pretend 4-SM GPU
        q = torch.randn(B, H, D, generator=g)
        k, v = torch.randn(2, P, Hk, L + 1, D, generator=g)
        slots, lengths = torch.tensor([3, 0, 1, 2]), torch.tensor([1, 64, 70, 300])
        ref = decode_attention_torch(q.double(), k.double(), v.double(), slots, lengths, D ** -0.5, L)
        out = ta.decode_attention_triton(q, k, v, slots, lengths, D ** -0.5, L)
        assert ((out.double() - ref).norm() / ref.norm()).item() < 1e-5
        print("ok")
    """)
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-3000:]

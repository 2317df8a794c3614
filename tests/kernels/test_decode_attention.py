"""The decode attention over the slot cache: PyTorch form against a direct computation, and the Triton
kernel against the PyTorch form under the Triton interpreter (CPU), at random shapes and on the decode
step of the reference model (SmolLM2-135M-Instruct)."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from dsla_serve.kernels.attention import decode_attention_torch


def _interpret(script: str) -> None:
    """Run `script` in a fresh interpreter with the Triton interpreter on; it prints "ok" when it passes."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-3000:]


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
    _interpret(script)


def test_triton_kernel_on_the_reference_models_decode_step(tmp_path, monkeypatch):
    """SmolLM2-135M-Instruct's own decode step: the query, KV cache, slots and lengths its first layer passes
    (recorded from the engine on the CPU: a chat prompt of about 200 tokens and one of about 20, a cache for
    1024), through the Triton kernel under the interpreter, under the eager step's bound (the longest row)
    and a CUDA graph's (max_model_len + 1), on a pretend GPU large enough that each row's keys are split by
    its own length, and on one so small that one split per (row, KV head) fills it and the kernel writes
    the output itself: all equal the PyTorch form."""
    pytest.importorskip("triton")
    import dsla_serve.replicas.runner as runner
    from dsla_serve.replicas import Engine, SamplingParams

    from ..reference import TRAIN_TEXT, chat_ids, load_reference

    model, tokenizer = load_reference()
    calls = []
    real = runner.decode_attention

    def recording(*args):
        if not calls:
            calls.append([a.clone() if torch.is_tensor(a) else a for a in args])
        return real(*args)

    monkeypatch.setattr(runner, "decode_attention", recording)
    long_text = TRAIN_TEXT.read_text()[:700]
    prompts = [chat_ids(tokenizer, [{"role": "user", "content": long_text}]), chat_ids(tokenizer)]
    engine = Engine(model, tokenizer=tokenizer, max_model_len=1024, max_num_seqs=2)
    engine.generate(prompts, SamplingParams(temperature=0, max_tokens=2, ignore_eos=True), use_tqdm=False)
    torch.save(calls[0], tmp_path / "call.pt")
    script = textwrap.dedent(f"""
        import torch
        import dsla_serve.kernels.attention.decode_triton as ta
        from dsla_serve.kernels.attention import decode_attention_torch
        q, k, v, slots, lengths, scale, max_len = torch.load({str(tmp_path / "call.pt")!r})
        assert q.shape[0] == 2 and k.shape[1] == 3 and q.shape[1] == 9 and k.shape[2] == 1025, (q.shape, k.shape)
        assert max_len == lengths.max() > 2 * 64 and lengths.min() < 64, lengths  # several key blocks; less than one
        ref = decode_attention_torch(q.double(), k.double(), v.double(), slots, lengths, scale, max_len)
        combines = []
        real_combine = ta._combine_kernel

        class Spy:
            def __getitem__(self, grid):
                combines.append(grid)
                return real_combine[grid]

        ta._combine_kernel = Spy()
        for bound in (max_len, k.shape[2]):
            for sms, split in ((16, True), (1, False)):  # 64 programs wanted for 6 (row, KV head) pairs; or 4
                ta._num_sms = lambda device, sms=sms: sms
                combines.clear()
                out = ta.decode_attention_triton(q, k, v, slots, lengths, scale, bound)
                assert bool(combines) == split, (bound, sms, combines)
                err = ((out.double() - ref).norm() / ref.norm()).item()
                assert err < 1e-5, (bound, sms, err)
        print("ok")
    """)
    _interpret(script)

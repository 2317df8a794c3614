"""Fused Triton kernels for the CUDA forward pass: each replaces a handful of small PyTorch kernels.

A decode step is one token per sequence, so outside the GEMMs every op is a tiny kernel and launch
overhead dominates (~50 kernels per layer in the plain form). These cut a softmax layer to ~14:

- `add_rmsnorm`: residual add + RMSNorm (the HF Llama/Mistral/Qwen2 norm) in one pass;
- `rope_kv_write`: rotary embedding of q and k, and the key/value write into the slot cache;
- `silu_mul`: the gated MLP's silu(gate) * up.

Each reproduces the rounding of the PyTorch ops it replaces (every intermediate that PyTorch rounds to
the activation dtype is rounded here too), so outputs match the Hugging Face modules bit for bit in
16-bit dtypes and to float32 rounding in float32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _add_rmsnorm_kernel(H, A, W, Hout, Y, stride_h, stride_a, stride_ho, stride_y, eps, n_cols,
                        HAS_ADD: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    h = tl.load(H + row * stride_h + cols, mask=mask, other=0.0)
    if HAS_ADD:
        a = tl.load(A + row * stride_a + cols, mask=mask, other=0.0)
        h = (h.to(tl.float32) + a.to(tl.float32)).to(H.dtype.element_ty)  # residual add, rounded
        tl.store(Hout + row * stride_ho + cols, h, mask=mask)
    x = h.to(tl.float32)
    var = tl.sum(x * x, axis=0) / n_cols
    normed = (x * (1.0 / tl.sqrt(var + eps))).to(H.dtype.element_ty).to(tl.float32)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + row * stride_y + cols, (w * normed).to(Y.dtype.element_ty), mask=mask)


def add_rmsnorm(h: torch.Tensor, a: torch.Tensor | None, weight: torch.Tensor, eps: float):
    """h, a: [N, hidden] -> (h + a, rmsnorm(h + a) * weight), both [N, hidden] in h's dtype.

    With a=None: (h, rmsnorm(h) * weight). Same function as HF's `LlamaRMSNorm` on the (rounded) sum.
    """
    N, C = h.shape
    y = torch.empty_like(h)
    out = torch.empty_like(h) if a is not None else h
    _add_rmsnorm_kernel[(N,)](h, a if a is not None else h, weight, out, y, h.stride(0),
                              (a if a is not None else h).stride(0), out.stride(0), y.stride(0), float(eps), C,
                              HAS_ADD=a is not None, BLOCK=triton.next_power_of_2(C), num_warps=8 if C >= 4096 else 4)
    return out, y


@triton.jit
def _rope_kv_kernel(Q, K, V, Cos, Sin, Kc, Vc, Slots, Pos,
                    stride_qn, stride_qh, stride_kn, stride_kh, stride_vn, stride_vh, stride_cn, stride_sn,
                    stride_cp, stride_ch, stride_cl, stride_vp, stride_vch, stride_vl,
                    H: tl.constexpr, D: tl.constexpr, HALF: tl.constexpr):
    n = tl.program_id(0)
    h = tl.program_id(1)  # 0..H-1: query heads; H..: key/value heads
    d = tl.arange(0, HALF)
    cos1 = tl.load(Cos + n * stride_cn + d).to(tl.float32)
    cos2 = tl.load(Cos + n * stride_cn + HALF + d).to(tl.float32)
    sin1 = tl.load(Sin + n * stride_sn + d).to(tl.float32)
    sin2 = tl.load(Sin + n * stride_sn + HALF + d).to(tl.float32)
    if h < H:
        base = Q + n * stride_qn + h * stride_qh
    else:
        base = K + n * stride_kn + (h - H) * stride_kh
    x1 = tl.load(base + d)
    x2 = tl.load(base + HALF + d)
    dt = x1.dtype
    x1f = x1.to(tl.float32)
    x2f = x2.to(tl.float32)
    # x * cos + rotate_half(x) * sin, rotate_half(x) = (-x2, x1); each product rounded as in PyTorch
    o1 = ((x1f * cos1).to(dt).to(tl.float32) + (-x2f * sin1).to(dt).to(tl.float32)).to(dt)
    o2 = ((x2f * cos2).to(dt).to(tl.float32) + (x1f * sin2).to(dt).to(tl.float32)).to(dt)
    if h < H:
        tl.store(base + d, o1)
        tl.store(base + HALF + d, o2)
    else:
        kvh = h - H
        slot = tl.load(Slots + n).to(tl.int64)
        pos = tl.load(Pos + n).to(tl.int64)
        kdst = Kc + slot * stride_cp + kvh * stride_ch + pos * stride_cl
        tl.store(kdst + d, o1.to(Kc.dtype.element_ty))
        tl.store(kdst + HALF + d, o2.to(Kc.dtype.element_ty))
        dd = tl.arange(0, D)
        v = tl.load(V + n * stride_vn + kvh * stride_vh + dd)
        tl.store(Vc + slot * stride_vp + kvh * stride_vch + pos * stride_vl + dd, v.to(Vc.dtype.element_ty))


def rope_kv_write(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                  k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor, positions: torch.Tensor) -> None:
    """Rotate q [N, H, D] in place; rotate k [N, Hk, D] and write it, and v [N, Hk, D], into the caches
    [P, Hk, L, D] at (slots[n], positions[n]). cos/sin: [N, D] (HF rotary_emb output, rotate-half form)."""
    N, H, D = q.shape
    Hk = k.shape[1]
    if D % 2 or (D & (D - 1)):
        raise ValueError(f"rope_kv_write needs a power-of-two head_dim, got {D}")
    for name, x in (("q", q), ("k", k), ("v", v), ("cos", cos), ("sin", sin)):
        if x.stride(-1) != 1:
            raise ValueError(f"rope_kv_write: {name} must be contiguous in its last dimension")
    _rope_kv_kernel[(N, H + Hk)](
        q, k, v, cos, sin, k_cache, v_cache, slots, positions,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), cos.stride(0), sin.stride(0),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), v_cache.stride(0), v_cache.stride(1),
        v_cache.stride(2), H=H, D=D, HALF=D // 2, num_warps=1)


@triton.jit
def _silu_mul_kernel(G, U, Out, n_cols, stride_g, stride_u, stride_o, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    g = tl.load(G + row * stride_g + cols, mask=mask, other=0.0)
    u = tl.load(U + row * stride_u + cols, mask=mask, other=0.0)
    gf = g.to(tl.float32)
    act = (gf / (1.0 + tl.exp(-gf))).to(g.dtype).to(tl.float32)  # silu, rounded as F.silu
    tl.store(Out + row * stride_o + cols, (act * u.to(tl.float32)).to(Out.dtype.element_ty), mask=mask)


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for [N, F] tensors (the Llama-family MLP's activation)."""
    N, F = gate.shape
    out = torch.empty_like(gate)
    BLOCK = 1024
    _silu_mul_kernel[(N, triton.cdiv(F, BLOCK))](gate, up, out, F, gate.stride(0), up.stride(0), out.stride(0),
                                                  BLOCK=BLOCK, num_warps=4)
    return out

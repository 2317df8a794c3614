"""`rope_kv_write`: rotary embedding of q and k, and the key/value write into the slot cache, in one launch."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rope_kv_kernel(Q, K, V, Cos, Sin, Kc, Vc, Slots, Pos,
                    stride_qn, stride_qh, stride_kn, stride_kh, stride_vn, stride_vh, stride_cn, stride_sn,
                    stride_cp, stride_ch, stride_cl, stride_vp, stride_vch, stride_vl,
                    H: tl.constexpr, D: tl.constexpr, HALF: tl.constexpr,
                    BLOCK_HALF: tl.constexpr, BLOCK_D: tl.constexpr):
    n = tl.program_id(0)
    h = tl.program_id(1)  # 0..H-1: query heads; H..: key/value heads
    d = tl.arange(0, BLOCK_HALF)  # padded to a power of two: any even head dim (80, 96, ...) runs
    m = d < HALF
    cos1 = tl.load(Cos + n * stride_cn + d, mask=m, other=0.0).to(tl.float32)
    cos2 = tl.load(Cos + n * stride_cn + HALF + d, mask=m, other=0.0).to(tl.float32)
    sin1 = tl.load(Sin + n * stride_sn + d, mask=m, other=0.0).to(tl.float32)
    sin2 = tl.load(Sin + n * stride_sn + HALF + d, mask=m, other=0.0).to(tl.float32)
    if h < H:
        base = Q + n * stride_qn + h * stride_qh
    else:
        base = K + n * stride_kn + (h - H) * stride_kh
    x1 = tl.load(base + d, mask=m, other=0.0)
    x2 = tl.load(base + HALF + d, mask=m, other=0.0)
    dt = x1.dtype
    x1f = x1.to(tl.float32)
    x2f = x2.to(tl.float32)
    # x * cos + rotate_half(x) * sin, rotate_half(x) = (-x2, x1); each product rounded as in PyTorch
    o1 = ((x1f * cos1).to(dt).to(tl.float32) + (-x2f * sin1).to(dt).to(tl.float32)).to(dt)
    o2 = ((x2f * cos2).to(dt).to(tl.float32) + (x1f * sin2).to(dt).to(tl.float32)).to(dt)
    if h < H:
        tl.store(base + d, o1, mask=m)
        tl.store(base + HALF + d, o2, mask=m)
    else:
        kvh = h - H
        slot = tl.load(Slots + n).to(tl.int64)
        pos = tl.load(Pos + n).to(tl.int64)
        kdst = Kc + slot * stride_cp + kvh * stride_ch + pos * stride_cl
        tl.store(kdst + d, o1.to(Kc.dtype.element_ty), mask=m)
        tl.store(kdst + HALF + d, o2.to(Kc.dtype.element_ty), mask=m)
        dd = tl.arange(0, BLOCK_D)
        md = dd < D
        v = tl.load(V + n * stride_vn + kvh * stride_vh + dd, mask=md)
        tl.store(Vc + slot * stride_vp + kvh * stride_vch + pos * stride_vl + dd, v.to(Vc.dtype.element_ty), mask=md)


def rope_kv_write(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                  k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor, positions: torch.Tensor) -> None:
    """Rotate q [N, H, D] in place; rotate k [N, Hk, D] and write it, and v [N, Hk, D], into the caches
    [P, Hk, L, D] at (slots[n], positions[n]). cos/sin: [N, D] (HF rotary_emb output, rotate-half form).
    D must be even (rotate-half pairs channel i with i + D/2)."""
    N, H, D = q.shape
    Hk = k.shape[1]
    if D % 2:
        raise ValueError(f"rope_kv_write needs an even head_dim, got {D}")
    for name, x in (("q", q), ("k", k), ("v", v), ("cos", cos), ("sin", sin)):
        if x.stride(-1) != 1:
            raise ValueError(f"rope_kv_write: {name} must be contiguous in its last dimension")
    _rope_kv_kernel[(N, H + Hk)](
        q, k, v, cos, sin, k_cache, v_cache, slots, positions,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), cos.stride(0), sin.stride(0),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), v_cache.stride(0), v_cache.stride(1),
        v_cache.stride(2), H=H, D=D, HALF=D // 2, BLOCK_HALF=triton.next_power_of_2(D // 2),
        BLOCK_D=triton.next_power_of_2(D), num_warps=1)

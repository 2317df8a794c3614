"""Triton split-K decode attention over a per-slot KV cache (flash-decoding).

Grid (B, Hk, S): program (b, kv head, split) handles the G = H / Hk query heads that share one key/value
head (so each key is read once per group, the group padded to 16 rows for tensor-core `tl.dot`) over
its share of row b's keys, with an online softmax, and writes a partial output and its log-sum-exp; a
second kernel combines the S partials. S is chosen from the static bound `max_len` so that the grid fills
the GPU, and each row's keys are divided among the S splits by its own length (read on the device), so a
short sequence under a graph captured for a long `max_len` still spreads over every split. Splits with
no keys exit at once. When one split per (row, kv head) already fills the GPU (large batches), the
kernel writes the output itself and the combine pass does not run. No host synchronisation: graph-safe.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_NUM_SMS: dict[int, int] = {}


@triton.jit
def _decode_split_kernel(Q, K, Vc, Slots, Lens, Opart, LSEpart,
                         stride_qb, stride_qh, stride_kp, stride_kh, stride_kl, stride_vp, stride_vh, stride_vl,
                         stride_ob, stride_oh, stride_os, stride_lb, stride_lh,
                         scale, splits,
                         G: tl.constexpr, BLOCK_G: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr,
                         BLOCK_N: tl.constexpr, PRECISION: tl.constexpr, DIRECT: tl.constexpr):
    """DIRECT (one split): Opart is the output [B, H, D] (stride_os unused) and no log-sum-exp is written."""
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    sp = tl.program_id(2)
    slot = tl.load(Slots + b).to(tl.int64)
    length = tl.load(Lens + b).to(tl.int32)
    split_len = tl.cdiv(tl.cdiv(length, BLOCK_N), splits) * BLOCK_N  # whole key blocks per split
    start = sp * split_len
    end = tl.minimum(start + split_len, length)

    g = tl.arange(0, BLOCK_G)
    d = tl.arange(0, BLOCK_D)
    gmask = g < G
    dmask = d < D
    heads = kvh * G + g
    q = tl.load(Q + b * stride_qb + heads[:, None] * stride_qh + d[None, :],
                mask=gmask[:, None] & dmask[None, :], other=0.0)
    q = (q.to(tl.float32) * scale).to(K.dtype.element_ty)  # [G, D], the group's queries (padded to 16)

    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    k_base = K + slot * stride_kp + kvh * stride_kh
    v_base = Vc + slot * stride_vp + kvh * stride_vh
    for n0 in range(start, end, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        nmask = n < end
        kv_mask = nmask[:, None] & dmask[None, :]
        k = tl.load(k_base + n[:, None] * stride_kl + d[None, :], mask=kv_mask, other=0.0)  # [N, D]
        v = tl.load(v_base + n[:, None] * stride_vl + d[None, :], mask=kv_mask, other=0.0)  # [N, D], issued with k
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION)  # [G, N] fp32
        s = tl.where(nmask[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new

    has = l_i > 0.0
    safe_l = tl.where(has, l_i, 1.0)
    o = acc / safe_l[:, None]
    omask = gmask[:, None] & dmask[None, :]
    if DIRECT:
        tl.store(Opart + b * stride_ob + heads[:, None] * stride_oh + d[None, :], o.to(Opart.dtype.element_ty),
                 mask=omask)
    else:
        lse = tl.where(has, m_i + tl.log(safe_l), float("-inf"))
        tl.store(Opart + b * stride_ob + heads[:, None] * stride_oh + sp * stride_os + d[None, :], o, mask=omask)
        tl.store(LSEpart + b * stride_lb + heads * stride_lh + sp, lse, mask=gmask)


@triton.jit
def _combine_kernel(Opart, LSEpart, Out, splits, stride_ob, stride_oh, stride_os, stride_lb, stride_lh,
                    stride_b, stride_h, D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr):
    """out[b, h] = sum_s exp(lse_s - max) o_s / sum_s exp(lse_s - max)."""
    b = tl.program_id(0)
    h = tl.program_id(1)
    s = tl.arange(0, BLOCK_S)
    d = tl.arange(0, BLOCK_D)
    smask = s < splits
    lse = tl.load(LSEpart + b * stride_lb + h * stride_lh + s, mask=smask, other=float("-inf"))
    w = tl.exp(lse - tl.max(lse, axis=0))
    o = tl.load(Opart + b * stride_ob + h * stride_oh + s[:, None] * stride_os + d[None, :],
                mask=smask[:, None] & (d[None, :] < D), other=0.0)
    out = tl.sum(o * w[:, None], axis=0) / tl.sum(w, axis=0)
    tl.store(Out + b * stride_b + h * stride_h + d, out.to(Out.dtype.element_ty), mask=d < D)


def _num_sms(device: torch.device) -> int:
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _NUM_SMS:
        _NUM_SMS[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _NUM_SMS[idx]


def decode_attention_triton(q, k_cache, v_cache, slots, lengths, scale, max_len):
    """Same contract as `decode_attention.decode_attention` (CUDA tensors)."""
    B, H, D = q.shape
    Hk = k_cache.shape[1]
    G = H // Hk
    if k_cache.stride(3) != 1 or v_cache.stride(3) != 1:
        raise ValueError("decode_attention: the cache's last dimension must be contiguous")
    q = q.contiguous()
    BLOCK_G = max(16, triton.next_power_of_2(G))  # tl.dot needs >= 16 rows; padding rows cost no bandwidth
    BLOCK_D = max(16, triton.next_power_of_2(D))
    BLOCK_N = 64
    max_len = max(1, min(int(max_len), k_cache.shape[2]))
    blocks = triton.cdiv(max_len, BLOCK_N)
    target = 4 * _num_sms(q.device)
    splits = max(1, min(blocks, triton.cdiv(target, B * Hk)))
    out = torch.empty(B, H, D, device=q.device, dtype=q.dtype)
    direct = splits == 1  # the grid fills the GPU without splitting: write the output, no combine pass
    o_part = out if direct else torch.empty(B, H, splits, D, device=q.device, dtype=torch.float32)
    lse_part = out if direct else torch.empty(B, H, splits, device=q.device, dtype=torch.float32)
    precision = "ieee" if k_cache.dtype == torch.float32 else "tf32"  # ignored for 16-bit inputs
    _decode_split_kernel[(B, Hk, splits)](
        q, k_cache, v_cache, slots, lengths, o_part, lse_part,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        o_part.stride(0), o_part.stride(1), 0 if direct else o_part.stride(2), lse_part.stride(0),
        lse_part.stride(1), float(scale), splits,
        G=G, BLOCK_G=BLOCK_G, D=D, BLOCK_D=BLOCK_D, BLOCK_N=BLOCK_N, PRECISION=precision, DIRECT=direct,
        num_warps=4, num_stages=3)
    if not direct:
        _combine_kernel[(B, H)](o_part, lse_part, out, splits, o_part.stride(0), o_part.stride(1), o_part.stride(2),
                                lse_part.stride(0), lse_part.stride(1), out.stride(0), out.stride(1),
                                D=D, BLOCK_D=BLOCK_D, BLOCK_S=max(2, triton.next_power_of_2(splits)), num_warps=4)
    return out

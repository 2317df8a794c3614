"""Argument checks of the Triton DSLA ops: shapes, dtypes and devices only.

Unlike the PyTorch path these never read tensor values (no host synchronisation), so they are safe
inside CUDA-graph capture and cost nothing per decode step. That g1, g2 <= 0 is the caller's contract.
"""

from __future__ import annotations

import torch

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def check_tensors(op: str, q, k, v, g1, g2, mix) -> tuple[int, int, int, int, int, int]:
    """Validate q, g1, g2 [B, T, H, K], k [B, T, HK, K], v [B, T, HK, V], mix [2] or [H, 2].

    Returns (B, T, H, HK, K, V); raises ValueError/TypeError naming the offending argument.
    """
    for name, x in (("q", q), ("k", k), ("v", v), ("g1", g1), ("g2", g2)):
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError(f"{op}: {name} must be a 4-D tensor [B, T, heads, dim], got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        if x.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"{op}: {name} is {x.dtype}; the Triton kernels take float16, bfloat16 or "
                            f"float32 (use the PyTorch backend for other dtypes)")
        if x.device != q.device:
            raise ValueError(f"{op}: {name} is on {x.device} but q is on {q.device}")
    B, T, H, K = q.shape
    HK, V = k.shape[2], v.shape[3]
    if g1.shape != q.shape or g2.shape != q.shape:
        raise ValueError(f"{op}: g1 and g2 must have q's shape {tuple(q.shape)}, got "
                         f"{tuple(g1.shape)} and {tuple(g2.shape)}")
    if k.shape[:2] != (B, T) or k.shape[3] != K:
        raise ValueError(f"{op}: k must be [B={B}, T={T}, HK, K={K}], got {tuple(k.shape)}")
    if v.shape[:3] != (B, T, HK):
        raise ValueError(f"{op}: v must be [B={B}, T={T}, HK={HK}, V], got {tuple(v.shape)}")
    if HK == 0 or H % HK:
        raise ValueError(f"{op}: query heads ({H}) must be a multiple of key/value heads ({HK})")
    if K > 256:
        raise ValueError(f"{op}: head dim K={K} is above the kernels' limit of 256")
    if not isinstance(mix, torch.Tensor) or tuple(mix.shape) not in ((2,), (H, 2)):
        raise ValueError(f"{op}: mix must be a tensor [2] or [H={H}, 2], got "
                         f"{tuple(mix.shape) if isinstance(mix, torch.Tensor) else type(mix).__name__}")
    return B, T, H, HK, K, V


def check_states(op: str, name: str, states, rows: int | None, H: int, K: int, V: int) -> None:
    """A pair of fp32 [rows, H, K, V] states (rows None: any number of pool rows)."""
    if not isinstance(states, (tuple, list)) or len(states) != 2:
        raise ValueError(f"{op}: {name} must be a pair (s1, s2), got {type(states).__name__}")
    for i, s in enumerate(states):
        want = (rows if rows is not None else (s.shape[0] if isinstance(s, torch.Tensor) and s.dim() == 4 else -1),
                H, K, V)
        if not isinstance(s, torch.Tensor) or tuple(s.shape) != want:
            raise ValueError(f"{op}: {name}[{i}] must be [{'N' if rows is not None else 'P'}={want[0]}, "
                             f"H={H}, K={K}, V={V}], got "
                             f"{tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__}")
        if s.dtype != torch.float32:
            raise TypeError(f"{op}: {name}[{i}] must be float32, got {s.dtype}")


def mix_table(mix: torch.Tensor, H: int) -> torch.Tensor:
    """mix [2] or [H, 2] -> contiguous fp32 [H, 2] (no host synchronisation)."""
    m = mix.to(torch.float32)
    return (m if m.dim() == 2 else m.view(1, 2).expand(H, 2)).contiguous()

"""Gate logits to log-decays, g = logsigmoid(x) / tau (docs/design.md), in PyTorch.

Every DSLA op takes `gate_logit_normalizer`: None when g1/g2 are log-decays, tau when they are the gate
logits x. The Triton kernels compute the log-decay at their loads (in fp32); the PyTorch forms call
`log_decay` first, so autograd carries the gradient to x.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .inputs import accumulation_dtype


def log_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """logsigmoid(x), computed as -softplus(-x) (stable for any x; past |x| = 40 the dropped
    log1p(exp(-|x|)) is below float64 resolution).

    Same function as F.logsigmoid, whose multi-threaded CPU kernel (torch 2.13) was measured to take
    ~12 ms on a 256-element tensor with 2 threads on a busy machine, a thousand times softplus.
    """
    return -F.softplus(-x, threshold=40.0)


def log_decay(x: torch.Tensor, normalizer: float) -> torch.Tensor:
    """Gate logits x -> log-decays logsigmoid(x) / normalizer in fp32 (fp64 for fp64 logits)."""
    return log_sigmoid(x.to(accumulation_dtype(x.dtype))) / normalizer


def log_decays(g1: torch.Tensor, g2: torch.Tensor, normalizer: float | None):
    """(g1, g2) as log-decays: unchanged when normalizer is None, else `log_decay` of each."""
    if normalizer is None:
        return g1, g2
    return log_decay(g1, normalizer), log_decay(g2, normalizer)

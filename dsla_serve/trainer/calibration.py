"""Set a new DSLA layer's output gain from one batch before it is fitted.

A converted layer has no normaliser: its states sum hundreds of k^T v where the softmax attention it
replaces takes a weighted average, so its output starts hundreds of times too large (a relative MSE of
~10^5 on the reference teacher) and the first optimiser steps are spent shrinking it. One
least-squares gain g = <y_teacher, y_dsla> / <y_dsla, y_dsla> over a batch (the softmax attention's
and the DSLA twin's outputs on the same layer input) puts it on the right scale at once; the gain
lives in the twin's `output_scale` (one per head, all set to g, then trained like the other gates).
"""

from __future__ import annotations

import torch

from dsla_serve.model import dsla_layers

from .losses import LayerOutputCapture


@torch.no_grad()
def calibrate_output_scale(model: torch.nn.Module, layer_idx: int, input_ids: torch.Tensor) -> float:
    """Scale the twin of `layer_idx` (active at the model's current depth) by the least-squares gain
    measured on input_ids [B, T] int64; returns the gain applied.

    Every process of a data-parallel run must pass the same input_ids (the gain is not all-reduced).
    Falls back to the ratio of norms when the outputs are anti-correlated (a negative gain would flip
    the layer).
    """
    twin = dsla_layers(model)[layer_idx]
    if not twin.active:
        raise ValueError(f"layer {layer_idx} is not active at the model's depth; set the depth first")
    with LayerOutputCapture(model, layer_idx) as capture:
        model(input_ids=input_ids.to(twin.output_scale.device), use_cache=False)
        student, teacher = capture.student.float(), capture.teacher.float()
    energy = (student * student).sum()
    if not torch.isfinite(energy) or energy == 0:
        return 1.0
    gain = float((teacher * student).sum() / energy)
    if gain <= 0:
        gain = float((teacher.norm() / energy.sqrt()))
    twin.output_scale.mul_(gain)
    return gain

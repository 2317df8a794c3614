"""Resumable training state of the teacher: weights, optimizer, step and the curve so far.

    <out>/checkpoint/model.safetensors   fp32 weights (tied embeddings handled by safetensors' save_model)
    <out>/checkpoint/optimizer.pt        AdamW state (tensors and numbers only: loaded with weights_only)
    <out>/checkpoint/state.json          {"step", "elapsed_s", "log"}

A checkpoint is written into a temporary folder and renamed into place, so a crash never leaves a
half-written one; a rerun of the same command finds it and continues at `step`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model


def checkpoint_dir(out: Path) -> Path:
    return Path(out) / "checkpoint"


def save_checkpoint(out: Path, model, optimizer, state: dict) -> Path:
    final = checkpoint_dir(out)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / "model.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps(state))
    old = final.with_name(final.name + ".old")
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(out: Path, model, optimizer) -> dict | None:
    """Restore model and optimizer from `<out>/checkpoint`; returns its state dict, or None if there is none."""
    ckpt = checkpoint_dir(out)
    if not (ckpt / "state.json").is_file():
        return None
    device = next(model.parameters()).device
    missing, unexpected = load_model(model, str(ckpt / "model.safetensors"), device=str(device))
    if missing or unexpected:
        raise ValueError(f"{ckpt} does not match the model being trained (missing {missing}, unexpected "
                         f"{unexpected}); delete it or use the settings it was made with")
    optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", map_location=device, weights_only=True))
    return json.loads((ckpt / "state.json").read_text())


def remove_checkpoint(out: Path) -> None:
    shutil.rmtree(checkpoint_dir(out), ignore_errors=True)

"""Models to evaluate: a base model, optionally with a DSLA artifact applied, at chosen depths."""

from __future__ import annotations

import re

import torch

_FRACTION = re.compile(r"^(\d*)L(?:/(\d+))?$")


def parse_depths(text: str, max_depth: int) -> list[int]:
    """Depths from a comma list of ints and/or fractions of the artifact depth L: "0,2,4", "L/4,L/2,3L/4,L",
    or "all" (0..L). Returns sorted unique depths; raises ValueError naming a bad item or an unavailable depth."""
    text = text.strip()
    if text == "all":
        return list(range(max_depth + 1))
    depths = set()
    for item in (x.strip() for x in text.split(",") if x.strip()):
        m = _FRACTION.match(item)
        if item.isdigit():
            d = int(item)
        elif m:
            num, den = int(m.group(1) or 1), int(m.group(2) or 1)
            d = round(num * max_depth / den)
        else:
            raise ValueError(f"bad depth {item!r}: use integers, L-fractions like L/2 or 3L/4, or 'all'")
        if not 0 <= d <= max_depth:
            raise ValueError(f"depth {item!r} = {d} is not available: the artifact serves depths 0..{max_depth}")
        depths.add(d)
    if not depths:
        raise ValueError("no depth given")
    return sorted(depths)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> str:
    """"auto" = bfloat16 on CUDA, float32 on the CPU (bf16 matmuls are slow there)."""
    if dtype == "auto":
        return "bfloat16" if device.type == "cuda" else "float32"
    return dtype


def load_for_eval(spec: str, artifact: str | None = None, dtype: str = "auto", device: str = "auto"):
    """-> (model, tokenizer, order): `spec` loaded (local folder, hub id or tiny:<arch>), in eval mode,
    with every published layer of `artifact` applied (order = the artifact's published order, [] without).
    Switch depths afterwards with `dsla_serve.model.set_depth`."""
    from ..model.loading import load_model_and_tokenizer

    dev = resolve_device(device)
    model, tokenizer = load_model_and_tokenizer(spec, dtype=resolve_dtype(dtype, dev), device=dev)
    order: list[int] = []
    if artifact is not None:
        from ..model import Artifact

        art = Artifact.open(artifact)
        art.apply(model, art.depth)
        order = art.order[:art.depth]
    return model.eval(), tokenizer, order

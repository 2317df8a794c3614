"""Seeds of a conversion run: one per (base seed, layer, purpose), so reruns repeat layers exactly."""

from __future__ import annotations

import hashlib


def layer_seed(base_seed: int, layer_idx: int, purpose: str = "train") -> int:
    """A seed for one layer's work that depends only on the base seed, the layer and the purpose.

    Never on how many layers this process already ran, so a resumed run repeats a layer exactly.
    `purpose` separates streams: "train" (the layer's initialisation and batches), "probe"
    (`loss_delta` sensitivity probes).
    """
    digest = hashlib.sha256(f"dsla-serve/{purpose}/{base_seed}/{layer_idx}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**62)

"""What the artifact offers now: published depths and the quality measured at each.

Read from the artifact's manifest every controller interval, so layers published by the background
trainer (or by a `dsla-serve convert` running elsewhere on the same directory) are seen without any
restart.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from ..policies import DepthQuality

MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class ArtifactView:
    """The artifact as last read: depth quality for `decide` and per-depth rows for the status page.

    depths: one row per published depth: {"depth", "layer", "ppl_ratio", plus the other metrics}.
    error: why the manifest could not be read (None when it could, or when there is none yet).
    """

    path: str | None
    quality: DepthQuality = DepthQuality()
    depths: list[dict] = field(default_factory=list)
    planned_depth: int = 0
    error: str | None = None
    mtime: float | None = None


def read_artifact(path: str | None, previous: ArtifactView | None = None) -> ArtifactView:
    """The artifact at `path` (no manifest yet: depth 0). Re-parses only when the manifest changed."""
    if path is None:
        return ArtifactView(None)
    manifest = os.path.join(path, MANIFEST_NAME)
    try:
        mtime = os.stat(manifest).st_mtime
    except FileNotFoundError:
        return ArtifactView(path)
    if previous is not None and previous.path == path and previous.mtime == mtime and previous.error is None:
        return previous
    from ..model import Artifact, ArtifactError

    try:
        artifact = Artifact.open(path)
    except ArtifactError as e:
        # keep serving what was known: a manifest caught mid-replace or corrupt must not lower the floor
        # below what replicas already loaded, nor raise it
        kept = previous.quality if previous is not None else DepthQuality()
        kept_depths = previous.depths if previous is not None else []
        return ArtifactView(path, kept, kept_depths, previous.planned_depth if previous else 0, str(e), None)
    ratios, rows = [], []
    for entry in artifact.entries:
        ratio = entry.metrics.get("ppl_ratio")
        ratio = float(ratio) if isinstance(ratio, (int, float)) and math.isfinite(ratio) else None
        ratios.append(ratio)
        rows.append({"depth": entry.rank + 1, "layer": entry.layer, "ppl_ratio": ratio,
                     **{k: v for k, v in entry.metrics.items() if k != "ppl_ratio" and _plain(v)}})
    return ArtifactView(path, DepthQuality.from_ratios(ratios), rows, len(artifact.order), None, mtime)


def _plain(value) -> bool:
    return isinstance(value, (int, float, str, bool)) or value is None

"""What the artifact offers now: its published depths and the quality measured at each.

Read from the artifact's manifest (`model/manifest.py`, no torch) every controller interval, so layers
published by the background trainer (or by a `dsla-serve convert` running elsewhere on the same
directory or URI) are seen without any restart; the manifest is parsed again only when it changed (its
file's change time, an object's ETag). The policy actor calls this in a worker thread: an object store
that does not answer delays the view, never the actor's event loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...model.manifest import ArtifactError, LayerEntry, manifest_stamp, read_manifest
from ...policies import DepthQuality


@dataclass(frozen=True)
class ArtifactView:
    """The artifact as last read: depth quality for `decide`, and its published layers (entry of rank r:
    depth r + 1, with the metrics measured then). error: why the manifest could not be read (None when
    it could, or when there is none yet). stamp: the manifest's `manifest_stamp` when it was read."""

    path: str | None
    quality: DepthQuality = DepthQuality()
    layers: tuple[LayerEntry, ...] = ()
    planned_depth: int = 0
    error: str | None = None
    stamp: Any = None


def read_artifact(path: str | None, previous: ArtifactView | None = None) -> ArtifactView:
    """The artifact at `path` (no manifest yet: depth 0). Re-parses only when the manifest changed."""
    if path is None:
        return ArtifactView(None)
    try:
        stamp = manifest_stamp(path)
        if stamp is None:
            return ArtifactView(path)
        if previous is not None and previous.path == path and previous.stamp == stamp and previous.error is None:
            return previous
        manifest = read_manifest(path)
    except ArtifactError as e:  # also ArtifactUnavailable: a store that does not answer
        # keep serving what was known: a manifest caught mid-replace or corrupt must not lower the floor
        # below what replicas already loaded, nor raise it
        if previous is None:
            return ArtifactView(path, error=str(e))
        return ArtifactView(path, previous.quality, previous.layers, previous.planned_depth, str(e), None)
    return ArtifactView(path, DepthQuality.from_manifest(manifest), manifest.layers, len(manifest.order), None,
                        stamp)

"""The quality floor: the deepest conversion depth the policy lets anyone be served at."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..model.manifest import Manifest, has_manifest, read_manifest
from .schema import Policy

__all__ = ["DepthQuality", "quality_floor", "explain_floor"]


@dataclass(frozen=True)
class DepthQuality:
    """What the artifact offers: depths 0..available_depth, with the quality measured at each.

    available_depth: number of published DSLA layers (depth d needs the first d layers of the order).
    ppl_ratio: depth -> validation perplexity of the depth-d model / perplexity of the base model,
        as measured when that layer was published. Depth 0 is the base model (ratio 1 by definition).
    """

    available_depth: int = 0
    ppl_ratio: Mapping[int, float] = field(default_factory=dict)

    def __post_init__(self):
        if self.available_depth < 0:
            raise ValueError(f"available_depth must be >= 0, got {self.available_depth}")

    @classmethod
    def from_ratios(cls, ratios: Sequence[float | None]) -> DepthQuality:
        """From the ratios of depths 1, 2, ... in order (one per published layer; None = not measured)."""
        return cls(available_depth=len(ratios),
                   ppl_ratio={d + 1: r for d, r in enumerate(ratios) if r is not None})

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> DepthQuality:
        """From an artifact's manifest: the entry of rank r publishes depth r + 1, with the ratio measured then."""
        return cls.from_ratios([entry.ppl_ratio for entry in manifest.layers])

    @classmethod
    def from_artifact_dir(cls, path: str | os.PathLike) -> DepthQuality:
        """From the manifest in `path`; nothing published (depth 0 only) when there is none yet.
        Raises ArtifactError (a ValueError) for an unreadable or malformed manifest."""
        if not has_manifest(path):
            return cls()
        return cls.from_manifest(read_manifest(path))


def explain_floor(policy: Policy, depth_quality: DepthQuality | None) -> tuple[int, str]:
    """(floor, why it is not deeper), e.g. (2, "depth 3 ppl ratio 1.31 > max_ppl_ratio 1.25").

    The floor is the deepest depth d such that every depth 1..d is published, within quality.max_depth,
    and (when max_ppl_ratio is set) measured with a ratio <= max_ppl_ratio. Scanning stops at the first
    failure, so every depth from 0 to the floor has passed, not just the floor itself.
    A policy without a quality section allows only depth 0.
    """
    quality = policy.quality
    if quality is None:
        return 0, "no quality section: depth 0 only"
    available = depth_quality.available_depth if depth_quality is not None else 0
    ratios = depth_quality.ppl_ratio if depth_quality is not None else {}
    floor = 0
    while True:
        depth = floor + 1
        if quality.max_depth is not None and depth > quality.max_depth:
            return floor, f"quality.max_depth is {quality.max_depth}"
        if depth > available:
            return floor, f"{available} layer{'s' if available != 1 else ''} published"
        if quality.max_ppl_ratio is not None:
            ratio = ratios.get(depth)
            if ratio is None or not math.isfinite(ratio):
                return floor, f"depth {depth} quality not measured"
            if ratio > quality.max_ppl_ratio:
                return floor, f"depth {depth} ppl ratio {ratio:.3f} > max_ppl_ratio {quality.max_ppl_ratio}"
        floor = depth


def quality_floor(policy: Policy, depth_quality: DepthQuality | None) -> int:
    """The deepest depth the policy allows given what is published and measured (see `explain_floor`)."""
    return explain_floor(policy, depth_quality)[0]

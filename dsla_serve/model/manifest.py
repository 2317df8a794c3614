"""An artifact's manifest and files, read and written here only (no torch: policies and the controller use it).

    artifact/                    a local directory, or an object store URI (s3://bucket/run, gs://...)
      manifest.json              format, manifest_version, base model (id, fingerprint, num_layers),
                                 DSLA config, layer_kind, the planned conversion order, metadata, and
                                 one `LayerEntry` per published layer: {layer, rank, file, sha256, untied, metrics}
      layer_<index>.safetensors  that layer's parameters (written and loaded by `artifact.Artifact`)
      served-prompts.jsonl       with a serving policy's `trainer.serve_prompts_sample`: prompts the
                                 ingress served, which the background trainer also trains on (local only)

    manifest = read_manifest(location)        # ArtifactError if missing or malformed
    manifest.layers[r].depth, .ppl_ratio      # publishing the entry of rank r makes depth r + 1 available
    data = read_layer_bytes(location, entry)  # checked against entry.sha256

The functions below are the only ones that touch the artifact's files (`manifest_stamp`, `has_manifest`,
`location_names`, `read_manifest`, `write_manifest`, `read_layer_bytes`, `fetch_layer`,
`write_layer_bytes`); they reach them through `storage.open_store`, so a location is a local directory
or an object store URI alike. Every write is whole or nothing (a local temporary file renamed; an object
PUT), and a layer's file is written before the manifest that names it. Layers read from a remote store
are kept in the node-local `layer_cache`. A store that cannot be reached raises `ArtifactUnavailable`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from . import layer_cache
from .config import DSLAConfig
from .storage import ArtifactStore, StorageError, open_store

MANIFEST_FILE = "manifest.json"
SERVED_PROMPTS_FILE = "served-prompts.jsonl"
MANIFEST_FORMAT = "dsla-serve-artifact"
MANIFEST_VERSION = 2
# Version 1 fingerprinted the base model at float32 sample points, which differ between hosts and fail
# above 2^24 elements: its artifacts cannot be checked, so they are refused with this reason.
_OLD_VERSIONS = {1: "version 1 artifacts identify their base model in a host-dependent way; convert again"}
_LAYER_FILE = re.compile(r"layer_(\d+)\.safetensors")

__all__ = ["ArtifactError", "ArtifactUnavailable", "BaseModelInfo", "LayerEntry", "Manifest", "MANIFEST_FILE",
           "MANIFEST_FORMAT", "MANIFEST_VERSION", "artifact_file", "fetch_layer", "has_manifest", "layer_file_name",
           "location_names", "manifest_stamp", "read_layer_bytes", "read_manifest", "served_prompts_path",
           "write_layer_bytes", "write_manifest"]


class ArtifactError(ValueError):
    """An artifact cannot be created, read or applied; the message names the file and the problem."""


class ArtifactUnavailable(ArtifactError):
    """The artifact's store failed (unreachable, timed out, refused access): the artifact itself may be
    intact, and nothing was half-written. `retryable`: False when trying again cannot help (access denied)."""

    def __init__(self, message: str, *, retryable: bool = True):
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True)
class LayerEntry:
    """A published layer: decoder layer `layer`, at position `rank` of the order, stored in `file`.

    The quality measured at depth `rank + 1` is in `metrics` (`ppl_ratio`: validation perplexity of
    that depth / the base model's, as the trainer measured it when it published the layer).
    """

    layer: int
    rank: int
    file: str
    sha256: str
    untied: bool = False
    metrics: dict = field(default_factory=dict)

    @property
    def depth(self) -> int:
        """The depth this layer completes."""
        return self.rank + 1

    @property
    def ppl_ratio(self) -> float | None:
        """`metrics["ppl_ratio"]` when it is a finite number, else None (not measured)."""
        value = self.metrics.get("ppl_ratio")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return None
        return float(value)


@dataclass(frozen=True)
class BaseModelInfo:
    """The model an artifact was made for; `fingerprint` identifies its weights (`model.fingerprint`)."""

    id: str
    fingerprint: str
    num_layers: int
    model_type: str | None = None


@dataclass(frozen=True)
class Manifest:
    """The parsed manifest.json (version `MANIFEST_VERSION`). `layer_kind` is checked by `Artifact`
    (the kinds are layer classes, which need torch)."""

    base_model: BaseModelInfo
    dsla_config: DSLAConfig
    layer_kind: str
    order: tuple[int, ...]
    layers: tuple[LayerEntry, ...]
    metadata: dict
    created_at: str
    updated_at: str

    @property
    def depth(self) -> int:
        """Number of published layers: the deepest depth the artifact serves."""
        return len(self.layers)

    def with_layer(self, entry: LayerEntry, updated_at: str) -> Manifest:
        return replace(self, layers=self.layers + (entry,), updated_at=updated_at)

    def to_json_bytes(self, where: Path | str) -> bytes:
        raw = {"format": MANIFEST_FORMAT, "manifest_version": MANIFEST_VERSION, "base_model": asdict(self.base_model),
               "dsla_config": self.dsla_config.to_dict(), "layer_kind": self.layer_kind, "order": list(self.order),
               "layers": [asdict(e) for e in self.layers], "metadata": self.metadata,
               "created_at": self.created_at, "updated_at": self.updated_at}
        return json_bytes(raw, "the manifest (metadata and metrics)", where)

    @classmethod
    def from_json(cls, raw, where: Path | str) -> Manifest:
        """Check the parsed JSON of a manifest; ArtifactError naming `where` and the problem."""
        if not isinstance(raw, dict) or raw.get("format") != MANIFEST_FORMAT:
            raise ArtifactError(f"{where}: not a DSLA-Serve manifest (format must be {MANIFEST_FORMAT!r})")
        version = raw.get("manifest_version")
        if version != MANIFEST_VERSION:
            why = _OLD_VERSIONS.get(version, "unknown version")
            raise ArtifactError(f"{where}: manifest version {version!r} cannot be read ({why}); this dsla-serve "
                                f"reads version {MANIFEST_VERSION}")
        try:
            base = BaseModelInfo(id=str(raw["base_model"]["id"]), fingerprint=str(raw["base_model"]["fingerprint"]),
                                 num_layers=int(raw["base_model"]["num_layers"]),
                                 model_type=raw["base_model"].get("model_type"))
            config = DSLAConfig.from_dict(raw["dsla_config"])
            order = tuple(validate_order(raw["order"], base.num_layers, where))
            layers = tuple(LayerEntry(**e) for e in raw["layers"])
            manifest = cls(base_model=base, dsla_config=config, layer_kind=str(raw.get("layer_kind", "dsla")),
                           order=order, layers=layers, metadata=dict(raw.get("metadata") or {}),
                           created_at=str(raw.get("created_at", "")), updated_at=str(raw.get("updated_at", "")))
        except ArtifactError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise ArtifactError(f"{where}: malformed manifest: {type(e).__name__}: {e}") from None
        for rank, e in enumerate(layers):
            if rank >= len(order) or e.layer != order[rank] or e.rank != rank:
                raise ArtifactError(f"{where}: entry {rank} (layer {e.layer}, rank {e.rank}) does not follow the "
                                    f"order {list(order)}")
            if e.file != layer_file_name(e.layer):
                raise ArtifactError(f"{where}: entry for layer {e.layer} names file {e.file!r}; expected "
                                    f"{layer_file_name(e.layer)!r}")
        return manifest


def layer_file_name(layer: int) -> str:
    return f"layer_{layer}.safetensors"


def validate_order(order, num_layers: int, where: Path | str) -> list[int]:
    """`order` as a list of distinct layer indices in 0..num_layers-1; ArtifactError otherwise."""
    order = list(order)
    bad = [i for i in order if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < num_layers]
    if bad:
        raise ArtifactError(f"{where}: order {order} has indices outside 0..{num_layers - 1}: {bad}")
    if len(set(order)) != len(order):
        raise ArtifactError(f"{where}: order {order} repeats layer indices")
    return order


def json_bytes(obj, what: str, where: Path | str) -> bytes:
    try:
        return (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode()
    except (TypeError, ValueError) as e:
        raise ArtifactError(f"{where}: {what} must be JSON-serialisable finite values: {e}") from None


# ------------------------------------------------------------------------------------------------
# the location: the only functions that read or write it
# ------------------------------------------------------------------------------------------------
Location = str | os.PathLike  # a local directory, or an object store URI (storage.py)


def artifact_file(location: Location, name: str) -> Path | str:
    """A file of the artifact as messages name it: a path, or the URI with any secret masked."""
    return _store(location).where(name)


def manifest_path(location: Location) -> Path | str:
    return artifact_file(location, MANIFEST_FILE)


def served_prompts_path(directory: str | os.PathLike) -> Path:
    """Where the ingress writes its sample of served prompts (`trainer.serve_prompts_sample`); a local
    directory only (a policy refuses the sample with a remote artifact)."""
    return Path(directory) / SERVED_PROMPTS_FILE


def _unavailable(store: ArtifactStore, e: StorageError) -> ArtifactUnavailable:
    return ArtifactUnavailable(str(e) if store.display in str(e) else f"{store.display}: {e}", retryable=e.retryable)


def _store(location: Location) -> ArtifactStore:
    try:
        return open_store(location)
    except StorageError as e:
        raise ArtifactError(str(e)) from None


def has_manifest(location: Location) -> bool:
    """Whether the location holds a manifest (ArtifactUnavailable when the store cannot be asked)."""
    return manifest_stamp(location) is not None


def manifest_stamp(location: Location):
    """Something that changes whenever the manifest does (None: there is none yet), to re-read it only after
    a change: the file's change time and size, or an object's ETag / generation."""
    store = _store(location)
    try:
        return store.stamp(MANIFEST_FILE)
    except StorageError as e:
        raise _unavailable(store, e) from None


def location_names(location: Location) -> list[str]:
    """The files directly under the location ([] when it does not exist yet)."""
    store = _store(location)
    try:
        return store.names()
    except StorageError as e:
        raise _unavailable(store, e) from None


def read_manifest(location: Location) -> Manifest:
    store = _store(location)
    where = store.where(MANIFEST_FILE)
    try:
        raw = json.loads(store.read(MANIFEST_FILE))
    except FileNotFoundError:
        raise ArtifactError(f"{where}: no manifest (not an artifact directory)") from None
    except StorageError as e:
        raise _unavailable(store, e) from None
    except ValueError as e:
        raise ArtifactError(f"{where}: unreadable manifest: {e}") from None
    return Manifest.from_json(raw, where)


def write_manifest(location: Location, manifest: Manifest) -> None:
    """Write the manifest (after every layer file it names)."""
    store = _store(location)
    data = manifest.to_json_bytes(store.where(MANIFEST_FILE))
    try:
        store.write(MANIFEST_FILE, data)
    except StorageError as e:
        raise _unavailable(store, e) from None


def read_layer_bytes(location: Location, entry: LayerEntry) -> bytes:
    """The bytes of a published layer's file, after checking that they match `entry.sha256`.

    From a remote store, the layer comes from the node-local cache when it holds it (`layer_cache`), else
    it is downloaded, checked, and kept there."""
    store = _store(location)
    if not store.local:
        data = layer_cache.cached(entry.sha256)
        if data is not None:
            return data
    file = store.where(entry.file)
    try:
        data = store.read(entry.file)
    except FileNotFoundError:
        raise ArtifactError(f"{file}: layer file missing (layer {entry.layer}, listed in {MANIFEST_FILE})") from None
    except StorageError as e:
        raise _unavailable(store, e) from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry.sha256:
        raise ArtifactError(f"{file}: sha256 mismatch (corrupt or replaced): manifest has {entry.sha256[:16]}..., "
                            f"file has {digest[:16]}...")
    if not store.local:
        layer_cache.keep(entry.sha256, data)
    return data


def fetch_layer(location: Location, entry: LayerEntry) -> bool:
    """Make a published layer local without loading it: from a remote store, download it into the node-local
    cache (checked) unless it is there already. True when it was downloaded. Nothing to do for a local
    directory."""
    if _store(location).local or layer_cache.has(entry.sha256):
        return False
    read_layer_bytes(location, entry)
    return True


def write_layer_bytes(location: Location, name: str, data: bytes) -> str:
    """Write a layer file (before the manifest entry that names it); returns its sha256."""
    store = _store(location)
    try:
        store.write(name, data)
    except StorageError as e:
        raise _unavailable(store, e) from None
    return hashlib.sha256(data).hexdigest()

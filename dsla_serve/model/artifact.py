"""DSLA artifacts: one directory (or object store location) that serves every depth of a chained conversion.

The artifact's layout and its manifest are `manifest.py`'s (read and written there only, through
`storage.py`: a local directory or an `s3://` / `gs://` URI); this module puts layers into it and into
models. `rank` is a layer's position in the order: publishing it makes depth rank + 1 available. The
order may be longer than the published layers (it is planned before the layers are trained); layers are
published strictly in order, each file before the manifest entry that names it, every write whole or
nothing, so a crash (or a store failing in between) never leaves a half-written depth. Loading checks the
manifest version, the base model fingerprint, the layer kind and each file's sha256 before touching
the model; a layer already loaded into a model from the same file is not read again. An artifact is
one nested family, so all its layers are of one kind. Only safetensors is read: no pickle.

Each layer file holds that layer's DSLA parameters: gates and mix logits, plus q/k/v/o when the layer
has its own (untied) copies.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from .attention import DSLAAttention
from .baselines import LAYER_KINDS, layer_class, layer_kind, non_default_settings
from .config import DSLAConfig
from .fingerprint import model_fingerprint
from .manifest import (MANIFEST_FILE, MANIFEST_FORMAT, MANIFEST_VERSION, ArtifactError, BaseModelInfo, LayerEntry,
                       Manifest, artifact_file, fetch_layer, has_manifest, layer_file_name, location_names,
                       manifest_path, read_layer_bytes, read_manifest, validate_order, write_layer_bytes,
                       write_manifest)
from .storage import is_uri, mask
from .surgery import attach_twin, conversion_order, decoder_layers, dsla_layers, set_depth

__all__ = ["Artifact", "ArtifactError", "LayerEntry", "MANIFEST_VERSION", "model_fingerprint"]

# Set on a layer module loaded from an artifact: the sha256 of the file it came from, so that applying
# the artifact again (a refresh) skips it instead of reading and hashing it again.
_LOADED_FROM = "_dsla_artifact_sha256"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _location(path) -> Path | str:
    """A local directory as a Path; an object store URI kept as the string it is."""
    return path if is_uri(path) else Path(os.fspath(path))


def _open_manifest(path: Path | str) -> Manifest:
    """The manifest of `path`, with its layer kind checked (kinds are layer classes: torch)."""
    manifest = read_manifest(path)
    if manifest.layer_kind not in LAYER_KINDS:
        raise ArtifactError(f"{manifest_path(path)}: unknown layer_kind {manifest.layer_kind!r}; this dsla-serve "
                            f"builds {', '.join(LAYER_KINDS)}")
    return manifest


class Artifact:
    """A DSLA artifact: a local directory or an object store URI. Make one with `Artifact.create` or `Artifact.open`."""

    def __init__(self, path: Path | str, manifest: Manifest):
        self._path = _location(path)
        self._manifest = manifest

    # --- construction -----------------------------------------------------------------------
    @classmethod
    def create(cls, path, base_model: nn.Module, *, base_model_id: str, config: DSLAConfig | None, order,
               metadata: dict | None = None, kind: str = "dsla") -> "Artifact":
        """Start an artifact for `base_model` with the planned conversion `order` (no layer published)
        and layers of `kind` (see `convert`).

        If `path` already holds the same artifact (same base model, config, kind and order) it is
        opened instead, so an interrupted run can resume; any other non-empty directory is refused.
        """
        path = _location(path)
        where = manifest_path(path)
        if kind not in LAYER_KINDS:
            raise ArtifactError(f"{where}: unknown layer kind {kind!r}; choose one of {', '.join(LAYER_KINDS)}")
        config = config or DSLAConfig()
        num_layers = len(decoder_layers(base_model))
        order = validate_order(order, num_layers, where)
        fingerprint = model_fingerprint(base_model)
        if any(not name.startswith(".") for name in location_names(path)):
            if not has_manifest(path):
                raise ArtifactError(f"{path}: directory is not empty and holds no {MANIFEST_FILE}; "
                                    "choose an empty or new directory")
            existing = cls.open(path)
            same = (existing.fingerprint == fingerprint and existing.config == config and existing.kind == kind
                    and existing.order == order and existing.base_model_id == base_model_id)
            if not same:
                raise ArtifactError(f"{where}: the directory holds a different artifact (base model "
                                    f"{existing.base_model_id!r}, layer kind {existing.kind!r}, order "
                                    f"{existing.order}); refusing to overwrite")
            return existing
        now = _now()
        manifest = Manifest(
            base_model=BaseModelInfo(id=base_model_id, fingerprint=fingerprint, num_layers=num_layers,
                                     model_type=getattr(base_model.config, "model_type", None)),
            dsla_config=config, layer_kind=kind, order=tuple(order), layers=(), metadata=dict(metadata or {}),
            created_at=now, updated_at=now)
        write_manifest(path, manifest)
        return cls.open(path)

    @classmethod
    def open(cls, path) -> "Artifact":
        """Open an existing artifact (checks the manifest, not yet the layer files)."""
        path = _location(path)
        return cls(path, _open_manifest(path))

    # --- properties ------------------------------------------------------------------------
    @property
    def path(self) -> Path | str:
        """The location: a local directory (a Path) or an object store URI (a string)."""
        return self._path

    @property
    def manifest(self) -> Manifest:
        return self._manifest

    @property
    def manifest_path(self) -> Path | str:
        """The manifest as messages name it (a URI with any secret masked)."""
        return manifest_path(self._path)

    @property
    def order(self) -> list[int]:
        """The planned conversion order (may be longer than the published layers)."""
        return list(self._manifest.order)

    @property
    def depth(self) -> int:
        """Number of published layers: the deepest depth this artifact can serve."""
        return self._manifest.depth

    @property
    def config(self) -> DSLAConfig:
        return self._manifest.dsla_config

    @property
    def kind(self) -> str:
        """The kind of every layer ("dsla", "gla", "linear" or "swa"; manifest key `layer_kind`)."""
        return self._manifest.layer_kind

    @property
    def entries(self) -> list[LayerEntry]:
        return list(self._manifest.layers)

    @property
    def base_model_id(self) -> str:
        return self._manifest.base_model.id

    @property
    def fingerprint(self) -> str:
        return self._manifest.base_model.fingerprint

    @property
    def metadata(self) -> dict:
        return dict(self._manifest.metadata)

    def __repr__(self) -> str:
        return (f"Artifact({mask(str(self._path))!r}, base={self.base_model_id!r}, depth={self.depth}/"
                f"{len(self._manifest.order)})")

    # --- reading ---------------------------------------------------------------------------
    def reload(self) -> list[int]:
        """Re-read the manifest; returns the layers published since the last read.

        Raises ArtifactError if the directory now holds a different artifact.
        """
        fresh = _open_manifest(self._path)
        old = self._manifest
        if (fresh.base_model.fingerprint != old.base_model.fingerprint or fresh.dsla_config != old.dsla_config
                or fresh.layer_kind != old.layer_kind or fresh.order != old.order
                or fresh.layers[:old.depth] != old.layers):
            raise ArtifactError(f"{self.manifest_path}: the artifact changed under this reader (base model, config, "
                                "layer kind, order or published layers differ); open it again")
        self._manifest = fresh
        return [e.layer for e in fresh.layers[old.depth:]]

    def _read_layer(self, entry: LayerEntry) -> dict[str, torch.Tensor]:
        """The tensors of a published layer, after checking the file exists and matches its sha256."""
        data = read_layer_bytes(self._path, entry)
        try:
            return load_safetensors(data)
        except Exception as e:  # noqa: BLE001 - any parse failure means a bad file
            raise ArtifactError(f"{artifact_file(self._path, entry.file)}: not a readable safetensors file: "
                                f"{e}") from None

    def verify(self, depth: int | None = None) -> None:
        """Check that the files of the first `depth` published layers exist and match their sha256."""
        for entry in self.entries[: self.depth if depth is None else depth]:
            self._read_layer(entry)

    def fetch(self, depth: int | None = None) -> list[int]:
        """Make the first `depth` published layers (default all) local before `apply` needs them: from an
        object store, download the ones the node-local cache lacks (each checked against its sha256), so that
        `apply` then reads no remote file. Returns the layers downloaded ([] for a local directory)."""
        return [e.layer for e in self.entries[: self.depth if depth is None else depth] if fetch_layer(self._path, e)]

    # --- writing ---------------------------------------------------------------------------
    def append_layer(self, model: nn.Module, layer_idx: int, metrics: dict) -> LayerEntry:
        """Publish converted layer `layer_idx` of `model` (the next layer of the order) with its metrics.

        Writes `layer_<index>.safetensors`, then the manifest naming it, each whole or not at all; a
        store that fails in between leaves the layer unpublished (its file is named by no manifest). Safe to
        call again after `ArtifactUnavailable`: when the manifest already ends with this very layer (the
        store applied a write whose answer was lost), that entry is returned and nothing is written.
        """
        where = self.manifest_path
        if model_fingerprint(model) != self.fingerprint:
            raise ArtifactError(f"{where}: the model is not this artifact's base model "
                                f"{self.base_model_id!r} (fingerprint differs)")
        twin = dsla_layers(model).get(layer_idx)
        if twin is None:
            raise ArtifactError(f"{where}: layer {layer_idx} of the model is not converted to DSLA")
        if twin.config != self.config:
            raise ArtifactError(f"{where}: layer {layer_idx} was converted with {twin.config}, the "
                                f"artifact uses {self.config}")
        if layer_kind(twin) != self.kind:
            raise ArtifactError(f"{where}: layer {layer_idx} is a {layer_kind(twin)!r} layer, the "
                                f"artifact holds {self.kind!r} layers")
        unrecorded = non_default_settings(twin)
        if unrecorded:
            raise ArtifactError(f"{where}: layer {layer_idx} has non-default settings {unrecorded}; an "
                                f"artifact records only the layer kind and would rebuild it with the defaults")
        if not isinstance(metrics, dict):
            raise ArtifactError(f"{where}: metrics must be a dict, got {type(metrics).__name__}")
        tensors = {n: p.detach().to("cpu").contiguous().clone() for n, p in twin.own_parameters().items()}
        # One metadata key: safetensors writes the metadata map in hash order, which varies between
        # runs, and the same layer trained twice must give the same bytes (and sha256).
        header = json.dumps({"format": MANIFEST_FORMAT, "layer": layer_idx, "untied": not twin.projections_tied},
                            sort_keys=True)
        data = save_safetensors(tensors, metadata={"dsla_serve": header})
        sha256 = hashlib.sha256(data).hexdigest()
        self.reload()
        if self.depth and self.entries[-1].layer == layer_idx and self.entries[-1].sha256 == sha256:
            return self.entries[-1]
        order, rank = self.order, self.depth
        if rank >= len(order):
            raise ArtifactError(f"{where}: every layer of the order {order} is already published")
        if layer_idx != order[rank]:
            raise ArtifactError(f"{where}: layer {layer_idx} is not next in the order {order}: "
                                f"layer {order[rank]} is (rank {rank})")
        entry = LayerEntry(layer=layer_idx, rank=rank, file=layer_file_name(layer_idx), sha256=sha256,
                           untied=not twin.projections_tied, metrics=dict(metrics))
        updated = self._manifest.with_layer(entry, _now())
        updated.to_json_bytes(where)  # metrics that cannot be written fail here, before any file is
        write_layer_bytes(self._path, entry.file, data)
        write_manifest(self._path, updated)
        self._manifest = updated
        return entry

    # --- applying --------------------------------------------------------------------------
    def apply(self, model: nn.Module, depth: int | None = None) -> nn.Module:
        """Load the first `depth` published layers (default all) into `model` and set that depth.

        Checks first (raising ArtifactError, the model untouched): the base model fingerprint, that the
        model's converted layers (if any) are of the artifact's kind and its conversion order agrees
        with the artifact's, and for every needed layer not yet loaded into `model` from this file
        that its file exists, matches its sha256 and holds exactly the expected tensors. Then
        converts the layers the model lacks (as the artifact's kind), replaces the weights of the
        others, and sets the depth. Layers loaded by an earlier `apply` are neither read nor hashed
        again, so applying after each `reload` reads each published layer once.
        """
        depth = self.depth if depth is None else depth
        where = self.manifest_path
        if isinstance(depth, bool) or not isinstance(depth, int) or not 0 <= depth <= self.depth:
            raise ArtifactError(f"{where}: depth {depth!r} is not available: {self.depth} layers are published")
        fingerprint = model_fingerprint(model)
        if fingerprint != self.fingerprint:
            raise ArtifactError(f"{where}: base model mismatch: the artifact was made for "
                                f"{self.base_model_id!r} (fingerprint {self.fingerprint[:16]}...), the model's "
                                f"fingerprint is {fingerprint[:16]}...")
        twins = dsla_layers(model)
        model_kinds = sorted({layer_kind(twin) for twin in twins.values()})
        if model_kinds and model_kinds != [self.kind]:
            raise ArtifactError(f"{where}: the model's converted layers are {model_kinds}, the artifact "
                                f"holds {self.kind!r} layers; apply it to a model converted with that kind or none")
        model_order, order = conversion_order(model), self.order
        if model_order[: len(order)] != order[: len(model_order)]:
            raise ArtifactError(f"{where}: the model's conversion order {model_order} disagrees with the "
                                f"artifact's order {order}")
        blocks = decoder_layers(model)
        staged = []
        for entry in self.entries[:depth]:
            if getattr(twins.get(entry.layer), _LOADED_FROM, None) == entry.sha256:
                continue  # loaded from this very file before
            tensors = self._read_layer(entry)
            twin = layer_class(self.kind)(blocks[entry.layer].self_attn, self.config)
            if entry.untied:
                twin.untie_projections()
            self._load_into(twin, tensors, entry)
            setattr(twin, _LOADED_FROM, entry.sha256)
            staged.append((entry, twin))
        for entry, twin in staged:  # nothing below can fail on valid input
            attach_twin(model, entry.layer, twin, entry.rank)
        return set_depth(model, depth)

    def _load_into(self, twin: DSLAAttention, tensors: dict[str, torch.Tensor], entry: LayerEntry) -> None:
        params = twin.own_parameters()
        if "output_scale" not in tensors:  # layers written before the output gain existed: gain 1
            params = {n: p for n, p in params.items() if n != "output_scale"}
        file = artifact_file(self._path, entry.file)
        missing, unexpected = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
        if missing or unexpected:
            raise ArtifactError(f"{file}: tensors do not match a DSLA layer with {self.config} (kind {self.kind!r}): "
                                f"missing {missing}, unexpected {unexpected}")
        for name, p in params.items():
            if tuple(tensors[name].shape) != tuple(p.shape):
                raise ArtifactError(f"{file}: tensor {name!r} has shape {tuple(tensors[name].shape)}, the model's "
                                    f"layer {entry.layer} needs {tuple(p.shape)}")
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(tensors[name])

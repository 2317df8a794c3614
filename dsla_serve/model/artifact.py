"""DSLA artifacts: one directory that serves every depth of a chained conversion.

    artifact/
      manifest.json              format, manifest_version, base model (id, fingerprint), DSLA config,
                                 layer_kind ("dsla", or a baseline of `baselines`: "gla", "linear",
                                 "swa"; absent in older manifests, meaning "dsla"), the planned
                                 conversion order, and one entry per published layer:
                                 {layer, rank, file, sha256, untied, metrics}
      layer_<index>.safetensors  that layer's DSLA parameters: gates and mix logits, plus
                                 q/k/v/o when the layer has its own (untied) copies

`rank` is the layer's position in the order: publishing it makes depth rank + 1 available. The order
may be longer than the published layers (it is planned before the layers are trained); layers are
published strictly in order, each file before the manifest entry that names it, every write atomic
(temporary file, fsync, os.replace), so a crash never leaves a half-written depth. Loading checks the
manifest version, the base model fingerprint, the layer kind and each file's sha256 before touching
the model. An artifact is one nested family, so all its layers are of one kind.
Only safetensors is read: no pickle.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from .attention import DSLAAttention
from .baselines import LAYER_KINDS, layer_class, layer_kind, non_default_settings
from .config import DSLAConfig
from .fingerprint import model_fingerprint
from .surgery import attach_twin, conversion_order, decoder_layers, dsla_layers, set_depth

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "dsla-serve-artifact"
MANIFEST_VERSION = 2
# Version 1 fingerprinted the base model at float32 sample points, which differ between hosts and fail
# above 2^24 elements: its artifacts cannot be checked, so they are refused with this reason.
_OLD_VERSIONS = {1: "version 1 artifacts identify their base model in a host-dependent way; convert again"}
_LAYER_FILE = re.compile(r"layer_(\d+)\.safetensors")

__all__ = ["Artifact", "ArtifactError", "LayerEntry", "MANIFEST_VERSION", "model_fingerprint"]


class ArtifactError(ValueError):
    """An artifact cannot be created, read or applied; the message names the file and the problem."""


@dataclass(frozen=True)
class LayerEntry:
    """A published layer: decoder layer `layer`, at position `rank` of the order, stored in `file`."""

    layer: int
    rank: int
    file: str
    sha256: str
    untied: bool = False
    metrics: dict = field(default_factory=dict)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never a part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # make the rename itself durable
    finally:
        os.close(fd)


def _json_bytes(obj, what: str, where: Path) -> bytes:
    try:
        return (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode()
    except (TypeError, ValueError) as e:
        raise ArtifactError(f"{where}: {what} must be JSON-serialisable finite values: {e}") from None


def _validate_order(order, num_layers: int, where: Path) -> list[int]:
    order = list(order)
    bad = [i for i in order if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < num_layers]
    if bad:
        raise ArtifactError(f"{where}: order {order} has indices outside 0..{num_layers - 1}: {bad}")
    if len(set(order)) != len(order):
        raise ArtifactError(f"{where}: order {order} repeats layer indices")
    return order


def _parse_manifest(path: Path) -> dict:
    """Read and check manifest.json; the returned dict has `config` (DSLAConfig) and `entries`."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{path}: no manifest (not an artifact directory)") from None
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{path}: unreadable manifest: {e}") from None
    if not isinstance(raw, dict) or raw.get("format") != MANIFEST_FORMAT:
        raise ArtifactError(f"{path}: not a DSLA-Serve manifest (format must be {MANIFEST_FORMAT!r})")
    version = raw.get("manifest_version")
    if version != MANIFEST_VERSION:
        why = _OLD_VERSIONS.get(version, "unknown version")
        raise ArtifactError(f"{path}: manifest version {version!r} cannot be read ({why}); this dsla-serve "
                            f"reads version {MANIFEST_VERSION}")
    kind = raw.get("layer_kind", "dsla")
    if kind not in LAYER_KINDS:
        raise ArtifactError(f"{path}: unknown layer_kind {kind!r}; this dsla-serve builds {', '.join(LAYER_KINDS)}")
    try:
        base = raw["base_model"]
        config = DSLAConfig.from_dict(raw["dsla_config"])
        order = _validate_order(raw["order"], int(base["num_layers"]), path)
        entries = [LayerEntry(**e) for e in raw["layers"]]
        str(base["id"]), str(base["fingerprint"])
    except ArtifactError:
        raise
    except (KeyError, TypeError, ValueError) as e:
        raise ArtifactError(f"{path}: malformed manifest: {type(e).__name__}: {e}") from None
    for rank, e in enumerate(entries):
        if rank >= len(order) or e.layer != order[rank] or e.rank != rank:
            raise ArtifactError(f"{path}: entry {rank} (layer {e.layer}, rank {e.rank}) does not follow the order "
                                f"{order}")
        m = _LAYER_FILE.fullmatch(e.file)
        if m is None or int(m.group(1)) != e.layer:
            raise ArtifactError(f"{path}: entry for layer {e.layer} names file {e.file!r}; expected "
                                f"'layer_{e.layer}.safetensors'")
    return {**raw, "layer_kind": kind, "config": config, "order": order, "entries": entries}


class Artifact:
    """A DSLA artifact directory. Make one with `Artifact.create` or `Artifact.open`."""

    def __init__(self, path: Path, manifest: dict):
        self._path = Path(path)
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
        path = Path(path)
        manifest_path = path / MANIFEST_NAME
        if kind not in LAYER_KINDS:
            raise ArtifactError(f"{manifest_path}: unknown layer kind {kind!r}; choose one of {', '.join(LAYER_KINDS)}")
        config = config or DSLAConfig()
        num_layers = len(decoder_layers(base_model))
        order = _validate_order(order, num_layers, manifest_path)
        fingerprint = model_fingerprint(base_model)
        if path.exists() and any(not p.name.startswith(".") for p in path.iterdir()):
            if not manifest_path.exists():
                raise ArtifactError(f"{path}: directory is not empty and holds no {MANIFEST_NAME}; "
                                    "choose an empty or new directory")
            existing = cls.open(path)
            same = (existing.fingerprint == fingerprint and existing.config == config and existing.kind == kind
                    and existing.order == order and existing.base_model_id == base_model_id)
            if not same:
                raise ArtifactError(f"{manifest_path}: the directory holds a different artifact (base model "
                                    f"{existing.base_model_id!r}, layer kind {existing.kind!r}, order "
                                    f"{existing.order}); refusing to overwrite")
            return existing
        path.mkdir(parents=True, exist_ok=True)
        now = _now()
        raw = {
            "format": MANIFEST_FORMAT,
            "manifest_version": MANIFEST_VERSION,
            "base_model": {"id": base_model_id, "fingerprint": fingerprint, "num_layers": num_layers,
                           "model_type": getattr(base_model.config, "model_type", None)},
            "dsla_config": config.to_dict(),
            "layer_kind": kind,
            "order": order,
            "layers": [],
            "metadata": dict(metadata or {}),
            "created_at": now,
            "updated_at": now,
        }
        _write_atomic(manifest_path, _json_bytes(raw, "metadata", manifest_path))
        return cls.open(path)

    @classmethod
    def open(cls, path) -> "Artifact":
        """Open an existing artifact (checks the manifest, not yet the layer files)."""
        path = Path(path)
        return cls(path, _parse_manifest(path / MANIFEST_NAME))

    # --- properties ------------------------------------------------------------------------
    @property
    def path(self) -> Path:
        return self._path

    @property
    def manifest_path(self) -> Path:
        return self._path / MANIFEST_NAME

    @property
    def order(self) -> list[int]:
        """The planned conversion order (may be longer than the published layers)."""
        return list(self._manifest["order"])

    @property
    def depth(self) -> int:
        """Number of published layers: the deepest depth this artifact can serve."""
        return len(self._manifest["entries"])

    @property
    def config(self) -> DSLAConfig:
        return self._manifest["config"]

    @property
    def kind(self) -> str:
        """The kind of every layer ("dsla", "gla", "linear" or "swa"; manifest key `layer_kind`)."""
        return self._manifest["layer_kind"]

    @property
    def entries(self) -> list[LayerEntry]:
        return list(self._manifest["entries"])

    @property
    def base_model_id(self) -> str:
        return self._manifest["base_model"]["id"]

    @property
    def fingerprint(self) -> str:
        return self._manifest["base_model"]["fingerprint"]

    @property
    def metadata(self) -> dict:
        return dict(self._manifest.get("metadata", {}))

    def __repr__(self) -> str:
        return (f"Artifact({str(self._path)!r}, base={self.base_model_id!r}, depth={self.depth}/"
                f"{len(self._manifest['order'])})")

    # --- reading ---------------------------------------------------------------------------
    def reload(self) -> list[int]:
        """Re-read the manifest; returns the layers published since the last read.

        Raises ArtifactError if the directory now holds a different artifact.
        """
        fresh = _parse_manifest(self.manifest_path)
        if (fresh["base_model"]["fingerprint"] != self.fingerprint or fresh["config"] != self.config
                or fresh["layer_kind"] != self.kind or fresh["order"] != self.order
                or fresh["entries"][:self.depth] != self.entries):
            raise ArtifactError(f"{self.manifest_path}: the artifact changed under this reader (base model, config, "
                                "layer kind, order or published layers differ); open it again")
        new = [e.layer for e in fresh["entries"][self.depth:]]
        self._manifest = fresh
        return new

    def _read_layer(self, entry: LayerEntry) -> dict[str, torch.Tensor]:
        """The tensors of a published layer, after checking the file exists and matches its sha256."""
        file = self._path / entry.file
        try:
            data = file.read_bytes()
        except FileNotFoundError:
            raise ArtifactError(f"{file}: layer file missing (layer {entry.layer}, listed in "
                                f"{MANIFEST_NAME})") from None
        digest = hashlib.sha256(data).hexdigest()
        if digest != entry.sha256:
            raise ArtifactError(f"{file}: sha256 mismatch (corrupt or replaced): manifest has {entry.sha256[:16]}..., "
                                f"file has {digest[:16]}...")
        try:
            return load_safetensors(data)
        except Exception as e:  # noqa: BLE001 - any parse failure means a bad file
            raise ArtifactError(f"{file}: not a readable safetensors file: {e}") from None

    def verify(self, depth: int | None = None) -> None:
        """Check that the files of the first `depth` published layers exist and match their sha256."""
        for entry in self.entries[: self.depth if depth is None else depth]:
            self._read_layer(entry)

    # --- writing ---------------------------------------------------------------------------
    def append_layer(self, model: nn.Module, layer_idx: int, metrics: dict) -> LayerEntry:
        """Publish converted layer `layer_idx` of `model` (the next layer of the order) with its metrics.

        Writes `layer_<index>.safetensors`, then the manifest naming it, each atomically.
        """
        self.reload()
        order, rank = self.order, self.depth
        if rank >= len(order):
            raise ArtifactError(f"{self.manifest_path}: every layer of the order {order} is already published")
        if layer_idx != order[rank]:
            raise ArtifactError(f"{self.manifest_path}: layer {layer_idx} is not next in the order {order}: "
                                f"layer {order[rank]} is (rank {rank})")
        if model_fingerprint(model) != self.fingerprint:
            raise ArtifactError(f"{self.manifest_path}: the model is not this artifact's base model "
                                f"{self.base_model_id!r} (fingerprint differs)")
        twin = dsla_layers(model).get(layer_idx)
        if twin is None:
            raise ArtifactError(f"{self.manifest_path}: layer {layer_idx} of the model is not converted to DSLA")
        if twin.config != self.config:
            raise ArtifactError(f"{self.manifest_path}: layer {layer_idx} was converted with {twin.config}, the "
                                f"artifact uses {self.config}")
        if layer_kind(twin) != self.kind:
            raise ArtifactError(f"{self.manifest_path}: layer {layer_idx} is a {layer_kind(twin)!r} layer, the "
                                f"artifact holds {self.kind!r} layers")
        unrecorded = non_default_settings(twin)
        if unrecorded:
            raise ArtifactError(f"{self.manifest_path}: layer {layer_idx} has non-default settings {unrecorded}; an "
                                f"artifact records only the layer kind and would rebuild it with the defaults")
        if not isinstance(metrics, dict):
            raise ArtifactError(f"{self.manifest_path}: metrics must be a dict, got {type(metrics).__name__}")
        _json_bytes(metrics, f"metrics of layer {layer_idx}", self.manifest_path)
        tensors = {n: p.detach().to("cpu").contiguous().clone() for n, p in twin.own_parameters().items()}
        # One metadata key: safetensors writes the metadata map in hash order, which varies between
        # runs, and the same layer trained twice must give the same bytes (and sha256).
        header = json.dumps({"format": MANIFEST_FORMAT, "layer": layer_idx, "untied": not twin.projections_tied},
                            sort_keys=True)
        data = save_safetensors(tensors, metadata={"dsla_serve": header})
        entry = LayerEntry(layer=layer_idx, rank=rank, file=f"layer_{layer_idx}.safetensors",
                           sha256=hashlib.sha256(data).hexdigest(), untied=not twin.projections_tied,
                           metrics=dict(metrics))
        _write_atomic(self._path / entry.file, data)
        raw = {k: v for k, v in self._manifest.items() if k not in ("config", "entries")}
        raw["layers"] = [asdict(e) for e in self.entries + [entry]]
        raw["updated_at"] = _now()
        _write_atomic(self.manifest_path, _json_bytes(raw, "manifest", self.manifest_path))
        self._manifest = {**self._manifest, **raw, "entries": self.entries + [entry]}
        return entry

    # --- applying --------------------------------------------------------------------------
    def apply(self, model: nn.Module, depth: int | None = None) -> nn.Module:
        """Load the first `depth` published layers (default all) into `model` and set that depth.

        Checks first (raising ArtifactError, the model untouched): the base model fingerprint, that the
        model's converted layers (if any) are of the artifact's kind and its conversion order agrees
        with the artifact's, and for every needed layer that its file exists, matches its sha256 and
        holds exactly the expected tensors. Then converts the layers the model lacks (as the
        artifact's kind), replaces the weights of the others, and sets the depth.
        """
        depth = self.depth if depth is None else depth
        if isinstance(depth, bool) or not isinstance(depth, int) or not 0 <= depth <= self.depth:
            raise ArtifactError(f"{self.manifest_path}: depth {depth!r} is not available: {self.depth} layers "
                                "are published")
        fingerprint = model_fingerprint(model)
        if fingerprint != self.fingerprint:
            raise ArtifactError(f"{self.manifest_path}: base model mismatch: the artifact was made for "
                                f"{self.base_model_id!r} (fingerprint {self.fingerprint[:16]}...), the model's "
                                f"fingerprint is {fingerprint[:16]}...")
        model_kinds = sorted({layer_kind(twin) for twin in dsla_layers(model).values()})
        if model_kinds and model_kinds != [self.kind]:
            raise ArtifactError(f"{self.manifest_path}: the model's converted layers are {model_kinds}, the artifact "
                                f"holds {self.kind!r} layers; apply it to a model converted with that kind or none")
        model_order, order = conversion_order(model), self.order
        if model_order[: len(order)] != order[: len(model_order)]:
            raise ArtifactError(f"{self.manifest_path}: the model's conversion order {model_order} disagrees with the "
                                f"artifact's order {order}")
        blocks = decoder_layers(model)
        staged = []
        for entry in self.entries[:depth]:
            tensors = self._read_layer(entry)
            twin = layer_class(self.kind)(blocks[entry.layer].self_attn, self.config)
            if entry.untied:
                twin.untie_projections()
            self._load_into(twin, tensors, entry)
            staged.append((entry, twin))
        for entry, twin in staged:  # nothing below can fail on valid input
            attach_twin(model, entry.layer, twin, entry.rank)
        return set_depth(model, depth)

    def _load_into(self, twin: DSLAAttention, tensors: dict[str, torch.Tensor], entry: LayerEntry) -> None:
        params = twin.own_parameters()
        if "output_scale" not in tensors:  # layers written before the output gain existed: gain 1
            params = {n: p for n, p in params.items() if n != "output_scale"}
        file = self._path / entry.file
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

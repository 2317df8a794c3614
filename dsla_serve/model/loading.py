"""Load a causal LM and its tokenizer from any name `sources` understands: a folder, a `.gguf` file, a
short name of a reference model (`smollm2-135m`), a hub id, or `tiny:<arch>` (built in memory)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .gguf import gguf_to_folder
from .sources import (TINY_PREFIX, ModelSourceError, gguf_cache_folder, reference_gguf, reference_model,
                      spec_kind)

if TYPE_CHECKING:  # torch loads with a model, not with this module: the app's driver builds it without torch
    import torch

_DTYPES = ("auto", "float32", "bfloat16", "float16")


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype | str:
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(_DTYPES)}")
    return dtype if dtype == "auto" else getattr(torch, dtype)


def resolve_model(spec: str) -> str:
    """What `from_pretrained` loads for `spec`: a folder for local folders, GGUF files and short names
    (building the cached folder of a GGUF once), the hub id for hub ids, `spec` itself for tiny:<arch>.

    Raises ModelSourceError for a missing file or folder, or a reference model whose package is not
    installed.
    """
    kind = spec_kind(spec)
    if kind in ("tiny", "hub"):
        return spec
    if kind == "folder":
        folder = Path(spec).expanduser()
        if not folder.is_dir():
            raise ModelSourceError(f"{spec}: no such model folder")
        if not (folder / "config.json").is_file():
            raise ModelSourceError(f"{spec}: not a Hugging Face model folder (no config.json)")
        return str(folder)
    gguf = reference_gguf(reference_model(spec)) if kind == "reference" else Path(spec).expanduser()
    if not gguf.is_file():
        raise ModelSourceError(f"{spec}: no such GGUF file")
    folder = gguf_cache_folder(gguf)
    if not (folder / "config.json").is_file():
        gguf_to_folder(gguf, folder)
    return str(folder)


def _from_pretrained(loader, spec: str, location: str, **kwargs):
    """`loader.from_pretrained(location)`; a hub id is looked up in the local cache first, so nothing
    is fetched for a model that is there, and a miss offline says what to give instead."""
    if spec_kind(spec) != "hub":
        return loader.from_pretrained(location, **kwargs)
    from huggingface_hub import is_offline_mode

    try:
        return loader.from_pretrained(location, local_files_only=True, **kwargs)
    except OSError as e:
        error = e
    if not is_offline_mode():
        try:
            return loader.from_pretrained(location, **kwargs)
        except OSError as e:
            error = e
    why = "HF_HUB_OFFLINE is set" if is_offline_mode() else "could not be downloaded"
    first_line = (str(error).splitlines() or [""])[0]
    raise ModelSourceError(
        f"{spec!r} is neither a local folder nor in the Hugging Face cache, and {why} ({type(error).__name__}: "
        f"{first_line}); give a local folder, a .gguf file or a short name such as smollm2-135m") from None


def load_tokenizer(spec: str):
    """The tokenizer of model `spec`: the byte tokenizer for `tiny:<arch>`, else the folder's or hub's."""
    if spec.startswith(TINY_PREFIX):
        from .tiny_tokenizer import build_byte_tokenizer

        return build_byte_tokenizer()
    from transformers import AutoTokenizer

    return _from_pretrained(AutoTokenizer, spec, resolve_model(spec))


def load_model_config(spec: str):
    """The Hugging Face config of model `spec` (no weights loaded), e.g. for its `num_hidden_layers`."""
    if spec.startswith(TINY_PREFIX):
        from .tiny import tiny_config

        return tiny_config(spec[len(TINY_PREFIX):])
    from transformers import AutoConfig

    return _from_pretrained(AutoConfig, spec, resolve_model(spec))


def load_model_and_tokenizer(spec: str, *, dtype: str | torch.dtype = "auto", device: str | torch.device = "cpu",
                             seed: int = 0):
    """-> (model in eval mode, tokenizer).

    `spec` is any name `sources.spec_kind` knows: a local folder, a `.gguf` file or a reference model's
    short name (both through a cached folder built once), a hub id (from the local cache when it is
    there), or `tiny:<arch>` (`tiny:llama`, `tiny:mistral`, `tiny:qwen2`) for a small random model
    with a byte-level tokenizer, seeded by `seed`, that needs no download.
    Raises ModelSourceError (a ValueError) for a name that cannot be loaded here, saying why.
    """
    import torch

    if spec.startswith(TINY_PREFIX):
        from .tiny import build_tiny_model
        from .tiny_tokenizer import build_byte_tokenizer

        torch_dtype = resolve_dtype(dtype)
        model = build_tiny_model(spec[len(TINY_PREFIX):], seed=seed,
                                 dtype=torch.float32 if torch_dtype == "auto" else torch_dtype)
        return model.to(device), build_byte_tokenizer()
    from transformers import AutoModelForCausalLM

    location = resolve_model(spec)
    model = _from_pretrained(AutoModelForCausalLM, spec, location, dtype=resolve_dtype(dtype),
                             attn_implementation="sdpa")
    tokenizer = load_tokenizer(spec)
    return model.to(device).eval(), tokenizer

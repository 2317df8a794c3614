"""A GGUF file turned into a plain Hugging Face folder (safetensors, tokenizer, chat template), once.

transformers dequantises a GGUF when it loads one, but marks the model as GGUF-quantised and refuses
to `save_pretrained` it; the weights are therefore copied into a plain model of the same config,
which saves. The folder is built beside its final place and renamed into it, under a file lock, so
that processes starting together (Ray replicas, the trainer) build it once and never see half of it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

from .sources import ModelSourceError, file_sha256, package_folders

log = logging.getLogger("dsla_serve.model")

SOURCE_FILE = "dsla_serve_source.json"  # what the folder was built from, for a reader who wonders
_NEEDS = {"gguf": "gguf", "accelerate": "accelerate"}


def check_gguf_support() -> None:
    """ModelSourceError naming the install command when a package GGUF loading needs is missing."""
    missing = [pip_name for module, pip_name in _NEEDS.items() if not package_folders(module)]
    if missing:
        raise ModelSourceError(f"loading a GGUF file needs {' and '.join(missing)}: pip install {' '.join(missing)}")


@contextmanager
def _locked(lock_path: Path):
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def gguf_to_folder(gguf: Path, folder: Path) -> Path:
    """Write the Hugging Face folder of `gguf` at `folder` (float32 safetensors, tokenizer files, chat
    template, generation config) unless it is there already; returns `folder`."""
    check_gguf_support()
    with _locked(folder.parent / f".{folder.name}.lock"):
        if (folder / "config.json").is_file():  # another process built it while this one waited
            return folder
        log.warning("dsla-serve: converting %s to a Hugging Face folder at %s (once; later loads reuse it)",
                    gguf, folder)
        t0 = time.monotonic()
        tmp = folder.parent / f".{folder.name}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            _write_folder(gguf, tmp)
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.warning("dsla-serve: %s ready in %.0f s", folder, time.monotonic() - t0)
    return folder


def _write_folder(gguf: Path, out: Path) -> None:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = gguf.stem
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantised.state_dict())
    plain.generation_config = quantised.generation_config
    out.mkdir(parents=True)
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / SOURCE_FILE).write_text(json.dumps({
        "gguf_file": gguf.name, "sha256": file_sha256(gguf), "dtype": "float32",
        "transformers": transformers.__version__}, indent=2) + "\n")

"""Shared pieces of the trainer tests: a synthetic corpus, a tiny config, a tiny model."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from dsla_serve.model.tiny import build_tiny_model
from dsla_serve.model.tiny_tokenizer import build_byte_tokenizer
from dsla_serve.trainer.config import parse_config

WORDS = ("the cat sat on a mat while rain fell over old stone walls and the dog ran home "
         "past seven green doors to find bread milk and a lamp").split()


def write_corpus(folder: Path, documents: int = 12, words: int = 220, seed: int = 0) -> Path:
    """`documents` text files of pseudo-sentences (repeating patterns give attention something to do)."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for d in range(documents):
        sentences = []
        while sum(len(s.split()) for s in sentences) < words:
            n = rng.randint(4, 9)
            start = rng.randrange(len(WORDS))
            sentences.append(" ".join(WORDS[(start + i * rng.choice((1, 2))) % len(WORDS)] for i in range(n)) + ".")
        (folder / f"doc_{d:02d}.txt").write_text(" ".join(sentences) + "\n")
    return folder


def config_dict(corpus: Path, output: Path, **sections) -> dict:
    """A ConvertConfig-shaped dict for a tiny fast run; keyword arguments update top-level fields or
    (as dicts) merge into sections."""
    data = {
        "base_model": "tiny:llama",
        "output": str(output),
        "depth": 2,
        "seed": 0,
        "device": "cpu",
        "data": {"paths": [str(corpus)], "seq_len": 32, "val_fraction": 0.25, "max_val_tokens": 32 * 8},
        "order": {"method": "forward"},
        "training": {"steps": 8, "lr": 3e-3, "warmup_steps": 2, "micro_batch_size": 2, "train_qkvo": True,
                     "eval_batch_size": 8, "loss": {"mse": 1.0, "kl": 1.0, "ce": 0.0}},
        "dsla": {"gate_rank": 8},
        "deepspeed": {"zero_optimization": {"stage": 2}},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return data


def tiny_config(corpus: Path, output: Path, **sections):
    return parse_config(config_dict(corpus, output, **sections))


def tiny_model(num_layers: int = 3, seed: int = 0):
    """A 3-layer, hidden-32 Llama with the byte tokenizer: (model, tokenizer)."""
    model = build_tiny_model("llama", seed=seed, hidden_size=32, num_layers=num_layers, num_heads=4, num_kv_heads=2)
    return model, build_byte_tokenizer()


def layer_hashes(artifact_dir: Path) -> dict[str, str]:
    """{file: sha256} of the published layer files (recomputed from the bytes, not read from the manifest)."""
    manifest = json.loads((Path(artifact_dir) / "manifest.json").read_text())
    return {e["file"]: hashlib.sha256((Path(artifact_dir) / e["file"]).read_bytes()).hexdigest()
            for e in manifest["layers"]}

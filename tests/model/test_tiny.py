import pytest
import torch

from dsla_serve.model.tiny import build_tiny_model
from dsla_serve.model.tiny_tokenizer import BOS_ID, PAD_ID, VOCAB_SIZE


def test_default_vocabulary_fits_the_byte_tokenizer():
    model = build_tiny_model("qwen2", num_layers=1)
    assert model.config.vocab_size == VOCAB_SIZE
    assert (model.config.pad_token_id, model.config.bos_token_id) == (PAD_ID, BOS_ID)


def test_small_vocabulary_uses_low_special_ids_and_seed_repeats():
    a = build_tiny_model("mistral", seed=4, num_layers=1, vocab_size=64)
    assert (a.config.pad_token_id, a.config.bos_token_id, a.config.eos_token_id) == (0, 1, 2)
    b = build_tiny_model("mistral", seed=4, num_layers=1, vocab_size=64)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


def test_unknown_architecture():
    with pytest.raises(ValueError, match="unknown tiny architecture 'gpt2'; choose one of llama, mistral, qwen2"):
        build_tiny_model("gpt2")

import hashlib
import json

import torch

from dsla_serve.model import convert, model_fingerprint
from dsla_serve.model.fingerprint import CONFIG_FIELDS, sample_indices

from .helpers import randomize_dsla, tiny


def test_same_weights_same_fingerprint_whatever_the_conversion_or_dtype():
    fingerprint = model_fingerprint(tiny())
    assert len(fingerprint) == 64 and fingerprint == model_fingerprint(tiny())
    converted = convert(tiny(), [1, 3])
    randomize_dsla(converted)
    assert model_fingerprint(converted) == fingerprint
    assert model_fingerprint(tiny(dtype=torch.bfloat16)) == fingerprint


def test_other_weights_shapes_or_architecture_change_it():
    fingerprint = model_fingerprint(tiny())
    assert model_fingerprint(tiny(seed=1)) != fingerprint
    assert model_fingerprint(tiny(num_layers=3)) != fingerprint
    assert model_fingerprint(tiny("mistral")) != fingerprint
    model = tiny()
    with torch.no_grad():
        model.model.layers[2].mlp.down_proj.weight[0, 0] += 0.5  # a sampled value (the first of the tensor)
    assert model_fingerprint(model) != fingerprint


def test_sample_indices_are_exact_at_real_sizes():
    """Float32 sample points round `n - 1` up to `n` above 2^24 elements (an IndexError on SmolLM2's
    49152 x 576 embedding) and land elsewhere under AVX2 (39146840 vs 39146836 for 14336 x 4096)."""
    for numel in (1, 2, 15, 16, 17, 1000, 49152 * 576, 14336 * 4096, 128256 * 4096):
        idx = sample_indices(numel)
        count = min(16, numel)
        assert len(idx) == count and idx[0] == 0 and idx[-1] == numel - 1
        assert idx == [i * (numel - 1) // max(count - 1, 1) for i in range(count)]
    assert sample_indices(14336 * 4096)[10] == 39146836  # floor(10 * 58720255 / 15)


class _Embedding(torch.nn.Module):
    """A module with one parameter of SmolLM2's embedding size (28,311,552 > 2^24 elements)."""

    def __init__(self):
        super().__init__()
        self.config = None
        self.weight = torch.nn.Parameter((torch.arange(49152 * 576) % 4099).float().view(49152, 576))


def test_a_parameter_above_two_to_the_24_fingerprints_and_the_value_is_pinned():
    """The fingerprint is a function of the weights alone: the same hex digest on every host and device
    (written out here, so a change of scheme or a host-dependent rounding fails this test)."""
    module = _Embedding()
    expected = "0b69e3bec0fd732686087acbfd3a4b0a1cf796a1a01a5e9f32bc733411fb6c68"
    digest = model_fingerprint(module)
    sampled = [(i % 4099) for i in sample_indices(49152 * 576)]
    h = hashlib.sha256(json.dumps({name: None for name in CONFIG_FIELDS}, sort_keys=True).encode())
    h.update(b"\nweight:[49152, 576]:")
    h.update(torch.tensor(sampled, dtype=torch.float32).to(torch.bfloat16).view(torch.int16).numpy().tobytes())
    assert digest == h.hexdigest()
    assert digest == expected

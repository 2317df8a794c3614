import torch

from dsla_serve.model import convert, model_fingerprint

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

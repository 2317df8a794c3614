"""The output gain of a new DSLA layer, set by least squares on one batch before fitting."""

from __future__ import annotations

import pytest
import torch

from dsla_serve.model import DSLAConfig, convert, dsla_layers, set_depth
from dsla_serve.model.tiny import build_tiny_model
from dsla_serve.trainer.calibration import calibrate_output_scale
from dsla_serve.trainer.losses import LayerOutputCapture, relative_mse


def _outputs(model, layer, ids):
    with torch.no_grad(), LayerOutputCapture(model, layer) as capture:
        model(input_ids=ids, use_cache=False)
        return capture.student.float(), capture.teacher.float()


def test_gain_is_the_least_squares_scale_and_lowers_the_error_on_other_data():
    torch.manual_seed(0)
    model = build_tiny_model("llama", seed=0, hidden_size=64, num_layers=3, num_heads=4, num_kv_heads=2)
    # a slow history gate (the specialised init) sums hundreds of tokens: the layer starts far too loud
    convert(model, [1], DSLAConfig(history_gate_bias=4.0, recency_gate_bias=-1.1))
    set_depth(model, 1)
    calib = torch.randint(3, 250, (2, 384), generator=torch.Generator().manual_seed(1))
    held_out = torch.randint(3, 250, (2, 384), generator=torch.Generator().manual_seed(2))
    student, teacher = _outputs(model, 1, calib)
    expected = float((student * teacher).sum() / (student * student).sum())
    before = float(relative_mse(*_outputs(model, 1, held_out)))
    gain = calibrate_output_scale(model, 1, calib)
    after = float(relative_mse(*_outputs(model, 1, held_out)))
    assert gain == pytest.approx(expected, rel=1e-5) and 0 < gain < 1
    torch.testing.assert_close(dsla_layers(model)[1].output_scale, torch.full((4,), gain))
    assert after < 0.5 * before and after < 1.05  # ~3.7 -> ~1.0 on this random model


def test_refuses_a_layer_that_is_not_active():
    model = build_tiny_model("llama", seed=0, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2)
    convert(model, [0])
    set_depth(model, 0)
    with pytest.raises(ValueError, match="not active"):
        calibrate_output_scale(model, 0, torch.randint(3, 250, (1, 8)))

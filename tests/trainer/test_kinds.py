"""Baseline layer kinds and the random order are fields of the one trainer's config."""

from __future__ import annotations

import pytest

from dsla_serve.model import Artifact, dsla_layers, layer_kind
from dsla_serve.trainer.trainer import ResumeError, Trainer

from .helpers import tiny_config, tiny_model
from .test_sensitivity import _order, setup  # noqa: F401 - the module fixture


def test_random_order_is_a_seeded_permutation(setup):  # noqa: F811
    first, again = _order(setup, method="random").order, _order(setup, method="random").order
    assert sorted(first) == [0, 1, 2] and first == again


@pytest.mark.parametrize("kind", ["gla", "swa"])
def test_a_baseline_kind_is_trained_published_and_refused_as_another_kind(corpus, tmp_path, kind):
    out = tmp_path / kind
    model, tok = tiny_model()
    summary = Trainer(tiny_config(corpus, out, depth=1, layer_kind=kind), model=model, tokenizer=tok).run()
    assert summary.published_depth == 1 and Artifact.open(out).kind == kind
    assert {layer_kind(t) for t in dsla_layers(model).values()} == {kind}
    metrics = summary.layers[0].metrics
    assert metrics["steps"] == 8
    # steady tokens/s: the 7 steps after the first, over their own time (the fit's loop ran them)
    assert metrics["train_tokens_per_s_steady"] > 0
    if kind == "swa":  # a 64-token window over 32-token rows is the softmax attention itself: nothing to fit
        assert metrics["train_loss_first"] < 1e-6 and metrics["ppl_ratio"] == pytest.approx(1.0, abs=1e-5)
    else:
        assert metrics["train_loss_last"] < metrics["train_loss_first"]
    with pytest.raises(ResumeError, match=f"holds '{kind}' layers, the config's layer_kind is 'dsla'"):
        Trainer(tiny_config(corpus, out, depth=2), model=tiny_model()[0], tokenizer=tok).run()

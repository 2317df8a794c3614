"""Chained distillation end to end on a tiny model: learning, nesting, resume after a crash."""

from types import SimpleNamespace

import pytest
import torch

from dsla_serve.model import Artifact, ArtifactError, convert, decoder_layers, set_depth
from dsla_serve.trainer import ResumeError, Trainer
from dsla_serve.trainer.evaluate import validate
from dsla_serve.trainer.losses import LayerOutputCapture
from dsla_serve.trainer.seeds import layer_seed

from .helpers import layer_hashes, tiny_config, tiny_model

STEPS = 12


def _logits(model, ids, depth):
    set_depth(model, depth)
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    """An uninterrupted 2-layer run; records step losses and depth-1 logits right after layer 1."""
    cfg = tiny_config(corpus, tmp_path_factory.mktemp("reference") / "artifact", training={"steps": STEPS})
    model, tokenizer = tiny_model()
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(1))
    losses, depth1 = {}, {}

    def on_layer(layer, depth, metrics):
        if depth == 1:
            depth1["logits"] = _logits(model, ids, 1)
            set_depth(model, 1)

    def on_step(layer, step, loss):
        losses.setdefault(layer, []).append(loss)

    trainer = Trainer(cfg, model=model, tokenizer=tokenizer)
    summary = trainer.run(on_layer=on_layer, on_step=on_step)
    return SimpleNamespace(cfg=cfg, trainer=trainer, summary=summary, losses=losses, ids=ids, depth1=depth1["logits"])


def test_run_publishes_the_layers_with_their_metrics(reference):
    s = reference.summary
    assert s.order == [0, 1, 2] and s.published_depth == 2 and not s.stopped and s.resumed_from == 0
    artifact = Artifact.open(s.artifact)
    assert artifact.depth == 2 and [e.layer for e in artifact.entries] == [0, 1]
    for entry in artifact.entries:
        m = entry.metrics
        assert {"val_loss", "ppl", "teacher_ppl", "ppl_ratio", "train_loss_first", "train_loss_last", "seconds",
                "steps"} <= set(m)
        assert m["steps"] == STEPS and m["ppl_ratio"] == pytest.approx(m["ppl"] / m["teacher_ppl"])
        assert entry.untied  # train_qkvo: the layer carries its own q/k/v/o
    assert artifact.metadata["order"]["method"] == "forward"


def test_each_layers_training_loss_goes_down(reference):
    for layer, losses in reference.losses.items():
        assert len(losses) == STEPS
        first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
        assert last < 0.85 * first, (layer, losses)


def test_trained_layer_beats_its_untrained_initialisation_on_validation(reference):
    cfg, trainer = reference.cfg, reference.trainer
    for rank, result in enumerate(reference.summary.layers):
        model, _ = tiny_model()
        Artifact.open(reference.summary.artifact).apply(model, depth=rank)  # the earlier layers, trained
        torch.manual_seed(layer_seed(cfg.seed, result.layer))  # the same initialisation the trainer used
        convert(model, [result.layer], cfg.dsla_config())
        untrained = validate(model, rank + 1, trainer.data.val, batch_size=8, dist=trainer.dist,
                             weights=cfg.training.loss, layer_idx=result.layer)
        assert result.metrics["val_objective"] < 0.9 * untrained.objective, (result.metrics, untrained)


def test_depth_one_is_unchanged_by_training_the_second_layer(reference):
    model = reference.trainer.model
    assert torch.equal(_logits(model, reference.ids, 1), reference.depth1)
    assert not torch.equal(_logits(model, reference.ids, 2), reference.depth1)
    fresh, _ = tiny_model()
    Artifact.open(reference.summary.artifact).apply(fresh, depth=1)
    assert torch.equal(_logits(fresh, reference.ids, 1), reference.depth1)


def test_resume_after_a_crash_in_layer_two_gives_the_same_artifact(reference, corpus, tmp_path):
    cfg = reference.cfg.with_overrides(output=str(tmp_path / "artifact"))

    def crash(layer, step, loss):
        if layer == 1 and step == 4:
            raise RuntimeError("induced crash")

    model, tokenizer = tiny_model()
    with pytest.raises(RuntimeError, match="induced crash"):
        Trainer(cfg, model=model, tokenizer=tokenizer).run(on_step=crash)
    assert Artifact.open(cfg.output).depth == 1

    model, tokenizer = tiny_model()
    summary = Trainer(cfg, model=model, tokenizer=tokenizer).run()
    assert summary.resumed_from == 1 and [r.layer for r in summary.layers] == [1]
    assert layer_hashes(cfg.output) == layer_hashes(reference.summary.artifact)
    expected = [e.sha256 for e in Artifact.open(reference.summary.artifact).entries]
    assert [e.sha256 for e in Artifact.open(cfg.output).entries] == expected


def test_resuming_with_other_training_settings_is_refused(reference):
    cfg = reference.cfg.with_overrides(training={**reference.cfg.training.model_dump(), "lr": 0.5})
    model, tokenizer = tiny_model()
    with pytest.raises(ResumeError, match=r"training\.lr \(artifact 0\.003, config 0\.5\)"):
        Trainer(cfg, model=model, tokenizer=tokenizer).run()


def test_resuming_onto_another_base_model_is_refused(reference):
    model, tokenizer = tiny_model(seed=1)  # same architecture, other weights
    with pytest.raises(ArtifactError, match="base model mismatch"):
        Trainer(reference.cfg, model=model, tokenizer=tokenizer).run()
    assert Artifact.open(reference.summary.artifact).depth == 2  # untouched


def test_mse_target_is_the_original_layer_output_on_the_same_input():
    model, _ = tiny_model()
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(2))
    original = {}
    hooks = [decoder_layers(model)[i].self_attn.register_forward_hook(
        lambda m, a, out, i=i: original.__setitem__(i, out[0])) for i in (0, 1)]
    _logits(model, ids, 0)
    for h in hooks:
        h.remove()
    convert(model, [0, 1])
    with LayerOutputCapture(model, 0) as first, LayerOutputCapture(model, 1) as second:
        _logits(model, ids, 2)
        # layer 0 sees the same input as in the original model: its target is the original output
        torch.testing.assert_close(first.teacher, original[0])
        assert not torch.allclose(first.student, first.teacher)
        # layer 1's input comes from the converted layer 0: the target follows that input
        assert not torch.allclose(second.teacher, original[1], atol=1e-6)
        model(input_ids=ids, use_cache=False)  # with autograd: only the DSLA side carries a graph
        assert second.student.requires_grad and not second.teacher.requires_grad

"""The Ray trainer actor: publishes layers in the background, reports progress, stops safely, and lets
go of its trainer's memory when a run ends."""

import gc
import os
import weakref
from pathlib import Path

import pytest
import ray
import torch

from dsla_serve.model import Artifact
from dsla_serve.model.loading import load_model_and_tokenizer
from dsla_serve.trainer.actor import TrainerActor, TrainerRunner, _Subscriber
from dsla_serve.trainer.progress import LayerResult

from tests.polling import wait_for

from .helpers import config_dict

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def local_ray():
    python_path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": python_path, "OMP_NUM_THREADS": "1"}})
    yield
    ray.shutdown()


@ray.remote
class Collector:
    """A subscriber actor: records every publication."""

    def __init__(self):
        self.events = []

    def on_layer_published(self, result: LayerResult):
        self.events.append((result.layer, result.depth, result.metrics["val_loss"]))

    def get(self):
        return self.events


def test_actor_publishes_in_the_background_and_stops_cleanly(local_ray, corpus, tmp_path):
    out = tmp_path / "artifact"
    cfg = config_dict(corpus, out, depth=4, training={"steps": 60})
    collector = Collector.remote()
    actor = TrainerActor.remote(cfg, subscriber=collector)
    assert ray.get(actor.progress.remote()).phase == "idle"
    assert ray.get(actor.start.remote()) is True
    assert ray.get(actor.start.remote()) is False  # already running

    # progress answers while training runs; wait for the first published layer and a few steps more
    wait_for(lambda: ray.get(actor.progress.remote()).published_depth >= 1, timeout=120, every=0.1)
    wait_for(lambda: (p := ray.get(actor.progress.remote())).phase == "training" and p.step >= 3,
             timeout=120, every=0.1)
    progress = ray.get(actor.stop.remote(60.0))
    assert progress.phase == "stopped" and not progress.running and progress.error is None
    depth = progress.published_depth
    assert 1 <= depth < 4 and progress.layer == [0, 1, 2, 3][depth]  # stopped inside the next layer

    published = ray.get(actor.published.remote())
    assert [p.depth for p in published] == list(range(1, depth + 1))
    events = wait_for(lambda: ray.get(collector.get.remote()) if len(ray.get(collector.get.remote())) == depth
                      else None, timeout=10, every=0.1)
    assert [(layer, d) for layer, d, _ in events] == [(p.layer, p.depth) for p in published]

    # the artifact holds exactly the published layers, whole: it loads and verifies
    artifact = Artifact.open(out)
    assert artifact.depth == depth and artifact.order == [0, 1, 2, 3]
    artifact.verify()
    model, _ = load_model_and_tokenizer("tiny:llama")
    artifact.apply(model)
    files = {p.name for p in out.iterdir()}  # no temporary files left behind
    assert files == {"manifest.json"} | {f"layer_{e.layer}.safetensors" for e in artifact.entries}
    assert ray.get(actor.summary.remote()).stopped is True
    ray.kill(actor)


def test_a_callable_subscriber_is_called_and_its_failure_is_contained(caplog):
    seen = []
    result = LayerResult(layer=3, rank=0, metrics={"val_loss": 1.0})
    _Subscriber(seen.append)(result)
    assert seen == [result] and result.depth == 1

    def broken(result):
        raise ValueError("subscriber bug")

    _Subscriber(broken)(result)  # logged, not raised: the layer is already published
    assert "subscriber failed on layer 3 (depth 1)" in caplog.text
    _Subscriber(None)(result)


def _live_models() -> int:
    gc.collect()
    return sum(isinstance(o, torch.nn.Module) and type(o).__name__.endswith("ForCausalLM") for o in gc.get_objects())


def test_a_finished_run_lets_go_of_the_trainer_and_its_models(corpus, tmp_path):
    before = _live_models()
    runner = TrainerRunner(config_dict(corpus, tmp_path / "artifact", depth=1, training={"steps": 2}), start=True)
    trainer = weakref.ref(runner._trainer)
    wait_for(lambda: _live_models() > before or not runner.progress().running, timeout=300)
    progress = runner.wait(300)
    assert progress.phase == "done" and progress.published_depth == 1 and not progress.running
    assert trainer() is None and _live_models() == before  # freed: neither the trainer nor its models are held
    assert runner.summary().published_depth == 1 and [r.depth for r in runner.published()] == [1]
    assert runner.progress() == progress  # what it reports after the run stays

"""Publishing a layer while the artifact's store is unreachable: retries with backoff (trainer/publish.py)."""

from __future__ import annotations

import threading
import uuid

import pytest

from dsla_serve.model import Artifact
from dsla_serve.model.manifest import ArtifactError, ArtifactUnavailable
from dsla_serve.model.storage import RemoteStore, StorageError
from dsla_serve.trainer import publish
from dsla_serve.trainer.publish import Backoff, publish_layer
from dsla_serve.trainer.trainer import Trainer

from .helpers import tiny_config, tiny_model


class Flaky:
    """Stands in for an Artifact whose store fails `failures` times, then takes the layer."""

    def __init__(self, failures: int, error=None):
        self.failures = failures
        self.error = error or ArtifactUnavailable("s3://b/run/manifest.json: cannot write: EndpointConnectionError")
        self.calls = 0

    def append_layer(self, model, layer, metrics):
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "entry"


@pytest.fixture
def waits(monkeypatch):
    """The waits publish_layer sleeps, recorded instead of slept; time moves by them."""
    slept: list[float] = []
    clock = [1000.0]
    monkeypatch.setattr(publish.time, "sleep", lambda s: slept.append(s) or clock.__setitem__(0, clock[0] + s))
    monkeypatch.setattr(publish.time, "monotonic", lambda: clock[0])
    return slept


def test_retries_with_exponential_backoff_until_the_store_answers(waits):
    seen = []
    artifact = Flaky(failures=5)
    assert publish_layer(artifact, None, 3, {}, backoff=Backoff(first_s=1, factor=2, max_s=5),
                         on_retry=lambda attempt, delay, e: seen.append((attempt, delay)))
    assert artifact.calls == 6 and waits == [1, 2, 4, 5, 5]
    assert seen == [(1, 1), (2, 2), (3, 4), (4, 5), (5, 5)]


def test_gives_up_after_the_limit_and_at_once_when_access_is_refused(waits):
    artifact = Flaky(failures=100)
    with pytest.raises(ArtifactUnavailable):
        publish_layer(artifact, None, 3, {}, backoff=Backoff(first_s=1, factor=2, max_s=4, give_up_s=10))
    assert waits == [1, 2, 4] and artifact.calls == 4  # a fourth wait would end past 10 s after the first failure
    denied = Flaky(failures=1, error=ArtifactUnavailable("AccessDenied", retryable=False))
    with pytest.raises(ArtifactUnavailable, match="AccessDenied"):
        publish_layer(denied, None, 3, {})
    assert denied.calls == 1
    wrong = Flaky(failures=1, error=ArtifactError("layer 3 is not next in the order"))
    with pytest.raises(ArtifactError, match="not next"):
        publish_layer(wrong, None, 3, {})
    assert wrong.calls == 1


def test_a_stop_while_waiting_leaves_the_layer_unpublished():
    stop = threading.Event()
    stop.set()
    artifact = Flaky(failures=1)
    assert publish_layer(artifact, None, 3, {}, backoff=Backoff(first_s=30), stop_event=stop) is False
    assert artifact.calls == 1


def test_the_trainer_rides_out_a_store_outage_while_publishing(corpus, tmp_path, monkeypatch):
    """A whole (tiny) run into an object store whose writes fail three times at the first layer: the trainer
    shows the retries in its progress and publishes every layer once the store answers."""
    monkeypatch.setenv("DSLA_SERVE_CACHE", str(tmp_path / "cache"))
    uri = f"memory://trainer-{uuid.uuid4().hex[:8]}/run"
    failures = {"left": 3}
    progress = []
    real_write = RemoteStore.write

    def write(store, name, data):
        if name.startswith("layer_") and failures["left"] > 0:
            failures["left"] -= 1
            progress.append(trainer.progress())
            raise StorageError(f"cannot write {store.where(name)}: EndpointConnectionError")
        real_write(store, name, data)

    monkeypatch.setattr(RemoteStore, "write", write)
    model, tokenizer = tiny_model()
    config = tiny_config(corpus, uri, depth=2, training={"steps": 2},
                         data={"episodes": {"passkey_fraction": 0, "recall_fraction": 0}})
    trainer = Trainer(config, model=model, tokenizer=tokenizer, publish_backoff=Backoff(first_s=0.01, max_s=0.05))
    summary = trainer.run()
    assert summary.published_depth == 2 and summary.artifact == uri
    assert failures["left"] == 0 and [p.phase for p in progress] == ["publishing"] * 3
    assert "retrying in" in progress[-1].error and "EndpointConnectionError" in progress[-1].error
    assert trainer.progress().error is None and trainer.progress().phase == "done"
    assert [e.layer for e in Artifact.open(uri).entries] == [0, 1]

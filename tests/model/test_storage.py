"""Artifacts in an object store (storage.py, layer_cache.py, through manifest.py): fsspec's in-memory file
system stands in for S3 here (tests/model/test_s3.py speaks the S3 protocol to a local server)."""

from __future__ import annotations

import uuid

import pytest
import torch

from dsla_serve.model import Artifact, ArtifactError, conversion_order, convert, set_depth
from dsla_serve.model import layer_cache
from dsla_serve.model.manifest import ArtifactUnavailable, read_manifest
from dsla_serve.model.storage import RemoteStore, StorageError, is_uri, location_key, mask, open_store

from .helpers import CONFIG, ORDER, logits, randomize_dsla, tiny

@pytest.fixture(autouse=True)
def node_cache(tmp_path, monkeypatch):
    """This test's own node-local cache."""
    monkeypatch.setenv("DSLA_SERVE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "layers"


@pytest.fixture
def uri():
    return f"memory://bucket-{uuid.uuid4().hex[:8]}/runs/tiny"


@pytest.fixture
def trained():
    model = convert(tiny(), ORDER, CONFIG)
    randomize_dsla(model, scale=0.2)
    return model


class StoreCalls:
    """Counts (and can fail) the remote store's reads and writes, by file name."""

    def __init__(self, monkeypatch):
        self.reads: list[str] = []
        self.writes: list[str] = []
        self.fail_writes: dict[str, str] = {}  # name -> "before" (nothing written) or "after" (written, answer lost)
        self.down = False
        real_read, real_write, real_stamp = RemoteStore.read, RemoteStore.write, RemoteStore.stamp
        calls = self

        def read(store, name):
            if calls.down:
                raise StorageError(f"cannot read {store.where(name)}: ConnectionRefusedError")
            calls.reads.append(name)
            return real_read(store, name)

        def write(store, name, data):
            how = calls.fail_writes.pop(name, None)
            if calls.down or how == "before":
                raise StorageError(f"cannot write {store.where(name)}: EndpointConnectionError")
            real_write(store, name, data)
            calls.writes.append(name)
            if how == "after":
                raise StorageError(f"cannot write {store.where(name)}: ReadTimeoutError")

        def stamp(store, name):
            if calls.down:
                raise StorageError(f"cannot look up {store.where(name)}: ConnectionRefusedError")
            return real_stamp(store, name)

        monkeypatch.setattr(RemoteStore, "read", read)
        monkeypatch.setattr(RemoteStore, "write", write)
        monkeypatch.setattr(RemoteStore, "stamp", stamp)


def test_mask_hides_userinfo_and_query_values():
    assert mask("s3://AKIA:s3cr3t@bucket/run") == "s3://***@bucket/run"
    assert mask("gs://b/x?token=abc&v=1") == "gs://b/x?token=***&v=***"
    assert mask("failed: https://user:pw@host:9000/b/k?X-Amz-Signature=ff end") == \
        "failed: https://***@host:9000/b/k?X-Amz-Signature=*** end"
    assert mask("/data/artifact") == "/data/artifact" and mask("s3://bucket/run") == "s3://bucket/run"


def test_locations():
    assert is_uri("s3://b/x") and is_uri("memory://b") and not is_uri("/data/a") and not is_uri("file:///data/a")
    assert not is_uri("relative/dir")
    assert location_key("s3://b/x/") == location_key("s3://b/x")
    assert open_store("file:///data/a").local and open_store("/data/a").local and not open_store("memory://b/x").local


def test_unusable_uris_are_refused_with_the_reason(monkeypatch):
    with pytest.raises(ArtifactError, match=r"s3://\*\*\*@bucket/run: credentials do not belong in the URI") as e:
        read_manifest("s3://AKIA:s3cr3t@bucket/run")
    assert "s3cr3t" not in str(e.value)
    with pytest.raises(ArtifactError, match="ftp:// is not an object store"):
        read_manifest("ftp://host/run")
    import fsspec.core

    def no_library(uri):
        raise ImportError("Install gcsfs to access Google Storage")

    monkeypatch.setattr(fsspec.core, "url_to_fs", no_library)
    with pytest.raises(ArtifactError, match="gs:// needs the gcsfs package: pip install gcsfs"):
        read_manifest("gs://bucket/run")


def test_an_object_store_artifact_round_trips_through_the_node_cache(uri, trained, node_cache, monkeypatch):
    calls = StoreCalls(monkeypatch)
    writer = Artifact.create(uri, tiny(), base_model_id="tiny", config=CONFIG, order=ORDER)
    assert writer.path == uri and str(writer.manifest_path) == f"{uri}/manifest.json"
    for layer in ORDER[:2]:
        writer.append_layer(trained, layer, {"ppl_ratio": 1.0})
    assert calls.writes == ["manifest.json", "layer_2.safetensors", "manifest.json", "layer_0.safetensors",
                            "manifest.json"]  # each layer before the manifest naming it
    reader = Artifact.open(uri)
    replica = reader.apply(tiny())
    assert conversion_order(replica) == [2, 0]
    set_depth(trained, 2)
    assert torch.equal(logits(replica), logits(trained))
    shas = sorted(e.sha256 for e in reader.entries)
    assert sorted(p.stem for p in node_cache.iterdir()) == shas  # pulled into the node-local cache
    assert calls.reads.count("layer_2.safetensors") == 1

    # another replica on this node: layers come from the cache, only the manifest from the store
    calls.reads.clear()
    again = Artifact.open(uri).apply(tiny())
    assert calls.reads == ["manifest.json"] and torch.equal(logits(again), logits(trained))

    # a cached file that no longer matches its name is dropped and fetched again
    (node_cache / f"{shas[0]}.safetensors").write_bytes(b"not the layer")
    Artifact.open(uri).apply(tiny())
    assert len([r for r in calls.reads if r.startswith("layer_")]) == 1
    assert layer_cache.cached(shas[0]) is not None


def test_fetch_downloads_only_what_the_cache_lacks(uri, trained, monkeypatch):
    calls = StoreCalls(monkeypatch)
    writer = Artifact.create(uri, tiny(), base_model_id="tiny", config=CONFIG, order=ORDER)
    writer.append_layer(trained, 2, {})
    reader = Artifact.open(uri)
    assert reader.fetch() == [2] and reader.fetch() == []
    writer.append_layer(trained, 0, {})
    reader.reload()
    assert reader.fetch() == [0]
    calls.reads.clear()
    reader.apply(tiny())  # everything is local now: no remote read
    assert calls.reads == []


def test_a_store_failing_between_layer_and_manifest_publishes_nothing(uri, trained, monkeypatch):
    calls = StoreCalls(monkeypatch)
    writer = Artifact.create(uri, tiny(), base_model_id="tiny", config=CONFIG, order=ORDER)
    writer.append_layer(trained, 2, {})
    reader = Artifact.open(uri)
    calls.fail_writes["manifest.json"] = "before"  # the layer's object is written, the manifest is not
    with pytest.raises(ArtifactUnavailable, match=f"{uri}/manifest.json") as e:
        writer.append_layer(trained, 0, {})
    assert e.value.retryable
    assert "layer_0.safetensors" in calls.writes  # an object no manifest names...
    assert reader.reload() == [] and reader.depth == 1  # ...is not a published layer
    assert conversion_order(reader.apply(tiny())) == [2]
    writer.append_layer(trained, 0, {})  # the retry publishes it
    assert reader.reload() == [0]


def test_a_retry_after_a_lost_answer_does_not_publish_twice(uri, trained, monkeypatch):
    calls = StoreCalls(monkeypatch)
    writer = Artifact.create(uri, tiny(), base_model_id="tiny", config=CONFIG, order=ORDER)
    calls.fail_writes["manifest.json"] = "after"  # the store applied the write, the answer was lost
    with pytest.raises(ArtifactUnavailable):
        writer.append_layer(trained, 2, {"ppl_ratio": 1.0})
    calls.writes.clear()
    entry = writer.append_layer(trained, 2, {"ppl_ratio": 1.0})
    assert calls.writes == [] and entry.rank == 0 and writer.depth == 1  # recognised, not appended again
    assert Artifact.open(uri).depth == 1


def test_an_unreachable_store_is_reported_as_such(uri, trained, monkeypatch):
    calls = StoreCalls(monkeypatch)
    writer = Artifact.create(uri, tiny(), base_model_id="tiny", config=CONFIG, order=ORDER)
    writer.append_layer(trained, 2, {})
    calls.down = True
    with pytest.raises(ArtifactUnavailable, match="ConnectionRefusedError"):
        Artifact.open(uri)
    with pytest.raises(ArtifactUnavailable):
        writer.append_layer(trained, 0, {})
    calls.down = False
    assert Artifact.open(uri).depth == 1

"""Artifacts in S3, spoken to over the S3 protocol: a moto server on localhost (tests/s3.py), s3fs as the
client, the endpoint and credentials from the environment as in production."""

from __future__ import annotations

import time
import uuid

import pytest
import torch
import yaml

from dsla_serve.model import Artifact, DSLAConfig, conversion_order, convert, get_depth
from dsla_serve.model.manifest import ArtifactUnavailable

from .helpers import randomize_dsla, tiny


@pytest.fixture
def bucket(s3, tmp_path, monkeypatch):
    """A new bucket; and this test's own layer cache (the model cache stays: the reference model's folder)."""
    from dsla_serve.model import layer_cache

    monkeypatch.setattr(layer_cache, "layer_cache_dir", lambda: tmp_path / "layers")
    return s3.create_bucket(f"artifacts-{uuid.uuid4().hex[:8]}")


def test_the_reference_model_round_trips_through_s3(s3, bucket, tmp_path):
    """SmolLM2-135M (real size: its untied layer is ~2.4 MB) published to S3 and applied from it."""
    from tests.reference import load_reference

    model, tokenizer = load_reference()
    uri = f"s3://{bucket}/smollm2"
    artifact = Artifact.create(uri, model, base_model_id="smollm2-135m", config=DSLAConfig(), order=[3, 7])
    convert(model, [3], DSLAConfig())
    randomize_dsla(model, scale=0.05)
    entry = artifact.append_layer(model, 3, {"ppl_ratio": 1.2})
    assert s3.keys(bucket) == ["smollm2/layer_3.safetensors", "smollm2/manifest.json"]
    replica, _ = load_reference()
    Artifact.open(uri).apply(replica)
    assert conversion_order(replica) == [3] and get_depth(replica) == 1
    ids = torch.tensor([tokenizer("The capital of France is").input_ids])
    with torch.no_grad():
        assert torch.equal(replica(ids).logits, model(ids).logits)
    assert (tmp_path / "layers" / f"{entry.sha256}.safetensors").is_file()  # pulled into the node cache


def test_convert_writes_its_artifact_to_s3(s3, bucket, tmp_path):
    from dsla_serve.cli import main
    from tests.trainer.helpers import config_dict, write_corpus

    uri = f"s3://{bucket}/tiny"
    config = config_dict(write_corpus(tmp_path / "corpus", documents=6), tmp_path / "unused", depth=1,
                         training={"steps": 2},
                         data={"episodes": {"passkey_fraction": 0, "recall_fraction": 0}})
    (tmp_path / "convert.yaml").write_text(yaml.safe_dump(config))
    assert main(["convert", str(tmp_path / "convert.yaml"), "--output", uri, "--quiet"]) == 0
    assert s3.keys(bucket) == ["tiny/layer_0.safetensors", "tiny/manifest.json"]
    assert not (tmp_path / "unused").exists()
    assert Artifact.open(uri).depth == 1


def test_an_unreachable_store_publishes_nothing_and_the_retry_does(s3, bucket):
    uri = f"s3://{bucket}/outage"
    model = convert(tiny(), [2, 0], DSLAConfig(gate_rank=8))
    writer = Artifact.create(uri, tiny(), base_model_id="tiny", config=DSLAConfig(gate_rank=8), order=[2, 0])
    writer.append_layer(model, 2, {})
    s3.stop()
    try:
        began = time.monotonic()
        with pytest.raises(ArtifactUnavailable, match=f"cannot (write|look up|read) {uri}/") as e:
            writer.append_layer(model, 0, {})
        assert e.value.retryable and time.monotonic() - began < 60
    finally:
        s3.start()
    assert Artifact.open(uri).depth == 1 and "outage/layer_0.safetensors" not in s3.keys(bucket)
    writer.append_layer(model, 0, {})
    assert Artifact.open(uri).depth == 2

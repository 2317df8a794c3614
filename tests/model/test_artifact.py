import hashlib
import json

import pytest
import torch

from dsla_serve.model import (Artifact, ArtifactError, DSLAConfig, conversion_order, convert, decoder_layers,
                              dsla_layers, get_depth, layer_kind, set_depth)
from dsla_serve.model.baselines import SlidingWindowAttention
from dsla_serve.model.surgery import attach_twin

from .helpers import CONFIG, ORDER, logits, randomize_dsla, tiny

@pytest.fixture
def trained():
    """The base model with layers 2 and 0 converted and 'trained' (layer 0 with its own q/k/v/o)."""
    model = convert(tiny(), [2, 0], CONFIG)
    dsla_layers(model)[0].untie_projections()
    randomize_dsla(model, scale=0.2)
    return model


@pytest.fixture
def published(tmp_path, trained):
    """An artifact with the order [2, 0, 3] of which 2 and 0 are published."""
    artifact = Artifact.create(tmp_path / "art", tiny(), base_model_id="tiny-llama", config=CONFIG, order=ORDER,
                               metadata={"note": "test"})
    artifact.append_layer(trained, 2, {"loss": 0.5, "ppl_ratio": 1.01})
    artifact.append_layer(trained, 0, {"loss": 0.75, "ppl_ratio": 1.03})
    return artifact


def snapshot(model):
    return ({k: v.clone() for k, v in model.state_dict().items()}, conversion_order(model), get_depth(model))


def assert_unchanged(model, before):
    state, order, depth = snapshot(model)
    assert (order, depth) == before[1:]
    assert state.keys() == before[0].keys() and all(torch.equal(state[k], before[0][k]) for k in state)


def test_roundtrip_gives_identical_logits_at_every_depth(published, trained):
    artifact = Artifact.open(published.path)
    assert (artifact.order, artifact.depth, artifact.config, artifact.base_model_id) == (ORDER, 2, CONFIG, "tiny-llama")
    assert [(e.layer, e.rank, e.file, e.untied) for e in artifact.entries] == [
        (2, 0, "layer_2.safetensors", False), (0, 1, "layer_0.safetensors", True)]
    assert artifact.entries[1].metrics == {"loss": 0.75, "ppl_ratio": 1.03} and artifact.metadata == {"note": "test"}
    fresh = tiny()
    assert artifact.apply(fresh) is fresh
    assert conversion_order(fresh) == [2, 0] and get_depth(fresh) == 2
    assert torch.equal(logits(fresh), logits(trained))
    for depth in (1, 0):
        artifact.apply(fresh, depth=depth)
        set_depth(trained, depth)
        assert get_depth(fresh) == depth and torch.equal(logits(fresh), logits(trained))


def test_files_hash_and_no_temporaries_left(published):
    names = sorted(p.name for p in published.path.iterdir())
    assert names == ["layer_0.safetensors", "layer_2.safetensors", "manifest.json"]
    manifest = json.loads((published.path / "manifest.json").read_text())
    assert manifest["manifest_version"] == 2 and manifest["order"] == ORDER
    for entry in manifest["layers"]:
        data = (published.path / entry["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]


def test_a_reader_picks_up_newly_published_layers(tmp_path, trained):
    writer = Artifact.create(tmp_path / "art", tiny(), base_model_id="tiny", config=CONFIG, order=ORDER)
    writer.append_layer(trained, 2, {"loss": 1.0})
    reader = Artifact.open(tmp_path / "art")
    replica = reader.apply(tiny())
    assert conversion_order(replica) == [2]
    writer.append_layer(trained, 0, {"loss": 1.0})
    assert reader.reload() == [0] and reader.depth == 2 and reader.reload() == []
    reader.apply(replica)
    assert conversion_order(replica) == [2, 0] and torch.equal(logits(replica), logits(trained))


def test_refresh_reads_each_published_layer_once(tmp_path, trained, monkeypatch):
    """A reader that applies after every reload reads (and hashes) only the layers it has not loaded."""
    import dsla_serve.model.artifact as artifact_module

    reads = []
    real = artifact_module.read_layer_bytes
    monkeypatch.setattr(artifact_module, "read_layer_bytes", lambda d, entry: reads.append(entry.layer) or real(d, entry))
    convert(trained, [3], CONFIG)
    randomize_dsla(trained, scale=0.2)
    writer = Artifact.create(tmp_path / "art", tiny(), base_model_id="tiny", config=CONFIG, order=ORDER)
    reader, replica = None, tiny()
    for layer in ORDER:
        writer.append_layer(trained, layer, {"loss": 1.0})
        if reader is None:
            reader = Artifact.open(tmp_path / "art")
        else:
            assert reader.reload() == [layer]
        reader.apply(replica)
    assert reads == ORDER  # one read per layer, in the order published: not 1 + 2 + 3
    assert torch.equal(logits(replica), logits(trained))
    reader.apply(replica, depth=1)  # another depth of the layers it holds: nothing read
    assert reads == ORDER and get_depth(replica) == 1
    Artifact.open(tmp_path / "art").apply(tiny())  # another model: its own reads
    assert reads == ORDER + ORDER


def test_layers_must_be_published_in_order(tmp_path, trained):
    artifact = Artifact.create(tmp_path / "art", tiny(), base_model_id="tiny", config=CONFIG, order=ORDER)
    with pytest.raises(ArtifactError, match=r"layer 0 is not next in the order \[2, 0, 3\]: layer 2 is"):
        artifact.append_layer(trained, 0, {})
    artifact.append_layer(trained, 2, {})
    artifact.append_layer(trained, 0, {})
    with pytest.raises(ArtifactError, match="layer 3 of the model is not converted"):
        artifact.append_layer(trained, 3, {})
    convert(trained, [3], DSLAConfig())
    with pytest.raises(ArtifactError, match="was converted with"):
        artifact.append_layer(trained, 3, {})
    with pytest.raises(ArtifactError, match="the model is not this artifact's base model"):
        artifact.append_layer(convert(tiny(seed=1), [3], CONFIG), 3, {})
    with pytest.raises(ArtifactError, match="JSON-serialisable finite values"):
        artifact.append_layer(convert(tiny(), [3], CONFIG), 3, {"loss": float("nan")})
    assert artifact.depth == 2


def test_create_resumes_the_same_artifact_and_refuses_others(tmp_path, published):
    again = Artifact.create(published.path, tiny(), base_model_id="tiny-llama", config=CONFIG, order=ORDER)
    assert again.depth == 2
    with pytest.raises(ArtifactError, match="holds a different artifact"):
        Artifact.create(published.path, tiny(), base_model_id="tiny-llama", config=CONFIG, order=[2, 0, 1])
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(ArtifactError, match="not empty and holds no manifest.json"):
        Artifact.create(tmp_path / "other", tiny(), base_model_id="t", config=CONFIG, order=ORDER)
    with pytest.raises(ArtifactError, match=r"indices outside 0..3: \[4\]"):
        Artifact.create(tmp_path / "new", tiny(), base_model_id="t", config=CONFIG, order=[0, 4])


def test_the_fingerprint_ignores_converted_layers(published, trained):
    partly = convert(tiny(), [2], CONFIG)  # a replica that already converted layer 2 itself
    published.apply(partly)
    assert torch.equal(logits(partly), logits(trained))


# --- refusals: each names the file and the problem, and leaves the model as it was -------------

def refused(artifact_path, model, match, depth=None):
    before = snapshot(model)
    with pytest.raises(ArtifactError, match=match):
        Artifact.open(artifact_path).apply(model, depth=depth)
    assert_unchanged(model, before)


def test_refuses_another_base_model(published):
    refused(published.path, tiny(seed=1), r"manifest\.json: base model mismatch: the artifact was made for 'tiny-llama'")


def test_refuses_a_missing_layer_file(published):
    (published.path / "layer_0.safetensors").unlink()
    model = convert(tiny(), [2], CONFIG)
    set_depth(model, 0)
    refused(published.path, model, r"layer_0\.safetensors: layer file missing \(layer 0")


def test_refuses_a_corrupt_layer_file(published):
    file = published.path / "layer_0.safetensors"
    data = bytearray(file.read_bytes())
    data[-3] ^= 0xFF
    file.write_bytes(bytes(data))
    refused(published.path, tiny(), r"layer_0\.safetensors: sha256 mismatch \(corrupt or replaced\)")
    published.apply(tiny(), depth=1)  # the layers before it are still usable


def test_refuses_tensors_of_the_wrong_shape_even_with_a_matching_hash(published):
    from safetensors.torch import save

    file = published.path / "layer_0.safetensors"
    data = save({"mix_logits": torch.zeros(3, 2)})
    file.write_bytes(data)
    manifest = json.loads((published.path / "manifest.json").read_text())
    manifest["layers"][1]["sha256"] = hashlib.sha256(data).hexdigest()
    (published.path / "manifest.json").write_text(json.dumps(manifest))
    refused(published.path, tiny(), r"layer_0\.safetensors: tensors do not match a DSLA layer")


def test_a_layer_written_before_the_output_gain_loads_with_gain_one(published, trained):
    from safetensors.torch import load_file, save

    file = published.path / "layer_2.safetensors"
    tensors = load_file(file)
    assert "output_scale" in tensors
    del tensors["output_scale"]
    data = save(tensors)
    file.write_bytes(data)
    manifest = json.loads((published.path / "manifest.json").read_text())
    manifest["layers"][0]["sha256"] = hashlib.sha256(data).hexdigest()
    (published.path / "manifest.json").write_text(json.dumps(manifest))
    fresh = Artifact.open(published.path).apply(tiny(), depth=1)
    assert torch.equal(dsla_layers(fresh)[2].output_scale, torch.ones(4))
    with torch.no_grad():
        dsla_layers(trained)[2].output_scale.fill_(1.0)
    set_depth(trained, 1)
    assert torch.equal(logits(fresh), logits(trained))


def test_refuses_an_unknown_manifest_version(published):
    manifest = json.loads((published.path / "manifest.json").read_text())
    for version, why in ((3, "unknown version"), (1, "host-dependent way; convert again")):
        manifest["manifest_version"] = version
        (published.path / "manifest.json").write_text(json.dumps(manifest))
        refused(published.path, tiny(), rf"manifest\.json: manifest version {version} cannot be read \(.*{why}\); "
                r"this dsla-serve reads version 2")


def test_refuses_a_depth_that_is_not_published(published):
    refused(published.path, tiny(), r"depth 3 is not available: 2 layers are published", depth=3)


def test_refuses_a_model_converted_in_another_order(published):
    refused(published.path, convert(tiny(), [0], CONFIG), r"conversion order \[0\] disagrees with the artifact's "
                                                          r"order \[2, 0, 3\]")


def test_refuses_a_malformed_manifest(published):
    manifest = json.loads((published.path / "manifest.json").read_text())
    manifest["layers"][0]["file"] = "../elsewhere.safetensors"
    (published.path / "manifest.json").write_text(json.dumps(manifest))
    refused(published.path, tiny(), r"manifest\.json: entry for layer 2 names file '\.\./elsewhere\.safetensors'")
    (published.path / "manifest.json").write_text("{not json")
    refused(published.path, tiny(), r"manifest\.json: unreadable manifest")


# --- layer kinds: an artifact holds one kind and rebuilds it ------------------------------------

@pytest.mark.parametrize("kind", ["gla", "swa"])
def test_a_baseline_artifact_roundtrips_with_identical_logits(tmp_path, kind):
    model = convert(tiny(), [2, 0], CONFIG, kind=kind)
    dsla_layers(model)[0].untie_projections()  # swa adds no parameters: give it trained q/k/v/o to store
    randomize_dsla(model, scale=0.2)
    writer = Artifact.create(tmp_path / "art", tiny(), base_model_id="tiny", config=CONFIG, order=ORDER, kind=kind)
    for layer in (2, 0):
        writer.append_layer(model, layer, {})
    assert json.loads((tmp_path / "art" / "manifest.json").read_text())["layer_kind"] == kind
    artifact = Artifact.open(tmp_path / "art")
    assert artifact.kind == kind
    fresh = artifact.apply(tiny())
    assert [layer_kind(t) for t in dsla_layers(fresh).values()] == [kind, kind]
    assert torch.equal(logits(fresh), logits(model))
    artifact.apply(fresh, depth=1)
    set_depth(model, 1)
    assert torch.equal(logits(fresh), logits(model))


def test_a_manifest_without_layer_kind_holds_dsla_layers(published, trained):
    manifest = json.loads((published.path / "manifest.json").read_text())
    del manifest["layer_kind"]  # as written before layer kinds were recorded
    (published.path / "manifest.json").write_text(json.dumps(manifest))
    artifact = Artifact.open(published.path)
    assert artifact.kind == "dsla"
    assert torch.equal(logits(artifact.apply(tiny())), logits(trained))
    manifest["layer_kind"] = "gru"
    (published.path / "manifest.json").write_text(json.dumps(manifest))
    refused(published.path, tiny(), r"manifest\.json: unknown layer_kind 'gru'; this dsla-serve builds dsla, gla")


def test_another_kind_is_refused(published):
    refused(published.path, convert(tiny(), [2], CONFIG, kind="gla"),
            r"the model's converted layers are \['gla'\], the artifact holds 'dsla' layers")
    with pytest.raises(ArtifactError, match=r"layer 3 is a 'swa' layer, the artifact holds 'dsla' layers"):
        published.append_layer(convert(tiny(), [3], CONFIG, kind="swa"), 3, {})
    with pytest.raises(ArtifactError, match=r"holds a different artifact \(base model 'tiny-llama', layer kind 'dsla'"):
        Artifact.create(published.path, tiny(), base_model_id="tiny-llama", config=CONFIG, order=ORDER, kind="gla")
    with pytest.raises(ArtifactError, match="unknown layer kind 'gru'"):
        Artifact.create(published.path.parent / "new", tiny(), base_model_id="t", config=CONFIG, order=ORDER,
                        kind="gru")
    assert published.depth == 2


def test_a_layer_with_settings_the_manifest_cannot_record_is_refused(tmp_path):
    model = tiny()
    attach_twin(model, 2, SlidingWindowAttention(decoder_layers(model)[2].self_attn, CONFIG, window=8), 0)
    artifact = Artifact.create(tmp_path / "art", tiny(), base_model_id="t", config=CONFIG, order=[2], kind="swa")
    with pytest.raises(ArtifactError, match=r"layer 2 has non-default settings \{'window': 8\}"):
        artifact.append_layer(model, 2, {})
    assert artifact.depth == 0

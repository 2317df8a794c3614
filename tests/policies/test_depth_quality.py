"""DepthQuality from an artifact's manifest: what the quality floor is computed from while serving."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dsla_serve.policies import DepthQuality, convert_config_data, load_policy, parse_policy, quality_floor

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TINY, LLAMA = EXAMPLES / "tiny-policy.yaml", EXAMPLES / "policy-llama-7b.yaml"

POLICY = parse_policy("model: {path: a/b}\nartifact: /a\npools: [{name: a, depth: 0}, {name: b, depth: 2}]\n"
                      "slo: {ttft_p95_ms: 100, tpot_p95_ms: 10}\nquality: {max_ppl_ratio: 1.2}\n")


def test_from_manifest_orders_entries_by_rank_and_tolerates_missing_metrics():
    manifest = {"layers": [{"layer": 0, "rank": 1, "metrics": {"ppl_ratio": 1.3}},
                           {"layer": 3, "rank": 0, "metrics": {"ppl_ratio": 1.05, "val_loss": 2.0}},
                           {"layer": 2, "rank": 2, "metrics": {"ppl_ratio": True}}]}
    quality = DepthQuality.from_manifest(manifest)
    assert quality == DepthQuality(available_depth=3, ppl_ratio={1: 1.05, 2: 1.3})
    assert quality_floor(POLICY, quality) == 1
    with pytest.raises(ValueError, match="no valid rank"):
        DepthQuality.from_manifest({"layers": [{"rank": 5}]})


def test_from_artifact_dir(tmp_path):
    assert DepthQuality.from_artifact_dir(tmp_path) == DepthQuality()  # the trainer has not started yet
    (tmp_path / "manifest.json").write_text(json.dumps({"layers": [{"rank": 0, "metrics": {"ppl_ratio": 1.1}}]}))
    assert DepthQuality.from_artifact_dir(tmp_path).ppl_ratio == {1: 1.1}
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="manifest.json: unreadable manifest"):
        DepthQuality.from_artifact_dir(tmp_path)


def test_reads_a_real_artifact(tmp_path):
    """The contract with dsla_serve.model.Artifact: entries with `rank` and `metrics` in manifest.json."""
    model_package = pytest.importorskip("dsla_serve.model")
    from dsla_serve.model.tiny import build_tiny_model

    model = build_tiny_model("llama", num_layers=2)
    artifact = model_package.Artifact.create(tmp_path, model, base_model_id="tiny:llama", config=None, order=[1, 0])
    model_package.convert(model, [1, 0])
    artifact.append_layer(model, 1, {"ppl_ratio": 1.05})
    artifact.append_layer(model, 0, {"ppl_ratio": 1.3})
    quality = DepthQuality.from_artifact_dir(tmp_path)
    assert quality == DepthQuality(available_depth=2, ppl_ratio={1: 1.05, 2: 1.3})
    assert quality_floor(POLICY, quality) == 1


@pytest.mark.parametrize("path", [TINY, LLAMA], ids=["tiny", "llama"])
def test_trainer_section_is_a_valid_convert_config(path):
    """The contract with dsla_serve.trainer: the controller hands this dict to `parse_config`."""
    trainer_config = pytest.importorskip("dsla_serve.trainer.config")
    policy = load_policy(path)
    config = trainer_config.parse_config(convert_config_data(policy))
    assert config.base_model == policy.model.path and str(config.output) == policy.artifact_dir
    # the section is the trainer's settings: every one of them reaches the trainer unchanged
    settings = config.model_dump(mode="json", exclude={"base_model", "output", "dtype"})
    section = policy.trainer.model_dump(mode="json", exclude={"output_dir", "serve_prompts_sample",
                                                              "serve_prompts_max", "resources", "dtype"})
    assert settings == section
    assert config.dtype == (policy.trainer.dtype if policy.trainer.dtype != "auto" else policy.model.dtype)

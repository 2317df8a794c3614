"""DepthQuality from an artifact's manifest: what the quality floor is computed from while serving."""

from __future__ import annotations

from pathlib import Path

import pytest

from dsla_serve.model import Artifact, DSLAConfig, convert
from dsla_serve.model.manifest import MANIFEST_FILE, BaseModelInfo, LayerEntry, Manifest, write_manifest
from dsla_serve.model.tiny import build_tiny_model
from dsla_serve.policies import DepthQuality, convert_config_data, load_policy, parse_policy, quality_floor
from dsla_serve.trainer.config import parse_config

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TINY, LLAMA = EXAMPLES / "tiny-policy.yaml", EXAMPLES / "policy-llama-7b.yaml"

POLICY = parse_policy("model: {path: a/b}\nartifact: /a\npools: [{name: a, depth: 0}, {name: b, depth: 2}]\n"
                      "slo: {ttft_p95_ms: 100, tpot_p95_ms: 10}\nquality: {max_ppl_ratio: 1.2}\n")


def _manifest(ratios) -> Manifest:
    layers = tuple(LayerEntry(layer=rank, rank=rank, file=f"layer_{rank}.safetensors", sha256="0" * 64,
                              metrics={} if ratio is None else {"ppl_ratio": ratio, "val_loss": 2.0})
                   for rank, ratio in enumerate(ratios))
    return Manifest(base_model=BaseModelInfo(id="m", fingerprint="f", num_layers=4), dsla_config=DSLAConfig(),
                    layer_kind="dsla", order=(0, 1, 2, 3), layers=layers, metadata={}, created_at="", updated_at="")


def test_from_manifest_reads_each_depths_ratio_and_tolerates_missing_or_odd_ones():
    quality = DepthQuality.from_manifest(_manifest([1.05, 1.3, True, None]))
    assert quality == DepthQuality(available_depth=4, ppl_ratio={1: 1.05, 2: 1.3})
    assert quality_floor(POLICY, quality) == 1


def test_from_artifact_dir(tmp_path):
    assert DepthQuality.from_artifact_dir(tmp_path) == DepthQuality()  # the trainer has not started yet
    write_manifest(tmp_path, _manifest([1.1]))
    assert DepthQuality.from_artifact_dir(tmp_path).ppl_ratio == {1: 1.1}
    (tmp_path / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="manifest.json: unreadable manifest"):
        DepthQuality.from_artifact_dir(tmp_path)


def test_reads_a_real_artifact(tmp_path):
    """The contract with dsla_serve.model.Artifact: what it writes is what the policy reads."""
    model = build_tiny_model("llama", num_layers=2)
    artifact = Artifact.create(tmp_path, model, base_model_id="tiny:llama", config=None, order=[1, 0])
    convert(model, [1, 0])
    artifact.append_layer(model, 1, {"ppl_ratio": 1.05})
    artifact.append_layer(model, 0, {"ppl_ratio": 1.3})
    quality = DepthQuality.from_artifact_dir(tmp_path)
    assert quality == DepthQuality(available_depth=2, ppl_ratio={1: 1.05, 2: 1.3})
    assert quality_floor(POLICY, quality) == 1


@pytest.mark.parametrize("path", [TINY, LLAMA], ids=["tiny", "llama"])
def test_trainer_section_is_a_valid_convert_config(path):
    """The contract with dsla_serve.trainer: the controller hands this dict to `parse_config`."""
    policy = load_policy(path)
    config = parse_config(convert_config_data(policy))
    assert config.base_model == policy.model.path and str(config.output) == policy.artifact_dir
    # the section is the trainer's settings: every one of them reaches the trainer unchanged
    settings = config.model_dump(mode="json", exclude={"base_model", "output", "dtype"})
    section = policy.trainer.model_dump(mode="json", exclude={"output_dir", "serve_prompts_sample",
                                                              "serve_prompts_max", "resources", "dtype"})
    assert settings == section
    assert config.dtype == (policy.trainer.dtype if policy.trainer.dtype != "auto" else policy.model.dtype)

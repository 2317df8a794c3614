from pathlib import Path

import pytest
import torch

from dsla_serve.trainer.config import ConfigError, load_config, parse_config
from dsla_serve.trainer.engine import DeepSpeedConfigError, complete_config
from dsla_serve.trainer.schedule import lr_multiplier

from .helpers import config_dict

GOOD = """\
base_model: tiny:llama
output: out/artifact
data:
  paths: [texts, /abs/book.txt]
  seq_len: 64
deepspeed: ds.json
training:
  steps: 5
"""


def test_relative_paths_resolve_against_the_yaml_directory(tmp_path):
    (tmp_path / "ds.json").write_text("{}")
    (tmp_path / "c.yaml").write_text(GOOD)
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.output == tmp_path / "out" / "artifact"
    assert cfg.data.paths == [tmp_path / "texts", Path("/abs/book.txt")]
    assert cfg.deepspeed == tmp_path / "ds.json"
    assert cfg.base_model == "tiny:llama" and cfg.order.method == "retrieval_delta" and cfg.training.steps == 5


def test_a_local_model_directory_resolves_but_a_hub_id_is_kept(tmp_path):
    (tmp_path / "models" / "teacher").mkdir(parents=True)
    cfg = parse_config(config_dict(tmp_path, tmp_path / "o", base_model="models/teacher"), base_dir=tmp_path)
    assert cfg.base_model == str(tmp_path / "models" / "teacher")
    cfg = parse_config(config_dict(tmp_path, tmp_path / "o", base_model="org/some-model"), base_dir=tmp_path)
    assert cfg.base_model == "org/some-model"


@pytest.mark.parametrize("edit, expected", [
    ("training:\n  stepz: 5\n", "c.yaml: training.stepz: unknown key 'stepz' (did you mean 'steps'?); allowed keys: "
                                 "steps, lr, schedule"),
    ("learning_rate: 0.1\n", "c.yaml: learning_rate: unknown key 'learning_rate'; allowed keys: depth, seed"),
    ("order: {method: list}\n", "c.yaml: order: method 'list' needs `layers`, the explicit conversion order (line 7)"),
    ("order: {method: magic}\n", "c.yaml: order.method: Input should be 'retrieval_delta', 'loss_delta', 'entropy', "
                                 "'forward', 'reverse', 'random' or 'list' (got 'magic') (line 7)"),
    ("training: {loss: {mse: 0, kl: 0}}\n", "training.loss: at least one loss weight"),
    ("training: {optimizer: sgd}\n", "training.optimizer: Input should be 'deepspeed' or 'adamw' (got 'sgd')"),
    ("layer_kind: lstm\n", "c.yaml: layer_kind: Input should be 'dsla', 'gla', 'linear' or 'swa' (got 'lstm') (line 7)"),
    ("device: tpu\n", "c.yaml: device: must be auto, cpu, cuda or cuda:N, got 'tpu' (line 7)"),
    ("dsla: {tau: -1}\n", "c.yaml: dsla.tau: Input should be greater than 0 (line 7)"),
    ("depth: 3\norder: {method: list, layers: [1, 0]}\n", "c.yaml: order.layers: lists 2 layers, fewer than depth 3"),
])
def test_bad_fields_are_named_with_file_and_line(tmp_path, edit, expected):
    (tmp_path / "ds.json").write_text("{}")
    text = GOOD.replace("training:\n  steps: 5\n", "")
    (tmp_path / "c.yaml").write_text(text + edit)
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "c.yaml")
    assert expected in str(info.value)


def test_missing_required_fields_and_files_are_reported(tmp_path):
    (tmp_path / "c.yaml").write_text("output: x\n")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "c.yaml")
    assert {p.split(": ")[1] for p in info.value.problems} == {"base_model", "data"}
    assert all(p.endswith(": Field required") for p in info.value.problems)
    with pytest.raises(ConfigError, match="nope.yaml: no such file"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "d.yaml").write_text("a: 1\na: 2\n")
    with pytest.raises(ConfigError, match="duplicate key 'a'"):
        load_config(tmp_path / "d.yaml")
    (tmp_path / "e.yaml").write_text(GOOD)
    with pytest.raises(ConfigError, match="deepspeed: DeepSpeed config file .*ds.json does not exist"):
        load_config(tmp_path / "e.yaml")


def test_deepspeed_config_is_completed_and_conflicts_are_refused(tmp_path):
    training = parse_config(config_dict(tmp_path, tmp_path)).training
    cfg = complete_config({"zero_optimization": {"stage": 2}}, training, torch.float32, world_size=2)
    assert cfg["train_micro_batch_size_per_gpu"] == 2 and cfg["gradient_accumulation_steps"] == 1
    assert cfg["gradient_clipping"] == 1.0 and "bf16" not in cfg and "optimizer" not in cfg
    assert complete_config({}, training, torch.bfloat16, 1)["bf16"] == {"enabled": True}
    with pytest.raises(DeepSpeedConfigError, match="train_micro_batch_size_per_gpu = 8 contradicts"):
        complete_config({"train_micro_batch_size_per_gpu": 8}, training, torch.float32, 1)
    with pytest.raises(DeepSpeedConfigError, match="stage = 3"):
        complete_config({"zero_optimization": {"stage": 3}}, training, torch.float32, 1)
    with pytest.raises(DeepSpeedConfigError, match="bf16.enabled is true but the model is torch.float32"):
        complete_config({"bf16": {"enabled": True}}, training, torch.float32, 1)
    assert complete_config({"train_batch_size": 8}, training, torch.float32, 4)["train_batch_size"] == 8


def test_schedule_warms_up_then_decays_to_the_floor():
    lrs = [lr_multiplier(s, total_steps=10, warmup_steps=2, min_ratio=0.1) for s in range(10)]
    assert lrs[0] == 0.5 and lrs[1] == 1.0 and lrs[2] == 1.0
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:])) and lrs[-1] == pytest.approx(0.1)
    assert lr_multiplier(7, total_steps=10, warmup_steps=0, schedule="constant") == 1.0


def test_the_tiny_example_config_is_valid_and_its_paths_resolve():
    repo = Path(__file__).resolve().parents[2]
    cfg = load_config(repo / "examples" / "convert-tiny.yaml")
    assert cfg.base_model == "tiny:llama" and cfg.depth == 2 and cfg.device == "cpu"
    assert cfg.output.resolve() == repo / "runs" / "convert-tiny"
    assert [p.resolve() for p in cfg.data.paths] == [(repo.parent / "shared" / "data" / "tinyshakespeare.txt").resolve()]


def _no_order(tmp_path, **sections) -> dict:
    data = config_dict(tmp_path, tmp_path / "out", **sections)
    del data["order"]
    return data


def test_episodes_answer_term_and_retrieval_delta_are_the_defaults(tmp_path):
    cfg = parse_config(_no_order(tmp_path))
    ep = cfg.data.episodes
    assert (ep.passkey_fraction, ep.recall_fraction, ep.passkey_min_len, ep.recall_pairs) == (0.25, 0.1, None, (4, 64))
    assert cfg.training.loss.answer_kl == 1.0 and cfg.order.method == "retrieval_delta"
    assert cfg.order.episode_sequences == 32


def test_turning_episodes_off_keeps_answer_kl_and_orders_by_loss_delta_unless_told_otherwise(tmp_path):
    off = {"episodes": {"passkey_fraction": 0.0, "recall_fraction": 0.0}}
    cfg = parse_config(_no_order(tmp_path, data=off))
    assert not cfg.data.episodes.enabled and cfg.order.method == "loss_delta" and cfg.training.loss.answer_kl == 1.0
    assert cfg.with_overrides(depth=1).order.method == "loss_delta"
    with pytest.raises(ConfigError) as err:
        parse_config({**_no_order(tmp_path, data=off), "order": {"method": "retrieval_delta"}})
    msg = str(err.value)
    assert "order.method: retrieval_delta scores layers" in msg and "data.episodes.passkey_fraction" in msg
    assert "data.episodes.recall_fraction are both 0" in msg and "loss_delta" in msg


@pytest.mark.parametrize("episodes, expected", [
    ({"passkey_fraction": 0.8, "recall_fraction": 0.3}, "must be at most 1"),
    ({"passkey_fraction": -0.1}, "data.episodes.passkey_fraction: Input should be greater than or equal to 0"),
    ({"recall_pairs": [5, 2]}, "recall_pairs must satisfy 1 <= lo <= hi"),
    ({"passkey_min_len": 100}, "data: episodes.passkey_min_len (100) is longer than seq_len (32)"),
    ({"copy_fraction": 0.1}, "data.episodes.copy_fraction: unknown key 'copy_fraction'"),
])
def test_bad_episode_settings_are_named(tmp_path, episodes, expected):
    with pytest.raises(ConfigError) as err:
        parse_config(config_dict(tmp_path, tmp_path / "out", data={"episodes": episodes}))
    assert expected in str(err.value)


def test_shorthands_and_the_layer_kind(tmp_path):
    """`data: [paths]` is `data: {paths: [...]}`, `order: name` is `order: {method: name}`; the layer kinds are
    the model package's."""
    from dsla_serve.model.baselines import LAYER_KINDS
    from dsla_serve.trainer.config import LAYER_KINDS as CONFIG_KINDS

    data = config_dict(tmp_path, tmp_path / "out")
    data.update(data=["texts", "more.txt"], order="entropy", layer_kind="gla")
    cfg = parse_config(data, base_dir=tmp_path)
    assert cfg.data.paths == [tmp_path / "texts", tmp_path / "more.txt"] and cfg.data.seq_len == 2048
    assert cfg.order.method == "entropy" and cfg.layer_kind == "gla"
    assert CONFIG_KINDS == LAYER_KINDS
    assert parse_config(config_dict(tmp_path, tmp_path / "o")).training.optimizer == "deepspeed"  # the default


def test_a_problem_deep_in_a_section_names_its_line(tmp_path):
    (tmp_path / "c.yaml").write_text("base_model: tiny:llama\noutput: o\ndata:\n  paths: [t]\n  episodes:\n"
                                     "    passkey_fraction: 2\n")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "c.yaml")
    assert info.value.problems == [f"{tmp_path / 'c.yaml'}: data.episodes.passkey_fraction: Input should be less "
                                   "than or equal to 1 (line 6)"]

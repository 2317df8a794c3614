"""Policy YAML: the examples load, and every kind of mistake is reported with its file, field and line."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dsla_serve.policies import Policy, PolicyError, load_policy, parse_policy, policy_json_schema

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "examples" / "tiny-policy.yaml"
LLAMA = REPO / "examples" / "policy-llama-7b.yaml"


def tiny_data() -> dict:
    return yaml.safe_load(TINY.read_text())


def write(tmp_path: Path, data: dict, name: str = "tiny-policy.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def error_of(tmp_path: Path, data: dict) -> str:
    with pytest.raises(PolicyError) as info:
        load_policy(write(tmp_path, data))
    return str(info.value)


def test_tiny_example_is_the_readme_policy():
    policy = load_policy(TINY)
    assert policy.model.path == "tiny:llama" and policy.model.tiny_arch == "llama"
    assert policy.http.port == 8000 and policy.http.model_name == "tiny-llama"
    assert sorted(p.depth for p in policy.pools)[0] == 0 and len(policy.pools) >= 2
    assert all(p.resources.num_gpus == 0 for p in policy.pools) and policy.trainer.resources.num_gpus == 0
    # relative paths are taken from the YAML file's directory, not the working directory
    assert policy.trainer.data.paths == [REPO.parent / "shared" / "data" / "tinyshakespeare.txt"]
    assert policy.artifact_dir == str(REPO / "runs" / "tiny-artifact")


def test_llama_example_loads_with_fractional_gpus():
    policy = load_policy(LLAMA)
    assert policy.model.dtype == "bfloat16"
    gpus = [p.resources.num_gpus for p in policy.pools]
    assert any(0 < g < 1 for g in gpus), gpus
    assert isinstance(policy.trainer.deepspeed, dict)
    assert policy.http.api_key_env


def test_round_trip_through_model_dump(tmp_path):
    policy = load_policy(TINY)
    again = Policy.model_validate(policy.model_dump())
    assert again == policy
    reloaded = load_policy(write(tmp_path, policy.model_dump(mode="json"), "dumped.yaml"))
    assert reloaded == policy
    schema = policy_json_schema()
    assert "pools" in schema["properties"] and schema["additionalProperties"] is False


def test_wrong_value_names_file_field_and_line(tmp_path):
    data = tiny_data()
    data["pools"][1]["depth"] = -1
    message = error_of(tmp_path, data)
    line = next(i for i, text in enumerate((tmp_path / "tiny-policy.yaml").read_text().splitlines(), 1)
                if text.strip() == "depth: -1")
    assert message == (f"{tmp_path / 'tiny-policy.yaml'}: pools.1.depth: "
                       f"Input should be greater than or equal to 0 (line {line})")


def test_message_uses_the_path_as_given(tmp_path, monkeypatch):
    data = tiny_data()
    data["pools"][1]["depth"] = -1
    write(tmp_path, data)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PolicyError) as info:
        load_policy("tiny-policy.yaml")
    assert str(info.value).startswith("tiny-policy.yaml: pools.1.depth: Input should be greater than or equal to 0")
    assert info.value.problems == [str(info.value)]


def test_unknown_key_lists_allowed_keys_and_suggests(tmp_path):
    data = tiny_data()
    data["pools"][0]["max_replica"] = 3
    message = error_of(tmp_path, data)
    assert "pools.0.max_replica: unknown key 'max_replica' (did you mean 'max_replicas'?)" in message
    assert "allowed keys: name, depth, min_replicas, max_replicas, initial_replicas, resources, " \
           "max_concurrent_requests" in message


def test_unknown_section_and_nested_key(tmp_path):
    data = tiny_data()
    data["autoscaling"] = {"enabled": True}
    data["controller"]["cooldown"] = 5
    message = error_of(tmp_path, data)
    assert "tiny-policy.yaml: autoscaling: unknown key 'autoscaling'; allowed keys: name, model, artifact" in message
    assert "controller.cooldown: unknown key 'cooldown' (did you mean 'cooldown_s'?)" in message


def test_every_problem_is_reported_at_once(tmp_path):
    data = tiny_data()
    data["slo"]["ttft_p95_ms"] = 0
    data["http"]["port"] = "8000"
    data["model"]["dtype"] = "fp16"
    problems = pytest.raises(PolicyError, load_policy, write(tmp_path, data)).value.problems
    assert len(problems) == 3
    joined = "\n".join(problems)
    assert "slo.ttft_p95_ms: Input should be greater than 0" in joined
    assert "http.port: Input should be a valid integer (got '8000')" in joined  # strict: no "8000" -> 8000
    assert "model.dtype: Input should be 'auto', 'float32', 'bfloat16' or 'float16' (got 'fp16')" in joined


def _set(data: dict, path: str, value) -> None:
    *parents, last = path.split(".")
    node = data
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    if value is _DELETE:
        del node[int(last) if last.isdigit() else last]
    else:
        node[int(last) if last.isdigit() else last] = value


_DELETE = object()

BAD_VALUES = [
    ("pools.1.name", "accurate", "pools.1.name: 'accurate' is already the name of pools.0"),
    ("pools.1.depth", 0, "pools.1.depth: 0 is already the depth of pools.0"),
    ("pools.0.min_replicas", 3, "pools.0.min_replicas: 3 is above max_replicas 2"),
    ("pools.0.initial_replicas", 5, "pools.0.initial_replicas: 5 is outside [min_replicas, max_replicas] = [1, 2]"),
    ("pools.0.max_replicas", 2.0, "pools.0.max_replicas: Input should be a valid integer (got 2.0)"),
    ("pools.0.name", "Big Pool", "pools.0.name: String should match pattern"),
    ("pools.0.resources", {"num_gpus": 1.5}, "pools.0.resources.num_gpus: 1.5 GPUs: above 1, Ray needs a whole"),
    ("pools.2.depth", 6, "pools.2.depth: 6 is beyond quality.max_depth 4"),
    ("pools", [], "pools: List should have at least 1 item"),
    ("controller.hysteresis", 1.0, "controller.hysteresis: Input should be less than 1"),
    ("controller.window_s", 1, "controller.window_s: 1.0 is shorter than interval_s 2.0"),
    ("quality.max_ppl_ratio", 0.9, "quality.max_ppl_ratio: Input should be greater than or equal to 1"),
    ("quality", {}, "quality: set max_ppl_ratio and/or max_depth"),
    ("quality", _DELETE, "quality: pools go to depth 4: set quality.max_ppl_ratio and/or quality.max_depth"),
    ("trainer", _DELETE, "artifact: pools go to depth 4: give an artifact directory, a trainer section, or both"),
    ("trainer.output_dir", _DELETE, "trainer.output_dir: required when no artifact is given"),
    ("artifact", "../runs/existing", "trainer.output_dir: not allowed with artifact"),
    ("trainer.order", "list", "trainer.order: method 'list' needs `layers`, the explicit conversion order"),
    ("trainer.order", {"method": "entropy", "layers": [1, 0]}, "trainer.order: `layers` is only used with method 'list'"),
    ("trainer.order", {"method": "list", "layers": [1, 0]}, "trainer.order.layers: lists 2 layers, fewer than depth 4"),
    ("trainer.order", "retrieval_delta", "trainer.order.method: retrieval_delta scores layers on held-out retrieval episodes, but data.episodes.passkey_fraction and data.episodes.recall_fraction are both 0"),
    ("trainer.order", "magic", "trainer.order.method: Input should be 'retrieval_delta', 'loss_delta', 'entropy', 'forward', 'reverse', 'random' or 'list' (got 'magic')"),
    ("trainer.deepspeed", 3, "trainer.deepspeed: must be a mapping (the DeepSpeed config itself) or a path"),
    ("trainer.training.loss.kl", 0.0, "trainer.training.loss: at least one loss weight (mse, kl, ce) must be > 0"),
    ("trainer.data.episodes", {"passkey_fraction": 0.95, "recall_fraction": 0.1}, "trainer.data.episodes: passkey_fraction (0.95) + recall_fraction (0.1) must be at most 1"),
    ("trainer.training.loss.answer_kl", -1.0, "trainer.training.loss.answer_kl: Input should be greater than or equal to 0"),
    ("trainer.steps_per_layer", 3, "trainer.steps_per_layer: unknown key 'steps_per_layer'; allowed keys: depth, seed"),
    ("trainer.layer_kind", "lstm", "trainer.layer_kind: Input should be 'dsla', 'gla', 'linear' or 'swa' (got 'lstm')"),
    ("trainer.serve_prompts_max", 10**7, "trainer.serve_prompts_max: Input should be less than or equal to 100000"),
    ("trainer.serve_prompts_sample", "yes please", "trainer.serve_prompts_sample: Input should be a valid boolean"),
    ("trainer.depth", 2, "pools.2.depth: 4 is beyond trainer.depth 2 and there is no artifact"),
    ("http.api_key_env", "1-KEY", "http.api_key_env: String should match pattern"),
    ("http.max_prompt_tokens", 4096, "http.max_prompt_tokens: 4096 leaves no room for output within model.max_model_len 2048"),
    ("model.path", "tiny:", "model.path: 'tiny:' is not tiny:<arch>"),
    ("model", _DELETE, "tiny-policy.yaml: model: Field required"),
]


@pytest.mark.parametrize("field,value,expected", BAD_VALUES, ids=[b[0] + "=" + repr(b[1])[:12] for b in BAD_VALUES])
def test_bad_values_are_named(tmp_path, field, value, expected):
    data = tiny_data()
    if field == "trainer.training.loss.kl":
        data["trainer"]["training"]["loss"]["mse"] = 0.0
    if field == "trainer.order" and value == "retrieval_delta":
        data["trainer"]["data"]["episodes"] = {"passkey_fraction": 0.0, "recall_fraction": 0.0}
    _set(data, field, value if value is _DELETE else copy.deepcopy(value))
    message = error_of(tmp_path, data)
    assert expected in message, message
    assert message.startswith(str(tmp_path / "tiny-policy.yaml") + ": ")


def test_depth_zero_only_policy_needs_no_artifact_trainer_or_quality():
    policy = parse_policy("model: {path: org/base-model}\npools: [{name: base, depth: 0}]\n"
                          "slo: {ttft_p95_ms: 500, tpot_p95_ms: 50}\n")
    assert policy.artifact_dir is None and policy.quality is None
    assert policy.http.model_name == "org/base-model" and policy.http.host == "127.0.0.1"
    assert policy.controller.interval_s == 5 and policy.controller.cooldown_s == 30
    assert policy.pools[0].initial_replicas == 1


def test_paths_resolve_against_the_file_directory(tmp_path):
    folder = tmp_path / "conf"
    folder.mkdir()
    text = ("model: {path: ./models/base, tokenizer: org/tok}\n"
            "artifact: art\n"
            "trainer: {data: [../data/a.txt, /abs/b.txt, '~/c.txt'], depth: 2}\n"
            "pools: [{name: a, depth: 0}, {name: b, depth: 2}]\n"
            "slo: {ttft_p95_ms: 500, tpot_p95_ms: 50}\nquality: {max_depth: 2}\n")
    (folder / "p.yaml").write_text(text)
    policy = load_policy(folder / "p.yaml")
    assert policy.model.path == str(folder / "models" / "base") and policy.model.is_local_path
    assert policy.model.tokenizer == "org/tok"  # a hub id is not a path
    assert policy.artifact == str(folder / "art") == policy.artifact_dir
    assert policy.trainer.data.paths == [tmp_path / "data" / "a.txt", Path("/abs/b.txt"),
                                         Path(os.path.expanduser("~/c.txt"))]
    assert policy.http.model_name == "base"
    # without a base directory, relative paths are kept as written
    assert parse_policy(text).artifact == "art"


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("model:\n  path: tiny:llama\npools: [\n  {name: a, depth: 0}\nslo: {}\n")
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert str(info.value).startswith(f"{path}: line 5, column 1: invalid YAML:")


def test_duplicate_keys_are_an_error(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("model: {path: a/b}\nslo: {ttft_p95_ms: 1, tpot_p95_ms: 1}\nslo: {ttft_p95_ms: 9, tpot_p95_ms: 9}\n")
    with pytest.raises(PolicyError, match=r"dup.yaml: line 3, column 1: invalid YAML: duplicate key 'slo' "
                                          r"\(first given at line 2\)"):
        load_policy(path)


@pytest.mark.parametrize("text,expected", [("", "the file is empty"), ("- a\n- b\n", "the file is a list")])
def test_top_level_must_be_a_mapping(tmp_path, text, expected):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError, match=f"p.yaml: {expected}; it must be a mapping of sections"):
        load_policy(path)


def test_missing_file(tmp_path):
    with pytest.raises(PolicyError, match="nope.yaml: no such file"):
        load_policy(tmp_path / "nope.yaml")


def test_check_paths_names_missing_inputs(tmp_path):
    data = tiny_data()
    data["trainer"]["data"] = {"paths": ["missing.txt", "gone/"]}
    path = write(tmp_path, data)
    load_policy(path)  # paths are not checked by default (a cluster may have them)
    with pytest.raises(PolicyError) as info:
        load_policy(path, check_paths=True)
    assert info.value.problems == [
        f"{path}: trainer.data.paths.0: {tmp_path / 'missing.txt'}: no such file or directory",
        f"{path}: trainer.data.paths.1: {tmp_path / 'gone'}: no such file or directory",
    ]
    (tmp_path / "missing.txt").write_text("text")
    (tmp_path / "gone").mkdir()
    load_policy(path, check_paths=True)


def test_check_paths_requires_an_existing_artifact_without_trainer(tmp_path):
    data = tiny_data()
    del data["trainer"]
    data["artifact"] = "art"
    path = write(tmp_path, data)
    with pytest.raises(PolicyError, match=r"artifact: .*art: no such directory"):
        load_policy(path, check_paths=True)
    (tmp_path / "art").mkdir()
    with pytest.raises(PolicyError, match=r"artifact: .*manifest.json: no such file"):
        load_policy(path, check_paths=True)
    (tmp_path / "art" / "manifest.json").write_text("{}")
    assert load_policy(path, check_paths=True).artifact_dir == str(tmp_path / "art")


def test_policies_import_neither_torch_nor_ray():
    code = ("import sys, dsla_serve.policies as p; p.load_policy(sys.argv[1]); "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'ray', 'transformers', "
            "'deepspeed', 'triton')); print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code, str(TINY)], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stdout + done.stderr


def test_docs_describe_every_field():
    docs = (REPO / "docs" / "policies.md").read_text()
    missing = []

    def walk(model, prefix):
        for name, info in model.model_fields.items():
            if f"`{name}`" not in docs:
                missing.append(prefix + name)
            sub = info.annotation
            for candidate in getattr(sub, "__args__", (sub,)):
                if isinstance(candidate, type) and hasattr(candidate, "model_fields"):
                    walk(candidate, f"{prefix}{name}.")

    walk(Policy, "")
    # the trainer section is the trainer's own settings: docs/policies.md names its sections, docs/trainer.md
    # describes every field (tests/trainer/test_docs.py)
    missing = [m for m in missing if not m.startswith("trainer.") or m.count(".") == 1]
    assert not missing, f"docs/policies.md does not mention: {missing}"


def test_without_episodes_the_trainer_order_defaults_to_loss_delta():
    data = tiny_data()
    data["trainer"].pop("order", None)
    assert parse_policy(yaml.safe_dump(data), base_dir=TINY.parent).trainer.order.method == "retrieval_delta"
    data["trainer"]["data"]["episodes"] = {"passkey_fraction": 0, "recall_fraction": 0}
    assert parse_policy(yaml.safe_dump(data), base_dir=TINY.parent).trainer.order.method == "loss_delta"


def test_the_trainer_section_is_the_trainer_config_and_has_its_defaults():
    """One schema, one set of defaults: a section that sets only data and depth holds every default of
    `dsla-serve convert` (the same TrainerSettings model)."""
    from dsla_serve.trainer.config import TrainerSettings

    data = tiny_data()
    data["trainer"] = {"data": ["../README.md"], "depth": 4, "output_dir": "../runs/x"}
    section = parse_policy(yaml.safe_dump(data), base_dir=TINY.parent).trainer
    assert isinstance(section, TrainerSettings)
    defaults = TrainerSettings(data={"paths": ["x"]}, depth=4)
    assert section.training == defaults.training and section.order == defaults.order and section.dsla == defaults.dsla
    assert section.data.model_dump(exclude={"paths"}) == defaults.data.model_dump(exclude={"paths"})


def test_a_trainer_section_can_name_a_convert_file(tmp_path):
    convert = tmp_path / "convert.yaml"
    convert.write_text("base_model: tiny:llama\noutput: art\ndepth: 4\ndata: {paths: [t.txt], seq_len: 64}\n"
                       "order: entropy\ntraining: {steps: 7}\n")
    data = tiny_data()
    data["trainer"] = {"config": "convert.yaml", "resources": {"num_cpus": 0.5}}
    policy = load_policy(write(tmp_path, data))
    assert policy.trainer.training.steps == 7 and policy.trainer.order.method == "entropy"
    assert policy.artifact_dir == str(tmp_path / "art") and policy.trainer.data.paths == [tmp_path / "t.txt"]
    assert "config" not in policy.model_dump()["trainer"]  # a dumped policy holds the settings themselves
    assert Policy.model_validate(policy.model_dump()).trainer.model_dump() == policy.trainer.model_dump()

    data["trainer"]["training"] = {"steps": 3}
    assert "trainer.training: not allowed with trainer.config" in error_of(tmp_path, data)
    del data["trainer"]["training"]
    convert.write_text(convert.read_text().replace("tiny:llama", "tiny:qwen2"))
    assert "trainer.config: " in error_of(tmp_path, data) and "base_model 'tiny:qwen2' is not model.path" in \
        error_of(tmp_path, data)
    convert.write_text(convert.read_text().replace("tiny:qwen2", "tiny:llama").replace("steps: 7", "stepz: 7"))
    message = error_of(tmp_path, data)
    assert f"trainer.config: {convert}: training.stepz: unknown key 'stepz' (did you mean 'steps'?)" in message


def test_artifact_locations_may_be_object_store_uris(tmp_path):
    data = tiny_data()
    data["trainer"]["output_dir"] = "s3://bucket/runs/tiny/"
    policy = load_policy(write(tmp_path, data), check_paths=False)
    assert policy.artifact_dir == "s3://bucket/runs/tiny"  # kept as written, not joined to the file's folder
    data = tiny_data()
    del data["trainer"]
    data["artifact"] = "gs://bucket/art"
    assert load_policy(write(tmp_path, data), check_paths=True).artifact == "gs://bucket/art"  # not a local path

    data = tiny_data()
    data["trainer"]["output_dir"] = "s3://AKIA:s3cr3t@bucket/run"
    message = error_of(tmp_path, data)
    assert "trainer.output_dir: s3://***@bucket/run: credentials do not belong in the URI" in message
    assert "s3cr3t" not in message
    data = tiny_data()
    data["trainer"].update(output_dir="s3://bucket/run", serve_prompts_sample=True)
    assert "trainer.serve_prompts_sample: needs a local artifact directory" in error_of(tmp_path, data)


def test_custom_resources_place_pools_and_the_trainer(tmp_path):
    from dsla_serve.controller.app import pool_options

    data = tiny_data()
    data["pools"][0]["resources"] = {"num_cpus": 0.5, "custom": {"serving": 1}}
    data["trainer"]["resources"] = {"num_cpus": 1, "custom": {"trainer_node": 0.5}}
    policy = load_policy(write(tmp_path, data))
    assert pool_options(policy, policy.pools[0].name)["ray_actor_options"] == {"num_cpus": 0.5,
                                                                             "resources": {"serving": 1.0}}
    assert "resources" not in pool_options(policy, policy.pools[1].name)["ray_actor_options"]
    assert policy.trainer.resources.ray_options() == {"num_cpus": 1.0, "resources": {"trainer_node": 0.5}}
    for bad, why in (({"CPU": 1}, "not a custom resource"), ({"serving": 0}, "must be > 0"),
                     ({"serving": "1"}, "valid number")):
        data["pools"][0]["resources"] = {"custom": bad}
        assert why in error_of(tmp_path, data), bad

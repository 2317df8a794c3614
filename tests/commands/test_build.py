"""Commands and builders that need no running Ray: `build` (a config Serve accepts), the app builder,
the trainer section's mapping, the status tables, and the early checks of `serve`."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import io
import json
from pathlib import Path

import pytest
import yaml
from pydantic import TypeAdapter
from ray.serve import Application
from ray.serve.schema import ServeDeploySchema
from rich.console import Console

from dsla_serve.commands import build as build_cmd
from dsla_serve.commands import serve as serve_cmd
from dsla_serve.commands import status as status_cmd
from dsla_serve.commands.status_view import render, status_line
from dsla_serve.controller.app import IMPORT_PATH, build_app
from dsla_serve.controller.control_plane.control import PolicyControl
from dsla_serve.controller.control_plane.trainer_link import TrainerSetupError, convert_config
from dsla_serve.controller.messages import Status
from dsla_serve.policies import load_policy
from dsla_serve.trainer import TrainerProgress, load_config, parse_config
from tests.controller.helpers import REPO, policy_dict, replica_report, write_policy

TINY_POLICY = REPO / "examples" / "tiny-policy.yaml"


def _args(module, argv):
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(argv)


def test_build_writes_a_config_serve_deploy_accepts(tmp_path, capsys):
    out = tmp_path / "serve.yaml"
    assert build_cmd.run(_args(build_cmd, [str(TINY_POLICY), "-o", str(out), "--host", "0.0.0.0"])) == 0
    text = out.read_text()
    assert text.startswith("# Ray Serve config written by `dsla-serve build")
    config = yaml.safe_load(text)
    schema = ServeDeploySchema.model_validate(config)  # Ray's own schema of `serve deploy` files
    app = schema.applications[0]
    assert app.import_path == IMPORT_PATH and app.name == "tiny" and app.route_prefix == "/"
    assert app.external_scaler_enabled
    assert schema.http_options.host == "0.0.0.0" and schema.http_options.port == 8000
    # the policy travels whole, paths absolute, and builds the same application
    policy = load_policy(TINY_POLICY)
    assert app.args["policy"]["trainer"]["data"]["paths"] == [str(p) for p in policy.trainer.data.paths]
    built = build_app(app.args)
    assert isinstance(built, Application)
    assert "wrote" in capsys.readouterr().out


def test_build_app_refuses_bad_args(tmp_path):
    with pytest.raises(ValueError, match="exactly one of"):
        build_app({})
    with pytest.raises(ValueError, match="unknown keys"):
        build_app({"policy_path": "x", "colour": "red"})
    with pytest.raises(ValueError, match="pools"):
        build_app({"policy": {"model": {"path": "tiny:llama"}, "slo": {"ttft_p95_ms": 1, "tpot_p95_ms": 1}}})
    path = write_policy(tmp_path / "p.yaml", policy_dict(8000))
    assert isinstance(build_app({"policy_path": str(path), "seed": 3}), Application)


def test_bad_policies_are_reported_without_tracebacks(tmp_path, capsys):
    bad = policy_dict(8000)
    bad["pools"][0]["max_replica"] = 2
    path = write_policy(tmp_path / "bad.yaml", bad)
    assert build_cmd.run(_args(build_cmd, [str(path), "-o", str(tmp_path / "x.yaml")])) == 2
    err = capsys.readouterr().err
    assert "pools.0.max_replica: unknown key" in err and "did you mean 'max_replicas'" in err
    assert not (tmp_path / "x.yaml").exists()

    keyed = policy_dict(8000)
    keyed["http"]["api_key_env"] = "DSLA_TEST_NOT_SET"
    path = write_policy(tmp_path / "keyed.yaml", keyed)
    assert serve_cmd.run(_args(serve_cmd, [str(path)])) == 2  # refused before Ray starts
    assert "$DSLA_TEST_NOT_SET is not set" in capsys.readouterr().err


def test_trainer_section_maps_onto_the_trainer_config():
    policy = load_policy(TINY_POLICY)
    config = convert_config(policy)
    parsed = parse_config(config)  # the trainer's own validation accepts it
    t = policy.trainer
    assert parsed.base_model == "tiny:llama" and str(parsed.output) == policy.artifact_dir
    assert parsed.device == "cpu" and parsed.dtype == policy.model.dtype  # no GPU in the actor; the model's dtype
    assert parsed.model_dump(exclude={"base_model", "output", "device", "dtype"}) == \
        t.model_dump(exclude={"output_dir", "serve_prompts_sample", "serve_prompts_max", "resources", "device", "dtype"})

    data = policy.model_dump(mode="json")
    assert parsed.data.train_only_paths == []  # opted out: no served prompts
    data["trainer"].update(serve_prompts_sample=True, serve_prompts_max=7)
    opted_in = parse_config(convert_config(type(policy).model_validate(data)))
    assert opted_in.data.train_only_paths == [Path(policy.artifact_dir) / "served-prompts.jsonl"]
    assert opted_in.data.paths == parsed.data.paths  # validation still comes from the configured data only
    data["trainer"].update(serve_prompts_sample=False, seed=1)
    with pytest.raises(TrainerSetupError, match="trainer.seed"):
        convert_config(type(policy).model_validate(data))


def test_a_policy_and_a_convert_file_with_the_same_settings_write_the_same_layers(tmp_path):
    """One schema: the trainer section of a policy and a `dsla-serve convert` file holding the same settings
    train the same artifact, byte for byte (the layer files; the manifest adds timings)."""
    from dsla_serve.trainer.trainer import Trainer
    from tests.trainer.helpers import layer_hashes, write_corpus

    corpus = write_corpus(tmp_path / "corpus", documents=6, words=150)
    settings = {"data": {"paths": [str(corpus)], "seq_len": 32, "max_val_tokens": 256}, "depth": 2,
                "order": "forward", "training": {"steps": 3, "micro_batch_size": 2, "warmup_steps": 1},
                "dsla": {"gate_rank": 4}, "deepspeed": {"zero_optimization": {"stage": 0}}}
    policy_file = write_policy(tmp_path / "p.yaml", {**policy_dict(8000),
                                                     "trainer": {**settings, "output_dir": str(tmp_path / "a")}})
    convert_file = tmp_path / "convert.yaml"
    convert_file.write_text(yaml.safe_dump({**settings, "base_model": "tiny:llama", "output": str(tmp_path / "b"),
                                            "device": "cpu", "dtype": "float32"}))
    from_policy = parse_config(convert_config(load_policy(policy_file)), label="trainer section")
    from_file = load_config(convert_file)
    assert from_policy.model_dump(exclude={"output"}) == from_file.model_dump(exclude={"output"})
    for config in (from_policy, from_file):
        assert Trainer(config).run().published_depth == 2
    assert layer_hashes(tmp_path / "a") == layer_hashes(tmp_path / "b") and len(layer_hashes(tmp_path / "a")) == 2


def test_status_views_render(tmp_path, capsys):
    policy = load_policy(write_policy(tmp_path / "p.yaml", policy_dict(8000)))
    control = PolicyControl(policy, 0.0)
    control.report(replica_report("accurate", "r1", depth=0, waiting=1, running=2, max_depth=0), 0.0)
    control.tick(0.5)
    control.set_trainer_progress(TrainerProgress(phase="training", layer=3, step=5, steps=60, loss=0.5))
    status = control.status(1.0)
    # what `dsla-serve status` reads back from the JSON the ingress sends is the same Status
    assert TypeAdapter(Status).validate_python(json.loads(json.dumps(dataclasses.asdict(status)))) == status
    line = status_line(status)
    assert line.startswith("routing accurate 100% @d0") and "training layer 3 step 5/60" in line
    console = Console(file=io.StringIO(), width=200)
    render(status, console)
    text = console.file.getvalue()
    assert "pools" in text and "accurate" in text and "last decisions" in text

    # `dsla-serve status` against an unreachable URL fails cleanly
    assert status_cmd.run(_args(status_cmd, ["--url", "http://127.0.0.1:9", "--timeout", "1"])) == 2
    assert "no answer from http://127.0.0.1:9" in capsys.readouterr().err

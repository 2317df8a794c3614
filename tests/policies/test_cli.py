"""`dsla-serve check`: a valid policy prints a summary and exits 0; a bad one prints its problems and exits 2."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from dsla_serve.policies import cli, load_policy

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "examples" / "tiny-policy.yaml"


def check(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="dsla-serve check")
    cli.add_arguments(parser)
    return cli.run(parser.parse_args(list(argv)))


def test_summary_of_the_tiny_policy(capsys):
    assert check(str(TINY)) == 0
    out = capsys.readouterr().out
    assert "served as 'tiny-llama' on http://127.0.0.1:8000" in out
    assert "accurate         depth 0" in out and out.rstrip().endswith(f"{TINY}: OK")


def test_yaml_output_loads_back_to_the_same_policy(capsys, tmp_path):
    assert check(str(TINY), "--format", "yaml") == 0
    (tmp_path / "normalised.yaml").write_text(capsys.readouterr().out)
    assert load_policy(tmp_path / "normalised.yaml") == load_policy(TINY)


def test_bad_policy_exits_2_with_the_problems(capsys, tmp_path):
    data = yaml.safe_load(TINY.read_text())
    data["slo"]["tpot_p95_ms"] = -5
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    assert check(str(path)) == 2
    err = capsys.readouterr().err
    assert f"{path}: slo.tpot_p95_ms: Input should be greater than 0" in err


def test_schema(capsys):
    assert check("--schema") == 0
    assert "pools" in json.loads(capsys.readouterr().out)["properties"]
    assert check() == 2

"""`dsla-serve eval` end to end on a tiny model with a DSLA artifact: JSON results and PNG plots."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from dsla_serve.quality import cli
from dsla_serve.quality.models import parse_depths


def _run(*argv) -> int:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return cli.run(parser.parse_args([str(a) for a in argv]))


@pytest.fixture(scope="module")
def artifact_dir(tmp_path_factory):
    """An artifact for tiny:llama (seed 0) with layers [3, 1] published, gates perturbed."""
    from dsla_serve.model import Artifact, convert, dsla_layers
    from dsla_serve.model.loading import load_model_and_tokenizer

    model, _ = load_model_and_tokenizer("tiny:llama")
    path = tmp_path_factory.mktemp("artifact")
    art = Artifact.create(path, model, base_model_id="tiny:llama", config=None, order=[3, 1])
    convert(model, [3, 1])
    torch.manual_seed(0)
    with torch.no_grad():
        for twin in dsla_layers(model).values():
            for p in twin.own_parameters().values():
                p.add_(torch.randn_like(p) * 0.5)
    art.append_layer(model, 3, {"val_loss": 1.0})
    art.append_layer(model, 1, {"val_loss": 1.0})
    return path


def _common(data, out):
    return ["--model", "tiny:llama", "--data", data, "--out", out, "--context", "64", "--buckets", "0,16,32,64",
            "--max-windows", "4", "--passkey-lengths", "128,160", "--passkey-episodes", "2", "--mqar-pairs", "2,4",
            "--mqar-episodes", "2", "--quiet"]


def test_eval_cli_writes_json_and_plots_per_depth(artifact_dir, books_dir, split, tmp_path):
    data = books_dir / split["validation"][0]
    out = tmp_path / "eval"
    assert _run(*_common(data, out), "--artifact", artifact_dir, "--depths", "0,L/2,L") == 0
    report = json.loads((out / "results.json").read_text())
    assert report["order"] == [3, 1] and report["data"]["documents"] == [data.name]
    runs = report["runs"]
    assert [r["depth"] for r in runs] == [0, 1, 2] and [r["converted_layers"] for r in runs] == [[], [3], [3, 1]]
    for r in runs:
        p = r["perplexity"]
        assert p["windows"] == 4 and [(b["lo"], b["hi"]) for b in p["buckets"]] == [(0, 16), (16, 32), (32, 64)]
        assert [x["length"] for x in r["passkey"]["rows"]] == [128, 160]
        assert [x["pairs"] for x in r["mqar"]["rows"]] == [2, 4] and r["mqar"]["rows"][1]["queries"] == 8
    assert len({r["perplexity"]["overall"]["nll"] for r in runs}) == 3  # each depth is a different model
    for png in ("perplexity_by_position.png", "passkey.png", "mqar.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"

    # depth 0 of the artifact is exactly the base model
    base = tmp_path / "base"
    assert _run(*_common(data, base), "--tasks", "ppl") == 0
    base_run = json.loads((base / "results.json").read_text())["runs"][0]
    assert base_run["perplexity"]["overall"] == runs[0]["perplexity"]["overall"]
    assert "passkey" not in base_run and (base / "perplexity_by_position.png").exists()


def test_parse_depths():
    assert parse_depths("L/4,L/2,3L/4,L", 8) == [2, 4, 6, 8]
    assert parse_depths("0, 3,3", 4) == [0, 3] and parse_depths("all", 2) == [0, 1, 2]
    with pytest.raises(ValueError, match="not available"):
        parse_depths("5", 4)
    with pytest.raises(ValueError, match="bad depth 'half'"):
        parse_depths("half", 4)


def test_bad_arguments_are_named():
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--model", "m", "--data", "d", "--out", "o", "--tasks", "ppl,bleu"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--model", "m", "--data", "d", "--out", "o", "--buckets", "0,300,200"])

"""experiments/: a consumer of the product. Campaign configs load with file/field/line errors, the driver runs
`dsla-serve convert` and `dsla-serve eval` per run (sharing a measured order) and resumes, the report checks
issue 19's targets, and no training loop, optimiser or order code lives there."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from experiments.campaign import CampaignError, load_campaign
from experiments.driver import main as driver_main
from experiments.report import check_targets

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "experiments" / "configs"


def test_the_shipped_campaign_configs_load():
    names = sorted(p.name for p in CONFIGS.glob("*.yaml"))
    assert {"smollm2-claim.yaml", "smoke.yaml", "reproduce-cpu.yaml"} <= set(names)
    for path in CONFIGS.glob("*.yaml"):
        campaign, _ = load_campaign(path)
        assert campaign.runs


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _smoke() -> dict:
    return yaml.safe_load((CONFIGS / "smoke.yaml").read_text())


@pytest.mark.parametrize("edit, expected", [
    (lambda d: d["runs"][1].update(order_from="gla_s1"), "runs.1.order_from: 'gla_s1' is not a run listed before"),
    (lambda d: d["runs"][2]["convert"].update(layer_kind="lstm"),
     "runs.2.convert: runs.2 (gla_s0): layer_kind: Input should be 'dsla', 'gla', 'linear' or 'swa' (got 'lstm')"),
    (lambda d: d["runs"][0].update(stepz=3), "runs.0.stepz: unknown key 'stepz'"),
    (lambda d: d.update(targets={"dsla": ["nope"]}), "targets: unknown run(s) ['nope']"),
])
def test_config_errors_name_the_field(tmp_path, edit, expected):
    data = _smoke()
    edit(data)
    with pytest.raises(CampaignError) as info:
        load_campaign(_write(tmp_path, data))
    assert expected in str(info.value)


def test_the_driver_converts_and_evaluates_each_run_in_a_shared_order_and_resumes(tmp_path):
    data = _smoke()
    data["convert"]["data"]["paths"] = [str(REPO / "tests" / "data" / "alice_ch1-2.txt")]
    data["eval"]["data"] = str(REPO / "tests" / "data" / "wizard_of_oz_ch1-2.txt")
    data["runs"] = [{"name": "dsla_s0", "depth": "L/2", "eval_depths": ["L/4", "L/2"]},
                    {"name": "gla_s0", "depth": 1, "eval_depths": [1], "order_from": "dsla_s0",
                     "convert": {"layer_kind": "gla", "training": {"optimizer": "adamw"}}}]
    data["experiments"] = {"claim": {"title": "t", "runs": ["dsla_s0", "gla_s0"]}}
    data["targets"] = {"dsla": ["dsla_s0"], "single": ["gla_s0"]}
    config, out = _write(tmp_path, data), tmp_path / "out"
    assert driver_main([str(config), "--out", str(out), "--workers", "2"]) == 0
    order = json.loads((out / "runs" / "dsla_s0" / "artifact" / "manifest.json").read_text())["order"]
    gla = yaml.safe_load((out / "runs" / "gla_s0" / "convert.yaml").read_text())
    assert gla["order"]["method"] == "list" and gla["order"]["layers"] == order and gla["layer_kind"] == "gla"
    assert gla["training"]["optimizer"] == "adamw" and gla["depth"] == 1
    evals = json.loads((out / "runs" / "dsla_s0" / "eval" / "results.json").read_text())
    assert [r["depth"] for r in evals["runs"]] == [1, 2]
    assert json.loads((out / "teacher" / "results.json").read_text())["runs"][0]["depth"] == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["distillation"]["dsla_s0"]["layers"] == 2 and summary["distillation"]["gla_s0"]["layer_kind"] == "gla"
    assert summary["distillation"]["dsla_s0"]["tokens_per_s_steady"] > 0  # 3 steps a layer: the last two timed
    assert {t["status"] for t in summary["targets"]} <= {"met", "missed", "not measured"}
    assert "| base model | 0 |" in (out / "summary.md").read_text()
    before = (out / "runs" / "dsla_s0" / "eval" / "results.json").stat().st_mtime_ns
    assert driver_main([str(config), "--out", str(out), "--workers", "2"]) == 0  # resumed: nothing redone
    assert (out / "runs" / "dsla_s0" / "eval" / "results.json").stat().st_mtime_ns == before


def _ev(ppl, last, passkey):
    return {"perplexity": {"overall": {"ppl": ppl}, "buckets": [{"lo": 0, "hi": 1024, "ppl": ppl},
                                                                 {"lo": 1024, "hi": 4096, "ppl": last}]},
            "passkey": {"rows": [{"length": 1024, "accuracy": passkey}, {"length": 4096, "accuracy": passkey}]}}


def test_the_target_checks_of_issue_19():
    from experiments.report import metrics

    campaign, _ = load_campaign(CONFIGS / "smoke.yaml")
    teacher = metrics(_ev(10.0, 9.0, 1.0))
    runs = {"dsla_s0": {"evals": {"2": _ev(10.2, 9.2, 0.97), "3": _ev(10.9, 9.8, 0.9)}},
            "dsla_s1": {"evals": {"2": _ev(10.25, 9.25, 0.96)}},
            "gla_s0": {"evals": {"2": _ev(11.0, 9.9, 0.5)}}, "gla_s1": {"evals": {"2": _ev(11.1, 10.0, 0.6)}}}
    got = {(t["target"][:12], t["run"]): t for t in check_targets(teacher, runs, campaign, 4)}
    assert [t["status"] for t in check_targets(teacher, runs, campaign, 4)] == ["met"] * 6
    assert "+2.00%" in got[("L/2 (depth 2", "dsla_s0")]["detail"]
    assert "+9.00%" in got[("3L/4 (depth ", "dsla_s0")]["detail"]
    runs["dsla_s1"]["evals"]["2"] = _ev(10.4, 9.35, 0.9)  # +4%: over 3%; passkey 10 points down
    runs["gla_s1"]["evals"]["2"] = _ev(10.3, 9.3, 0.9)    # one state now within the DSLA seeds' spread
    statuses = {(t["target"][:12], t["run"]): t["status"] for t in check_targets(teacher, runs, campaign, 4)}
    assert statuses[("L/2 (depth 2", "dsla_s1")] == "missed" and statuses[("L/2 passkey ", "dsla_s1")] == "missed"
    assert statuses[("DSLA better ", "dsla_s0,dsla_s1,gla_s0,gla_s1")] == "missed"
    assert {t["status"] for t in check_targets(None, {}, campaign, 4)} == {"not measured"}


def test_each_layers_cost_is_its_ratio_over_the_one_before():
    from experiments.report import _cost_table, layer_costs

    dist = {"a": {"order": [3, 0, 2], "ppl_ratio_by_depth": [1.02, 1.122, 1.122]},
            "b": {"order": [3, 0], "ppl_ratio_by_depth": [1.05, 1.05]}, "one": {"order": [1], "ppl_ratio_by_depth": [2.0]}}
    costs = layer_costs(dist)
    assert costs["a"] == pytest.approx({3: 0.02, 0: 0.1, 2: 0.0}) and costs["b"] == pytest.approx({3: 0.05, 0: 0.0})
    table = _cost_table(costs)
    assert table[0] == "| layer | position | a | b |"  # a one-layer run has no chain to cost
    assert table[3] == "| 0 | 2 | +10.0% | +0.0% |" and table[4] == "| 2 | 3 | +0.0% |  |"
    assert table[-1] == "| median | | +2.0% | +2.5% |"


def test_spearman_is_the_correlation_of_ranks():
    from experiments.report import spearman

    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [9, 1, 0, -5]) == pytest.approx(-1.0)
    # 1 - 6 * sum(d^2) / (n (n^2 - 1)) without ties: ranks (1,2,3,4,5) against (2,1,4,3,5): d^2 sums to 4
    assert spearman([1, 2, 3, 4, 5], [0.2, 0.1, 0.4, 0.3, 0.5]) == pytest.approx(1 - 6 * 4 / (5 * 24))
    assert spearman([1, 1, 2], [1, 1, 2]) == pytest.approx(1.0)  # ties share their mean rank


def test_locality_prints_each_layers_local_share_beside_its_cost(tmp_path, capsys):
    from experiments.locality import main as locality_main

    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"layer_costs": {"dsla_s0": {"2": 0.1, "0": 0.01, "3": 0.02}}}))
    out = tmp_path / "locality.json"
    assert locality_main(["--model", "tiny:llama", "--data", str(REPO / "tests" / "data" / "alice_ch1-2.txt"),
                          "--seq-len", "64", "--sequences", "3", "--window", "8", "--costs", str(summary),
                          "--out", str(out)]) == 0
    got = json.loads(out.read_text())
    assert got["rows"] == [3, 64] and sorted(got["local_mass"]) == ["0", "1", "2", "3"]
    assert all(0 < m <= 1 for m in got["local_mass"].values()) and -1 <= got["spearman"] <= 1
    assert "+10.0%" in capsys.readouterr().out


def test_experiments_hold_no_training_loop_optimiser_or_order_code():
    """experiments/ is a consumer: the product's commands train, order and score."""
    forbidden = re.compile(r"\.backward\(|torch\.optim|AdamW|zero_grad|clip_grad|deepspeed\.initialize|"
                           r"lr_multiplier|fit_layer|attention_entropy|loss_delta_scores|compute_order|"
                           r"distillation_loss|import torch|from torch")
    found = [f"{p.name}:{i}" for p in (REPO / "experiments").rglob("*.py") for i, line in
             enumerate(p.read_text().splitlines(), 1) if forbidden.search(line)]
    assert not found, found

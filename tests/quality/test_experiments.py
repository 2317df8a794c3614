"""experiments/quality.py: the whole campaign at toy sizes on the CPU, its resume, and the target checks."""

from __future__ import annotations

import json

import pytest

from experiments import quality
from experiments.config import load_config
from experiments.report import check_targets


@pytest.fixture(scope="module")
def teacher_dir(tokenizer, tmp_path_factory):
    """A random 2-layer Llama with the session's BPE tokenizer, saved like the recipe saves a teacher."""
    from dsla_serve.model.tiny import build_tiny_model

    d = tmp_path_factory.mktemp("teacher")
    model = build_tiny_model("llama", hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
                             vocab_size=len(tokenizer), max_position_embeddings=256)
    model.save_pretrained(d)
    tokenizer.save_pretrained(d)
    return d


def test_smoke_campaign_runs_every_experiment_and_resumes(teacher_dir, token_corpus_dir, tmp_path):
    out = tmp_path / "results"
    args = ["--smoke", "--teacher", str(teacher_dir), "--data", str(token_corpus_dir), "--out", str(out)]
    assert quality.main(args + ["--time-budget-min", "0"]) == quality.EXIT_INCOMPLETE  # budget: no run started
    assert (out / "teacher.json").is_file() and not (out / "runs").exists()
    assert quality.main(args) == 0
    cfg = load_config(quality.CONFIGS / "quality-smoke.json")
    for spec in cfg.runs:
        run = json.loads((out / "runs" / f"{spec.name}.json").read_text())
        chain, evals = spec.depths(2)
        assert run["complete"] and len(run["layers"]) == chain and sorted(map(int, run["evals"])) == evals
        assert all(layer["validation"]["ppl_ratio"] > 0 for layer in run["layers"])
    orders = json.loads((out / "orders.json").read_text())
    assert set(orders) == {"loss_delta", "entropy", "random"}
    assert json.loads((out / "runs" / "dsla_low_rank.json").read_text())["order"] == orders["entropy"]["order"][:1]
    assert sorted(orders["loss_delta"]["order"]) == [0, 1] and set(orders["loss_delta"]["scores"]) == {"0", "1"}
    summary = json.loads((out / "summary.json").read_text())
    assert [t["status"] in ("met", "missed") for t in summary["targets"]] == [True, True, True]
    assert set(summary["experiments"]) == {"1_depth", "2_baselines", "3_orders", "4_gates", "5_answer_term"}
    dsla = json.loads((out / "runs" / "dsla.json").read_text())
    assert dsla["fit"]["loss"]["answer_kl"] == 1.0 and dsla["dsla_config"]["gate_init_std"] == 0.02  # the defaults
    assert json.loads((out / "runs" / "dsla_no_answer.json").read_text())["fit"]["loss"]["answer_kl"] == 0.0
    assert json.loads((out / "runs" / "dsla_specialised.json").read_text())["dsla_config"]["history_gate_bias"] == 4.0
    assert [(p["dsla"], p["single"]) for p in summary["target_pairs"]] == [("dsla", "gla"), ("dsla_no_answer", "gla")]
    assert summary["target_pairs"][0]["targets"] == summary["targets"]
    md = (out / "summary.md").read_text()
    assert "| teacher | 0 |" in md and "not yet run" not in md and "Without the answer term (DSLA only)" in md
    for png in ("2_baselines_long_ppl.png", "1_depth_passkey.png", "dsla_position.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    before = (out / "runs" / "gla.json").stat().st_mtime_ns
    assert quality.main(args + ["--experiments", "2_baselines"]) == 0  # done runs are not repeated
    assert (out / "runs" / "gla.json").stat().st_mtime_ns == before


def test_workers_share_the_runs_and_compute_orders_once(teacher_dir, token_corpus_dir, tmp_path):
    out = tmp_path / "results"
    args = ["--smoke", "--teacher", str(teacher_dir), "--data", str(token_corpus_dir), "--out", str(out),
            "--runs", "dsla,gla,dsla_low_rank", "--workers", "2"]
    assert quality.main(args) == 0
    for name in ("dsla", "gla", "dsla_low_rank"):
        assert json.loads((out / "runs" / f"{name}.json").read_text())["complete"]
    assert set(json.loads((out / "orders.json").read_text())) == {"loss_delta", "entropy"}
    cfg = load_config(quality.CONFIGS / "quality-smoke.json")
    groups = quality.share_runs([cfg.run(n) for n in ("dsla", "gla", "linear", "swa")], 8, 3)
    assert sorted(len(g) for g in groups) == [1, 1, 2] and {r.name for g in groups for r in g} == \
        {"dsla", "gla", "linear", "swa"}
    with pytest.raises(SystemExit, match="--workers must be >= 1"):
        quality.main(args[:-1] + ["0"])


def _ev(ppl, last, passkey):
    return {"perplexity": {"overall": {"ppl": ppl}, "buckets": [{"lo": 0, "hi": 1024, "ppl": ppl},
                                                                 {"lo": 1024, "hi": 4096, "ppl": last}]},
            "passkey": {"rows": [{"length": 4096, "accuracy": passkey}]}}


def test_target_checks():
    from experiments.report import metrics

    teacher = metrics(_ev(10.0, 9.0, 1.0))
    runs = {"dsla": {"evals": {"4": _ev(10.4, 9.2, 0.95), "8": _ev(11.0, 9.8, 0.9)}},
            "gla": {"evals": {"4": _ev(10.6, 9.5, 0.5), "8": _ev(11.5, 10.5, 0.3)}}}
    got = [t["status"] for t in check_targets(teacher, runs, 8)]
    assert got == ["met", "met", "met"]
    runs["dsla"]["evals"]["4"] = _ev(10.6, 9.6, 0.85)  # +6%, worse than gla on the long bucket, passkey < 90%
    got = check_targets(teacher, runs, 8)
    assert [t["status"] for t in got] == ["missed", "missed", "missed"] and "+6.00%" in got[0]["detail"]
    assert [t["status"] for t in check_targets(None, {}, None)] == ["not measured"] * 3


def test_config_errors_name_the_field(tmp_path):
    bad = tmp_path / "c.json"
    bad.write_text(json.dumps({"distill": {"stepz": 3}}))
    with pytest.raises(ValueError, match=r"distill: unknown field\(s\) \['stepz'\]"):
        load_config(bad)
    bad.write_text(json.dumps({"runs": [{"name": "x", "kind": "lstm"}]}))
    with pytest.raises(ValueError, match="run 'x': kind must be one of"):
        load_config(bad)
    bad.write_text(json.dumps({"runs": [{"name": "x", "loss_answer_kl": -1}]}))
    with pytest.raises(ValueError, match="run 'x': loss_answer_kl must be >= 0"):
        load_config(bad)
    bad.write_text(json.dumps({"runs": [{"name": "x"}], "experiments": {"e": {"title": "t", "runs": ["y"]}}}))
    with pytest.raises(ValueError, match=r"experiments.e names unknown run\(s\) \['y'\]"):
        load_config(bad)
    bad.write_text(json.dumps({"runs": [{"name": "x"}], "targets": [{"dsla": "x", "single": "gla"}]}))
    with pytest.raises(ValueError, match=r"targets\[0\] names unknown run\(s\) \['gla'\]"):
        load_config(bad)
    for shipped in sorted(quality.CONFIGS.glob("*.json")):  # the shipped configs are valid
        load_config(shipped)


def test_gpu_side_code_imports_without_pydantic_deepspeed_or_ray():
    """The GPU image lacks them: the recipe, the eval CLI and the experiments must not need them."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('pydantic', 'deepspeed', 'ray'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import experiments.quality, recipes.teacher.train, recipes.teacher.train_tokenizer\n"
        "import dsla_serve.quality.cli, dsla_serve.model.baselines\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_layer_probe_converts_each_layer_alone_and_resumes(teacher_dir, token_corpus_dir, tmp_path):
    from experiments import layer_probe

    out = tmp_path / "probe"
    args = ["--teacher", str(teacher_dir), "--data", str(token_corpus_dir), "--out", str(out),
            "--config", str(quality.CONFIGS / "quality-smoke.json"), "--kinds", "dsla,gla"]
    assert layer_probe.main(args) == 0
    for kind in ("dsla", "gla"):
        for layer in (0, 1):
            probe = json.loads((out / "probes" / f"{kind}_{layer}.json").read_text())
            assert (probe["kind"], probe["layer"]) == (kind, layer) and probe["validation"]["ppl_ratio"] > 0
            assert probe["eval"]["passkey"]["rows"] and probe["eval"]["perplexity"]["overall"]["ppl"] > 0
    rows = [line for line in (out / "summary.md").read_text().splitlines() if line.startswith("| ")]
    assert [r.split(" | ")[0] for r in rows[1:]] == ["| 0", "| 1"] and "- | - | -" not in "".join(rows)
    before = (out / "probes" / "gla_1.json").stat().st_mtime_ns
    assert layer_probe.main(args + ["--layers", "1"]) == 0  # done probes are not repeated
    assert (out / "probes" / "gla_1.json").stat().st_mtime_ns == before
    with pytest.raises(SystemExit, match="the teacher has layers 0..1"):
        layer_probe.main(args + ["--layers", "2"])
    with pytest.raises(SystemExit, match="unknown DSLAConfig field"):
        layer_probe.main(args + ["--dsla", '{"history_bias": 0}'])
    paper = tmp_path / "paper"
    assert layer_probe.main([*args[:5], str(paper), *args[6:], "--layers", "0", "--kinds", "dsla",
                             "--dsla", '{"history_gate_bias": 0, "gate_init_std": 0.02}']) == 0
    assert json.loads((paper / "probes" / "dsla_0.json").read_text())["dsla_config"]["gate_init_std"] == 0.02
    answer = tmp_path / "answer"
    assert layer_probe.main([*args[:5], str(answer), *args[6:], "--layers", "1", "--kinds", "gla",
                             "--loss-answer-kl", "0.5"]) == 0
    assert json.loads((answer / "probes" / "gla_1.json").read_text())["fit"]["loss"]["answer_kl"] == 0.5


def test_fit_layer_adds_the_answer_kl_to_the_trainer_objective(teacher_dir, token_corpus_dir, tmp_path):
    """With the trainer's terms off, the loss fitted is the answer term alone: the KL at answer tokens."""
    import dataclasses

    import torch

    from dsla_serve.trainer.losses import answer_kl, teacher_logits
    from experiments.config import FitSettings, LossWeights
    from experiments.conversion import convert_layer, fit_layer

    cfg = load_config(quality.CONFIGS / "quality-smoke.json")
    campaign = quality.Campaign(cfg, teacher_dir, token_corpus_dir, tmp_path, torch.device("cpu"))
    ids, answers = campaign.batches(0)
    assert answers.any() and not answers.all()
    only_answers = FitSettings(steps=1, warmup_steps=0, calibrate_output=False,
                               loss=LossWeights(mse=0.0, kl=0.0, ce=0.0, answer_kl=1.0))
    for settings in (only_answers, dataclasses.replace(only_answers, loss=LossWeights(mse=0.0, kl=0.0, ce=0.0))):
        model = campaign.teacher.__class__(campaign.teacher.config)
        model.load_state_dict(campaign.teacher.state_dict())
        convert_layer(model, 1, "dsla", cfg.run("dsla").dsla_config(), seed=0)
        with torch.no_grad():
            expected = answer_kl(model(input_ids=ids).logits, teacher_logits(model, ids, 1), answers)
        losses = fit_layer(model, 1, 1, campaign.batches, 0, settings, torch.device("cpu"))
        assert losses[0] == pytest.approx(settings.loss.answer_kl * float(expected), rel=1e-4, abs=1e-7)
    assert float(expected) > 0


def test_retrieval_delta_adds_the_held_out_answer_kl_to_each_loss_delta_probe(teacher_dir, token_corpus_dir, tmp_path):
    """retrieval_delta = loss_delta's score + the answer-token KL, on episodes built from the validation
    books, of the same probe (same seed, same fit)."""
    import copy

    import torch

    from dsla_serve.model import DSLAConfig
    from experiments.conversion import answer_divergence, convert_layer, fit_layer

    cfg = load_config(quality.CONFIGS / "quality-smoke.json")
    campaign = quality.Campaign(cfg, teacher_dir, token_corpus_dir, tmp_path, torch.device("cpu"))
    episodes = campaign.held_out_episodes(2)
    assert len(episodes) == 2 and any(answers.any() for _, answers in episodes)
    assert not torch.equal(episodes[0][0], campaign.batches(0)[0])  # other books than the fitting batches
    _, plain = campaign._compute_order("loss_delta")
    order, scores = campaign._compute_order("retrieval_delta")
    assert sorted(order) == [0, 1] and order == sorted(scores, key=lambda i: (scores[i], i))
    probe = copy.deepcopy(campaign.teacher)
    convert_layer(probe, 1, "dsla", DSLAConfig(), seed=cfg.distill.mixture.seed + 1)
    fit_layer(probe, 1, 1, campaign.batches, 0, campaign.fit_settings(steps=cfg.order.probe_steps), torch.device("cpu"))
    added = answer_divergence(probe, 1, campaign.held_out_episodes(cfg.order.answer_batches), torch.device("cpu"))
    assert added > 0 and scores[1] == pytest.approx(plain[1] + added, rel=1e-5)
    with pytest.raises(ValueError, match="no episode batch holds an answer"):
        answer_divergence(probe, 1, [(ids, torch.zeros_like(a)) for ids, a in episodes], torch.device("cpu"))


def test_a_run_can_set_its_own_steps_and_the_retrieval_order(teacher_dir, token_corpus_dir, tmp_path):
    raw = json.loads((quality.CONFIGS / "quality-smoke.json").read_text())
    raw["runs"] = [{"name": "dsla", "order": "retrieval_delta", "depth": "L/2", "eval_depths": ["L/2"]},
                   {"name": "dsla_3", "order": "retrieval_delta", "steps": 3, "depth": "L/2", "eval_depths": ["L/2"]}]
    raw["experiments"], raw["targets"] = {"steps": {"title": "steps", "runs": ["dsla", "dsla_3"]}}, []
    config = tmp_path / "config.json"
    config.write_text(json.dumps(raw))
    out = tmp_path / "results"
    assert quality.main(["--config", str(config), "--teacher", str(teacher_dir), "--data", str(token_corpus_dir),
                         "--out", str(out), "--device", "cpu"]) == 0
    orders = json.loads((out / "orders.json").read_text())
    assert set(orders) == {"retrieval_delta"}
    for name, steps in (("dsla", raw["distill"]["steps"]), ("dsla_3", 3)):
        run = json.loads((out / "runs" / f"{name}.json").read_text())
        assert run["fit"]["steps"] == steps and run["order"] == orders["retrieval_delta"]["order"][:1]
    raw["runs"][1]["steps"] = 0
    config.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="steps must be a whole number >= 1"):
        load_config(config)


def test_a_run_seed_changes_its_rows_and_gate_weights_and_nothing_else(teacher_dir, token_corpus_dir, tmp_path):
    import torch

    raw = json.loads((quality.CONFIGS / "quality-smoke.json").read_text())
    run = {"order": "forward", "depth": "L/2", "eval_depths": ["L/2"]}
    raw["runs"] = [{"name": "a", **run}, {"name": "a_again", **run}, {"name": "b", "seed": 1, **run}]
    raw["experiments"], raw["targets"] = {"seeds": {"title": "seeds", "runs": ["a", "a_again", "b"]}}, []
    config = tmp_path / "config.json"
    config.write_text(json.dumps(raw))
    out = tmp_path / "results"
    assert quality.main(["--config", str(config), "--teacher", str(teacher_dir), "--data", str(token_corpus_dir),
                         "--out", str(out), "--device", "cpu"]) == 0
    a, a_again, b = (json.loads((out / "runs" / f"{n}.json").read_text()) for n in ("a", "a_again", "b"))
    assert a["layers"][0]["losses"] == a_again["layers"][0]["losses"]
    assert a["layers"][0]["losses"][0] != b["layers"][0]["losses"][0]
    assert a["order"] == b["order"] and a["evals"].keys() == b["evals"].keys()

    campaign = quality.Campaign(load_config(config), teacher_dir, token_corpus_dir, tmp_path, torch.device("cpu"))
    assert torch.equal(campaign.batches(0)[0], campaign.batches(0, 0)[0])
    assert not torch.equal(campaign.batches(0)[0], campaign.batches(0, 1)[0])
    raw["runs"][2]["seed"] = -1
    config.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="seed must be a whole number >= 0"):
        load_config(config)

"""benchmarks/adaptive_gpu.py's main path (the sweep, one process, no Ray) on the CPU with a tiny
converted model: every variant and rate is in the JSON with figures that add up, and under overload
the adaptive policy's decisions moved traffic deeper or replicas between its pools."""

from __future__ import annotations

import json
import time

from benchmarks.adaptive_gpu import in_memory_source, parse_args
from benchmarks.adaptive_sweep import sweep
from tests.replicas.helpers import tiny_converted

# 2 places of 210 KB cache: 2 sequences of 84 tokens at depth 0 (1 KB of KV a token), 5 at depth 4 (32 KB
# of DSLA state each); 60 requests/s of 16-20 output tokens overload depth 0 on this machine
ARGS = ["--places", "2", "--budget-gib", "0.0002", "--prompt-tokens", "uniform:48:64", "--output-tokens",
        "uniform:16:20", "--rates", "4,60", "--seconds", "1.2", "--drain", "2", "--burst", "4,60",
        "--burst-phase-s", "0.25", "--slo", "150,50,1000", "--interval", "0.2", "--window", "1", "--cooldown",
        "0.4", "--min-samples", "3", "--no-progress"]


def test_the_sweep_serves_every_variant_and_adapts_under_overload(tmp_path, capsys):
    source = in_memory_source("tiny:llama random", tiny_converted(), deep=4, ratio_at_deep=1.05)
    args = parse_args(ARGS + ["--out", str(tmp_path)])
    sweep(args, source, {"device": "cpu"}, deadline=time.monotonic() + 120)
    record = json.loads((tmp_path / "adaptive_gpu.json").read_text())
    assert (tmp_path / "adaptive_gpu.png").stat().st_size > 0
    assert record["complete"] and record["skipped"] == []
    slots = record["sizing"]["sequences_per_replica"]
    assert slots["depth 0"] == 2 and slots["depth 4"] > 2
    assert "ASSUMED" in record["quality"]

    runs = {(r["variant"], r["run"]): r for r in record["runs"]}
    assert set(runs) == {(v, n) for v in ("adaptive", "static-d0", "static-deep") for n in ("4", "60", "burst")}
    for name in ("4", "60", "burst"):
        sent = {runs[v, name]["sent"] for v in ("adaptive", "static-d0", "static-deep")}
        assert len(sent) == 1 and sent.pop() > 3  # the same requests for every variant
    for (variant, name), r in runs.items():
        assert r["ok"] + sum(r["errors"].values()) == r["sent"]
        assert 0 <= r["attainment"] <= 1 and 0 <= r["goodput"] <= r["throughput"] + 1e-9
        assert r["ttft_ms"]["p50"] is not None and r["ttft_ms"]["p50"] > 0
        assert sum(int(n) for n in r["depths"].values()) == r["ok"]
        expected = {"static-d0": (0, 0), "static-deep": (4, 4), "adaptive": (0, 4)}[variant]
        assert expected[0] <= r["mean_depth"] <= expected[1]
        assert all(row["replica_targets"] for row in r["timeline"])

    overloaded = runs["adaptive", "60"]
    initial = {"accurate": 1.0, "fast": 0.0}
    moved = [row for row in overloaded["timeline"]
             if row["weights"] != initial or row["replica_targets"] != {"accurate": 1, "fast": 1}]
    assert moved, overloaded["timeline"]
    assert any("deeper" in d for d in overloaded["decisions"]), overloaded["decisions"]
    assert overloaded["mean_depth"] > runs["adaptive", "4"]["mean_depth"]
    assert "goals:" in capsys.readouterr().out

"""Data-parallel training over two gloo processes (torchrun) equals one process with twice the
accumulation, retrieval episodes mixed in; both ranks agree on validation (the answer-token KL
included); rank 0 alone writes the artifact."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dsla_serve.model import Artifact
from dsla_serve.trainer import Trainer, parse_config

from .helpers import config_dict, tiny_model

REPO = Path(__file__).resolve().parents[2]
STEPS = 4


SEQ_LEN = 160  # long enough for passkey and recall episodes with the byte tokenizer


def _config(corpus, output, accumulation):
    return config_dict(corpus, output, depth=1, order={"method": "list", "layers": [1, 0]},
                       data={"seq_len": SEQ_LEN, "max_val_tokens": SEQ_LEN * 8,
                             "episodes": {"passkey_fraction": 0.5, "recall_fraction": 0.3}},
                       training={"steps": STEPS, "micro_batch_size": 2, "grad_accumulation": accumulation})


def test_two_processes_equal_one_process_with_double_accumulation(corpus, tmp_path):
    two = _config(corpus, tmp_path / "two", accumulation=2)
    (tmp_path / "two.json").write_text(json.dumps(two))
    reports = tmp_path / "reports"
    reports.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)  # this test process's own world of one must not leak into the launch
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "tests" / "trainer" / "mp_worker.py"), str(tmp_path / "two.json"), str(reports)]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]

    ranks = [json.loads((reports / f"rank_{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world_size"] == 2 for r in ranks)
    for r in ranks:
        for timing in ("seconds", "train_tokens_per_s", "train_tokens_per_s_steady"):
            del r["metrics"][0][timing]  # wall time is each process's own
    assert ranks[0]["metrics"] == ranks[1]["metrics"]  # all-reduced: identical on both ranks
    assert ranks[0]["losses"] == ranks[1]["losses"] and len(ranks[0]["losses"]) == STEPS

    artifact = Artifact.open(tmp_path / "two")  # written once, by rank 0: one entry, no stray files
    assert [e.layer for e in artifact.entries] == [1] and artifact.entries[0].metrics["world_size"] == 2
    assert {p.name for p in (tmp_path / "two").iterdir()} == {"manifest.json", "layer_1.safetensors"}

    one_cfg = parse_config(_config(corpus, tmp_path / "one", accumulation=4))
    model, tokenizer = tiny_model()
    losses = []
    one = Trainer(one_cfg, model=model, tokenizer=tokenizer).run(on_step=lambda layer, step, loss: losses.append(loss))
    assert one.layers[0].metrics["world_size"] == 1
    assert one.layers[0].metrics["train_tokens"] == ranks[0]["metrics"][0]["train_tokens"] == STEPS * 8 * SEQ_LEN
    assert losses == pytest.approx(ranks[0]["losses"], rel=1e-4)
    assert ranks[0]["metrics"][0]["val_answer_kl"] > 0  # episodes were mixed in and scored on both ranks
    for key in ("val_loss", "val_kl", "val_mse", "ppl_ratio", "val_answer_kl"):
        assert one.layers[0].metrics[key] == pytest.approx(ranks[0]["metrics"][0][key], rel=1e-4), key
    a, b = load_file(tmp_path / "one" / "layer_1.safetensors"), load_file(tmp_path / "two" / "layer_1.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-6, msg=name)
    # the layer moved away from its initialisation, so agreeing is not trivial
    assert not torch.allclose(a["gate_history.up.weight"], torch.zeros_like(a["gate_history.up.weight"]))

"""The optimiser strategy of the one loop: DeepSpeed (ZeRO 0 / 2) and plain AdamW take the same steps and
write the same layers; bf16 models train under both (fp32 mix logits and gains beside bf16 projections);
AdamW runs where DeepSpeed cannot be imported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from dsla_serve.trainer.trainer import Trainer

from .helpers import tiny_config, tiny_model

REPO = Path(__file__).resolve().parents[2]


def _run(corpus, out, **sections):
    """A tiny run; with `dtype` the trainer loads tiny:llama itself in that dtype."""
    model, tok = tiny_model() if "dtype" not in sections else (None, None)
    summary = Trainer(tiny_config(corpus, out, **sections), model=model, tokenizer=tok).run()
    layers = {f.name: load_file(f) for f in sorted(Path(out).glob("layer_*.safetensors"))}
    return summary, layers


def _max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys() and all(a[f].keys() == b[f].keys() for f in a)
    return max(float((a[f][n].float() - b[f][n].float()).abs().max()) for f in a for n in a[f])


def test_deepspeed_zero0_zero2_and_adamw_take_the_same_steps(corpus, tmp_path):
    runs = {}
    for name, opt, stage in (("ds0", "deepspeed", 0), ("ds2", "deepspeed", 2), ("adamw", "adamw", 0)):
        runs[name] = _run(corpus, tmp_path / name, training={"optimizer": opt, "grad_accumulation": 2},
                          deepspeed={"zero_optimization": {"stage": stage}})
    losses = {k: [x.metrics["train_loss_last"] for x in s.layers] for k, (s, _) in runs.items()}
    assert losses["ds0"] == pytest.approx(losses["adamw"], rel=1e-5) == losses["ds2"]
    assert _max_difference(runs["ds0"][1], runs["adamw"][1]) < 1e-4
    assert _max_difference(runs["ds0"][1], runs["ds2"][1]) < 1e-4
    first = runs["ds0"][1]["layer_1.safetensors"] if "layer_1.safetensors" in runs["ds0"][1] else \
        next(iter(runs["ds0"][1].values()))
    assert any(float(t.abs().max()) > 0 for t in first.values())  # the layers did train


def test_bf16_layers_train_alike_under_zero2_and_adamw(corpus, tmp_path):
    """A bf16 DSLA layer keeps its mix logits and output gain in fp32: ZeRO flattens one buffer per dtype
    (one parameter group each), and AdamW updates bf16 weights through fp32 masters."""
    zero2, layers_z = _run(corpus, tmp_path / "z2", dtype="bfloat16", deepspeed={"zero_optimization": {"stage": 2}})
    adamw, layers_a = _run(corpus, tmp_path / "aw", dtype="bfloat16", training={"optimizer": "adamw"})
    tensors = next(iter(layers_z.values()))
    assert {str(t.dtype) for n, t in tensors.items() if "proj" in n} == {"torch.bfloat16"}
    assert {str(t.dtype) for n, t in tensors.items() if n.endswith(("mix_logits", "output_scale"))} == {"torch.float32"}
    for a, b in zip(zero2.layers, adamw.layers):
        assert a.metrics["train_loss_last"] == pytest.approx(b.metrics["train_loss_last"], abs=2e-3)
        assert a.metrics["train_loss_last"] < a.metrics["train_loss_first"]
    assert _max_difference(layers_z, layers_a) < 0.05


SCRIPT = """
import sys
sys.modules['deepspeed'] = None  # `import deepspeed` raises ImportError; find_spec says it is not installed
from pathlib import Path
from tests.trainer.helpers import tiny_config, tiny_model
from dsla_serve.trainer.trainer import Trainer
corpus, out = Path(sys.argv[1]), Path(sys.argv[2])
model, tok = tiny_model()
print(Trainer(tiny_config(corpus, out / 'adamw', depth=1, training={'optimizer': 'adamw'}), model=model,
              tokenizer=tok).run().published_depth)
try:
    Trainer(tiny_config(corpus, out / 'ds', depth=1), model=tiny_model()[0], tokenizer=tok).run()
except RuntimeError as e:
    print(e)
"""


def test_adamw_runs_where_deepspeed_cannot_be_imported(corpus, tmp_path):
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(corpus), str(tmp_path)], capture_output=True,
                            text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "1"
    assert "DeepSpeed cannot be imported" in lines[-1] and "training.optimizer: adamw" in lines[-1]

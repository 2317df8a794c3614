"""`dsla-serve convert` on the reference real model (one layer, a few CPU steps; the session's
`reference_artifact`), and `dsla-serve generate` serving the artifact it wrote."""

import json

import torch
from safetensors.torch import load_file

from dsla_serve.cli import main
from dsla_serve.model import Artifact

from ..reference import FINGERPRINT, REFERENCE


def test_convert_publishes_a_verified_layer_of_the_real_model(reference_artifact):
    path, _ = reference_artifact
    artifact = Artifact.open(path)
    assert artifact.base_model_id == REFERENCE and artifact.fingerprint == FINGERPRINT
    assert artifact.order == [3] and artifact.depth == 1
    artifact.verify()
    metrics = artifact.entries[0].metrics
    assert metrics["steps"] == 4 and 1.0 <= metrics["ppl_ratio"] < 1.5 and metrics["teacher_ppl"] < 100
    # the rate of steps 2-4 over their own time, recorded beside the whole loop's
    assert metrics["train_tokens_per_s_steady"] > 0 and metrics["train_tokens_per_s"] > 0
    # the layer file holds that layer's DSLA parameters only: no embedding (tied to the output) is saved
    tensors = load_file(path / "layer_3.safetensors")
    assert tensors and not any("embed" in n or "lm_head" in n for n in tensors)
    q = tensors["q_proj.weight"]
    assert q.shape == (9 * 64, 576) and tensors["k_proj.weight"].shape == (3 * 64, 576)  # GQA: 9 / 3 heads
    assert q.dtype == torch.float32


def test_generate_serves_the_artifact(reference_artifact, capsys):
    path, _ = reference_artifact
    argv = ["generate", REFERENCE, "--artifact", str(path), "--prompt", "The capital of France is",
            "--max-tokens", "8", "--dtype", "float32", "--json"]
    assert main(argv + ["--depth", "1"]) == 0
    deep = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(argv + ["--depth", "0"]) == 0
    shallow = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(deep["token_ids"]) == len(shallow["token_ids"]) == 8
    assert "Paris" in shallow["text"]

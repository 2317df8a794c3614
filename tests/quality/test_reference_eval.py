"""`dsla-serve eval` on the reference real model: perplexity by position on held-out text, at depth 0
(the original model) and at depth 1 of the session's short conversion (`reference_artifact`)."""

import json

from dsla_serve.cli import main

from ..reference import HELD_OUT_TEXT, REFERENCE


def test_perplexity_of_the_real_model_and_its_conversion(reference_artifact, tmp_path, capsys):
    artifact, _ = reference_artifact
    argv = ["eval", "--model", REFERENCE, "--artifact", str(artifact), "--depths", "0,1", "--data",
            str(HELD_OUT_TEXT), "--tasks", "ppl", "--context", "1024", "--buckets", "0,256,1024",
            "--max-windows", "2", "--dtype", "float32", "--device", "cpu", "--out", str(tmp_path), "--quiet"]
    assert main(argv) == 0
    report = json.loads((tmp_path / "results.json").read_text())
    base, converted = (run["perplexity"]["overall"]["ppl"] for run in report["runs"])
    # SmolLM2-135M-Instruct reads a children's book of 1900 at about 14 (measured 14.43); a broken loader,
    # tokenizer or position handling lands far outside this band
    assert 8 < base < 30, base
    assert base < converted < 1.5 * base, (base, converted)  # one layer, 4 CPU steps: a little worse
    assert report["runs"][1]["converted_layers"] == [3] and (tmp_path / "perplexity_by_position.png").exists()
    assert "depth 0" in capsys.readouterr().out

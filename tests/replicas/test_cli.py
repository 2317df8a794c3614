"""`dsla-serve generate` (dsla_serve.replicas.cli), called through its own parser."""

import argparse
import io
import json

import pytest

from dsla_serve.replicas import cli


def _run(argv, capsys, stdin=None, monkeypatch=None):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = cli.run(parser.parse_args(argv))
    return code, capsys.readouterr()


def test_json_outputs_for_repeated_prompts(capsys):
    code, out = _run(["--prompt", "Hello", "--prompt", "Hi", "--max-tokens", "6", "--ignore-eos", "--json",
                      "--logprobs", "2", "--max-model-len", "64"], capsys)
    rows = [json.loads(line) for line in out.out.splitlines()]
    assert code == 0 and [r["prompt"] for r in rows] == ["Hello", "Hi"]
    assert all(len(r["token_ids"]) == 6 and r["finish_reason"] == "length" and len(r["logprobs"]) == 6 for r in rows)
    assert "engine ready" in out.err and "12 tokens" in out.err


def test_stream_from_stdin_at_a_depth_of_the_tiny_model(capsys, monkeypatch):
    code, out = _run(["tiny:qwen2", "--depth", "2", "--stream", "--max-tokens", "5", "--ignore-eos",
                      "--max-model-len", "64"], capsys, stdin="first prompt\n\nsecond\n", monkeypatch=monkeypatch)
    assert code == 0
    assert out.out.count("(length, 5 tokens)") == 2 and "[1] 'second' -> " in out.out
    assert "converted all 4 layers" in out.err and "2 softmax + 2 DSLA layers" in out.err


def _tokens(capsys, temperature: float, seed: int) -> list[int]:
    argv = ["--prompt", "x", "--temperature", str(temperature), "--seed", str(seed), "--max-tokens", "12", "--json",
            "--ignore-eos", "--max-model-len", "32"]
    return json.loads(_run(argv, capsys)[1].out)["token_ids"]


def test_seed_and_temperature_reach_the_sampler(capsys):
    sampled = {seed: _tokens(capsys, 1.0, seed) for seed in (5, 6)}
    assert _tokens(capsys, 1.0, 5) == sampled[5]  # the same seed, the same text
    assert sampled[5] != sampled[6]  # another seed, another text (12 tokens over a 259-token vocabulary)
    greedy = _tokens(capsys, 0.0, 5)
    assert greedy == _tokens(capsys, 0.0, 6)  # greedy ignores the seed
    assert greedy not in sampled.values()  # and temperature 1 samples away from it


def test_errors_are_clear(capsys):
    code, out = _run(["--prompt", "a long prompt", "--max-tokens", "8", "--max-model-len", "10"], capsys)
    assert code == 1 and "exceeds max_model_len=10" in out.out
    with pytest.raises(SystemExit, match="SamplingParams.top_p"):
        _run(["--prompt", "a", "--top-p", "0"], capsys)
    with pytest.raises(SystemExit, match="no manifest"):
        _run(["tiny:llama", "--artifact", "/nonexistent", "--prompt", "a"], capsys)
    with pytest.raises(SystemExit, match=r"depth must be an int in \[0, 4\]"):
        _run(["tiny:llama", "--depth", "9", "--prompt", "a", "--max-model-len", "16"], capsys)



def test_chat_renders_each_prompt_with_the_chat_template(capsys):
    from ..reference import REFERENCE

    code, out = _run([REFERENCE, "--chat", "--prompt", "What is the capital of France?", "--max-tokens", "16",
                      "--dtype", "float32", "--json"], capsys)
    assert code == 0
    result = json.loads(out.out.strip().splitlines()[-1])
    assert result["prompt"] == "What is the capital of France?" and result["finish_reason"] == "stop"
    assert result["text"].strip() == "The capital of France is Paris."

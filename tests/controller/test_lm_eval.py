"""EleutherAI's lm-evaluation-harness against the app, one depth at a time: a local task file (capitals:
multiple choice by log-likelihood, and greedy generation with stop strings), the reference model at
depth 0 and at L/2 = 15 (an artifact of 15 randomly initialised DSLA layers), through `NAME@d0` and
`NAME@d15` and its remote tokenizer (/tokenize, /detokenize, /tokenizer_info). Slow (two SmolLM2
replicas on the CPU and the harness); `test_reference_app.py` covers the same endpoints by hand.

    pip install "lm-eval[api]"   # not a dependency of dsla-serve; the test is skipped without it
"""

from __future__ import annotations

import json

import httpx
import pytest

from tests.ports import free_port

from ..reference import REFERENCE
from .helpers import local_app, policy_dict, write_policy

pytestmark = pytest.mark.slow

HALF = 15  # L/2 of the reference model's 30 layers
CAPITALS = [("France", "Paris", ["Paris", "Lyon", "Nice", "Lille"]),
            ("Italy", "Rome", ["Milan", "Rome", "Turin", "Naples"]),
            ("Germany", "Berlin", ["Munich", "Hamburg", "Berlin", "Cologne"]),
            ("Spain", "Madrid", ["Seville", "Valencia", "Barcelona", "Madrid"]),
            ("Japan", "Tokyo", ["Tokyo", "Osaka", "Kyoto", "Nagoya"]),
            ("England", "London", ["Leeds", "London", "York", "Bristol"])]


def _tasks(folder) -> list[str]:
    """The local task files: two tasks over one JSON-lines file."""
    data = folder / "capitals.jsonl"
    data.write_text("".join(json.dumps({"country": c, "capital": a, "choices": ch, "answer": ch.index(a)}) + "\n"
                            for c, a, ch in CAPITALS))
    common = f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
    (folder / "capitals_mc.yaml").write_text(
        "task: capitals_mc\n" + common + "doc_to_text: \"Question: What is the capital of {{country}}?\\nAnswer:\"\n"
        "output_type: multiple_choice\ndoc_to_choice: \"{{choices}}\"\n"
        "doc_to_target: \"{{answer}}\"\ntarget_delimiter: \" \"\nmetric_list:\n  - metric: acc\n")
    (folder / "capitals_gen.yaml").write_text(  # the instruct model ends its turn after "Answer:" outside chat
        "task: capitals_gen\n" + common + "doc_to_text: \"The capital of {{country}} is\"\n"
        "output_type: generate_until\ndoc_to_target: \" {{capital}}\"\n"
        "generation_kwargs:\n  until: [\"\\n\", \".\", \",\", \"Question\"]\n  max_gen_toks: 8\n  do_sample: false\n"
        "  temperature: 0\nmetric_list:\n  - metric: exact_match\n    ignore_case: true\n"
        "    ignore_punctuation: true\n")
    return ["capitals_mc", "capitals_gen"]


@pytest.fixture(scope="module")
def half_artifact(tmp_path_factory):
    """The reference model's artifact with layers 0..14 of the order published (random DSLA parameters)."""
    import torch

    from dsla_serve.model import Artifact, DSLAConfig, convert

    from ..reference import load_reference

    path = tmp_path_factory.mktemp("half") / "artifact"
    model, _ = load_reference()
    order = list(range(30))
    artifact = Artifact.create(path, model, base_model_id=REFERENCE, config=DSLAConfig(), order=order)
    torch.manual_seed(0)
    for rank in range(HALF):
        convert(model, [order[rank]], DSLAConfig())
        artifact.append_layer(model, order[rank], {"val_loss": 0.0})
    return path


@pytest.fixture(scope="module")
def app(half_artifact, tmp_path_factory):
    from dsla_serve.policies import load_policy

    port = free_port()
    policy = policy_dict(
        port, name="lmeval", model={"path": REFERENCE, "dtype": "float32", "max_model_len": 512},
        artifact=str(half_artifact),
        pools=[{"name": "accurate", "depth": 0, "resources": {"num_cpus": 0.25}, "max_concurrent_requests": 4},
               {"name": "half", "depth": HALF, "resources": {"num_cpus": 0.25}, "max_concurrent_requests": 4}],
        quality={"max_depth": HALF},
        http={"host": "127.0.0.1", "port": port, "max_prompt_tokens": 256, "max_tokens_limit": 64, "queue_cap": 16})
    policy = load_policy(write_policy(tmp_path_factory.mktemp("lmeval-app") / "policy.yaml", policy))
    with local_app(policy, port) as url:
        yield url


def _requests_by_depth(url: str) -> dict[str, float]:
    counts: dict[str, float] = {}
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith("dsla_requests_total{") and 'endpoint="completions"' in line:
            depth = line.split('depth="', 1)[1].split('"', 1)[0]
            counts[depth] = counts.get(depth, 0.0) + float(line.rsplit(" ", 1)[1])
    return counts


def test_lm_eval_scores_each_depth_through_the_endpoint(app, tmp_path, monkeypatch):
    lm_eval = pytest.importorskip("lm_eval")
    pytest.importorskip("tenacity")  # lm-eval[api]
    from lm_eval.tasks import TaskManager

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tasks = _tasks(tmp_path)
    cards = {m["id"] for m in httpx.get(f"{app}/v1/models", timeout=30).json()["data"]}
    assert {f"{REFERENCE}@d0", f"{REFERENCE}@d{HALF}"} <= cards
    scores, samples = {}, {}
    for depth in (0, HALF):
        before = _requests_by_depth(app)
        out = lm_eval.simple_evaluate(
            model="local-completions", tasks=tasks, task_manager=TaskManager(include_path=str(tmp_path)),
            model_args={"model": f"{REFERENCE}@d{depth}", "base_url": f"{app}/v1/completions",
                        "tokenizer_backend": "remote", "num_concurrent": 2, "max_retries": 1, "max_length": 256},
            log_samples=True, random_seed=0, numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0)
        scores[depth] = {t: out["results"][t] for t in tasks}
        samples[depth] = out["samples"]
        after = _requests_by_depth(app)
        served = {d: after.get(d, 0.0) - before.get(d, 0.0) for d in after}
        assert served == {**{d: 0.0 for d in served}, str(depth): served[str(depth)]} and served[str(depth)] > 0
    print(json.dumps(scores, indent=1))
    for depth in (0, HALF):
        print(depth, [(d["target"], d["filtered_resps"]) for d in samples[depth]["capitals_gen"]])
    # the original model knows capitals; fifteen random layers do not
    assert scores[0]["capitals_mc"]["acc,none"] >= 0.8 and scores[0]["capitals_gen"]["exact_match,none"] >= 0.5
    assert scores[HALF]["capitals_gen"]["exact_match,none"] < scores[0]["capitals_gen"]["exact_match,none"]
    # the harness's log-likelihood of a choice is the server's own sum at that depth
    doc = samples[HALF]["capitals_mc"][0]
    context, continuation = doc["arguments"][0]  # ("Question: ...\nAnswer:", " Paris")
    ids = httpx.post(f"{app}/tokenize", json={"prompt": context + continuation, "add_special_tokens": False},
                     timeout=30).json()["tokens"]
    n = httpx.post(f"{app}/tokenize", json={"prompt": context, "add_special_tokens": False}, timeout=30).json()["count"]
    body = httpx.post(f"{app}/v1/completions", timeout=120, json={
        "model": f"{REFERENCE}@d{HALF}", "prompt": ids, "max_tokens": 0, "echo": True, "logprobs": 1}).json()
    assert body["system_fingerprint"] == f"dsla-depth-{HALF}"
    assert sum(body["choices"][0]["logprobs"]["token_logprobs"][n:]) == pytest.approx(doc["resps"][0][0][0], abs=1e-4)

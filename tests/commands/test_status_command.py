"""`dsla-serve status` finds the API key where a user exported it, and says where it looked on a 401."""

from __future__ import annotations

import argparse

import httpx
import pytest

from dsla_serve.commands import status


class _Answer:
    def __init__(self, code: int, body: dict):
        self.status_code, self._body, self.text = code, body, str(body)

    def json(self):
        return self._body


def _run(argv, monkeypatch, answer: _Answer) -> tuple[int, dict]:
    sent: dict = {}

    def get(url, headers, timeout):
        sent.update(url=url, headers=headers)
        return answer

    monkeypatch.setattr(httpx, "get", get)
    parser = argparse.ArgumentParser()
    status.add_arguments(parser)
    return status.run(parser.parse_args(argv)), sent


UNAUTHORIZED = _Answer(401, {"error": {"message": "missing or wrong API key"}})


@pytest.fixture(autouse=True)
def _no_keys(monkeypatch):
    for name in ("DSLA_SERVE_API_KEY", "OPENAI_API_KEY", "MY_POLICY_KEY"):
        monkeypatch.delenv(name, raising=False)


def test_the_key_comes_from_the_variable_the_policy_names(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("MY_POLICY_KEY", "s3cret")
    code, sent = _run(["--api-key-env", "MY_POLICY_KEY", "--json"], monkeypatch, UNAUTHORIZED)
    assert sent["headers"] == {"Authorization": "Bearer s3cret"}

    policy = tmp_path / "policy.yaml"
    policy.write_text("model: {path: 'tiny:llama'}\npools: [{name: a, depth: 0}]\n"
                      "slo: {ttft_p95_ms: 100, tpot_p95_ms: 10}\nhttp: {port: 8123, api_key_env: MY_POLICY_KEY}\n")
    code, sent = _run(["--policy", str(policy)], monkeypatch, UNAUTHORIZED)
    assert sent == {"url": "http://127.0.0.1:8123/v1/dsla/status", "headers": {"Authorization": "Bearer s3cret"}}

    monkeypatch.delenv("MY_POLICY_KEY")
    monkeypatch.setenv("DSLA_SERVE_API_KEY", "fallback")
    code, sent = _run([], monkeypatch, UNAUTHORIZED)
    assert sent["headers"] == {"Authorization": "Bearer fallback"}
    err = capsys.readouterr().err
    assert code == 2 and "$DSLA_SERVE_API_KEY" in err and "--api-key-env" in err  # where it looked, and how to fix it

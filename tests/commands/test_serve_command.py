"""`dsla-serve serve POLICY.yaml` as a user runs it: a subprocess that starts its own Ray, prints the
URL and status lines, answers HTTP, and stops cleanly on SIGINT even when started as a script's
background job (SIGINT ignored); a busy port is one line before Ray starts."""

from __future__ import annotations

import argparse
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import httpx
import ray

from dsla_serve.commands import serve
from tests.controller.helpers import REPO, policy_dict, write_policy
from tests.ports import free_port

RUN_SERVE = ("import sys, argparse; from dsla_serve.commands import serve; "
             "p = argparse.ArgumentParser(); serve.add_arguments(p); sys.exit(serve.run(p.parse_args(sys.argv[1:])))")


def _lines(stream, out: queue.Queue):
    for line in iter(stream.readline, ""):
        out.put(line)
    out.put(None)


def test_serve_command_serves_until_ctrl_c(tmp_path):
    port = free_port()
    path = write_policy(tmp_path / "policy.yaml", policy_dict(port, name="cmdtest"))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # a `ray start` cluster of this machine is not ours
    # `cmd &` in a shell script starts the job with SIGINT ignored; `kill -INT` must still stop it
    proc = subprocess.Popen([sys.executable, "-c", RUN_SERVE, str(path), "--num-cpus", "2", "--status-every", "1"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_lines, args=(proc.stdout, lines), daemon=True).start()
    seen: list[str] = []

    def wait_for_line(words: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            seen.append(line)
            if words in line:
                return line
        raise AssertionError(f"no line with {words!r}; output so far:\n{''.join(seen)[-3000:]}")

    try:
        wait_for_line("started a local Ray", timeout=60)
        ready = wait_for_line(f"at http://127.0.0.1:{port}/v1", timeout=120)
        assert "'tiny-llama'" in ready
        health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=10)
        assert health.status_code == 200 and health.json()["status"] == "ok"
        r = httpx.post(f"http://127.0.0.1:{port}/v1/completions", timeout=30,
                       json={"model": "tiny-llama", "prompt": "Hi", "max_tokens": 3})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 3
        wait_for_line("routing accurate 100% @d0", timeout=30)  # the periodic status line
    finally:
        proc.send_signal(signal.SIGINT)
        wait_for_line("stopping", timeout=10)
        proc.send_signal(signal.SIGINT)  # an impatient second Ctrl-C must not cut the clean-up short
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0
    while (line := lines.get(timeout=5)) is not None:
        seen.append(line)
    assert "stopping" in "".join(seen) and "Traceback" not in "".join(seen), "".join(seen)[-3000:]


def test_a_dead_ray_start_cluster_is_one_line_not_a_hang(tmp_path, monkeypatch, capsys):
    """`ray start` killed without `ray stop` leaves its address file; serve must not wait on it."""
    import ray._common.utils as ray_utils

    dead = free_port()  # nothing listens there
    address_file = tmp_path / "ray_current_cluster"
    address_file.write_text(f"127.0.0.1:{dead}")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray_utils, "get_ray_address_file", lambda temp_dir: str(address_file))
    monkeypatch.setattr(serve, "_stop_on_signals", lambda: None)
    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    path = write_policy(tmp_path / "policy.yaml", policy_dict(free_port(), name="stale"))
    began = time.monotonic()
    code = serve.run(parser.parse_args([str(path)]))
    took = time.monotonic() - began
    err = capsys.readouterr().err
    assert code == 2 and not ray.is_initialized() and took < 10, (code, took, err)
    assert f"127.0.0.1:{dead}" in err and "ray stop --force" in err and "Traceback" not in err


def test_a_busy_port_is_one_line_before_ray_starts(tmp_path, monkeypatch, capsys):
    port = free_port()
    path = write_policy(tmp_path / "policy.yaml", policy_dict(port, name="busy"))
    monkeypatch.setattr(serve, "_existing_cluster", lambda: None)  # this machine's own `ray start` aside
    monkeypatch.setattr(serve, "_stop_on_signals", lambda: None)  # pytest's own signal handlers stay
    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        began = time.monotonic()
        code = serve.run(parser.parse_args([str(path)]))
        took = time.monotonic() - began
    err = capsys.readouterr().err
    assert code == 2 and not ray.is_initialized() and took < 5, (code, took, err)
    assert err.count("\n") == 1 and f"port {port} on 127.0.0.1 is already in use" in err and "Traceback" not in err

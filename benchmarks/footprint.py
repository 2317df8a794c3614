"""Memory of a running app: every process of its local Ray, by role, RSS and PSS (shared pages split).

    python benchmarks/footprint.py examples/tiny-policy.yaml --output benchmarks/results/footprint_tiny.json
    python benchmarks/footprint.py POLICY --tree /tmp/oldtree     # the same for another checkout's code

Starts a local Ray (2 CPUs) running the policy's app from `--tree` (default: this checkout), waits until
it serves and, with a trainer, until the trainer finished its run (`--wait-trainer`), sends a few
requests, then reads /proc of every process under this one. PSS is the fair share of memory: a page
shared by n processes counts 1/n in each, so the sum is what the app costs the machine; RSS counts
shared pages once per process.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def role(proc) -> str:
    """What a process of the app is, from its command line (Ray sets workers' titles to `ray::<what>`)."""
    try:
        line = " ".join(proc.cmdline())
    except Exception:  # noqa: BLE001 - gone
        return "gone"
    replica = re.search(r"ServeReplica:[^:\s]+:([\w.-]+)", line)  # ray::ServeReplica:<app>:<deployment>...
    if replica:
        return replica.group(1).split(".")[0]
    for key, name in (("gcs_server", "ray gcs"), ("raylet", "ray raylet"), ("DashboardAgent", "ray dashboard agent"),
                      ("RuntimeEnvAgent", "ray runtime-env agent"), ("log_monitor", "ray log monitor"),
                      ("ServeController", "serve controller"), ("ProxyActor", "serve proxy"),
                      ("TrainerRunner", "trainer actor"), ("TrainerActor", "trainer actor"),
                      ("ray::IDLE", "ray idle worker"), ("dashboard.py", "ray dashboard"), ("monitor.py", "ray monitor"),
                      ("ray::", "ray worker"), ("default_worker", "ray worker")):
        if key in line:
            return name
    return "driver" if proc.pid == os.getpid() else " ".join(Path(p).name for p in line.split()[:3])[:60]


def snapshot() -> list[dict]:
    import psutil

    me = psutil.Process()
    rows = []
    for proc in [me] + me.children(recursive=True):
        try:
            info = proc.memory_full_info()
        except Exception:  # noqa: BLE001 - exited meanwhile
            continue
        rows.append({"pid": proc.pid, "role": role(proc), "rss_mb": info.rss / 2**20, "pss_mb": info.pss / 2**20,
                     "uss_mb": info.uss / 2**20})
    return sorted(rows, key=lambda r: -r["pss_mb"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("policy")
    parser.add_argument("--tree", default=str(REPO), help="the checkout whose dsla_serve runs (default: this one)")
    parser.add_argument("--port", type=int, default=8011)
    parser.add_argument("--wait-trainer", type=float, default=600.0, help="seconds to wait for the trainer to end")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()

    if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
        sys.path.pop(0)  # Ray hands the driver's path to its workers: benchmarks/kernels.py would shadow `kernels`
    sys.path.insert(0, args.tree)
    import httpx
    import ray
    from ray import serve

    from dsla_serve.controller.app import application
    from dsla_serve.policies import load_policy

    policy = load_policy(args.policy)
    policy = policy.model_copy(update={"http": policy.http.model_copy(update={"port": args.port})})
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": args.tree}})
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        began = time.monotonic()
        serve.run(application(policy), name=policy.name, route_prefix="/", external_scaler_enabled=True)
        ready_s = time.monotonic() - began
        url = f"http://127.0.0.1:{args.port}"
        for _ in range(5):
            httpx.post(f"{url}/v1/completions", json={"model": policy.http.model_name, "prompt": "Hello",
                                                       "max_tokens": 8}, timeout=120)
        trainer = None
        deadline = time.monotonic() + args.wait_trainer
        while policy.trainer is not None and time.monotonic() < deadline:
            trainer = httpx.get(f"{url}/v1/dsla/status", timeout=30).json()["trainer"]
            if trainer and trainer["phase"] in ("done", "failed", "stopped"):
                break
            time.sleep(5)
        time.sleep(5)
        rows = snapshot()
    finally:
        ray.shutdown()
    total = {k: round(sum(r[k] for r in rows), 1) for k in ("rss_mb", "pss_mb", "uss_mb")}
    print(f"{'role':32s} {'pid':>7s} {'RSS MB':>8s} {'PSS MB':>8s}")
    for r in rows:
        print(f"{r['role'][:32]:32s} {r['pid']:7d} {r['rss_mb']:8.0f} {r['pss_mb']:8.0f}")
    print(f"{len(rows)} processes: RSS {total['rss_mb']:.0f} MB, PSS {total['pss_mb']:.0f} MB "
          f"(ready in {ready_s:.0f} s; trainer {trainer['phase'] if trainer else '-'})")
    if args.output:
        Path(args.output).write_text(json.dumps({
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "policy": args.policy, "tree": args.tree,
            "python": platform.python_version(), "load_avg": os.getloadavg(), "ready_s": ready_s,
            "trainer": trainer, "total": total, "processes": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

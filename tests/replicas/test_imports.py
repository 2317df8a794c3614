"""The engine and its CLI import without Ray, DeepSpeed or pydantic (the GPU machine lacks them)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_engine_imports_without_ray_deepspeed_pydantic():
    code = ("import sys\n"
            "for m in ('ray', 'deepspeed', 'pydantic'): sys.modules[m] = None  # import raises ImportError\n"
            "import dsla_serve.replicas, dsla_serve.replicas.cli, dsla_serve.replicas.engine\n"
            "from dsla_serve.replicas import Engine, SamplingParams\n"
            "print('ok')\n")
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-2000:]

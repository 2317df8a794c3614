"""What an install and a running app carry: no Triton on a CPU install (torch's CUDA build brings its
own), a CPU engine that never imports it, and processes that do not need torch not loading it (the
policy actor, the driver's app builder: a few hundred MB each). benchmarks/footprint.py measures it."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run_blocking(modules: tuple[str, ...], code: str) -> subprocess.CompletedProcess:
    """Run `code` in a fresh Python in which importing any of `modules` fails."""
    block = ("import sys\n"
             "class Block:\n"
             "    def find_spec(self, name, path=None, target=None):\n"
             f"        if name.split('.')[0] in {modules!r}:\n"
             "            raise ImportError('blocked ' + name)\n"
             "sys.meta_path.insert(0, Block())\n")
    return subprocess.run([sys.executable, "-c", block + code], capture_output=True, text=True, timeout=300, cwd=REPO)


def test_triton_is_not_a_dependency_of_the_package():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.lower().startswith("triton")]


def test_the_cpu_engine_runs_without_triton():
    result = _run_blocking(("triton",), (
        "from dsla_serve.replicas import Engine, SamplingParams\n"
        "engine = Engine('tiny:llama', max_model_len=64)\n"
        "out = engine.generate(['Hi'], SamplingParams(temperature=0, max_tokens=3, ignore_eos=True), use_tqdm=False)\n"
        "assert len(out[0].outputs[0].token_ids) == 3\n"))
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_policy_actor_and_the_driver_load_no_torch():
    result = _run_blocking(("torch", "transformers"), (
        "import dsla_serve.controller.control_plane.policy_actor\n"
        "import dsla_serve.controller.control_plane.trainer_link\n"
        "import dsla_serve.trainer.actor\n"
        "import dsla_serve.commands.serve\n"
        "from dsla_serve.controller.app import application\n"
        "from dsla_serve.policies import parse_policy\n"
        "application(parse_policy('model: {path: \"tiny:llama\"}\\npools: [{name: a, depth: 0}]\\n'\n"
        "                         'slo: {ttft_p95_ms: 100, tpot_p95_ms: 10}\\n'))\n"))
    assert result.returncode == 0, result.stderr[-2000:]

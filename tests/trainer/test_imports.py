"""The trainer's torch-only modules import without pydantic, DeepSpeed or Ray (the GPU image lacks
them; experiments reuse the objective and the fitting loop there), and DeepSpeed/Ray only load when
a run or the actor needs them."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

BLOCKER = (
    "import sys\n"
    "class Block:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name.split('.')[0] in {blocked}:\n"
    "            raise ImportError('blocked ' + name)\n"
    "sys.meta_path.insert(0, Block())\n"
)


def _imports(modules: list[str], blocked: tuple[str, ...]) -> subprocess.CompletedProcess:
    code = BLOCKER.format(blocked=blocked) + "".join(f"import {m}\n" for m in modules)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)


def test_torch_only_modules_need_no_pydantic_deepspeed_or_ray():
    modules = [f"dsla_serve.trainer.{m}" for m in
               ("losses", "chunked", "distill", "optim", "episodes", "evaluate", "schedule", "sensitivity", "seeds",
                "data", "engine", "distributed")]
    result = _imports(modules, ("pydantic", "deepspeed", "ray"))
    assert result.returncode == 0, result.stderr[-2000:]


def test_package_cli_and_trainer_import_without_deepspeed_or_ray():
    result = _imports(["dsla_serve.trainer", "dsla_serve.trainer.cli", "dsla_serve.trainer.trainer"],
                      ("deepspeed", "ray"))
    assert result.returncode == 0, result.stderr[-2000:]

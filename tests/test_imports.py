"""The package's structure, read from the source (every import statement, at module level or
inside a function): no cycles, and the directions of docs/design.md.

    controller, commands, cli -> policies, replicas, trainer -> quality -> model -> kernels
    commands -> bench -> policies

kernels import nothing else of the package; policies import neither torch nor ray; replicas import no
controller, trainer or policies.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "dsla_serve"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str) -> set[str]:
    """Every module `name` imports (package-internal ones resolved to modules of MODULES; others by their
    top-level name)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            submodules = {f"{target}.{alias.name}" for alias in node.names} & MODULES.keys()
            found.update(submodules)
            if len(submodules) < len(node.names):  # names defined in `target` itself, not only its submodules
                found.add(target)
    internal = {m for m in found if m in MODULES}
    external = {m.split(".")[0] for m in found if not m.startswith("dsla_serve")}
    return internal | external


GRAPH = {name: _imports(name) for name in MODULES}


def _part(module: str) -> str:
    """The top-level part of the package a module belongs to (`cli` for dsla_serve/cli.py)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports_of(part: str) -> dict[str, set[str]]:
    return {m: deps for m, deps in GRAPH.items() if _part(m) == part}


def test_no_import_cycles():
    """Tarjan's strongly connected components over the module graph: each must be a single module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in MODULES:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in GRAPH[v]:
                cycles.append(sorted(component))

    for v in MODULES:
        if v not in index:
            visit(v)
    assert cycles == []


# what each part may import of the package: itself and the parts below it (`configfile`, the one YAML
# loader, is below every part that reads a config file)
ALLOWED = {
    "configfile": set(),
    "lazy": set(),
    "kernels": set(),
    "model": {"lazy", "kernels"},
    "quality": {"model", "kernels"},
    "policies": {"configfile", "model"},
    "replicas": {"lazy", "model", "kernels"},
    "trainer": {"configfile", "quality", "model", "kernels"},
    "controller": {"configfile", "policies", "replicas", "trainer", "quality", "model", "kernels"},
    "bench": {"policies"},
    "commands": {"configfile", "controller", "bench", "policies", "replicas", "trainer", "quality", "model",
                 "kernels"},
}
# single modules a part may import beside its parts: a policy's trainer section is the trainer's own
# settings model, which imports no torch (its test is below)
ALLOWED_MODULES = {"policies": {"dsla_serve.trainer.config"}}


def test_each_part_imports_only_the_parts_below_it():
    wrong = []
    for part, allowed in ALLOWED.items():
        for module, deps in _imports_of(part).items():
            for dep in deps:
                if dep in ALLOWED_MODULES.get(part, set()):
                    continue
                if dep.startswith("dsla_serve.") and _part(dep) not in allowed | {part}:
                    wrong.append(f"{module} -> {dep}")
                elif dep == "dsla_serve" and module != "dsla_serve":
                    wrong.append(f"{module} -> dsla_serve")
    assert wrong == []


def test_kernels_import_nothing_else_of_the_package():
    assert {d for deps in _imports_of("kernels").values() for d in deps
            if d.startswith("dsla_serve") and _part(d) != "kernels"} == set()


def test_replicas_import_no_controller_trainer_or_policies():
    assert {d for deps in _imports_of("replicas").values() for d in deps
            if _part(d) in ("controller", "commands", "trainer", "policies")} == set()


def test_the_two_halves_of_the_controller_import_nothing_of_each_other():
    halves = {"frontend": "dsla_serve.controller.control_plane", "control_plane": "dsla_serve.controller.frontend"}
    wrong = [f"{m} -> {d}" for m, deps in GRAPH.items() for half, other in halves.items()
             if m.startswith(f"dsla_serve.controller.{half}") for d in deps if d.startswith(other)]
    assert wrong == []


def test_bench_imports_neither_torch_nor_ray():
    """`dsla-serve bench` is a client: it loads no model and no cluster."""
    assert {d for deps in _imports_of("bench").values() for d in deps} & {"torch", "ray", "transformers"} == set()


def test_policies_import_neither_torch_nor_ray():
    """Read from the source, and run: every policies module imports with torch and ray unavailable."""
    assert {d for deps in _imports_of("policies").values() for d in deps} & {"torch", "ray"} == set()
    modules = [m for m in MODULES if _part(m) == "policies"]
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('torch', 'ray'):\n"
            "            raise ImportError('blocked ' + name)\n"
            "sys.meta_path.insert(0, Block())\n" + "".join(f"import {m}\n" for m in modules))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_graph_is_read():
    """Guards the checks above against a reader that finds nothing."""
    assert "dsla_serve.model.manifest" in GRAPH["dsla_serve.policies.quality"]
    assert "dsla_serve.replicas.messages" in GRAPH["dsla_serve.controller.frontend.runs"]
    assert "torch" in GRAPH["dsla_serve.kernels.naive"]


def test_the_manifest_file_is_named_in_one_module():
    """Every reader of an artifact's manifest goes through `model/manifest.py`."""
    naming = sorted(name for name, path in MODULES.items() if "manifest.json" in path.read_text())
    assert naming == ["dsla_serve.model.manifest"]

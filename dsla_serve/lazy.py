"""Package exports that load their module on first use (PEP 562): importing a package stays cheap, and
its torch-free modules import without torch."""

from __future__ import annotations

from importlib import import_module
from typing import Callable


def lazy_exports(package: str, exports: dict[str, tuple[str, ...]],
                 namespace: dict) -> tuple[list[str], Callable, Callable]:
    """(__all__, __getattr__, __dir__) for `package`, whose module `m` provides the names exports[m];
    a name is imported on first access and then kept in `namespace` (the package's globals())."""
    module_of = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str):
        module = module_of.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(f"{package}.{module}"), name)
        namespace[name] = value
        return value

    def __dir__():
        return sorted(set(namespace) | set(module_of))

    return sorted(module_of), __getattr__, __dir__

"""Read a policy YAML file into a `Policy`, with errors that name the file, the field and the line.

    policy = load_policy("examples/tiny-policy.yaml")

Every problem becomes one line of a single `PolicyError` (the one loader of every config file,
`dsla_serve.configfile`):

    tiny-policy.yaml: pools.1.depth: Input should be greater than or equal to 0 (line 31)
    tiny-policy.yaml: pools.0.replicas: unknown key 'replicas'; allowed keys: name, depth, ... (line 25)

Relative paths in the file are resolved against the file's directory (see docs/policies.md).
"""

from __future__ import annotations

import os

from ..configfile import ConfigFileError, load_yaml_model, read_yaml, validate_model
from ..model.manifest import manifest_path
from ..model.storage import is_uri
from .schema import Policy

__all__ = ["PolicyError", "load_policy", "parse_policy", "check_policy_paths"]


class PolicyError(ConfigFileError):
    """A policy file that cannot be used. `problems` holds one line per problem (file and field named)."""


def parse_policy(text: str, *, label: str = "<policy>", base_dir: str | os.PathLike | None = None) -> Policy:
    """A `Policy` from YAML text. `label` names the source in errors; relative paths join `base_dir`."""
    data, root = read_yaml(text, label, PolicyError)
    context = {"base_dir": os.fspath(base_dir)} if base_dir is not None else None
    return validate_model(Policy, data, PolicyError, label=label, root=root, context=context)


def check_policy_paths(policy: Policy, label: str = "<policy>") -> None:
    """Raise `PolicyError` naming each local path the policy needs that does not exist here.

    Not done by default: `dsla-serve build` may describe a cluster whose paths exist only there.
    An artifact directory may be missing when a trainer will create it; an object store URI is not
    checked here (the policy actor reports it in the status when it cannot be read).
    """
    problems = []

    def need(field: str, path: str, kind: str) -> None:
        ok = os.path.isdir(path) if kind == "directory" else os.path.exists(path)
        if not ok:
            problems.append(f"{label}: {field}: {path}: no such {kind}")

    if policy.model.is_local_path:
        need("model.path", policy.model.path, "file" if policy.model.path.endswith(".gguf") else "directory")
    if policy.model.tokenizer is not None and os.path.isabs(policy.model.tokenizer):
        need("model.tokenizer", policy.model.tokenizer, "file or directory")
    if policy.artifact is not None and policy.trainer is None and not is_uri(policy.artifact):
        need("artifact", policy.artifact, "directory")
        if os.path.isdir(policy.artifact):
            need("artifact", str(manifest_path(policy.artifact)), "file")
    if policy.trainer is not None:
        for i, path in enumerate(policy.trainer.data.paths):
            need(f"trainer.data.paths.{i}", os.fspath(path), "file or directory")
    if problems:
        raise PolicyError(problems)


def load_policy(path: str | os.PathLike, *, check_paths: bool = False) -> Policy:
    """Read and validate a policy file; relative paths inside it are taken from its directory.

    check_paths: also require the local paths it names to exist (see `check_policy_paths`).
    Raises PolicyError (a ValueError) naming the file, each bad field and its line.
    """
    label = os.fspath(path)
    policy = load_yaml_model(Policy, path, PolicyError)
    if check_paths:
        check_policy_paths(policy, label)
    return policy

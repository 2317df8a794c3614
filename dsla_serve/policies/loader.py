"""Read a policy YAML file into a `Policy`, with errors that name the file, the field and the line.

    policy = load_policy("examples/tiny-policy.yaml")

Every problem becomes one line of a single `PolicyError`:

    tiny-policy.yaml: pools.1.depth: Input should be greater than or equal to 0 (line 31)
    tiny-policy.yaml: pools.0.replicas: unknown key 'replicas'; allowed keys: name, depth, ... (line 25)

Relative paths in the file are resolved against the file's directory (see docs/policies.md).
"""

from __future__ import annotations

import difflib
import os
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ..model.manifest import manifest_path
from ..model.storage import is_uri
from .schema import FieldProblem, Policy

__all__ = ["PolicyError", "load_policy", "parse_policy", "check_policy_paths"]


class PolicyError(ValueError):
    """A policy file that cannot be used. `problems` holds one line per problem (file and field named)."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys silently; a policy with a duplicated key is an error."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # unhashable key: the base class reports it
                    continue
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first given at line {first})", key_node.start_mark)
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _read_yaml(text: str, label: str) -> tuple[Any, yaml.Node | None]:
    """The document's data and its node tree (for line numbers)."""
    loader = _UniqueKeyLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        what = " ".join(str(x) for x in (exc.context, exc.problem) if x)
        raise PolicyError([f"{label}: {where}invalid YAML: {what}"]) from None
    except yaml.YAMLError as exc:
        raise PolicyError([f"{label}: YAML error: {exc}"]) from None
    finally:
        loader.dispose()
    return data, node


def _line_of(node: yaml.Node | None, loc: tuple) -> int | None:
    """1-based line of the deepest node of `loc` present in the YAML tree."""
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if k.value == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
        else:
            node = None
        if node is None:
            break
        line = node.start_mark.line + 1
    return line


def _section_class(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The pydantic model a location inside the policy points at (for listing its allowed keys)."""
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        model = _model_in(field.annotation)
        if model is None:
            return None
    return model


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) in (typing.Union, list):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None


def _describe(error: dict) -> tuple[tuple, str]:
    """(location, message) of one pydantic error, in the words a policy author needs."""
    loc = tuple(error["loc"])
    problem = (error.get("ctx") or {}).get("error")
    if isinstance(problem, FieldProblem):
        return loc + tuple(int(p) if p.isdigit() else p for p in problem.field.split(".") if p), problem.message
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        key = loc[-1]
        section = _section_class(Policy, loc[:-1])
        allowed = list(section.model_fields) if section is not None else []
        message = f"unknown key {key!r}"
        close = difflib.get_close_matches(str(key), allowed, n=1)
        if close:
            message += f" (did you mean {close[0]!r}?)"
        if allowed:
            message += f"; allowed keys: {', '.join(allowed)}"
    elif error["type"].endswith("_type") or error["type"].startswith("literal"):
        value = error.get("input")
        if isinstance(value, (str, int, float, bool)) or value is None:
            message += f" (got {value!r})"
    return loc, message


def parse_policy(text: str, *, label: str = "<policy>", base_dir: str | os.PathLike | None = None) -> Policy:
    """A `Policy` from YAML text. `label` names the source in errors; relative paths join `base_dir`."""
    data, root = _read_yaml(text, label)
    if not isinstance(data, dict):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        raise PolicyError([f"{label}: the file is {kind}; it must be a mapping of sections "
                           f"({', '.join(Policy.model_fields)})"])
    context = {"base_dir": os.fspath(base_dir)} if base_dir is not None else None
    try:
        return Policy.model_validate(data, context=context)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc, message = _describe(error)
            field = ".".join(str(p) for p in loc)
            line = _line_of(root, loc)
            problems.append(f"{label}: {field + ': ' if field else ''}{message}"
                            f"{f' (line {line})' if line is not None else ''}")
        raise PolicyError(problems) from None


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
        for i, path in enumerate(policy.trainer.data):
            need(f"trainer.data.{i}", path, "file or directory")
        if isinstance(policy.trainer.deepspeed, str):
            need("trainer.deepspeed", policy.trainer.deepspeed, "file")
    if problems:
        raise PolicyError(problems)


def load_policy(path: str | os.PathLike, *, check_paths: bool = False) -> Policy:
    """Read and validate a policy file; relative paths inside it are taken from its directory.

    check_paths: also require the local paths it names to exist (see `check_policy_paths`).
    Raises PolicyError (a ValueError) naming the file, each bad field and its line.
    """
    label = os.fspath(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError([f"{label}: no such file"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError([f"{label}: cannot read: {exc}"]) from None
    policy = parse_policy(text, label=label, base_dir=os.path.dirname(os.path.abspath(path)))
    if check_paths:
        check_policy_paths(policy, label)
    return policy

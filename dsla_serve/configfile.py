"""One YAML loader for every config file (a policy, a `dsla-serve convert` config, a campaign): YAML
text -> a pydantic model, with every problem on one line naming the file, the field and its line.

    policy = load_yaml_model(Policy, "examples/tiny-policy.yaml", PolicyError)
    config = validate_model(ConvertConfig, data, ConfigError, label="trainer section")

    tiny-policy.yaml: pools.1.depth: Input should be greater than or equal to 0 (line 31)
    convert.yaml: training.stepz: unknown key 'stepz' (did you mean 'steps'?); allowed keys: steps, lr, ... (line 12)

Duplicate keys are errors (PyYAML would keep the last silently). Cross-field rules raise `FieldProblem`,
which names the field, so that a message reads `pools.1.initial_replicas: ...` rather than `pools.1`.
Relative paths are the models' business: the file's directory is passed as `context={"base_dir": ...}`.
Imports only yaml and pydantic (policies load it without torch).
"""

from __future__ import annotations

import difflib
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

__all__ = ["ConfigFileError", "FieldProblem", "read_yaml", "validate_model", "load_yaml_model", "line_of"]

M = TypeVar("M", bound=BaseModel)


class ConfigFileError(ValueError):
    """A config that cannot be used; `problems` holds one line per problem (file and field named)."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = list(problems)


class FieldProblem(ValueError):
    """A cross-field rule broken at `field` (a dotted path relative to the model that raised it)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses duplicate keys, naming the line of the first."""

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


def read_yaml(text: str, label: str, error: type[ConfigFileError] = ConfigFileError) -> tuple[Any, yaml.Node | None]:
    """(data, node tree) of one YAML document; a syntax error or duplicate key raises `error` with its line."""
    loader = _UniqueKeyLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        what = " ".join(str(x) for x in (exc.context, exc.problem) if x)
        raise error([f"{label}: {where}invalid YAML: {what}"]) from None
    except yaml.YAMLError as exc:
        raise error([f"{label}: YAML error: {exc}"]) from None
    finally:
        loader.dispose()
    return data, node


def line_of(node: yaml.Node | None, loc: tuple) -> int | None:
    """1-based line of the deepest node of `loc` present in the YAML tree."""
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if k.value == str(part)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
        else:
            node = None
        if node is None:
            break
        line = node.start_mark.line + 1
    return line


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) in (typing.Union, list):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None


def _section_class(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The pydantic model a location inside `model` points at (for listing its allowed keys)."""
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


def _describe(error: dict, root_model: type[BaseModel]) -> tuple[tuple, str]:
    """(location, message) of one pydantic error, in the words a config author needs."""
    loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    problem = (error.get("ctx") or {}).get("error")
    if isinstance(problem, FieldProblem):
        return loc + tuple(int(p) if p.isdigit() else p for p in problem.field.split(".") if p), problem.message
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        key = loc[-1]
        section = _section_class(root_model, loc[:-1])
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


def validate_model(model: type[M], data: Any, error: type[ConfigFileError] = ConfigFileError, *,
                   label: str = "<config>", root: yaml.Node | None = None,
                   context: dict | None = None) -> M:
    """`model` validated from `data`; every problem becomes one line of `error`: `label: field: message
    (line N)` (the line from the YAML node tree `root`, when given)."""
    if not isinstance(data, dict):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        raise error([f"{label}: the file is {kind}; it must be a mapping of sections "
                     f"({', '.join(model.model_fields)})"])
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc, message = _describe(err, model)
            field = ".".join(str(p) for p in loc)
            line = line_of(root, loc)
            problems.append(f"{label}: {field + ': ' if field else ''}{message}"
                            f"{f' (line {line})' if line is not None else ''}")
        raise error(problems) from None


def load_yaml_model(model: type[M], path: str | os.PathLike, error: type[ConfigFileError] = ConfigFileError, *,
                    label: str | None = None) -> M:
    """Read and validate a YAML file; relative paths in it are taken from its directory (context base_dir)."""
    label = label or os.fspath(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error([f"{label}: no such file"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error([f"{label}: cannot read: {exc}"]) from None
    data, root = read_yaml(text, label, error)
    return validate_model(model, data, error, label=label, root=root,
                          context={"base_dir": os.path.dirname(os.path.abspath(path))})

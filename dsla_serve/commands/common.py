"""What `serve`, `deploy` and `build` share: reading the policy, checking it can run, Ray and Serve."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ..policies import Policy, PolicyError, load_policy

DSLA_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class CommandError(Exception):
    """A problem to print (without a traceback) before exiting with status 2."""


def add_policy_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("policy", help="the policy YAML file (see docs/policies.md and examples/tiny-policy.yaml)")


def add_http_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=None, help="override http.host (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=None, help="override http.port")


def read_policy(path: str, *, check_paths: bool, host: str | None = None, port: int | None = None) -> Policy:
    """The policy at `path` with --host/--port applied; CommandError listing every problem."""
    try:
        policy = load_policy(path, check_paths=check_paths)
    except PolicyError as e:
        raise CommandError(str(e)) from None
    changes: dict[str, Any] = {}
    if host is not None:
        changes["host"] = host
    if port is not None:
        if not 1 <= port <= 65535:
            raise CommandError(f"--port {port}: must be in 1..65535")
        changes["port"] = port
    if changes:
        policy = policy.model_copy(update={"http": policy.http.model_copy(update=changes)})
    return policy


def check_runnable(policy: Policy, *, local: bool) -> None:
    """Fail early, with the field named, on what would only fail inside a replica later."""
    from ..controller.control_plane.trainer_link import TrainerSetupError, check_trainer

    try:
        check_trainer(policy)
    except (TrainerSetupError, ValueError) as e:
        raise CommandError(f"the trainer section cannot run: {e}") from None
    name = policy.http.api_key_env
    if local and name is not None and not os.environ.get(name):
        raise CommandError(f"http.api_key_env is {name!r} but ${name} is not set in this shell: export it (clients "
                           "then send `Authorization: Bearer <key>`), or remove api_key_env")


def prepare_model(policy: Policy) -> None:
    """Build the cached folder of a GGUF or short-named model here, before Ray starts, so the one-time
    conversion is shown in this terminal and replicas find it ready; CommandError when it cannot load."""
    from ..model.loading import resolve_model
    from ..model.sources import ModelSourceError

    for spec in dict.fromkeys(s for s in (policy.model.path, policy.model.tokenizer) if s):
        try:
            resolve_model(spec)
        except ModelSourceError as e:
            raise CommandError(str(e)) from None


def local_runtime_env() -> dict[str, Any]:
    """Lets Ray's workers import dsla_serve when it runs from a checkout rather than an install."""
    paths = [DSLA_PACKAGE_PARENT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {"env_vars": {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}}


def quiet_ray_logs() -> None:
    """Ray's own INFO lines would bury the URL and the status line."""
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")


def start_serve(policy: Policy, *, seed: int = 0, start_trainer: bool = True):
    """Start Serve's HTTP proxy on the policy's host/port and run the application (returns at once)."""
    from ray import serve

    from ..controller.app import application

    serve.start(http_options={"host": policy.http.host, "port": policy.http.port})
    serve.run(application(policy, seed=seed, start_trainer=start_trainer), name=policy.name, route_prefix="/",
              external_scaler_enabled=True)


def url_of(policy: Policy) -> str:
    host = policy.http.host
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://{shown}:{policy.http.port}"


def fail(message: str) -> int:
    print(f"dsla-serve: {message}", file=sys.stderr)
    return 2

"""`dsla-serve build POLICY.yaml -o serve.yaml`: write a Ray Serve config for `serve deploy`.

The config names the app builder `dsla_serve.controller.app:build_app` and carries the whole policy
(paths made absolute, defaults filled in) as its args, so it is self-contained. It is checked against
Ray's own schema (`ServeDeploySchema`) before it is written.
"""

from __future__ import annotations

import argparse
import os
import sys

import yaml

from .common import CommandError, add_http_overrides, add_policy_argument, check_runnable, fail, read_policy

HELP = "write a Ray Serve config file (serve deploy / KubeRay) that runs a policy"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = ("Write a Serve config that `serve deploy` (or a KubeRay RayService) accepts: the import\n"
                          "path of the app builder and the whole policy (paths absolute) as its args.")
    parser.epilog = "example:\n  dsla-serve build examples/tiny-policy.yaml -o serve.yaml && serve deploy serve.yaml"
    add_policy_argument(parser)
    parser.add_argument("-o", "--output", required=True, help="the config file to write (- for stdout)")
    add_http_overrides(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed of the routing draws")


def serve_config(policy, source: str, seed: int = 0) -> dict:
    """The Serve config (a plain dict) for `policy`, validated by ray.serve.schema.ServeDeploySchema."""
    from ray.serve.schema import ServeDeploySchema

    from ..controller.app import IMPORT_PATH, policy_args

    config = {
        "proxy_location": "EveryNode",
        "http_options": {"host": policy.http.host, "port": policy.http.port},
        "applications": [{
            "name": policy.name,
            "route_prefix": "/",
            "import_path": IMPORT_PATH,
            "args": {"policy": policy_args(policy), "seed": seed},
            "external_scaler_enabled": True,
        }],
    }
    ServeDeploySchema.model_validate(config)
    return config


def header(policy, source: str) -> str:
    lines = [f"Ray Serve config written by `dsla-serve build {source}`; deploy with `serve deploy <this file>`.",
             "Needs dsla-serve installed on the cluster, and the paths below readable from its nodes."]
    if policy.http.api_key_env:
        lines.append(f"Set ${policy.http.api_key_env} (the API key) in the cluster's environment: it is not written here.")
    return "".join(f"# {line}\n" for line in lines)


def run(args: argparse.Namespace) -> int:
    try:
        policy = read_policy(args.policy, check_paths=False, host=args.host, port=args.port)
        check_runnable(policy, local=False)
    except CommandError as e:
        return fail(str(e))
    try:
        config = serve_config(policy, args.policy, args.seed)
    except ValueError as e:
        return fail(f"the generated config does not pass Ray's schema: {e}")
    text = header(policy, args.policy) + yaml.safe_dump(config, sort_keys=False)
    if args.output == "-":
        sys.stdout.write(text)
        return 0
    tmp = f"{args.output}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, args.output)
    print(f"wrote {args.output}: app {policy.name!r}, {len(policy.pools)} pools, serving on "
          f"{policy.http.host}:{policy.http.port}; deploy with `serve deploy {args.output}`")
    return 0

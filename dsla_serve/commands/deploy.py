"""`dsla-serve deploy POLICY.yaml --address ADDRESS`: run a policy's app on an existing Ray cluster.

The app keeps running after this command returns (`serve shutdown` or `serve delete NAME` stops it).
Paths in the policy (artifact, trainer data) must exist on the cluster's nodes, and dsla-serve must be
installed there (or shipped with --ship-code). With `http.api_key_env`, the key is taken from this shell and carried in the app's
runtime environment (or set it on the cluster and pass --no-forward-api-key).
"""

from __future__ import annotations

import argparse
import os
import time

from .common import CommandError, add_http_overrides, add_policy_argument, check_runnable, fail, read_policy, url_of

PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # .../dsla_serve

HELP = "deploy a policy's app onto an existing Ray cluster (--address) and return"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = ("Deploy the policy's Serve application onto a running Ray cluster and return; it keeps\n"
                          "serving until `serve shutdown` (or `serve delete NAME`). Paths in the policy must exist\n"
                          "on the cluster.")
    parser.epilog = "example:\n  dsla-serve deploy examples/policy-llama-7b.yaml --address ray://head:10001"
    add_policy_argument(parser)
    parser.add_argument("--address", required=True,
                        help="the cluster: ray://HOST:10001 (Ray Client), HOST:6379, or auto (a cluster on this node)")
    add_http_overrides(parser)
    parser.add_argument("--ship-code", action="store_true",
                        help="upload this dsla_serve package to the cluster with the app (for a cluster that has "
                             "the dependencies but not dsla-serve, or an older one)")
    parser.add_argument("--no-forward-api-key", action="store_true",
                        help="do not carry $<http.api_key_env> from this shell to the app (it is set on the cluster)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the routing draws")


def run(args: argparse.Namespace) -> int:
    try:
        policy = read_policy(args.policy, check_paths=False, host=args.host, port=args.port)
        forward = policy.http.api_key_env is not None and not args.no_forward_api_key
        check_runnable(policy, local=forward)
    except CommandError as e:
        return fail(str(e))
    import ray

    runtime_env: dict = {}
    if forward:
        runtime_env["env_vars"] = {policy.http.api_key_env: os.environ[policy.http.api_key_env]}
    if args.ship_code:
        runtime_env["py_modules"] = [PACKAGE_DIR]
    try:
        ray.init(address=args.address, runtime_env=runtime_env or None, log_to_driver=False)
    except Exception as e:  # noqa: BLE001
        return fail(f"cannot connect to the Ray cluster at {args.address}: {e}")
    from .common import start_serve

    began = time.monotonic()
    try:
        start_serve(policy, seed=args.seed)
    except Exception as e:  # noqa: BLE001
        return fail(f"deploying {policy.name!r} failed: {type(e).__name__}: {e}")
    print(f"deployed {policy.name!r} in {time.monotonic() - began:.0f} s: {url_of(policy)}/v1 on the cluster's "
          f"head node (status: `dsla-serve status --url {url_of(policy)}`)")
    return 0

"""`dsla-serve check POLICY.yaml`: validate a policy and show it with every default filled in."""

from __future__ import annotations

import argparse
import json
import sys

import yaml

from .loader import PolicyError, load_policy
from .schema import Policy, policy_json_schema

HELP = "validate a policy YAML file and print it with defaults filled in and paths resolved"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("policy", nargs="?", help="the policy YAML file (see docs/policies.md)")
    parser.add_argument("--check-paths", action="store_true",
                        help="also require the local paths it names (model, data, artifact) to exist here")
    parser.add_argument("--format", choices=("summary", "yaml", "json"), default="summary",
                        help="summary (default): pools and targets; yaml/json: the whole normalised policy")
    parser.add_argument("--schema", action="store_true", help="print the policy's JSON Schema and exit")


def summary(policy: Policy) -> str:
    """A few lines an operator can check at a glance."""
    slo = policy.slo
    quality = policy.quality
    lines = [
        f"policy {policy.name}: model {policy.model.path} ({policy.model.dtype}), served as "
        f"{policy.http.model_name!r} on http://{policy.http.host}:{policy.http.port}"
        + (f" (API key from ${policy.http.api_key_env})" if policy.http.api_key_env else ""),
        f"layers: {policy.artifact_dir or 'none (depth 0 only)'}"
        + (f"; trainer converts {policy.trainer.depth} layers ({policy.trainer.order.method} order)"
           if policy.trainer else ""),
        f"SLO p95: TTFT {slo.ttft_p95_ms:g} ms, TPOT {slo.tpot_p95_ms:g} ms"
        + (f", end-to-end {slo.e2e_p95_ms:g} ms" if slo.e2e_p95_ms else ""),
        "quality floor: " + ("depth 0 only" if quality is None else ", ".join(
            s for s in [f"ppl ratio <= {quality.max_ppl_ratio:g}" if quality.max_ppl_ratio else "",
                        f"depth <= {quality.max_depth}" if quality.max_depth is not None else ""] if s)),
        "pools (shallow to deep):",
    ]
    for pool in policy.pools_by_depth:
        r = pool.resources
        lines.append(f"  {pool.name:<16} depth {pool.depth:<4} replicas {pool.min_replicas}..{pool.max_replicas} "
                     f"(start {pool.initial_replicas}), {pool.max_concurrent_requests} concurrent, "
                     f"{r.num_cpus:g} CPU {r.num_gpus:g} GPU each")
    c = policy.controller
    lines.append(f"controller: every {c.interval_s:g} s over {c.window_s:g} s, cooldown {c.cooldown_s:g} s, "
                 f"hysteresis {c.hysteresis:g}, step {c.traffic_step:.0%}, min {c.min_samples} samples")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.schema:
        print(json.dumps(policy_json_schema(), indent=2))
        return 0
    if not args.policy:
        print("dsla-serve check: give a policy file (or --schema)", file=sys.stderr)
        return 2
    try:
        policy = load_policy(args.policy, check_paths=args.check_paths)
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.format == "json":
        print(policy.model_dump_json(indent=2))
    elif args.format == "yaml":
        print(yaml.safe_dump(policy.model_dump(mode="json"), sort_keys=False), end="")
    else:
        print(summary(policy))
        print(f"{args.policy}: OK")
    return 0

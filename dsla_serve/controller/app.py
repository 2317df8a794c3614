"""From a policy to a Ray Serve application, and the import-path builder `serve deploy` calls.

    app = application(load_policy("policy.yaml"))          # then serve.run(app, name=policy.name, ...)
    # serve.yaml: import_path: dsla_serve.controller.app:build_app, args: {policy: {...}}

The application has one deployment per pool (`pool-<name>`, replicas of the engine, placed by the pool's
resources), the policy actor (`policy`, one replica) and the HTTP ingress (`ingress`), both on the head
node. Serve's own autoscaler is off (`external_scaler_enabled`): the policy actor sets replica counts.
"""

from __future__ import annotations

import os
from typing import Any

from ray import serve
from ray.serve import Application

from ..policies import Policy, load_policy
from ..replicas.deployment import ReplicaDeployment, ReplicaSpec
from .cadence import replica_queue, report_every_s
from .control_plane.policy_actor import PolicyActor, pool_deployment_name
from .frontend.ingress import Ingress

INGRESS_NAME = "ingress"
POLICY_ACTOR_NAME = "policy"
IMPORT_PATH = "dsla_serve.controller.app:build_app"
GPU_MEMORY_FRACTION = 0.9  # of a replica's GPU share, for its engine's weights and cache
# Ray's resource of the head node: the ingress and the policy actor (no CPU of their own) live there, beside
# Serve's controller, so that losing a worker node never takes the control plane (and the trainer it owns) along
ON_HEAD_NODE = {"num_cpus": 0, "resources": {"node:__internal_head__": 0.001}}


def policy_args(policy: Policy) -> dict[str, Any]:
    """The policy as plain JSON data (paths already absolute), for deployment arguments and configs."""
    return policy.model_dump(mode="json")


def replica_spec(policy: Policy, pool_name: str) -> ReplicaSpec:
    """What the replicas of a pool serve: the policy's model and artifact, the pool's limits."""
    pool, model = policy.pool(pool_name), policy.model
    gpus = pool.resources.num_gpus
    return ReplicaSpec(
        pool=pool.name, model=model.path, tokenizer=model.tokenizer, artifact=policy.artifact_dir,
        dtype=None if model.dtype == "auto" else model.dtype, max_model_len=model.max_model_len,
        max_num_seqs=pool.max_concurrent_requests, max_queue=replica_queue(policy, pool.name),
        # a replica on a fraction of a GPU plans its cache in its share of the memory
        gpu_memory_fraction=GPU_MEMORY_FRACTION * (gpus if 0 < gpus < 1 else 1.0),
        report_every_s=report_every_s(policy))


def pool_options(policy: Policy, pool_name: str) -> dict[str, Any]:
    """Serve options of a pool's deployment: resources (custom ones too), replicas and how many requests
    reach a replica.

    A replica accepts its concurrency plus its engine's queue, so that waiting requests wait in its
    engine (where the policy actor sees them) rather than unseen in Serve's router.
    """
    pool = policy.pool(pool_name)
    return {"name": pool_deployment_name(pool.name), "num_replicas": pool.initial_replicas,
            "ray_actor_options": pool.resources.ray_options(),  # custom resources place it on given nodes
            "max_ongoing_requests": pool.max_concurrent_requests + replica_queue(policy, pool.name),
            "health_check_period_s": 5, "graceful_shutdown_timeout_s": 30}


def application(policy: Policy, *, seed: int = 0, start_trainer: bool = True) -> Application:
    """The Serve application of a policy (bind only; nothing starts until `serve.run`)."""
    data = policy_args(policy)
    controller = serve.deployment(PolicyActor).options(
        name=POLICY_ACTOR_NAME, num_replicas=1, ray_actor_options=ON_HEAD_NODE, max_ongoing_requests=10_000,
        logging_config={"enable_access_log": False},  # replicas and the ingress call it several times a second
    ).bind(data, policy.name, start_trainer)
    pools = {p.name: serve.deployment(ReplicaDeployment).options(**pool_options(policy, p.name))
             .bind(replica_spec(policy, p.name), controller) for p in policy.pools}
    return serve.deployment(Ingress).options(
        name=INGRESS_NAME, num_replicas=1, ray_actor_options=ON_HEAD_NODE, max_ongoing_requests=10_000,
    ).bind(data, controller, pools, seed)


def build_app(args: dict[str, Any]) -> Application:
    """Serve application builder (import path `dsla_serve.controller.app:build_app`).

    args: {"policy": <the policy mapping>} as `dsla-serve build` writes it, or {"policy_path": <YAML file
    readable where the app is built>}; optional "seed" (routing randomness, default 0).
    """
    args = dict(args or {})
    unknown = set(args) - {"policy", "policy_path", "seed"}
    if unknown:
        raise ValueError(f"build_app args: unknown keys {sorted(unknown)}; expected policy or policy_path, and seed")
    if ("policy" in args) == ("policy_path" in args):
        raise ValueError("build_app args: give exactly one of `policy` (the policy mapping) or `policy_path`")
    if "policy_path" in args:
        policy = load_policy(os.path.expanduser(str(args["policy_path"])))
    else:
        policy = Policy.model_validate(args["policy"])
    seed = args.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"build_app args: seed must be an int, got {seed!r}")
    return application(policy, seed=seed)

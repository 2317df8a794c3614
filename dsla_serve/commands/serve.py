"""`dsla-serve serve POLICY.yaml`: serve a policy on this machine until Ctrl-C.

Joins the Ray that `ray start --head` runs on this machine (or $RAY_ADDRESS), else starts a local
one (after checking that the policy's port is free: a busy port is one line, before Ray starts); runs
the app, prints its URL and then one status line every few seconds. On Ctrl-C, SIGINT or SIGTERM the
app is deleted and, if this command started Ray, Ray is shut down. SIGINT is handled explicitly: a
shell script that starts `dsla-serve serve ... &` starts it with SIGINT ignored, and `kill -INT` must
still stop it.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import socket
import time

from .common import (CommandError, add_http_overrides, add_policy_argument, check_runnable, fail, local_runtime_env,
                     prepare_model, quiet_ray_logs, read_policy, start_serve, url_of)

HELP = "serve a policy on this machine (starts a local Ray if none is running) until Ctrl-C"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = (
        "Serve the policy's model over OpenAI-compatible HTTP with Ray Serve on this machine: one\n"
        "deployment per pool, the policy actor shifting traffic between depths under load, and (with a\n"
        "trainer section) layers converted in the background. Joins the Ray of `ray start` (or\n"
        "$RAY_ADDRESS), else starts a local one. Ctrl-C stops the app (and the Ray it started).")
    parser.epilog = ("example:\n"
                     "  dsla-serve serve examples/tiny-policy.yaml\n"
                     "  curl http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \\\n"
                     "       -d '{\"model\": \"tiny-llama\", \"prompt\": \"Hello\", \"max_tokens\": 16}'\n"
                     "  dsla-serve status")
    add_policy_argument(parser)
    add_http_overrides(parser)
    parser.add_argument("--num-cpus", type=int, default=None,
                        help="CPUs of the local Ray this command starts (default: all of this machine's)")
    parser.add_argument("--num-gpus", type=int, default=None, help="GPUs of the local Ray (default: all)")
    parser.add_argument("--status-every", type=float, default=10.0, metavar="S",
                        help="seconds between status lines (0: none)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the routing draws")
    parser.add_argument("--no-trainer", action="store_true",
                        help="do not start the policy's background trainer (serve the artifact as it is)")


def _existing_cluster() -> str | None:
    """What a plain `ray.init()` would join: $RAY_ADDRESS, or the cluster `ray start` ran here (it leaves its
    address in <Ray's temp dir>/ray_current_cluster: /tmp/ray unless $RAY_TMPDIR or $TMPDIR say otherwise).
    Ray instances of other programs are not joined."""
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    from ray._common.utils import get_ray_address_file

    address_file = get_ray_address_file(None)
    if not os.path.exists(address_file):
        return None
    _check_answers(address_file)
    return "the `ray start` cluster of this machine"


def _check_answers(address_file: str) -> None:
    """A cluster that `ray start` left behind (killed, machine restarted) keeps its address file, and
    `ray.init()` would wait for it: refuse in one line instead."""
    with open(address_file) as f:
        address = f.read().strip()
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=2):
            return
    except (OSError, ValueError):
        raise CommandError(f"the Ray cluster that `ray start` left on this machine ({address}, named in "
                           f"{address_file}) does not answer: clear it with `ray stop --force`, or set "
                           f"RAY_ADDRESS to a running cluster") from None


def _connect_or_start(num_cpus, num_gpus) -> bool:
    """Join the Ray of `ray start` / $RAY_ADDRESS, else start a local one; True if this process started it."""
    import ray

    existing = _existing_cluster()
    if existing is not None:
        ray.init(runtime_env=local_runtime_env(), log_to_driver=False)
        print(f"using {existing}")
        return False
    ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, runtime_env=local_runtime_env(),
             log_to_driver=False)
    resources = ray.cluster_resources()
    print(f"started a local Ray ({int(resources.get('CPU', 0))} CPUs, {int(resources.get('GPU', 0))} GPUs)")
    return True


def _status(app: str):
    """The policy actor's `Status` of `app`, or None when it does not answer."""
    from ray import serve

    from ..controller.app import POLICY_ACTOR_NAME

    try:
        return serve.get_deployment_handle(POLICY_ACTOR_NAME, app).status.remote().result(timeout_s=5)
    except Exception:  # noqa: BLE001 - a status line is best effort
        return None


def _terminate(signum, frame):
    raise KeyboardInterrupt


def _ignore_signals_while_stopping() -> None:
    """A second Ctrl-C while the app is being deleted would cut the clean-up short and leave the Ray this
    command started behind: from here on SIGINT and SIGTERM only say that it is stopping."""
    def say(signum, frame):
        print("still stopping (deleting the app and, if this command started it, Ray) ...", flush=True)

    signal.signal(signal.SIGINT, say)
    signal.signal(signal.SIGTERM, say)


def _stop_on_signals() -> None:
    """SIGINT and SIGTERM end the serving loop (KeyboardInterrupt), whatever the parent left them as."""
    signal.signal(signal.SIGINT, _terminate)
    signal.signal(signal.SIGTERM, _terminate)


def check_port_free(host: str, port: int) -> None:
    """CommandError (one line) when something already listens on host:port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT is free to Serve too
        try:
            probe.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise CommandError(f"port {port} on {host} is already in use (another server?): stop it, or "
                                   "serve on another port with --port") from None
            raise CommandError(f"cannot listen on {host}:{port}: {e.strerror}") from None


def status_command(policy) -> str:
    """The `dsla-serve status` command for this app (with the variable holding its API key, if any)."""
    key = f" --api-key-env {policy.http.api_key_env}" if policy.http.api_key_env else ""
    return f"dsla-serve status --url {url_of(policy)}{key}"


def run(args: argparse.Namespace) -> int:
    _stop_on_signals()
    try:
        policy = read_policy(args.policy, check_paths=True, host=args.host, port=args.port)
        check_runnable(policy, local=True)
        if _existing_cluster() is None:  # a cluster's own Serve may hold the port already: it is then ours to use
            check_port_free(policy.http.host, policy.http.port)
        prepare_model(policy)
    except CommandError as e:
        return fail(str(e))
    except KeyboardInterrupt:
        return 130

    quiet_ray_logs()
    import ray
    from ray import serve

    started = False
    try:
        started = _connect_or_start(args.num_cpus, args.num_gpus)
        _stop_on_signals()  # again: ray.init installs its own SIGTERM handler
        print(f"starting application {policy.name!r} ({len(policy.pools)} pools, model {policy.model.path}) ...",
              flush=True)
        began = time.monotonic()
        start_serve(policy, seed=args.seed, start_trainer=not args.no_trainer)
        url = url_of(policy)
        print(f"serving {policy.http.model_name!r} at {url}/v1 (ready in {time.monotonic() - began:.0f} s); "
              f"status: {url}/v1/dsla/status or `{status_command(policy)}`; Ctrl-C to stop", flush=True)
        from .status_view import status_line

        while True:
            if args.status_every > 0:
                time.sleep(args.status_every)
                status = _status(policy.name)
                print(status_line(status) if status else "status: policy actor not answering", flush=True)
            else:
                time.sleep(3600)
    except KeyboardInterrupt:
        _ignore_signals_while_stopping()
        print("\nstopping ...", flush=True)
        return 0
    except Exception as e:  # noqa: BLE001 - show the cause, not a Ray traceback
        return fail(f"serving failed: {type(e).__name__}: {e}")
    finally:
        _ignore_signals_while_stopping()
        if ray.is_initialized():
            try:
                serve.delete(policy.name)
            except Exception:  # noqa: BLE001 - already gone
                pass
            if started:
                serve.shutdown()
                ray.shutdown()

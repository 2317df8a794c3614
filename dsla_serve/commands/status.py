"""`dsla-serve status [--url URL]`: print a running app's /v1/dsla/status as tables."""

from __future__ import annotations

import argparse
import json
import os

HELP = "show a running app's pools, depths, routing, SLO attainment, trainer and last decisions"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "Fetch /v1/dsla/status from a running DSLA-Serve app and print it as tables."
    parser.add_argument("--url", default=None, help="the app's base URL (default: from --policy, else "
                                                    "http://127.0.0.1:8000)")
    parser.add_argument("--policy", default=None, help="take the URL and the API key variable from this policy file")
    parser.add_argument("--api-key", default=None, help="API key (default: from the environment, see --api-key-env)")
    parser.add_argument("--api-key-env", default=None, metavar="NAME",
                        help="the environment variable holding the API key (default: the policy's http.api_key_env "
                             "with --policy; then DSLA_SERVE_API_KEY, then OPENAI_API_KEY)")
    parser.add_argument("--json", action="store_true", help="print the raw JSON instead of tables")
    parser.add_argument("--decisions", type=int, default=5, help="how many recent decisions to show")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for an answer")


def run(args: argparse.Namespace) -> int:
    import httpx
    from pydantic import TypeAdapter, ValidationError
    from rich.console import Console

    from ..controller.messages import Status
    from .common import CommandError, fail, read_policy, url_of
    from .status_view import render

    url, key = args.url, args.api_key
    names = [args.api_key_env] if args.api_key_env else []
    if args.policy is not None:
        try:
            policy = read_policy(args.policy, check_paths=False)
        except CommandError as e:
            return fail(str(e))
        url = url or url_of(policy)
        names += [policy.http.api_key_env] if policy.http.api_key_env else []
    url = (url or "http://127.0.0.1:8000").rstrip("/")
    names += ["DSLA_SERVE_API_KEY", "OPENAI_API_KEY"]
    if key is None:
        key = next((os.environ[n] for n in names if os.environ.get(n)), None)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        response = httpx.get(f"{url}/v1/dsla/status", headers=headers, timeout=args.timeout)
    except httpx.HTTPError as e:
        return fail(f"no answer from {url}: {e}")
    if response.status_code != 200:
        try:
            message = response.json()["error"]["message"]
        except Exception:  # noqa: BLE001 - not one of ours
            message = response.text[:200]
        if response.status_code == 401:
            tried = ", ".join(f"${n}" for n in names)
            message += (f" (the key was read from {'--api-key' if args.api_key else tried}; pass --api-key-env NAME "
                        "with the variable the policy's http.api_key_env names)")
        return fail(f"{url}/v1/dsla/status answered {response.status_code}: {message}")
    body = response.json()
    if args.json:
        print(json.dumps(body, indent=2))
        return 0
    try:
        status = TypeAdapter(Status).validate_python(body)
    except ValidationError as e:
        return fail(f"{url}/v1/dsla/status answered a body this dsla-serve does not read (another version?): {e}")
    render(status, Console(), decisions=args.decisions)
    return 0

"""A multi-node Ray cluster on this machine for tests: `ray.cluster_utils.Cluster` (a head and worker raylets,
each its own node with its own resources), every address on the loopback interface.

    with LocalCluster(tmp_path, head_resources={"trainer_node": 1}) as cluster:
        worker = cluster.add_node("worker", num_cpus=2, resources={"serving": 2})
        cluster.cli("deploy", "policy.yaml", "--address", cluster.address)
        cluster.kill(worker)                       # the node dies (raylet and its workers, SIGKILL)

Each node is started with its own scratch directory as `DSLA_SERVE_CACHE` (`<root>/<node>/cache`):
what a node pulls into its node-local cache lands there, so a test sees which node read what. Nothing of
the artifact is shared between nodes except the object store. Ray's session files go to a private
RAY_TMPDIR, so this cluster is never the one another program on the machine finds by default (Ray
records the latest cluster in its temp dir). `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` makes Ray keep
127.0.0.1 as this host's address (else it swaps a loopback address for the machine's interface
address), so that every process, the CLI's too, speaks to the cluster over the loopback interface.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"


class LocalCluster:
    """A Ray cluster of several raylets on this machine; `address` is its GCS address (HOST:PORT)."""

    def __init__(self, root: Path, *, head_cpus: float = 2, head_resources: dict | None = None,
                 env: dict | None = None):
        self.root = Path(root)
        self.head_cpus, self.head_resources = head_cpus, dict(head_resources or {})
        self._ray_tmp = tempfile.mkdtemp(prefix="dsla-ray-", dir="/tmp")  # short: Ray's socket paths have a limit
        self.env = {**(env or {}), "RAY_TMPDIR": self._ray_tmp, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        self._saved: dict[str, str | None] = {}
        self.cluster = None
        self.nodes: dict[str, object] = {}

    def scratch(self, name: str) -> Path:
        """The node's scratch directory (its DSLA_SERVE_CACHE is `scratch / "cache"`)."""
        return self.root / name

    def __enter__(self) -> LocalCluster:
        from ray.cluster_utils import Cluster

        self._saved = {k: os.environ.get(k) for k in [*self.env, "DSLA_SERVE_CACHE"]}
        os.environ.update(self.env)
        with self._node_env("head"):
            self.cluster = Cluster(initialize_head=True, head_node_args={
                "num_cpus": self.head_cpus, "resources": self.head_resources, "node_ip_address": LOOPBACK,
                "include_dashboard": False})
        self.nodes["head"] = self.cluster.head_node
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self.cluster is not None:
                self.cluster.shutdown()
        finally:
            shutil.rmtree(self._ray_tmp, ignore_errors=True)
            for key, value in self._saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    @contextlib.contextmanager
    def _node_env(self, name: str):
        """os.environ with this node's DSLA_SERVE_CACHE while its raylet starts (its workers inherit it)."""
        cache = self.scratch(name) / "cache"
        cache.mkdir(parents=True, exist_ok=True)
        previous = os.environ.get("DSLA_SERVE_CACHE")
        os.environ["DSLA_SERVE_CACHE"] = str(cache)
        try:
            yield
        finally:
            if previous is None:
                os.environ.pop("DSLA_SERVE_CACHE", None)
            else:
                os.environ["DSLA_SERVE_CACHE"] = previous

    @property
    def address(self) -> str:
        return self.cluster.address

    def add_node(self, name: str, *, num_cpus: float = 2, resources: dict | None = None):
        """Start a worker node `name` with these resources and wait until the cluster counts it."""
        with self._node_env(name):
            node = self.cluster.add_node(num_cpus=num_cpus, resources=dict(resources or {}),
                                         node_ip_address=LOOPBACK)
        self.cluster.wait_for_nodes()
        self.nodes[name] = node
        return node

    def kill(self, name: str) -> None:
        """The node dies at once: its raylet and every worker process on it are killed, no drain."""
        self.cluster.remove_node(self.nodes.pop(name), allow_graceful=False)

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """`dsla-serve ARGS` in a fresh process (as a user runs it), with the cluster's environment."""
        return subprocess.run([sys.executable, "-m", "dsla_serve.cli", *args], cwd=self.root,
                              env={**os.environ, "COLUMNS": "160"},
                              capture_output=True, text=True, timeout=timeout)

    def python(self, code: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """A driver process connected to the cluster running `code` (`ADDRESS` is set in its environment)."""
        return subprocess.run([sys.executable, "-c", code], cwd=self.root, env={**os.environ, "ADDRESS": self.address},
                              capture_output=True, text=True, timeout=timeout)

    def serve_shutdown(self) -> subprocess.CompletedProcess:
        return self.python("import os, ray; from ray import serve; ray.init(address=os.environ['ADDRESS'], "
                           "log_to_driver=False); serve.shutdown()")

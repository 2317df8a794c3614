"""The policy actor: a one-replica Ray Serve deployment that runs the controller loop.

Every `controller.interval_s` it re-reads the artifact (new layers and their measured quality),
builds each pool's metrics over the window (ingress observations + replica reports), reads the
cluster's resources from Ray (`ray.cluster_resources()`, less the trainer's), calls the pure
`decide` with them (replica targets never ask for more than the cluster has), logs the decision
with its reason, publishes routing weights and depth targets (the ingress and the replicas pull
them), and asks Serve for the replica targets. With a `trainer` section it also
runs the background trainer actor and shows its progress. The trainer starts once every pool has a
replica serving (or after TRAINER_START_TIMEOUT_S): serving comes up first, not fighting the trainer
for the machine while it loads.

Being a Serve deployment, it lives and dies with the application (`serve shutdown`, `serve deploy`
of a new config) and Serve restarts it if it fails; the replicas and the ingress keep serving on the
last routing they got meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time

from ...policies import Policy
from ...replicas.messages import ReplicaReport, ReplicaTargets
from ..messages import Arrival, Observation, Routing, Status
from .control import PolicyControl, pool_resources
from .scaling import ServeScaler

log = logging.getLogger("ray.serve")

TRAINER_START_TIMEOUT_S = 300.0


def pool_deployment_name(pool: str) -> str:
    return f"pool-{pool}"


class PolicyActor:
    """Serve deployment class of the controller (`num_replicas=1`)."""

    async def __init__(self, policy: dict, app_name: str, start_trainer: bool = True):
        self.policy = Policy.model_validate(policy)
        self.control = PolicyControl(self.policy, time.monotonic())
        self.scaler = ServeScaler(app_name, {p.name: pool_deployment_name(p.name) for p in self.policy.pools},
                                  {p.name: p.initial_replicas for p in self.policy.pools})
        self.trainer = None
        if self.policy.trainer is not None and start_trainer:
            from .trainer_link import TrainerLink

            self.trainer = TrainerLink(self.policy)  # started by `step` once the pools serve
        self._started = time.monotonic()
        self._loop = asyncio.get_running_loop().create_task(self._run())

    # ------------------------------------------------------------------------------------------
    # called by replicas and the ingress
    # ------------------------------------------------------------------------------------------
    async def targets(self, pool: str) -> ReplicaTargets:
        return self.control.targets(pool)

    async def report(self, report: ReplicaReport) -> ReplicaTargets:
        return self.control.report(report, time.monotonic())

    async def record(self, events: list[Arrival | Observation]) -> None:
        self.control.record(events)

    async def routing(self) -> Routing:
        return self.control.routing(time.monotonic())

    async def status(self) -> Status:
        return self.control.status(time.monotonic(), scaling_error=self.scaler.error)

    # ------------------------------------------------------------------------------------------
    # the loop
    # ------------------------------------------------------------------------------------------
    async def _run(self) -> None:
        interval = self.policy.controller.interval_s
        while True:
            started = time.monotonic()
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - one bad interval must not stop the controller
                log.exception("policy step failed; trying again next interval")
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))

    async def step(self) -> None:
        """One interval: trainer start and progress, decision, scaling, log line."""
        now = time.monotonic()
        if self.trainer is not None:
            if not self.trainer.started and (self.control.pools_serving(now)
                                             or now - self._started > TRAINER_START_TIMEOUT_S):
                await self.trainer.start()
            self.control.set_trainer_progress(await self.trainer.progress())
        await asyncio.to_thread(self.control.refresh_artifact)  # an object store may be slow or unreachable
        resources = await self._pool_resources()
        now = time.monotonic()
        decision = self.control.tick(now, read_artifact=False, resources=resources)
        scaled = await self.scaler.apply(decision.replica_targets)
        line = decision.reason + (f"; scaled {', '.join(scaled)}" if scaled else "")
        if self.scaler.error:
            line += f"; {self.scaler.error}"
        log.info("policy decision: %s", line)

    async def _pool_resources(self) -> dict[str, float] | None:
        """The cluster's resources the pools may use now (None when Ray does not answer: unbounded)."""
        import ray

        try:
            cluster = await asyncio.to_thread(ray.cluster_resources)
        except Exception as e:  # noqa: BLE001 - decide without the bound rather than not at all
            log.warning("cluster resources unknown (%s): replica targets not bounded this interval", type(e).__name__)
            return None
        return pool_resources(cluster, self.trainer.holds() if self.trainer is not None else None)

    async def check_health(self) -> None:
        if self._loop.done():
            raise RuntimeError(f"the policy loop stopped: {self._loop.exception()!r}")

    def __del__(self):
        loop = getattr(self, "_loop", None)
        if loop is not None:
            loop.cancel()
        if getattr(self, "trainer", None) is not None:
            self.trainer.stop()

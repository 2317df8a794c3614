"""Setting a pool's replica count in Ray Serve, from the policy actor.

The app is deployed with `external_scaler_enabled` (Serve's own autoscaler off), which makes Serve
accept replica targets from outside: the Ray dashboard's
`POST /api/v1/applications/{app}/deployments/{deployment}/scale` does exactly the call below on the
Serve controller actor. Calling the controller directly works on a Ray without a dashboard (a
laptop, the tests) too. Changing the count starts or stops replicas; it restarts none of the others.

A failed call is not swallowed: it is logged, kept in `error` (the status shows it, `dsla-serve status`
prints it, and the decision's log line names it), and tried again at the next decision.
"""

from __future__ import annotations

import logging

import ray

log = logging.getLogger("ray.serve")


class ServeScaler:
    """Applies replica targets to the pool deployments of one application, once per change."""

    def __init__(self, app_name: str, deployments: dict[str, str], initial: dict[str, int]):
        """deployments: pool -> deployment name; initial: pool -> replicas it was deployed with."""
        self.app_name = app_name
        self.deployments = dict(deployments)
        self.applied = dict(initial)
        self.disabled_reason: str | None = None
        self.error: str | None = None  # the last failure, until a later call succeeds

    def _controller(self):
        from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

        return ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)

    async def apply(self, targets: dict[str, int]) -> list[str]:
        """Ask Serve for every changed target; returns "pool a->b" for each change made."""
        changes = {pool: n for pool, n in targets.items() if self.applied.get(pool) != n}
        if not changes or self.disabled_reason is not None:
            return []
        done, failed = [], []
        try:
            from ray.serve._private.common import DeploymentID

            controller = self._controller()
        except Exception as e:  # noqa: BLE001 - reported, retried at the next decision
            self.error = f"cannot reach the Serve controller to scale {', '.join(changes)}: {type(e).__name__}: {e}"
            log.warning("%s", self.error)
            return []
        for pool, n in changes.items():
            try:
                await controller.update_deployment_replicas.remote(
                    DeploymentID(name=self.deployments[pool], app_name=self.app_name), n)
            except Exception as e:  # noqa: BLE001 - reported, retried at the next decision; routing still adapts
                if "external_scaler_enabled" in str(e):
                    self.disabled_reason = self.error = ("the app was deployed without external_scaler_enabled: "
                                                         "replica counts stay as deployed")
                    log.warning("not scaling pools: %s", self.disabled_reason)
                    return done
                failed.append(f"scaling pool {pool} to {n} replicas failed: {type(e).__name__}: "
                              f"{(str(e).splitlines() or [''])[0]}")
                log.warning("%s", failed[-1])
                continue
            done.append(f"{pool} {self.applied.get(pool)}->{n}")
            self.applied[pool] = n
        self.error = "; ".join(failed) or None
        return done

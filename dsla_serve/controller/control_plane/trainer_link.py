"""The background trainer of a policy with a `trainer` section.

The policy actor starts a `TrainerActor` (dsla_serve/trainer/actor.py) on the policy's model and
data, writing to the policy's artifact directory, and reads its progress every interval for the
status endpoint. Published layers reach serving through the artifact itself: the policy actor
re-reads the manifest every interval (new depths and their measured ppl ratio -> the quality floor),
and replicas load the new layers when their reported artifact depth falls behind. So a layer
published by a `dsla-serve convert` running elsewhere on the same directory is picked up the same way.

The trainer actor is owned by the policy actor: it stops when the application is deleted, and it is
ended as soon as its run is over (done, stopped or failed), its final progress kept: a finished trainer
process would otherwise hold its libraries and heap (about 650 MB for the tiny policy) for nothing.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ...model.manifest import served_prompts_path
from ...model.storage import mask
from ...policies import Policy, convert_config_data
from ...trainer.progress import TrainerProgress

log = logging.getLogger("ray.serve")

ENDED = ("done", "stopped", "failed")


class TrainerSetupError(ValueError):
    """The policy's trainer section cannot run as written; the message names the field."""


def convert_config(policy: Policy) -> dict[str, Any]:
    """The trainer's ConvertConfig (as a dict) for a policy's `trainer` section.

    The section is the trainer's own settings (`policies.convert_config_data` adds model.path as
    base_model, the artifact directory as output, model.dtype when the section's dtype is auto); here
    also trainer.resources.num_gpus -> device (cpu without a GPU). With trainer.serve_prompts_sample,
    the sample file the ingress writes (`<artifact>/served-prompts.jsonl`) becomes data.train_only_paths:
    training data of the layers trained after it appears, never validation.
    """
    t = policy.trainer
    if t is None:
        raise TrainerSetupError("the policy has no trainer section")
    if policy.model.tiny_arch is not None and t.seed != 0:
        # replicas build tiny:<arch> with seed 0; the trainer seeds the tiny model with trainer.seed
        raise TrainerSetupError(f"trainer.seed: must be 0 with a tiny model ({policy.model.path}), whose weights "
                                "come from the seed: replicas build it with seed 0")
    config = convert_config_data(policy)  # the one mapping of the trainer section's fields
    if t.resources.num_gpus == 0:
        config["device"] = "cpu"
    if t.serve_prompts_sample:
        config["data"]["train_only_paths"] = [str(served_prompts_path(policy.artifact_dir))]
    return config


class TrainerLink:
    """Starts, watches and stops the policy's background trainer actor."""

    def __init__(self, policy: Policy):
        self.policy = policy
        self.config = convert_config(policy)
        self.actor = None
        self.final: TrainerProgress | None = None  # the progress of a run that ended (its actor is gone)

    async def start(self) -> None:
        from ...trainer.actor import TrainerActor

        options = self.policy.trainer.resources.ray_options()  # custom resources pin it to given nodes
        self.actor = TrainerActor.options(**options).remote(self.config, None, True)
        log.info("background trainer started: %s -> %s, depth %s", self.config["base_model"],
                 mask(str(self.config["output"])), self.config["depth"] or "all")

    def holds(self) -> dict[str, float]:
        """The resources the trainer holds or will hold (Ray's names), until its run has ended: kept out of
        what the pools may scale into."""
        if self.final is not None:
            return {}
        r = self.policy.trainer.resources
        return {"CPU": r.num_cpus, "GPU": r.num_gpus, **r.custom}

    @property
    def started(self) -> bool:
        return self.actor is not None or self.final is not None

    async def progress(self) -> TrainerProgress:
        """The trainer's progress; phase "unreachable" (with the error) when it does not answer. Once its
        run has ended, the actor is ended and its last progress is returned from then on."""
        if self.final is not None:
            return self.final
        if self.actor is None:
            return TrainerProgress(phase="waiting for the pools to serve")
        try:
            progress = await asyncio.wait_for(self.actor.progress.remote(), timeout=5.0)
        except Exception as e:  # noqa: BLE001 - a dead or busy trainer must not stall decisions
            first_line = (str(e).strip().splitlines() or [""])[0][:200]  # Ray's next lines name hosts and processes
            return TrainerProgress(phase="unreachable", error=f"{type(e).__name__}: {first_line}")
        if progress.phase in ENDED and not progress.running:
            self.final = progress
            self._end_actor()
            log.info("background trainer %s (%d layers published): its actor is ended", progress.phase,
                     progress.published_depth)
        return progress

    def _end_actor(self) -> None:
        import ray

        actor, self.actor = self.actor, None
        try:
            ray.kill(actor)
        except Exception:  # noqa: BLE001 - already gone
            pass

    def stop(self) -> None:
        """Ask the trainer to stop at its next safe point (published layers stay intact)."""
        if self.actor is not None:
            try:
                self.actor.stop.remote(0)
            except Exception:  # noqa: BLE001 - already gone
                pass


def check_trainer(policy: Policy) -> None:
    """Raise TrainerSetupError (or the trainer's ConfigError) early, in the CLI, when the trainer section
    cannot run as written."""
    if policy.trainer is not None:
        from ...trainer import parse_config

        parse_config(convert_config(policy), label="trainer section")

"""A pool replica without Ray Serve: it streams deltas, follows its depth target, loads published layers,
and attaches an artifact that appears after it started (a trainer starting from scratch)."""

from __future__ import annotations

import asyncio

import pytest

from dsla_serve.controller.pool import PoolReplica
from dsla_serve.policies import load_policy
from dsla_serve.replicas import QueueFullError

from .helpers import ORDER, make_artifact, policy_dict, write_policy


class FakePolicyActor:
    """Answers replica reports with the targets the test sets, and keeps the reports."""

    def __init__(self, targets):
        self.targets = targets
        self.reports = []
        outer = self

        class Report:
            async def remote(self, pool, replica_id, stats):
                outer.reports.append((pool, stats))
                return dict(outer.targets)

        self.report = Report()


async def _replica(policy, pool, actor) -> PoolReplica:
    replica = PoolReplica.__new__(PoolReplica)
    await replica.__init__(policy.model_dump(mode="json"), pool, actor)  # what Serve does with an async __init__
    return replica


async def _run(replica, prompt, **params):
    return [d async for d in replica.generate(prompt, {"max_tokens": 4, "temperature": 0, "ignore_eos": True,
                                                        **params}, "req-" + str(len(prompt)))]


def test_pool_replica_follows_targets_and_attaches_a_late_artifact(tmp_path):
    artifact_dir = tmp_path / "artifact"
    data = policy_dict(8000, artifact=str(artifact_dir), quality={"max_depth": 2},
                       trainer={"data": [str(tmp_path)], "depth": 2},
                       pools=[{"name": "fast", "depth": 2, "max_concurrent_requests": 1}])
    data["http"]["queue_cap"] = 1
    policy = load_policy(write_policy(tmp_path / "p.yaml", data))
    actor = FakePolicyActor({"depth": 0, "artifact_depth": 0, "artifact": str(artifact_dir), "version": 0})

    async def scenario():
        replica = await _replica(policy, "fast", actor)
        replica._control.cancel()  # the test applies targets itself
        try:
            assert actor.reports[0] == ("fast", {"depth": 0, "starting": True})
            assert replica.engine.artifact is None and replica.engine.depth == 0  # no artifact yet

            deltas = await _run(replica, [10, 20, 30], logprobs=1)
            assert sum(len(d["token_ids"]) for d in deltas) == 4 and deltas[-1]["finish_reason"] == "length"
            assert all(len(d["logprobs"]) == len(d["token_ids"]) for d in deltas) and deltas[0]["depth"] == 0
            echo = await _run(replica, [10, 20, 30], max_tokens=0, echo=True)
            assert echo[0]["prompt_logprobs"][0] is None and len(echo[0]["prompt_logprobs"]) == 3

            # the trainer creates the artifact and publishes a layer: the replica attaches it, then moves
            make_artifact(artifact_dir, [1.1], order=ORDER)
            actor.targets.update(depth=1, artifact_depth=1)
            await replica._apply(actor.targets)
            assert replica.engine.artifact is not None and replica.engine.max_depth == 1
            for _ in range(100):
                if replica.engine.depth == 1:
                    break
                await asyncio.sleep(0.02)
            assert replica.engine.depth == 1
            assert (await _run(replica, [1, 2]))[0]["depth"] == 1

            # never deeper than the layers it holds, whatever it is told
            actor.targets.update(depth=2, artifact_depth=1)
            await replica._apply(actor.targets)
            assert replica.engine.depth == 1
            stats = replica.stats()
            assert stats["pool"] == "fast" and stats["max_depth"] == 1 and stats["started_max_depth"] == 0

            # past the engine's queue (queue_cap 1 + one batch of slack) the request is refused: 429 at the ingress
            streams = [replica.engine.add_request([5] * 3, _params(200))]
            for _ in range(200):  # wait until it runs (max_concurrent_requests 1)
                if replica.stats()["running"] == 1:
                    break
                await asyncio.sleep(0.01)
            streams += [replica.engine.add_request([6] * 3, _params(200)) for _ in range(2)]  # wait: queue full
            with pytest.raises(QueueFullError):
                await _run(replica, [7, 8, 9])
            for stream in streams:
                stream.abort()
        finally:
            replica.engine.stop()

    asyncio.run(scenario())


def _params(n):
    from dsla_serve.replicas import SamplingParams

    return SamplingParams(max_tokens=n, ignore_eos=True)

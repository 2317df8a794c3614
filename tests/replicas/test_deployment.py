"""The Serve wrapper of a replica without Ray Serve: it streams deltas, follows its depth target, loads
published layers (the weights it then runs are the artifact's), and attaches an artifact that appears
after it started (a trainer starting from scratch)."""

from __future__ import annotations

import asyncio

import pytest
import torch
from safetensors.torch import load_file

from dsla_serve.model import Artifact, dsla_layers
from dsla_serve.replicas import Engine, QueueFullError, SamplingParams
from dsla_serve.replicas.deployment import ReplicaDeployment, ReplicaSpec
from dsla_serve.replicas.messages import GenerateRequest, ReplicaReport, ReplicaTargets
from tests.controller.helpers import ORDER, make_artifact


class FakePolicyActor:
    """Answers target requests and reports with the targets the test sets, and keeps the reports."""

    def __init__(self, targets: ReplicaTargets):
        self.targets_now = targets
        self.reports: list[ReplicaReport] = []
        outer = self

        class Targets:
            async def remote(self, pool):
                return outer.targets_now

        class Report:
            async def remote(self, report):
                outer.reports.append(report)
                return outer.targets_now

        self.targets, self.report = Targets(), Report()


def _spec(artifact_dir) -> ReplicaSpec:
    return ReplicaSpec(pool="fast", model="tiny:llama", tokenizer=None, artifact=str(artifact_dir), dtype="float32",
                       max_model_len=256, max_num_seqs=1, max_queue=2, gpu_memory_fraction=0.9, report_every_s=0.5)


async def _replica(spec, actor) -> ReplicaDeployment:
    replica = ReplicaDeployment.__new__(ReplicaDeployment)
    await replica.__init__(spec, actor)  # what Serve does with an async __init__
    return replica


async def _run(replica, prompt, **params):
    sampling = SamplingParams(**{"max_tokens": 4, "temperature": 0, "ignore_eos": True, **params})
    return [d async for d in replica.generate(GenerateRequest(f"req-{len(prompt)}", prompt, sampling))]


async def _until(condition, tries=200):
    for _ in range(tries):
        if condition():
            return
        await asyncio.sleep(0.02)
    assert condition()


def _greedy_offline(artifact_dir, depth, prompt):
    engine = Engine("tiny:llama", artifact=artifact_dir, depth=depth, dtype="float32", max_model_len=64,
                    max_num_seqs=1)
    return engine.generate([prompt], SamplingParams(max_tokens=4, temperature=0, ignore_eos=True),
                           use_tqdm=False)[0].outputs[0].token_ids


def test_replica_follows_targets_and_runs_the_published_weights(tmp_path):
    artifact_dir = tmp_path / "artifact"
    actor = FakePolicyActor(ReplicaTargets(depth=0, artifact_depth=0, artifact=str(artifact_dir), version=0))

    async def scenario():
        replica = await _replica(_spec(artifact_dir), actor)
        replica._control.cancel()  # the test applies targets itself
        try:
            assert actor.reports == []  # asked for its targets, reported no stats before its engine existed
            assert replica.engine.artifact is None and replica.engine.depth == 0  # no artifact yet

            deltas = await _run(replica, [10, 20, 30], logprobs=1)
            assert sum(len(d.token_ids) for d in deltas) == 4 and deltas[-1].finish_reason == "length"
            assert all(len(d.logprobs) == len(d.token_ids) for d in deltas) and deltas[0].depth == 0
            assert all(set(d.token_texts) >= {t for e in d.logprobs for t in e} for d in deltas)
            echo = await _run(replica, [10, 20, 30], max_tokens=0, echo=True)
            assert echo[0].prompt_logprobs[0] is None and len(echo[0].prompt_logprobs) == 3

            # the trainer creates the artifact and publishes a layer: the replica attaches it, then moves
            make_artifact(artifact_dir, [1.1], order=ORDER)
            actor.targets_now = ReplicaTargets(depth=1, artifact_depth=1, artifact=str(artifact_dir), version=1)
            await replica.apply(actor.targets_now)
            assert replica.engine.artifact is not None and replica.engine.max_depth == 1
            await _until(lambda: replica.engine.depth == 1)
            assert (await _run(replica, [1, 2]))[0].depth == 1

            # a second layer is published while it serves: loaded without a restart, and what runs at depth 2
            # is that layer's file (weights equal, tokens those of an engine built from the artifact)
            make_artifact(artifact_dir, [1.1, 1.2], order=ORDER)
            actor.targets_now = ReplicaTargets(depth=2, artifact_depth=2, artifact=str(artifact_dir), version=2)
            await replica.apply(actor.targets_now)
            await _until(lambda: replica.engine.depth == 2)
            entry = Artifact.open(artifact_dir).entries[1]
            stored = load_file(artifact_dir / entry.file)
            running = dsla_layers(replica.engine.model)[entry.layer].own_parameters()
            assert stored.keys() == running.keys() and all(torch.equal(stored[k], running[k]) for k in stored)
            served = [t for d in await _run(replica, [1, 2]) for t in d.token_ids]
            assert served == _greedy_offline(artifact_dir, 2, [1, 2]) != _greedy_offline(artifact_dir, 1, [1, 2])

            # never deeper than the layers it holds, whatever it is told
            await replica.apply(ReplicaTargets(depth=3, artifact_depth=2, artifact=str(artifact_dir), version=3))
            assert replica.engine.depth == 2
            report = replica.report()
            assert (report.pool, report.engine.max_depth, report.started_max_depth) == ("fast", 2, 0)

            # past the engine's queue (max_queue 2) the request is refused: 429 at the ingress
            streams = [replica.engine.add_request([5] * 3, SamplingParams(max_tokens=200, ignore_eos=True))]
            await _until(lambda: replica.report().engine.running == 1)  # it runs (max_num_seqs 1)
            streams += [replica.engine.add_request([6] * 3, SamplingParams(max_tokens=200, ignore_eos=True))
                        for _ in range(2)]  # they wait: the queue is full
            with pytest.raises(QueueFullError):
                await _run(replica, [7, 8, 9])
            with pytest.raises(ValueError, match=r"token ids must be in \[0, 259\)"):  # the one check of the ids
                await _run(replica, [7, 5000])
            for stream in streams:
                stream.abort()
        finally:
            replica.engine.stop()

    asyncio.run(scenario())

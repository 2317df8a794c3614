"""The controller's logic without Ray: the ingress's routing table and admission, the metrics window,
and PolicyControl (reports in, targets out, decisions, status), with time passed in."""

from __future__ import annotations

from collections import Counter

import pytest

from dsla_serve.controller.control_plane.artifact_view import ArtifactView, read_artifact
from dsla_serve.controller.control_plane.control import PolicyControl
from dsla_serve.controller.control_plane.window import PoolWindow
from dsla_serve.controller.frontend.routing import PoolLimits, Refusal, RoutingTable
from dsla_serve.controller.messages import Arrival, Observation, Routing
from dsla_serve.model.manifest import MANIFEST_FILE, LayerEntry
from dsla_serve.policies import SLO, DepthQuality, parse_policy
from dsla_serve.replicas.messages import ReplicaTargets

from .helpers import make_artifact, replica_report

POLICY = """
name: unit
model: {path: "tiny:llama"}
artifact: /nowhere
pools:
  - {name: accurate, depth: 0, max_concurrent_requests: 2}
  - {name: fast, depth: 2, max_concurrent_requests: 2}
slo: {ttft_p95_ms: 100, tpot_p95_ms: 50}
quality: {max_ppl_ratio: 1.2, max_depth: 2}
controller: {interval_s: 1, window_s: 5, cooldown_s: 2, min_samples: 3, traffic_step: 1.0}
http: {queue_cap: 3}
"""


class FakeArtifact:
    """Stands in for reading the manifest: the test sets what is published."""

    def __init__(self, ratios):
        self.ratios = list(ratios)

    def __call__(self, path, previous):
        layers = tuple(LayerEntry(layer=d, rank=d, file=f"layer_{d}.safetensors", sha256="", metrics={"ppl_ratio": r})
                       for d, r in enumerate(self.ratios))
        return ArtifactView(path, DepthQuality.from_ratios(self.ratios), layers, 4)


def _routing(weights, replicas=None, version=0, depths=None, floor=0, published=0, running=None) -> Routing:
    """A routing table; `depths`: the depth each pool serves now (its replicas all there) and targets;
    `running`: replicas running per pool (default: not said, as from a policy actor before this field)."""
    extra = {} if running is None else {"running": running}
    return Routing(weights=weights, replicas=replicas or {}, depths=depths or {}, version=version,
                   stable_depth=dict(depths or {}), floor=floor, published_depth=published, **extra)


def _pools(**concurrency) -> dict[str, PoolLimits]:
    return {name: PoolLimits(c, max_replicas=2) for name, c in concurrency.items()}


def test_routing_draws_by_weight_reproducibly():
    table = RoutingTable(_pools(a=1, b=1, c=1), queue_cap=1, seed=7)
    assert table.pick() is None and not table.routable  # nothing routable before the first table
    table.update(_routing({"a": 0.75, "b": 0.25, "c": 0.0, "zzz": 1.0}, version=3))
    draws = [table.pick() for _ in range(4000)]
    counts = Counter(draws)
    assert counts["c"] == 0 and abs(counts["a"] / 4000 - 0.75) < 0.03
    again = RoutingTable(_pools(a=1, b=1, c=1), queue_cap=1, seed=7)
    again.update(_routing({"a": 0.75, "b": 0.25, "c": 0.0}))
    assert [again.pick() for _ in range(4000)] == draws  # seeded


def test_admission_counts_waiting_beyond_replica_concurrency():
    table = RoutingTable(_pools(a=2), queue_cap=3)
    table.update(_routing({"a": 1.0}, {"a": 1}, depths={"a": 0}))
    assert table.place(5) == ["a"] * 5  # 2 run, 3 wait
    assert table.waiting() == 3
    with pytest.raises(Refusal) as refused:
        table.place(1)
    assert refused.value.kind == "queue_full" and refused.value.picked == ["a"]
    table.release("a")
    assert table.place(1) == ["a"]
    table.update(_routing({"a": 1.0}, {"a": 2}, depths={"a": 0}))  # a second replica: 4 run at once, 1 waits
    assert table.waiting() == 1


def test_full_pools_spill_over_within_the_floor_before_refusing():
    # all traffic on the depth-0 pool; the depth-2 pool serves within the floor (2), the depth-4 one beyond it
    table = RoutingTable(_pools(accurate=2, half=2, fast=8), queue_cap=1)
    table.update(_routing({"accurate": 1.0, "half": 0.0, "fast": 0.0}, {"accurate": 1, "half": 1, "fast": 1},
                          depths={"accurate": 0, "half": 2, "fast": 4}, floor=2, published=4))
    assert table.place(4) == ["accurate", "accurate", "half", "half"]  # no waiting while `half` has room
    assert table.waiting() == 0
    assert table.place(1) == ["accurate"]  # every pool within the floor is full: it waits (queue_cap 1)
    with pytest.raises(Refusal) as refused:  # and the queue is full: 429, `fast` (beyond the floor) never used
        table.place(1)
    assert refused.value.kind == "queue_full" and table.in_flight["fast"] == 0


def test_free_slots_count_running_replicas_not_targets():
    # accurate asks for 2 replicas but only 1 runs (the other is pending: no CPU for it); fast runs 1
    table = RoutingTable(_pools(accurate=4, fast=4), queue_cap=8)
    table.update(_routing({"accurate": 1.0, "fast": 0.0}, {"accurate": 2, "fast": 1}, depths={"accurate": 0, "fast": 4},
                          floor=4, published=4, running={"accurate": 1, "fast": 1}))
    assert table.capacity("accurate") == 4  # 1 running x 4, not the target's 8
    assert table.place(8) == ["accurate"] * 4 + ["fast"] * 4  # the 5th no longer waits on a pending replica
    assert table.place(1) == ["accurate"] and table.waiting() == 1
    # a replica being stopped (target below what still reports) takes no new requests either
    table.update(_routing({"accurate": 1.0, "fast": 0.0}, {"accurate": 1, "fast": 1}, depths={"accurate": 0, "fast": 4},
                          floor=4, published=4, running={"accurate": 2, "fast": 1}))
    assert table.capacity("accurate") == 4
    # nothing running: no free slot anywhere (requests wait, up to the queue cap)
    table.update(_routing({"accurate": 1.0, "fast": 0.0}, {"accurate": 1, "fast": 1}, depths={"accurate": 0, "fast": 4},
                          floor=4, published=4, running={"accurate": 0, "fast": 0}))
    assert table.room("fast") == -4 and table.waiting() == 9


def test_spill_over_prefers_the_deepest_pool_with_a_free_slot_within_the_floor():
    # accurate (depth 0) carries the traffic and is full; half (depth 2) has more free slots than fast
    # (depth 3), both within the floor 3; deep (depth 4) is beyond it
    table = RoutingTable(_pools(accurate=1, half=4, fast=2, deep=8), queue_cap=1)
    table.update(_routing({"accurate": 1.0, "half": 0.0, "fast": 0.0, "deep": 0.0},
                          {"accurate": 1, "half": 1, "fast": 1, "deep": 1},
                          depths={"accurate": 0, "half": 2, "fast": 3, "deep": 4}, floor=3, published=4))
    # cheapest first: fast's 2 slots, then half's 4, never deep beyond the floor
    assert table.place(7) == ["accurate", "fast", "fast", "half", "half", "half", "half"]
    assert table.in_flight["deep"] == 0
    # a request whose replica died starts again on the deepest pool with room within the floor
    table.release("fast")
    assert table.move("accurate") == "fast"


def test_a_request_never_waits_on_a_pool_without_replica_target():
    # the policy emptied accurate (target 0) for fast's pending replica; a request of accurate's last
    # replica that ended before it started must not wait on accurate (Serve would hold it until a
    # replica of accurate starts: the 180 s client timeouts of the first rerun), even with fast full
    table = RoutingTable(_pools(accurate=4, fast=4), queue_cap=32)
    table.update(_routing({"accurate": 0.5, "fast": 0.5}, {"accurate": 1, "fast": 1}, depths={"accurate": 0, "fast": 4},
                          floor=4, published=4, running={"accurate": 1, "fast": 1}))
    table.in_flight.update(accurate=9, fast=9)
    table.update(_routing({"accurate": 0.0, "fast": 1.0}, {"accurate": 0, "fast": 2}, depths={"accurate": 0, "fast": 4},
                          floor=4, published=4, running={"accurate": 0, "fast": 1}))
    assert table.move("accurate") == "fast" and table.in_flight == {"accurate": 8, "fast": 10}
    # a pool that keeps a replica target keeps its request while no other pool has room (as before)
    table.update(_routing({"accurate": 0.0, "fast": 1.0}, {"accurate": 1, "fast": 1}, depths={"accurate": 0, "fast": 4},
                          floor=4, published=4, running={"accurate": 1, "fast": 1}))
    assert table.move("accurate") == "accurate"


def test_a_request_waiting_on_a_pool_the_policy_emptied_starts_on_another(monkeypatch):
    import asyncio
    from types import SimpleNamespace

    from dsla_serve.controller.frontend import runs
    from dsla_serve.replicas.messages import StreamDelta
    from dsla_serve.replicas.sampling import SamplingParams

    monkeypatch.setattr(runs, "STRANDED_CHECK_S", 0.01)
    monkeypatch.setattr(runs, "RETRY_DELAY_S", 0.0)
    table = RoutingTable(_pools(accurate=4, fast=4), queue_cap=32)
    depths = {"accurate": 0, "fast": 4}
    table.update(_routing({"accurate": 1.0, "fast": 0.0}, {"accurate": 1, "fast": 1}, depths=depths, floor=4,
                          published=4, running={"accurate": 1, "fast": 1}))
    sent = []

    class Stream:
        """accurate's request is never dispatched (it waits in Serve's router); fast answers at once."""

        def __init__(self, pool):
            self.pool, self.cancelled = pool, False

        async def __anext__(self):
            if self.pool == "accurate":
                await asyncio.Event().wait()
            return StreamDelta(request_id="r", token_ids=[5], text="x", prompt_tokens=2, depth=4)

        def cancel(self):
            self.cancelled = True

    class Handle:
        def __init__(self, pool):
            self.pool = pool
            self.generate = SimpleNamespace(remote=self._remote)

        def options(self, stream):
            return self

        def _remote(self, request):
            sent.append(Stream(self.pool))
            return sent[-1]

    core = SimpleNamespace(pools={p: Handle(p) for p in ("accurate", "fast")}, table=table,
                           refused=lambda code: None, finished=lambda *a: None)
    batch = runs.Batch(request_id="r", endpoint="completions",
                       prompts=[runs.Prompt(ids=[1, 2], sampling=SamplingParams(max_tokens=4))])
    run = runs.Run(core, batch, 0, table.place(1)[0], 0.0)

    async def main():
        task = asyncio.create_task(run.start())
        await asyncio.sleep(0.05)
        assert not task.done()  # waiting on accurate, which still has its replica
        # the policy empties accurate for fast (its replica stopped, none reports)
        table.update(_routing({"accurate": 0.0, "fast": 1.0}, {"accurate": 0, "fast": 2}, depths=depths, floor=4,
                              published=4, running={"accurate": 0, "fast": 1}))
        await asyncio.wait_for(task, 5)

    asyncio.run(main())
    assert [s.pool for s in sent] == ["accurate", "fast"] and sent[0].cancelled
    assert run.pool == "fast" and table.in_flight == {"accurate": 0, "fast": 1}


def test_routing_says_how_many_replicas_of_each_pool_run():
    policy = parse_policy(POLICY)
    control = PolicyControl(policy, 0.0, artifact_reader=FakeArtifact([1.05, 1.05]))
    control.report(replica_report("fast", "f1", depth=2), 0.0)
    control.report(replica_report("fast", "f2", depth=2), 0.0)
    assert control.routing(0.5).running == {"accurate": 0, "fast": 2}
    control.report(replica_report("accurate", "a1", depth=0), 9.0)  # fast's replicas stopped reporting
    assert control.routing(9.0).running == {"accurate": 1, "fast": 0}
    # the cluster's resources reach the decision: one CPU cannot hold both pools' minimum of one replica
    decision = control.tick(9.0, resources={"CPU": 1.0})
    assert "the pools' min_replicas ask for CPU 2 of 1: some replicas cannot be placed" in decision.reason


def test_pool_resources_are_the_clusters_less_the_trainers():
    from dsla_serve.controller.control_plane.control import pool_resources

    cluster = {"CPU": 8.0, "GPU": 2.0, "memory": 1e10, "object_store_memory": 1e9, "node:127.0.0.1": 1.0,
               "node:__internal_head__": 1.0, "trainer_node": 1.0}
    assert pool_resources(cluster) == {"CPU": 8.0, "GPU": 2.0, "trainer_node": 1.0}
    assert pool_resources(cluster, {"CPU": 1.0, "GPU": 1.0, "other": 3.0}) == {"CPU": 7.0, "GPU": 1.0,
                                                                                "trainer_node": 1.0}


def test_a_batch_is_placed_whole_and_one_that_can_never_fit_says_so():
    table = RoutingTable(_pools(a=2), queue_cap=3)  # at most 2 replicas x 2 + 3 waiting = 7 at once
    table.update(_routing({"a": 1.0}, {"a": 1}, depths={"a": 0}))
    with pytest.raises(Refusal) as refused:
        table.place(8)
    assert refused.value.kind == "too_large" and "at most 7" in refused.value.message
    assert table.in_flight["a"] == 0
    table.place(4)
    with pytest.raises(Refusal) as refused:  # fits in principle, not now: nothing of it is admitted
        table.place(3)
    assert refused.value.kind == "queue_full" and table.in_flight["a"] == 4


def test_a_pinned_depth_goes_only_to_a_pool_serving_exactly_it():
    table = RoutingTable(_pools(accurate=2, half=2, fast=2), queue_cap=2)
    table.update(_routing({"accurate": 1.0, "half": 0.0, "fast": 0.0}, {"accurate": 1, "half": 1, "fast": 1},
                          depths={"accurate": 0, "half": 2, "fast": 3}, floor=2, published=3))
    assert table.servable_depths() == [0, 2]  # depth 3 is published but beyond the floor
    assert table.place(3, depth=2) == ["half", "half", "half"]  # the third waits rather than run elsewhere
    for depth, kind in ((3, "depth_not_served"), (1, "depth_not_served"), (7, "depth_unpublished")):
        with pytest.raises(Refusal) as refused:
            table.place(1, depth=depth)
        assert refused.value.kind == kind


def test_window_joins_observations_and_reports():
    w = PoolWindow("p", window_s=10, stale_after_s=3)
    assert w.metrics(0.0) is None  # no replica reported: unknown
    for i in range(20):
        w.arrive(float(i) * 0.1)
    for i in range(10):
        w.finish(Observation("p", at=1.0 + i * 0.1, ttft_s=0.01 * (i + 1), tpot_s=0.002, e2e_s=0.05))
    w.finish(Observation("p", at=2.5, ttft_s=None, tpot_s=None, e2e_s=0.5, ok=False))
    w.report(replica_report("p", "r1", depth=1, waiting=2, running=1, cache_token_usage=0.25), 2.0)
    w.report(replica_report("p", "r2", depth=2, waiting=1, running=2, cache_token_usage=0.5), 2.5)
    m = w.metrics(3.0)
    assert (m.depth, m.replicas, m.queue_len, m.running, m.cache_usage) == (2, 2, 3, 3, 0.5)
    assert m.num_samples == 10 and m.ttft_p95_ms == pytest.approx(95.5)
    assert m.requests_per_s == pytest.approx(2.0)
    slo = SLO(ttft_p95_ms=50, tpot_p95_ms=10)
    assert w.slo_attainment(3.0, slo) == (5, 11)  # ttft <= 50 ms for 5 of 10; the failed one never meets
    m = w.metrics(5.4)  # r1 stale (3.4 s old), r2 not (2.9 s)
    assert m.replicas == 1 and m.depth == 2
    assert w.metrics(12.0) is None  # all stale; observations left the window


def _events(pool, start, n, ttft_s, step=0.05):
    out = []
    for i in range(n):
        at = start + i * step
        out += [Arrival(pool, at), Observation(pool, at, ttft_s=ttft_s, tpot_s=0.001, e2e_s=ttft_s)]
    return out


def test_targets_follow_the_quality_floor_and_the_load():
    policy = parse_policy(POLICY)
    artifact = FakeArtifact([1.05])  # depth 1 published and good; depth 2 not yet
    control = PolicyControl(policy, 0.0, artifact_reader=artifact)
    # the fast pool is configured at depth 2 but serves at the floor, 1
    assert control.report(replica_report("fast", "f1", depth=0), 0.0).depth == 1
    assert control.report(replica_report("accurate", "a1", depth=0), 0.0) == ReplicaTargets(
        depth=0, artifact_depth=1, artifact="/nowhere", version=0)
    with pytest.raises(KeyError, match="unknown pool"):
        control.report(replica_report("nope", "x", depth=0), 0.0)
    routing = control.routing(0.0)
    assert routing.weights == {"accurate": 1.0, "fast": 0.0}
    # what spill-over and pinned depths go by: the depth each pool's replicas serve, the floor, the artifact
    assert (routing.stable_depth, routing.floor, routing.published_depth) == ({"accurate": 0, "fast": 0}, 1, 1)

    # load step: slow first tokens on the accurate pool -> all traffic deeper (traffic_step 1.0)
    control.record(_events("accurate", 0.1, 10, ttft_s=0.5))
    control.report(replica_report("accurate", "a1", depth=0, running=2), 1.0)
    control.report(replica_report("fast", "f1", depth=1), 1.0)
    decision = control.tick(1.0)
    assert decision.pressure == "high" and decision.changed
    assert control.routing(1.0).weights == {"accurate": 0.0, "fast": 1.0}
    assert "ttft_p95_ms 500 ms vs target 100 ms" in decision.reason

    # the trainer publishes depth 2 (good): the floor rises, the fast pool's target follows, and replicas
    # are told to load the new layer (artifact_depth)
    artifact.ratios.append(1.1)
    control.report(replica_report("fast", "f1", depth=1), 1.5)
    decision = control.tick(1.5)
    assert decision.floor == 2 and control.targets("fast").depth == 2
    assert control.targets("fast").artifact_depth == 2
    assert "quality floor 1 -> 2" in decision.reason

    # depth 2 re-measured worse than the limit: floor back to 1; the replica still at depth 2 is cut off
    # (it carried all the traffic, so until it reconfigures the accurate pool serves rather than a 503)
    artifact.ratios[1] = 1.5
    control.report(replica_report("fast", "f1", depth=2), 2.0)
    control.report(replica_report("accurate", "a1", depth=0), 2.0)
    decision = control.tick(2.0)
    assert decision.floor == 1 and control.targets("fast").depth == 1
    assert decision.weights == {"accurate": 1.0, "fast": 0.0} and decision.routable
    assert "no traffic to fast (serving depth 2) beyond floor 1" in decision.reason

    # load gone (1 request/s, below the 2/s that caused the move): fast answers quickly and reports depth
    # 1 again; after the cooldown of low pressure the traffic returns to the accurate pool
    for now in (3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0):
        control.record(_events("fast", now - 0.5, 1, ttft_s=0.01))
        control.report(replica_report("fast", "f1", depth=1), now)
        control.report(replica_report("accurate", "a1", depth=0), now)
        control.tick(now)
    assert control.routing(10.0).weights == {"accurate": 1.0, "fast": 0.0}

    status = control.status(10.0)
    assert [p.name for p in status.pools] == ["accurate", "fast"]
    fast = status.pools[1]
    assert fast.configured_depth == 2 and fast.depth_target == 1 and fast.serving_depths == [1]
    assert status.quality.floor == 1 and status.quality.available_depth == 2
    assert [(d.depth, d.ppl_ratio, d.allowed) for d in status.quality.depths] == [(1, 1.05, True), (2, 1.5, False)]
    assert status.slo.attainment == 1.0
    reasons = [d.reason for d in status.decisions]
    assert any("moved 100% of traffic shallower" in r for r in reasons)
    assert any("moved 100% of traffic deeper" in r for r in reasons)


def test_reading_a_real_artifact(tmp_path):
    assert read_artifact(None).quality.available_depth == 0
    assert read_artifact(str(tmp_path / "missing")).quality.available_depth == 0  # a trainer will create it
    path = make_artifact(tmp_path / "art", [1.02, 1.3])
    view = read_artifact(str(path))
    assert view.quality == DepthQuality.from_ratios([1.02, 1.3])
    assert [e.layer for e in view.layers] == [3, 1] and view.planned_depth == 4
    assert read_artifact(str(path), view) is view  # unchanged manifest: not parsed again
    (path / MANIFEST_FILE).write_text("{broken")
    broken = read_artifact(str(path), view)
    assert broken.error and broken.quality == view.quality  # keep what was known


class _FakeServeController:
    """Records `update_deployment_replicas` calls; refuses like Serve when external scaling is off."""

    def __init__(self, enabled=True):
        self.calls, self.enabled = [], enabled
        outer = self

        class Method:
            async def remote(self, deployment_id, n):
                if not outer.enabled:
                    raise RuntimeError("... when 'external_scaler_enabled' is set to true ...")
                outer.calls.append((deployment_id.app_name, deployment_id.name, n))

        self.update_deployment_replicas = Method()


def test_scaler_asks_serve_once_per_change():
    import asyncio

    from dsla_serve.controller.control_plane.scaling import ServeScaler

    scaler = ServeScaler("app", {"a": "pool-a", "b": "pool-b"}, {"a": 1, "b": 1})
    fake = _FakeServeController()
    scaler._controller = lambda: fake
    assert asyncio.run(scaler.apply({"a": 1, "b": 1})) == []  # as deployed: nothing to do
    assert asyncio.run(scaler.apply({"a": 2, "b": 1})) == ["a 1->2"]
    assert asyncio.run(scaler.apply({"a": 2, "b": 1})) == []
    assert fake.calls == [("app", "pool-a", 2)]

    off = ServeScaler("app", {"a": "pool-a"}, {"a": 1})
    off._controller = lambda: _FakeServeController(enabled=False)
    assert asyncio.run(off.apply({"a": 3})) == [] and "external_scaler_enabled" in off.disabled_reason


def test_a_failing_scale_call_is_reported_and_retried():
    import asyncio

    from dsla_serve.controller.control_plane.scaling import ServeScaler

    class Controller:
        """Stands in for Serve's controller actor: fails while `failing`."""

        def __init__(self):
            self.failing, self.calls = True, []
            outer = self

            class Update:
                async def remote(self, deployment_id, n):
                    outer.calls.append((deployment_id.name, n))
                    if outer.failing:
                        raise RuntimeError("deployment 'pool-fast' is being deleted\nremote traceback ...")

            self.update_deployment_replicas = Update()

    controller = Controller()
    scaler = ServeScaler("app", {"fast": "pool-fast"}, {"fast": 1})
    scaler._controller = lambda: controller
    assert asyncio.run(scaler.apply({"fast": 2})) == [] and scaler.applied == {"fast": 1}
    assert scaler.error == "scaling pool fast to 2 replicas failed: RuntimeError: deployment 'pool-fast' is being deleted"
    controller.failing = False
    assert asyncio.run(scaler.apply({"fast": 2})) == ["fast 1->2"] and scaler.error is None  # tried again
    assert controller.calls == [("pool-fast", 2), ("pool-fast", 2)]

    control = PolicyControl(parse_policy(POLICY), 0.0, artifact_reader=FakeArtifact([1.05]))
    assert control.status(0.0, scaling_error="it failed").controller.scaling_error == "it failed"

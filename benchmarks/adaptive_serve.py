"""One run of benchmarks/adaptive_gpu.py: planned requests served by a `Fleet` of engines in this one
thread, routed and scaled by the application's own control code (no Ray, no HTTP).

    run = serve(fleet, policy, planned, label="adaptive", rate=2.0, seconds=20, drain_s=10)
    summarize(run.label, run.rate, run.results, policy.slo)         # dsla_serve.bench.report

The application's code, imported, not copied:

- `PolicyControl` (controller/control_plane/control.py), a fresh one per run: the policy actor's window
  over replica reports and request observations, `decide` every `controller.interval_s` (with the
  device's places as the cluster's resources), its `Routing`, its `ReplicaTargets`;
- `RoutingTable` (controller/frontend/routing.py): the ingress's weighted draw, spill-over to the
  deepest pool within the floor with a free slot, the queue cap (a refusal is the ingress's 429 / 503),
  `move` of a request stranded on a pool the policy empties; updated every `cadence.routing_every_s`;
- every replica reports its `Engine.stats()` every `cadence.report_every_s` and applies the targets it
  gets back (a depth target through `Engine.set_depth`, which drains), as `replicas/deployment.py` does;
- each request's `Arrival` when drawn and `Observation` when it ends, as the ingress records them.

The loop, until every request has ended or `seconds + drain_s` have passed (then what is left is
aborted and counted as `timeout`): admit the requests due (open loop: on schedule whatever the
engines do), hand requests waiting for a pool's replica to one, report / decide / refresh routing when
due, apply the decision's replica targets (`Fleet.scale`: a start blocks this thread for the engine's
real build time), then step every engine with work once, round robin. A token's time is when the step
that produced it returned; latencies count from the request's scheduled arrival, and `late_s` is how
late this thread admitted it (its own lag, as `dsla-serve bench` records the client's).
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from dsla_serve.bench.result import Result
from dsla_serve.bench.workload import PlannedRequest
from dsla_serve.controller.cadence import report_every_s, routing_every_s
from dsla_serve.controller.control_plane.control import PolicyControl
from dsla_serve.controller.frontend.routing import PoolLimits, Refusal, RoutingTable
from dsla_serve.controller.messages import Arrival, Observation
from dsla_serve.policies import Policy
from dsla_serve.replicas import QueueFullError, SamplingParams

from .adaptive_fleet import Fleet, Replica

# a refusal of the ingress as `dsla-serve bench` names it (`http_<status>:<code>`, controller/frontend/errors.py)
REFUSED = {"queue_full": "http_429:queue_full", "no_pool": "http_503:no_pool_ready",
           "too_large": "http_400:batch_too_large"}
IDLE_SLEEP_S = 0.002


@dataclass(eq=False)
class Flight:
    """One request through the run. `due`: its scheduled arrival (monotonic s); `pool` / `replica`: where
    it was placed and sent; token times are when the step that made them returned."""

    index: int
    planned: PlannedRequest
    due: float
    pool: str | None = None
    replica: Replica | None = None
    admitted: float | None = None
    first: float | None = None
    last: float | None = None
    tokens: int = 0
    depth: int | None = None
    done: bool = False


@dataclass
class RunRecord:
    """What one run produced: a `Result` per request (times in s from the run's start), the timeline
    (one row per decision), the fleet's starts and stops, and the decisions that changed something."""

    label: str
    rate: float | None
    results: list[Result] = field(default_factory=list)
    timeline: list[dict] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    decisions: list[str] = field(default_factory=list)
    seconds: float = 0.0
    cuda_graphs: dict[str, str] = field(default_factory=dict)


class _Run:
    def __init__(self, fleet: Fleet, policy: Policy, control: PolicyControl, resources: dict[str, float],
                 record: RunRecord, bar):
        self.fleet, self.policy, self.control, self.resources = fleet, policy, control, resources
        self.table = RoutingTable({p.name: PoolLimits(p.max_concurrent_requests, p.max_replicas) for p in policy.pools},
                                  policy.http.queue_cap, seed=0)
        self.waiting: dict[str, deque[Flight]] = {p.name: deque() for p in policy.pools}
        self.sent: dict[str, Flight] = {}
        self.record, self.bar = record, bar
        self.start = time.monotonic()
        self.open = 0

    # ------------------------------------------------------------------------------------------
    # the control plane, on its cadence
    # ------------------------------------------------------------------------------------------
    def report(self, now: float) -> None:
        """Every replica (stopping ones too, as a Serve replica does until it exits) reports; each applies
        its depth target."""
        for replica in list(self.fleet.replicas):
            targets = self.control.report(replica.report(), now)
            engine = replica.engine
            depth = min(targets.depth, engine.max_depth)
            if depth != engine.depth and not engine.draining:
                engine.set_depth(depth)

    def decide(self, now: float) -> None:
        decision = self.control.tick(now, read_artifact=False, resources=self.resources)
        self.fleet.scale(self.policy, decision.replica_targets, decision.depth_targets)
        pools = [p.name for p in self.policy.pools]
        row = {"t": round(now - self.start, 2), "weights": {k: round(v, 3) for k, v in decision.weights.items()},
               "replica_targets": dict(decision.replica_targets),
               "serving": {p: len(self.fleet.serving(p)) for p in pools},
               "stopping": {p: sum(r.stopping for r in self.fleet.replicas if r.pool == p) for p in pools},
               "in_flight": dict(self.table.in_flight), "waiting": self.table.waiting(),
               "pressure": decision.pressure, "changed": decision.changed}
        self.record.timeline.append(row)
        if decision.changed:
            self.record.decisions.append(f"{now - self.start:.1f} s: {decision.reason}")

    # ------------------------------------------------------------------------------------------
    # the ingress and Serve's router
    # ------------------------------------------------------------------------------------------
    def admit(self, flight: Flight, now: float) -> None:
        flight.admitted = now
        try:
            pool = self.table.place(1)[0]
        except Refusal as refusal:
            self.control.record([Arrival(pool=p, at=flight.due) for p in refusal.picked])
            self.end(flight, now, REFUSED.get(refusal.kind, f"refused:{refusal.kind}"))
            return
        self.control.record([Arrival(pool=pool, at=flight.due)])
        flight.pool = pool
        self.waiting[pool].append(flight)

    def dispatch(self, now: float) -> None:
        """Requests waiting for a replica of their pool go to one; those of a pool the policy emptied move."""
        for pool, queue in self.waiting.items():
            while queue:
                replica = self.fleet.pick(pool)
                if replica is None:
                    if self.table.emptied(pool):
                        for flight in list(queue):
                            flight.pool = self.table.move(pool)
                            if flight.pool != pool:
                                queue.remove(flight)
                                self.waiting[flight.pool].append(flight)
                    break
                self.send(queue.popleft(), replica, now)

    def send(self, flight: Flight, replica: Replica, now: float) -> None:
        planned = flight.planned
        params = SamplingParams(temperature=0, max_tokens=planned.max_tokens, ignore_eos=True, seed=flight.index)
        try:
            replica.engine.add_request(planned.prompt, params, request_id=str(flight.index), keep_history=True)
        except QueueFullError:
            self.end(flight, now, "http_429:queue_full")
            return
        except (ValueError, TypeError):
            self.end(flight, now, "http_400:invalid_value")
            return
        flight.replica = replica
        replica.ongoing += 1
        self.sent[str(flight.index)] = flight

    # ------------------------------------------------------------------------------------------
    # the engines
    # ------------------------------------------------------------------------------------------
    def step(self) -> bool:
        """Step every engine with work once; says whether any did."""
        stepped = False
        for replica in list(self.fleet.replicas):
            engine = replica.engine
            if not engine.has_unfinished():
                continue
            outputs = engine.step()
            at = time.monotonic()
            stepped = True
            for out in outputs:
                flight = self.sent.get(out.request_id)
                if flight is None or flight.done:
                    continue
                n = len(out.outputs[0].token_ids)
                if n > flight.tokens:
                    flight.first = at if flight.first is None else flight.first
                    flight.last, flight.tokens, flight.depth = at, n, engine.depth
                if out.finished:
                    reason = out.outputs[0].finish_reason
                    self.end(flight, at, None if reason in ("stop", "length") else "http_500:engine_error")
        return stepped

    def end(self, flight: Flight, at: float, error: str | None) -> None:
        """A request ended (answered, refused, failed or timed out): its `Result`, and for a placed one
        the ingress's release and `Observation`."""
        flight.done = True
        self.open -= 1
        if flight.replica is not None:
            flight.replica.ongoing -= 1
        self.sent.pop(str(flight.index), None)
        ttft = None if flight.first is None else flight.first - flight.due
        tpot = (flight.last - flight.first) / (flight.tokens - 1) if flight.tokens > 1 else None
        e2e = at - flight.due
        if flight.pool is not None:
            self.table.release(flight.pool)
            self.control.record([Observation(pool=flight.pool, at=at, ttft_s=ttft, tpot_s=tpot, e2e_s=e2e,
                                             ok=error is None)])
        self.record.results.append(Result(
            sent_at=flight.due - self.start, e2e_s=e2e, ttft_s=ttft, tpot_s=tpot,
            prompt_tokens=len(flight.planned.prompt), output_tokens=flight.tokens,
            depth=flight.depth if error is None else None, error=error,
            late_s=max(0.0, (flight.admitted or at) - flight.due)))
        self.bar.update(1)

    def abort_all(self, at: float) -> None:
        """The run's time is up: every request still open ends as `timeout`, and the engines are emptied."""
        for flight in [f for queue in self.waiting.values() for f in queue] + list(self.sent.values()):
            if not flight.done:
                if flight.replica is not None:
                    flight.replica.engine.abort(str(flight.index))
                self.end(flight, at, "timeout")
        for queue in self.waiting.values():
            queue.clear()
        for replica in self.fleet.replicas:
            while replica.engine.has_unfinished():
                replica.engine.step()


def serve(fleet: Fleet, policy: Policy, control: PolicyControl, planned: list[PlannedRequest], *, label: str,
          rate: float | None, seconds: float, drain_s: float, resources: dict[str, float],
          deadline: float = math.inf, progress: bool = True) -> RunRecord:
    """Serve `planned` (arrivals within `seconds` of the start) with the fleet as it is; stop admitting
    at `seconds`, give up `drain_s` later or at the monotonic `deadline`, whichever is first.

    control: a fresh `PolicyControl` of `policy` (its state is this run's); resources: what the replicas
    may use in all (Ray's names, e.g. {"GPU": 1.0}), bounding the replica targets as the cluster would.
    """
    record = RunRecord(label, rate)
    flights = deque(Flight(i, p, 0.0) for i, p in enumerate(planned) if p.arrival.at <= seconds)
    bar = tqdm(total=len(flights), desc=f"{label} @ {rate:g}/s" if rate else label, unit="req",
               disable=not progress, leave=False)
    run = _Run(fleet, policy, control, resources, record, bar)
    run.open = len(flights)
    fleet.clock_zero = run.start
    for flight in flights:
        flight.due = run.start + flight.planned.arrival.at
    end = min(run.start + seconds + drain_s, deadline)
    interval = policy.controller.interval_s
    next_report = next_routing = run.start
    next_decision = run.start + interval
    run.report(run.start)
    run.table.update(control.routing(run.start))
    while run.open > 0:
        now = time.monotonic()
        if now >= end:
            run.abort_all(now)
            break
        if now >= next_report:
            run.report(now)
            next_report = now + report_every_s(policy)
        if now >= next_decision:
            run.decide(now)
            next_decision = max(next_decision + interval, now)
        if now >= next_routing:
            run.table.update(control.routing(now))
            next_routing = now + routing_every_s(policy)
        while flights and flights[0].due <= now:
            run.admit(flights.popleft(), now)
        run.dispatch(now)
        fleet.reap()
        if not run.step():
            upcoming = min([next_report, next_decision, next_routing, end] + ([flights[0].due] if flights else []))
            time.sleep(min(max(0.0, upcoming - time.monotonic()), IDLE_SLEEP_S))
    bar.close()
    record.events = list(fleet.events)
    record.cuda_graphs = {r.id: r.engine.stats().cuda_graphs for r in fleet.replicas}
    record.seconds = round(time.monotonic() - run.start, 3)
    return record

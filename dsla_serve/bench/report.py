"""A run's figures from its requests: latency percentiles, SLO attainment, goodput, errors, depth.

- A request **meets the SLO** when it succeeded and its TTFT, TPOT and end-to-end latency are within
  the targets (`SLO.missed_targets`, the policy actor's own test of a request). **Attainment** is the
  share of sent requests that met it; **goodput** is those requests per second of the run (from the
  first send to the last answer); throughput counts every success.
- Percentiles are over successful requests (numpy's linear interpolation).
- **Mean served depth**: the mean of the depths the responses report (`system_fingerprint`), the
  quality proxy of DSLA-Serve (0 = the original model); None for other servers.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np

from ..policies import SLO
from .result import Result

PERCENTILES = (50, 90, 95, 99)


@dataclass(frozen=True)
class Summary:
    label: str
    rate: float | None
    sent: int
    ok: int
    duration_s: float
    ttft_ms: dict[str, float | None]
    tpot_ms: dict[str, float | None]
    e2e_ms: dict[str, float | None]
    attainment: float | None
    goodput: float
    throughput: float
    output_tokens_per_s: float
    errors: dict[str, int]
    missed: dict[str, int]
    mean_depth: float | None
    depths: dict[str, int] = field(default_factory=dict)
    client_lag_p95_ms: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {**{f"p{q}": None for q in PERCENTILES}, "mean": None}
    xs = np.asarray(values) * 1e3
    return {**{f"p{q}": round(float(np.percentile(xs, q)), 2) for q in PERCENTILES}, "mean": round(float(xs.mean()), 2)}


def summarize(label: str, rate: float | None, results: list[Result], slo: SLO | None) -> Summary:
    ok = [r for r in results if r.ok]
    start = min((r.sent_at for r in results), default=0.0)
    end = max((r.sent_at + r.e2e_s for r in results), default=0.0)
    duration = max(end - start, 1e-9)
    missed: Counter[str] = Counter()
    good = 0
    for r in results:
        misses = slo.missed_targets(r.ttft_s, r.tpot_s, r.e2e_s, r.ok) if slo is not None else ([] if r.ok else ["failed"])
        missed.update(misses)
        good += not misses
    depths = Counter(r.depth for r in ok if r.depth is not None)
    served = sum(depths.values())
    return Summary(
        label=label, rate=rate, sent=len(results), ok=len(ok), duration_s=round(duration, 3),
        ttft_ms=_percentiles([r.ttft_s for r in ok if r.ttft_s is not None]),
        tpot_ms=_percentiles([r.tpot_s for r in ok if r.tpot_s is not None]),
        e2e_ms=_percentiles([r.e2e_s for r in ok]),
        attainment=round(good / len(results), 4) if results and slo is not None else None,
        goodput=round(good / duration, 4) if slo is not None else round(len(ok) / duration, 4),
        throughput=round(len(ok) / duration, 4),
        output_tokens_per_s=round(sum(r.output_tokens for r in ok) / duration, 2),
        errors=dict(Counter(r.error for r in results if r.error)), missed=dict(missed),
        mean_depth=round(sum(d * n for d, n in depths.items()) / served, 3) if served else None,
        depths={str(d): n for d, n in sorted(depths.items())},
        client_lag_p95_ms=_percentiles([r.late_s for r in results])["p95"])


def table(summaries: list[Summary]) -> str:
    """A plain-text table, one row per run."""
    head = (f"{'label':14s} {'rate':>6s} {'sent':>5s} {'ok':>5s} {'TTFT p95':>9s} {'TPOT p95':>9s} {'E2E p95':>9s} "
            f"{'SLO':>6s} {'goodput':>8s} {'depth':>6s}  errors")
    rows = [head]
    for s in summaries:
        def ms(d):
            return "-" if d["p95"] is None else f"{d['p95']:.0f}"
        rows.append(f"{s.label[:14]:14s} {'-' if s.rate is None else f'{s.rate:g}':>6s} {s.sent:5d} {s.ok:5d} "
                    f"{ms(s.ttft_ms):>9s} {ms(s.tpot_ms):>9s} {ms(s.e2e_ms):>9s} "
                    f"{'-' if s.attainment is None else f'{s.attainment:.0%}':>6s} {s.goodput:8.3f} "
                    f"{'-' if s.mean_depth is None else f'{s.mean_depth:.2f}':>6s}  "
                    + (", ".join(f"{k} {v}" for k, v in sorted(s.errors.items())) or "-"))
    return "\n".join(rows)

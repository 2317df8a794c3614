"""Human views of the app's `Status` (controller/messages.py): one status line (`serve`), or tables (`status`)."""

from __future__ import annotations

import datetime

from ..controller.messages import Status
from ..trainer.progress import TrainerProgress


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def trainer_words(trainer: TrainerProgress | None) -> str:
    if trainer is None:
        return "no trainer"
    if trainer.phase == "training":
        return (f"training layer {trainer.layer} step {trainer.step}/{trainer.steps}"
                + (f" loss {trainer.loss:.3f}" if trainer.loss is not None else ""))
    if trainer.error:
        return f"{trainer.phase}: {trainer.error}"
    return trainer.phase + (f" ({trainer.published_depth}/{trainer.target_depth} layers)"
                            if trainer.target_depth is not None else "")


def status_line(status: Status) -> str:
    """e.g. `routing accurate 75% @d0, fast 25% @d2 | floor 2 (2 layers published) | SLO 97% of 120 | ...`."""
    pools = status.pools
    routing = ", ".join(f"{p.name} {p.weight:.0%} @d{p.depth_target}" for p in pools)
    q, slo = status.quality, status.slo
    attainment = f"SLO {_pct(slo.attainment)} of {slo.finished}" if slo.finished else "SLO - (no requests)"
    rate = sum(p.requests_per_s for p in pools)
    waiting = sum(p.queue_len or 0 for p in pools)
    return (f"routing {routing} | floor {q.floor} ({q.floor_reason}) | {attainment} in {slo.window_s:g} s"
            f" | {rate:.1f} req/s, {waiting} waiting | trainer: {trainer_words(status.trainer)}")


def render(status: Status, console, decisions: int = 5) -> None:
    """Print the status as rich tables on `console`."""
    from rich.table import Table

    slo, q = status.slo, status.quality
    console.print(f"[bold]{status.app}[/bold] serving [bold]{status.model}[/bold], up "
                  f"{status.uptime_s:.0f} s; SLO p95 TTFT {slo.ttft_p95_ms:g} ms, TPOT {slo.tpot_p95_ms:g} ms"
                  + (f", e2e {slo.e2e_p95_ms:g} ms" if slo.e2e_p95_ms else "")
                  + f"; attainment {_pct(slo.attainment)} of {slo.finished} requests in the last "
                    f"{slo.window_s:g} s")

    pools = Table(title="pools", title_justify="left",
                  caption="depth: configured/target/serving; replicas: running/target; TTFT, TPOT: p95 in ms",
                  caption_justify="left")
    for column in ("pool", "depth", "weight", "replicas", "queue", "run", "TTFT", "TPOT", "req/s", "SLO", "pressure"):
        pools.add_column(column, justify="left" if column in ("pool", "pressure") else "right", no_wrap=True)
    for p in status.pools:
        serving = ",".join(str(d) for d in p.serving_depths) or "-"
        pools.add_row(p.name, f"{p.configured_depth}/{p.depth_target}/{serving}", f"{p.weight:.0%}",
                      f"{p.replicas.running}/{p.replicas.target}", str(p.queue_len or 0), str(p.running or 0),
                      _ms(p.ttft_p95_ms), _ms(p.tpot_p95_ms), f"{p.requests_per_s:.1f}", _pct(p.slo_attainment),
                      p.pressure)
    console.print(pools)

    limits = ", ".join(s for s in [f"ppl ratio <= {q.max_ppl_ratio:g}" if q.max_ppl_ratio else "",
                                   f"depth <= {q.max_depth}" if q.max_depth is not None else ""] if s)
    console.print(f"quality floor {q.floor} ({q.floor_reason}); limits: {limits or 'none'}")
    depths = Table(title="available depths", title_justify="left")
    for column in ("depth", "layer", "ppl ratio", "allowed"):
        depths.add_column(column, justify="right")
    depths.add_row("0", "-", "1.000", "yes")
    for row in q.depths:
        depths.add_row(str(row.depth), str(row.layer), "-" if row.ppl_ratio is None else f"{row.ppl_ratio:.3f}",
                       "yes" if row.allowed else "no")
    console.print(depths)
    if q.artifact_error:
        console.print(f"[red]artifact unreadable:[/red] {q.artifact_error}")
    if status.controller.scaling_error:
        console.print(f"[red]scaling failed:[/red] {status.controller.scaling_error}")
    console.print(f"trainer: {trainer_words(status.trainer)}")

    console.print("last decisions:")
    for d in status.decisions[:decisions]:
        when = datetime.datetime.fromtimestamp(d.time).strftime("%H:%M:%S")
        console.print(f"  {when} [{d.pressure}] {d.reason}", highlight=False, soft_wrap=True)

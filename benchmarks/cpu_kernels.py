"""CPU cost of the PyTorch DSLA fallback: chunk_dsla vs naive_dsla vs causal softmax attention (SDPA).

Times one forward pass (inference, torch.no_grad) of each op on fp32 tensors [B, T, H, D] with the
same B, H, D, for each sequence length, and reports the median of the repeats. DSLA gets realistic
log-decays (logsigmoid(logit) / 16 for a slow and a fast gate) and K = V = D, no GQA.

    python benchmarks/cpu_kernels.py                   # T = 1k, 2k, 4k, 8k; B=1, H=4, D=64
    python benchmarks/cpu_kernels.py --seq-lens 512 --repeats 3 --output /tmp/x.json

Prints a table and writes JSON (machine, settings, per-T medians and all samples).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from dsla_serve.kernels import chunk_dsla, naive_dsla  # noqa: E402

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "cpu_kernels.json"


def machine_info() -> dict:
    """CPU model and core counts, torch version and threads, date (UTC)."""
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu_model": model,
        "logical_cpus": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def make_inputs(B: int, T: int, H: int, D: int, seed: int = 0) -> dict:
    """q, k, v, g1, g2 [B, T, H, D] fp32 and mix [H, 2]."""
    gen = torch.Generator().manual_seed(seed)
    randn = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    return dict(
        q=randn(B, T, H, D), k=randn(B, T, H, D), v=randn(B, T, H, D),
        g1=F.logsigmoid(randn(B, T, H, D) + 4.0) / 16,
        g2=F.logsigmoid(randn(B, T, H, D) - 1.1) / 16,
        mix=torch.softmax(randn(H, 2), dim=-1),
    )


def ops(x: dict) -> dict:
    """name -> zero-argument callable running that op once on x."""
    dsla_args = (x["q"], x["k"], x["v"], x["g1"], x["g2"], x["mix"])
    # SDPA wants [B, H, T, D]; the transposes are views, as a model would pass them.
    q, k, v = (x[n].transpose(1, 2) for n in ("q", "k", "v"))
    return {
        "chunk_dsla": lambda: chunk_dsla(*dsla_args),
        "naive_dsla": lambda: naive_dsla(*dsla_args),
        "sdpa_causal": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
    }


def time_op(fn, repeats: int, warmup: int) -> tuple[list[float], list[float]]:
    """(wall-clock seconds, process CPU seconds) of `repeats` calls after `warmup` untimed ones.

    CPU time (summed over torch's threads) is reported next to wall time because on a shared
    machine wall time also counts waiting for other processes.
    """
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return wall, cpu


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[1024, 2048, 4096, 8192],
                        help="sequence lengths T to time (default: 1024 2048 4096 8192)")
    parser.add_argument("--batch", type=int, default=1, help="batch size B (default 1)")
    parser.add_argument("--heads", type=int, default=4, help="heads H, same for q, k, v (default 4)")
    parser.add_argument("--head-dim", type=int, default=64, help="head dim D = K = V (default 64)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per op and T (default 5)")
    parser.add_argument("--naive-repeats", type=int, default=3,
                        help="timed calls of the slow naive_dsla per T (default 3); 0 skips it")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls before timing (default 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                        help="JSON results file (default benchmarks/results/cpu_kernels.json)")
    args = parser.parse_args(argv)
    if min(args.seq_lens) < 1 or args.repeats < 1 or args.naive_repeats < 0 or args.warmup < 0:
        parser.error("--seq-lens and --repeats must be >= 1, --naive-repeats and --warmup >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)

    settings = dict(batch=args.batch, heads=args.heads, head_dim=args.head_dim, dtype="float32",
                    repeats=args.repeats, naive_repeats=args.naive_repeats, warmup=args.warmup,
                    mode="forward, torch.no_grad", backend=os.environ.get("DSLA_BACKEND", "auto"))
    rows = []
    work = [(T, name) for T in args.seq_lens for name in ("chunk_dsla", "naive_dsla", "sdpa_causal")
            if not (name == "naive_dsla" and args.naive_repeats == 0)]
    samples: dict[tuple[int, str], tuple[list[float], list[float]]] = {}
    load_before = load_average()
    with torch.no_grad(), tqdm(work, desc="timing", unit="op") as bar:
        for T, name in bar:
            bar.set_postfix_str(f"{name} T={T}")
            fn = ops(make_inputs(args.batch, T, args.heads, args.head_dim))[name]
            naive = name == "naive_dsla"
            samples[T, name] = time_op(fn, args.naive_repeats if naive else args.repeats,
                                       min(args.warmup, 1) if naive else args.warmup)
    machine = {**machine_info(), "load_average_1_5_15min": {"before": load_before, "after": load_average()}}
    for T in args.seq_lens:
        row = {"T": T}
        for name in ("chunk_dsla", "naive_dsla", "sdpa_causal"):
            if (T, name) in samples:
                wall, cpu = samples[T, name]
                row[f"{name}_ms"] = round(1e3 * statistics.median(wall), 2)
                row[f"{name}_cpu_ms"] = round(1e3 * statistics.median(cpu), 2)
                row[f"{name}_samples_ms"] = [round(1e3 * s, 2) for s in wall]
        row["chunk_tokens_per_s"] = round(args.batch * T / (row["chunk_dsla_ms"] / 1e3))
        rows.append(row)

    print_table(rows, settings, machine)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python benchmarks/cpu_kernels.py", *(sys.argv[1:] if argv is None else argv)])
    result = {"benchmark": "cpu_kernels", "command": command, "machine": machine, "settings": settings,
              "results": rows}
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


def print_table(rows: list[dict], settings: dict, machine: dict) -> None:
    load = machine["load_average_1_5_15min"]
    print(f"\n{machine['cpu_model']}, {machine['cpus_available']} CPUs, torch {machine['torch_version']} "
          f"({machine['torch_threads']} threads), {machine['date_utc']}, load average before/after "
          f"{load['before']} / {load['after']}")
    print(f"B={settings['batch']} H={settings['heads']} D={settings['head_dim']} fp32, {settings['mode']}; "
          f"median wall ms (process CPU ms) of {settings['repeats']} calls "
          f"(naive: {settings['naive_repeats']})\n")
    cols = [("T", 6), ("chunk_dsla", 17), ("naive_dsla", 19), ("sdpa causal", 17), ("naive/chunk", 11),
            ("chunk/sdpa", 10)]
    header = " | ".join(f"{name:>{width}}" for name, width in cols)
    print(header)
    print("-" * len(header))

    def cell(r, name):
        if f"{name}_ms" not in r:
            return "-"
        return f"{r[f'{name}_ms']:.1f} ({r[f'{name}_cpu_ms']:.1f})"

    for r in rows:
        naive = r.get("naive_dsla_ms")
        values = [str(r["T"]), cell(r, "chunk_dsla"), cell(r, "naive_dsla"), cell(r, "sdpa_causal"),
                  f"{naive / r['chunk_dsla_ms']:.1f}x" if naive else "-",
                  f"{r['chunk_dsla_ms'] / r['sdpa_causal_ms']:.2f}x"]
        print(" | ".join(f"{v:>{width}}" for v, (_, width) in zip(values, cols)))


if __name__ == "__main__":
    raise SystemExit(main())

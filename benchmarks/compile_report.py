"""Registers, spills and shared memory of every DSLA Triton kernel compiled for sm_90, without a GPU.

    python benchmarks/compile_report.py [--gates logits,fp32,bf16] [--arch 90] [--json PATH]

Each kernel is compiled (triton's own compiler and its bundled ptxas) at the launch settings in force
(the kernels' TUNING tables) for bf16 q/k/v, head dim 128, and the gate forms the model and the engine
pass: bf16 gate logits (`gate_logit_normalizer`), fp32 log-decays, bf16 log-decays. The resource usage
comes from the cubin (`cuobjdump -res-usage`): STACK > 0 means registers spilled to local memory. The
triton here may differ from the GPU machine's; benchmarks/kernels.py prints the report of the kernels
it actually ran there.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from dsla_serve.kernels.fused import (  # noqa: E402
    chunk_bwd_dqkg, chunk_bwd_dv, chunk_bwd_intra, chunk_fwd, chunk_scores, decays, recurrent, states)
from dsla_serve.kernels.fused.common import pow2  # noqa: E402

H, D, BT = 32, 128, 64
FLOATS = {"scale", "gate_scale"}
INDEX = {"cu_seqlens", "chunk_indices", "boundary_offsets", "slots"}
FP32_BUFFERS = {"b1", "b2", "mix", "final1", "final2", "init1", "init2", "dfinal1", "dfinal2", "dinit1", "dinit2", "dmix_part",
                "dq_part", "dk_part", "z1", "z2"}


def kernels(gates: str) -> list[tuple[str, object, dict, dict]]:
    """(name, jit function, launch options, constexprs) at the current TUNING tables."""
    g = dict(GATE_LOGITS=gates == "logits")  # only the kernels that read the gates take it
    base = dict(H=H, HK=H, K=D, V=D, BT=BT, IS_VARLEN=False)
    st, sb = states.FORWARD_TUNING, states.BACKWARD_TUNING
    tiles = lambda t: dict(BK=min(t["bk"], pow2(D)), BV=min(t.get("bv", D), pow2(D)))  # noqa: E731
    opts = lambda t: dict(num_warps=t["num_warps"], num_stages=t["num_stages"])  # noqa: E731
    no_v = {k: v for k, v in base.items() if k != "V"}
    return [
        ("chunk_decays", decays._chunk_decays_kernel, dict(num_warps=decays.TUNING["num_warps"], num_stages=1),
         dict(H=H, K=D, BT=BT, BK=min(decays.TUNING["bk"], D), IS_VARLEN=False, **g)),
        ("forward_states", states._forward_states_kernel, opts(st),
         dict(base, **tiles(st), HAS_INIT=True, STORE_FINAL=True)),
        ("chunk_scores", chunk_scores._chunk_scores_kernel, opts(chunk_scores.TUNING),
         dict(no_v, BC=16, BK=min(chunk_scores.TUNING["bk"], D), DOT_BF16=True)),
        ("chunk_output", chunk_fwd._chunk_output_kernel, opts(chunk_fwd.TUNING),
         dict(base, **dict(zip(("BK", "BV"), chunk_fwd.output_tiles(D, D))))),
        ("backward_states", states._backward_states_kernel, opts(sb),
         dict({k: v for k, v in base.items() if k != "HK"}, **tiles(sb), HAS_DFINAL=False, STORE_DINIT=False)),
        ("bwd_dv", chunk_bwd_dv._dv_kernel, opts(chunk_bwd_dv.TUNING), dict(base, **tiles(chunk_bwd_dv.TUNING))),
        ("bwd_intra", chunk_bwd_intra._dqk_intra_kernel, opts(chunk_bwd_intra.TUNING),
         dict(no_v, BC=16, BK=min(chunk_bwd_intra.TUNING["bk"], D), DOT_BF16=True)),
        ("bwd_dqkg", chunk_bwd_dqkg._dqkg_kernel, opts(chunk_bwd_dqkg.TUNING),
         dict(base, **tiles(chunk_bwd_dqkg.TUNING), **g)),
        ("recurrent", recurrent._recurrent_kernel, dict(num_warps=recurrent.TUNING["num_warps"], num_stages=1),
         dict({k: v for k, v in base.items() if k != "BT"}, BK=D, BV=recurrent._value_tile(D, D), HAS_INIT=True,
              STORE_FINAL=True, USE_SLOTS=True, GATE_LOGITS=g["GATE_LOGITS"])),
    ]


def signature(fn, constexprs: dict, gates: str) -> dict:
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in FLOATS:
            sig[name] = "fp32"
        elif name == "T" or name.startswith("s_"):
            sig[name] = "i32"
        elif name in INDEX:
            sig[name] = "*i32"
        elif name in FP32_BUFFERS or (name in ("g1", "g2", "dg1", "dg2") and gates == "fp32"):
            sig[name] = "*fp32"
        else:
            sig[name] = "*bf16"
    return sig


def resource_usage(cubin: bytes) -> dict:
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([str(tool), "-res-usage", f.name], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", out)
    return dict(regs=int(m[1]), stack=int(m[2]), shared_static=int(m[3]), local=int(m[4])) if m else {}


def report(gate_forms: list[str], arch: int) -> list[dict]:
    rows = []
    for gates in gate_forms:
        for name, fn, options, constexprs in kernels(gates):
            sig = signature(fn, constexprs, gates)
            # what the JIT specialises at run time: pointers and integers (strides, T) divisible by 16
            attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(fn.arg_names)
                     if sig[name].startswith("*") or sig[name] == "i32"}
            src = ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs)
            try:
                k = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
                row = dict(kernel=name, gates=gates, **options, shared=k.metadata.shared,
                           **resource_usage(k.asm["cubin"]))
            except Exception as e:  # noqa: BLE001 - report and go on
                row = dict(kernel=name, gates=gates, **options, error=f"{type(e).__name__}: {e}"[:300])
            rows.append(row)
            print(f"{gates:<7} {name:<16} warps {options['num_warps']} " + (
                f"regs {row['regs']:>3} stack {row['stack']:>5} shared {row['shared']:>6}" if "regs" in row
                else row.get("error", "?")), flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gates", default="logits,fp32,bf16", help="gate forms (logits, fp32, bf16)")
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args(argv)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    rows = report(args.gates.split(","), args.arch)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0 if all("regs" in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

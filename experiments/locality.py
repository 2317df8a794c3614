"""How local each layer's attention is, beside what each layer cost a campaign run.

    python -m experiments.locality --costs experiments/results/gpu-2026-12-07-smollm2-claim/summary.json \
        --run dsla_s0 --out experiments/results/gpu-2026-12-07-smollm2-claim/locality.json

For every layer of the unconverted model: the mean share of each attention row on its last `--window`
keys (`dsla_serve.trainer.sensitivity.attention_local_mass`; 1.0 = a sliding window of that width
reproduces the layer), on `--sequences` rows of `--seq-len` tokens packed from the text under `--data`.
With `--costs` (a campaign's summary.json) it prints each layer's cost in `--run` beside it and the
Spearman correlation of the two. Runs on the CPU (SmolLM2, 8 x 2048 tokens: 2 min 35 s on 2 cores).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dsla_serve.model.loading import load_model_and_tokenizer
from dsla_serve.trainer.data import pack_documents, read_documents
from dsla_serve.trainer.distributed import init_distributed
from dsla_serve.trainer.sensitivity import attention_local_mass

from .report import spearman


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.locality", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="model path, hub id or short name (default smollm2-135m)")
    p.add_argument("--data", type=Path, default=Path("runs/claim-data/held-out"),
                   help="text files or folders (default runs/claim-data/held-out, from experiments.prepare)")
    p.add_argument("--seq-len", type=int, default=2048, help="tokens per row (default 2048)")
    p.add_argument("--sequences", type=int, default=8, help="rows (default 8)")
    p.add_argument("--window", type=int, default=64, help="keys counted as local (default 64, the swa baseline's)")
    p.add_argument("--costs", type=Path, help="a campaign's summary.json: print each layer's cost beside it")
    p.add_argument("--run", default="dsla_s0", help="the run of --costs (default dsla_s0)")
    p.add_argument("--out", type=Path, help="write the result as JSON here")
    args = p.parse_args(argv)

    model, tokenizer = load_model_and_tokenizer(args.model, dtype="float32", device="cpu")
    rows = pack_documents(read_documents([args.data]), tokenizer, args.seq_len,
                          max_tokens=args.seq_len * args.sequences)[:args.sequences]
    mass = attention_local_mass(model, rows, args.window, batch_size=1, dist=init_distributed("cpu"))
    result = {"model": args.model, "data": str(args.data), "rows": list(rows.shape), "window": args.window,
              "local_mass": {str(k): round(v, 5) for k, v in mass.items()}}
    print(f"layer  share of attention on the last {args.window} keys" + ("   cost in " + args.run if args.costs else ""))
    costs = {}
    if args.costs:
        costs = {int(k): v for k, v in json.loads(args.costs.read_text())["layer_costs"][args.run].items()}
    for layer in sorted(mass, key=lambda i: -mass[i]):
        cost = f"   {100 * costs[layer]:+6.1f}%" if layer in costs else ""
        print(f"{layer:5d}  {mass[layer]:.3f}{cost}")
    if costs:
        rho = spearman([mass[i] for i in costs], [costs[i] for i in costs])
        result.update(costs_from=str(args.costs), run=args.run, spearman=round(rho, 4))
        print(f"Spearman (local share, cost) over {len(costs)} layers: {rho:.3f}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

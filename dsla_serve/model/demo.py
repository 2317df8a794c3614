"""`dsla-serve demo`: convert half of a small random Llama to DSLA and generate with the hybrid cache.

Everything is built in memory (random weights, byte-level tokenizer), so nothing is downloaded; the
generated text is therefore noise. What the demo shows is the machinery: which layers run as DSLA,
what they add in parameters, what they save in KV cache, and that cached decoding through the hybrid
cache computes what one full forward pass computes.
"""

from __future__ import annotations

import argparse
import time

import torch

HELP = "convert half of a tiny random Llama to DSLA and generate with a hybrid cache"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", default="llama", choices=("llama", "mistral", "qwen2"),
                        help="architecture of the random model (default: llama)")
    parser.add_argument("--num-layers", type=int, default=8, help="decoder layers of the random model (default: 8)")
    parser.add_argument("--layers", default=None,
                        help="comma-separated layer indices to convert, in conversion order "
                             "(default: every other layer from the top, i.e. half of them)")
    parser.add_argument("--depth", type=int, default=None,
                        help="how many layers of the order run as DSLA (default: all converted)")
    parser.add_argument("--prompt", default="Dual-state linear attention keeps two memories:",
                        help="prompt text (byte-level tokens)")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="tokens to generate (default: 32)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default: 0)")


def _kib(n: int) -> str:
    return f"{n / 1024:.1f} KiB"


def _parse_layers(text: str | None, num_layers: int) -> list[int]:
    if text is None:
        return list(range(num_layers - 1, -1, -2))
    try:
        layers = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"--layers must be comma-separated integers, got {text!r}") from None
    if not layers:
        raise SystemExit("--layers must name at least one layer")
    return layers


def run(args) -> int:
    from .fingerprint import base_parameters
    from .memory import cache_bytes_per_token, dsla_state_bytes
    from .surgery import convert, dsla_layers, set_depth
    from .tiny import build_tiny_model
    from .tiny_tokenizer import BOS_ID, build_byte_tokenizer

    if args.max_new_tokens < 1:
        raise SystemExit("--max-new-tokens must be >= 1")
    if args.num_layers < 1:
        raise SystemExit("--num-layers must be >= 1")
    layers = _parse_layers(args.layers, args.num_layers)
    # The demo model's matmuls are too small to split across threads; on a busy machine two threads
    # mostly wait on each other (measured 10x slower).
    torch.set_num_threads(1)

    model = build_tiny_model(args.arch, seed=args.seed, hidden_size=256, num_layers=args.num_layers,
                             num_heads=8, num_kv_heads=2, intermediate_size=512)
    cfg = model.config
    print(f"model: random {args.arch}, {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, "
          f"{cfg.num_attention_heads} query / {cfg.num_key_value_heads} key-value heads, vocab {cfg.vocab_size}, "
          f"float32, seed {args.seed}")
    base_params = sum(p.numel() for _, p in base_parameters(model))
    try:
        convert(model, layers)
    except (ValueError, TypeError) as e:
        raise SystemExit(f"--layers: {e}") from None
    depth = len(layers) if args.depth is None else args.depth
    try:
        set_depth(model, depth)
    except ValueError as e:
        raise SystemExit(f"--depth: {e}") from None
    added = sum(p.numel() for twin in dsla_layers(model).values() for p in twin.own_parameters().values())
    print(f"converted: layers {', '.join(map(str, layers))} (conversion order); depth {depth}: "
          f"{', '.join(map(str, layers[:depth])) or 'none'} run as DSLA")
    print(f"parameters: base {base_params / 1e6:.2f} M; added by DSLA {added / 1e6:.2f} M "
          f"(+{100 * added / base_params:.1f} %: gate projections and mix logits, q/k/v/o shared)")
    kv0, kvd = cache_bytes_per_token(model, 0), cache_bytes_per_token(model, depth)
    state = dsla_state_bytes(model, depth)
    print(f"KV cache per token: depth 0 {_kib(kv0)}, depth {depth} {_kib(kvd)} ({100 * (kvd - kv0) / kv0:+.0f} %)")
    print(f"DSLA state per sequence: {_kib(state)}, fixed whatever the length "
          f"(= the KV cache of {state / max(kv0 - kvd, 1):.0f} tokens of the converted layers)")

    tokenizer = build_byte_tokenizer()
    ids = torch.tensor([[BOS_ID] + tokenizer.encode(args.prompt, add_special_tokens=False)])
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.max_new_tokens,
                             min_new_tokens=args.max_new_tokens, do_sample=False, return_dict_in_generate=True,
                             output_logits=True)
    elapsed = time.perf_counter() - start
    new = out.sequences[0, ids.shape[1]:]
    print(f"prompt: {args.prompt!r} ({ids.shape[1]} tokens)")
    print(f"generated {len(new)} tokens in {elapsed:.2f} s ({len(new) / elapsed:.0f} tokens/s), greedy, "
          f"random weights: {tokenizer.decode(new)!r}")

    with torch.no_grad():  # the last decode step, through the hybrid cache, against one full forward pass
        full = model(out.sequences[:, :-1]).logits[0, -1]
    diff = (out.logits[-1][0] - full).abs().max().item()
    print(f"check: last-step logits, hybrid-cache decode vs full forward: max |difference| {diff:.1e}")
    return 0

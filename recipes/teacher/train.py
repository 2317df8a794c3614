"""Train the reference teacher: a small Llama (GQA, RoPE, 4k context) on the training books.

    recipes/teacher/train.sh                             # the recipe: two stages of this script (GPU)
    python -m recipes.teacher.train                      # one stage with these defaults
    python -m recipes.teacher.train --smoke --device cpu # tiny settings, a minute on a laptop CPU

Plain PyTorch: AdamW, linear warmup then cosine decay, bf16 autocast on CUDA (fp32 master weights),
gradient clipping, seeded initialisation and seeded batches (`batches.BatchMixture`: book text with
passkey and associative-recall episodes mixed in, so the teacher learns to retrieve at 1k-4k tokens).

The loss is the mean next-token cross-entropy over all tokens plus --answer-loss-weight times the mean
over the episodes' answer tokens alone (a tiny share of the tokens: without the second term they
barely move the weights). `--init-from` starts from an earlier stage's weights; README.md says why
the recipe needs a stage of short rows packed with episodes before the 4096-token one.

Writes to --out: a standard Hugging Face model folder (config.json, model.safetensors in --save-dtype,
tokenizer files) that `from_pretrained` loads, `training.json` (settings, the loss curve, validation
losses, throughput, the final evaluation) and `training_curve.png`. A `--time-budget-min` stop saves a
checkpoint; rerunning the same command resumes from it (exit code 75 until the run is complete).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from dsla_serve.quality.corpus import open_token_corpus
from dsla_serve.quality.models import resolve_device
from dsla_serve.quality.perplexity import windows_of

from . import paths
from .batches import BatchMixture, MixtureConfig, prefetched_batches
from .checkpoint import load_checkpoint, remove_checkpoint, save_checkpoint

EXIT_INCOMPLETE = 75  # stopped by the time budget; rerun the same command to resume

SMOKE = dict(layers=2, hidden=64, heads=4, kv_heads=2, intermediate=128, seq_len=256, batch_size=4,
             steps=8, warmup=2, eval_every=4, eval_windows=2, checkpoint_every=4, passkey_min_len=128,
             recall_min_pairs=2, recall_max_pairs=8, final_passkey_lengths="128,256", final_episodes=4,
             final_recall_pairs="4,8", final_windows=4, copy_max_len=64, loader_workers=0)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m recipes.teacher.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    io = p.add_argument_group("input and output")
    io.add_argument("--tokenizer", type=Path, default=paths.TOKENIZER, help="tokenizer folder (default: %(default)s)")
    io.add_argument("--data", type=Path, default=paths.DATA, help="token corpus folder (default: %(default)s)")
    io.add_argument("--out", type=Path, default=paths.MODEL, help="output model folder (default: %(default)s)")
    m = p.add_argument_group("model (Llama)")
    m.add_argument("--layers", type=int, default=8)
    m.add_argument("--hidden", type=int, default=512)
    m.add_argument("--heads", type=int, default=8)
    m.add_argument("--kv-heads", type=int, default=2, help="key/value heads (GQA)")
    m.add_argument("--intermediate", type=int, default=1024, help="SwiGLU MLP width")
    m.add_argument("--rope-theta", type=float, default=10000.0)
    t = p.add_argument_group("training")
    t.add_argument("--seq-len", type=int, default=4096)
    t.add_argument("--batch-size", type=int, default=16, help="sequences per optimizer step")
    t.add_argument("--micro-batch", type=int, default=None, help="sequences per forward (gradient accumulation)")
    t.add_argument("--steps", type=int, default=2000)
    t.add_argument("--lr", type=float, default=1.5e-3)
    t.add_argument("--min-lr-ratio", type=float, default=0.1, help="final learning rate / peak")
    t.add_argument("--warmup", type=int, default=50, help="linear warmup steps")
    t.add_argument("--weight-decay", type=float, default=0.1)
    t.add_argument("--grad-clip", type=float, default=1.0)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--passkey-fraction", type=float, default=0.25, help="rows that start with a passkey episode")
    t.add_argument("--passkey-min-len", type=int, default=256, help="shortest passkey episode (tokens)")
    t.add_argument("--recall-fraction", type=float, default=0.15, help="rows that start with a recall episode")
    t.add_argument("--recall-min-pairs", type=int, default=4)
    t.add_argument("--recall-max-pairs", type=int, default=64)
    t.add_argument("--copy-fraction", type=float, default=0.1,
                   help="rows that start with a copy episode (random tokens, then the same again)")
    t.add_argument("--copy-min-len", type=int, default=16)
    t.add_argument("--copy-max-len", type=int, default=256)
    t.add_argument("--no-pack-episodes", dest="pack_episodes", action="store_false",
                   help="one episode per episode row (default: as many as fit)")
    t.add_argument("--passkey-ramp-steps", type=int, default=None,
                   help="passkey episodes grow from --passkey-min-len to --seq-len over these steps "
                        "(default: a third of --steps; 0 = full length from the start)")
    t.add_argument("--answer-loss-weight", type=float, default=1.0,
                   help="weight of the mean loss over retrieval answer tokens, added to the mean over all tokens")
    io.add_argument("--init-from", type=Path, default=None,
                    help="start from this model folder's weights (a previous stage, e.g. short rows first)")
    r = p.add_argument_group("running")
    r.add_argument("--device", default="auto", help="cuda, cpu or auto (default)")
    r.add_argument("--time-budget-min", type=float, default=14.0,
                   help="stop (with a checkpoint) once this many minutes of this invocation have passed")
    r.add_argument("--stop-after", type=int, default=None,
                   help="stop (with a checkpoint) after this many steps of this invocation")
    r.add_argument("--loader-workers", type=int, default=4,
                   help="processes that build batches ahead of the training step (0: in the training process)")
    r.add_argument("--eval-every", type=int, default=100, help="validation loss every N steps")
    r.add_argument("--eval-windows", type=int, default=16, help="validation windows for the periodic loss")
    r.add_argument("--checkpoint-every", type=int, default=250)
    r.add_argument("--save-dtype", default="bfloat16", choices=("bfloat16", "float32"))
    r.add_argument("--final-windows", type=int, default=None, help="validation windows of the final perplexity (all)")
    r.add_argument("--final-passkey-lengths", default="1024,2048,4096")
    r.add_argument("--final-recall-pairs", default="16,32,64")
    r.add_argument("--final-episodes", type=int, default=50, help="episodes per passkey length / recall size")
    r.add_argument("--smoke", action="store_true", help="tiny model and run for a CPU check: " + str(SMOKE))
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--smoke" in argv:  # smoke values replace the defaults; options given explicitly still win
        parser.set_defaults(**SMOKE)
    args = parser.parse_args(argv)
    args.micro_batch = args.micro_batch or args.batch_size
    if args.passkey_ramp_steps is None:
        args.passkey_ramp_steps = args.steps // 3
    if args.batch_size % args.micro_batch:
        parser.error(f"--batch-size ({args.batch_size}) must be a multiple of --micro-batch ({args.micro_batch})")
    if args.hidden % args.heads or args.heads % args.kv_heads:
        parser.error("--hidden must be a multiple of --heads, and --heads a multiple of --kv-heads")
    return args


def build_model(args, tokenizer):
    """A freshly initialised LlamaForCausalLM (fp32, seeded), tied input/output embeddings."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        max_position_embeddings=args.seq_len, rope_theta=args.rope_theta, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    config._attn_implementation = "sdpa"
    torch.manual_seed(args.seed)
    return LlamaForCausalLM(config)


def init_weights(model, folder: Path) -> None:
    """Load a saved model folder's weights into `model` (same architecture; fp32 kept)."""
    from safetensors.torch import load_file

    path = Path(folder) / "model.safetensors"
    if not path.is_file():
        raise SystemExit(f"--init-from {folder}: no model.safetensors there")
    weights = load_file(path)
    own = model.state_dict()
    missing = [k for k in own if k not in weights and k != "lm_head.weight"]  # lm_head is tied to the embeddings
    unexpected = [k for k in weights if k not in own]
    resized = [k for k in weights if k in own and weights[k].shape != own[k].shape]
    if missing or unexpected or resized:
        raise SystemExit(f"--init-from {folder}: another architecture (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}, other shapes {resized[:3]})")
    model.load_state_dict({k: v.float() for k, v in weights.items()}, strict=False)


def learning_rate(step: int, args) -> float:
    """Linear warmup to --lr over --warmup steps, then cosine decay to --lr * --min-lr-ratio at --steps."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def make_optimizer(model, args, device) -> torch.optim.Optimizer:
    """AdamW; no weight decay on norms (1-D parameters)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=device.type == "cuda")


def autocast(device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


@torch.no_grad()
def validation_loss(model, windows: list[np.ndarray], device, micro_batch: int) -> float:
    model.eval()
    total, n = 0.0, 0
    for b in range(0, len(windows), micro_batch):
        x = torch.as_tensor(np.stack(windows[b:b + micro_batch]).astype(np.int64), device=device)
        with autocast(device):
            loss = model(input_ids=x, labels=x).loss
        total += float(loss) * len(x)
        n += len(x)
    model.train()
    return total / n


def token_losses(model, x: torch.Tensor, answers: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token cross-entropy of rows x [b, T] int64, summed: (over all b*(T-1) targets, over the
    targets that answers [b, T] bool marks)."""
    with autocast(device):
        logits = model(input_ids=x).logits[:, :-1]
    losses = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten(),
                                               reduction="none")
    mask = answers[:, 1:].flatten()
    return losses.sum(), (losses * mask).sum()


def train_step(model, optimizer, batch: torch.Tensor, answers: torch.Tensor, step: int, args,
               device) -> tuple[float, float | None]:
    """One optimizer step over the rows batch [--batch-size, T] (in --micro-batch pieces); answers [same]
    bool marks the episodes' answer tokens.

    Returns (mean loss over all tokens, mean loss over answer tokens or None if the batch had none);
    the optimised loss is the first plus --answer-loss-weight times the second.
    """
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(step, args)
    answer_count = int(answers[:, 1:].sum())  # counted before the copy: no wait on the device
    batch, answers = batch.to(device, non_blocking=True), answers.to(device, non_blocking=True)
    n_tokens = batch.shape[0] * (batch.shape[1] - 1)
    n_answers = max(1, answer_count)
    total, total_answer = torch.zeros((), device=device), torch.zeros((), device=device)
    for x, a in zip(batch.split(args.micro_batch), answers.split(args.micro_batch)):
        all_sum, answer_sum = token_losses(model, x, a, device)
        loss = all_sum / n_tokens + args.answer_loss_weight * answer_sum / n_answers
        loss.backward()
        total += all_sum.detach() / n_tokens
        total_answer += answer_sum.detach() / n_answers
    torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(total), (float(total_answer) if answer_count else None)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def final_evaluation(out: Path, docs: list[np.ndarray], args, device) -> dict:
    """Reload the saved folder with `from_pretrained` and measure it (what others will load is measured)."""
    from dsla_serve.model.loading import load_model_and_tokenizer
    from dsla_serve.quality.evaluate import EvalSettings, evaluate

    dtype = "bfloat16" if device.type == "cuda" else "float32"
    model, tokenizer = load_model_and_tokenizer(str(out), dtype=dtype, device=device)
    settings = EvalSettings(context=args.seq_len, max_windows=args.final_windows, batch_size=args.micro_batch,
                            passkey_lengths=_ints(args.final_passkey_lengths), passkey_episodes=args.final_episodes,
                            recall_pairs=_ints(args.final_recall_pairs), recall_episodes=args.final_episodes,
                            progress=not args.quiet)
    result = evaluate(model, tokenizer, docs, settings)
    result["settings"] = settings.to_dict()
    result["dtype"] = dtype
    return result


def save_final(model, tokenizer, out: Path, args) -> None:
    model.config.use_cache = True
    model.to(getattr(torch, args.save_dtype)).save_pretrained(out)
    tokenizer.save_pretrained(out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer

    from dsla_serve.quality.plots import plot_training_curve

    device = resolve_device(args.device)
    torch.set_float32_matmul_precision("high")
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    corpus = open_token_corpus(args.data, tokenizer)
    train_docs = [d for _, d in corpus.docs("train")]
    val_docs = [d for _, d in corpus.docs("validation")]
    mixture = BatchMixture(tokenizer, corpus.stream("train"), train_docs, MixtureConfig(
        seq_len=args.seq_len, batch_size=args.batch_size, passkey_fraction=args.passkey_fraction,
        passkey_min_len=args.passkey_min_len, recall_fraction=args.recall_fraction,
        recall_pairs=(args.recall_min_pairs, args.recall_max_pairs), passkey_ramp_steps=args.passkey_ramp_steps,
        copy_fraction=args.copy_fraction, pack_episodes=args.pack_episodes, copy_len=(args.copy_min_len, args.copy_max_len),
        seed=args.seed))
    val_windows = windows_of(val_docs, args.seq_len, args.eval_windows)
    if not val_windows:
        raise SystemExit(f"no validation book has {args.seq_len} tokens; lower --seq-len")

    model = build_model(args, tokenizer)
    if args.init_from is not None:
        init_weights(model, args.init_from)
    model = model.to(device)
    model.train()
    optimizer = make_optimizer(model, args, device)
    state = load_checkpoint(args.out, model, optimizer) or {"step": 0, "elapsed_s": 0.0, "log": {
        "step": [], "loss": [], "answer_loss": [], "lr": [], "val_step": [], "val_loss": []}}
    log, start = state["log"], state["step"]
    log.setdefault("answer_loss", [None] * len(log["step"]))  # checkpoints of runs before the answer loss
    n_params = sum(p.numel() for p in model.parameters())
    tokens_per_step = args.batch_size * args.seq_len
    print(f"teacher: {n_params / 1e6:.1f} M parameters, {corpus.num_tokens('train') / 1e6:.2f} M training tokens, "
          f"{args.steps} steps x {tokens_per_step} tokens on {device}"
          + (f", resuming at step {start}" if start else ""))

    t0 = time.perf_counter()
    budget_s = args.time_budget_min * 60
    stopped = False
    batches = prefetched_batches(mixture, start, args.steps, args.loader_workers, pin_memory=device.type == "cuda")
    bar = tqdm(range(start, args.steps), initial=start, total=args.steps, desc="train", disable=args.quiet)
    for step in bar:
        if time.perf_counter() - t0 > budget_s or (args.stop_after is not None and step - start >= args.stop_after):
            stopped = True
            break
        ids, answers = next(batches)
        loss, answer_loss = train_step(model, optimizer, ids, answers, step, args, device)
        log["step"].append(step)
        log["loss"].append(loss)
        log["answer_loss"].append(answer_loss)
        log["lr"].append(learning_rate(step, args))
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            log["val_step"].append(step + 1)
            log["val_loss"].append(validation_loss(model, val_windows, device, args.micro_batch))
            bar.write(f"step {step + 1}: loss {loss:.4f}, answer loss "
                      f"{'-' if answer_loss is None else f'{answer_loss:.4f}'}, validation loss {log['val_loss'][-1]:.4f}, "
                      f"{(step + 1 - start) * tokens_per_step / (time.perf_counter() - t0):,.0f} tokens/s")
        if (step + 1) % args.checkpoint_every == 0 and step + 1 < args.steps:
            save_checkpoint(args.out, model, optimizer, {"step": step + 1, "log": log,
                                                         "elapsed_s": state["elapsed_s"] + time.perf_counter() - t0})
        elapsed = time.perf_counter() - t0
        bar.set_postfix(loss=f"{loss:.3f}", answer=f"{answer_loss:.2f}" if answer_loss is not None else "-",
                        tok_s=f"{(step + 1 - start) * tokens_per_step / elapsed:,.0f}")
    bar.close()
    del batches  # stops the loader's workers
    done = len(log["step"]) and log["step"][-1] + 1 == args.steps
    run_s = time.perf_counter() - t0
    steps_run = (log["step"][-1] + 1 - start) if log["step"] else 0
    if stopped or not done:
        save_checkpoint(args.out, model, optimizer, {"step": start + steps_run, "log": log,
                                                     "elapsed_s": state["elapsed_s"] + run_s})
        print(f"stopped (time budget {args.time_budget_min} min / --stop-after) at step "
              f"{start + steps_run}/{args.steps}; "
              f"checkpoint in {args.out / 'checkpoint'}: rerun the same command to continue")
        return EXIT_INCOMPLETE

    save_final(model, tokenizer, args.out, args)
    del model, optimizer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    report = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "mixture": dataclasses.asdict(mixture.config),
        "parameters": n_params, "train_tokens_in_corpus": corpus.num_tokens("train"),
        "tokens_seen": args.steps * tokens_per_step,
        "train_seconds": state["elapsed_s"] + run_s,
        "tokens_per_second_last_invocation": steps_run * tokens_per_step / run_s if run_s else None,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "corpus_tokenizer_sha256": corpus.meta["tokenizer_sha256"],
        "split": corpus.meta["split"], "log": log,
    }
    report["final"] = final_evaluation(args.out, val_docs, args, device)
    (args.out / "training.json").write_text(json.dumps(report, indent=1) + "\n")
    plot_training_curve(log["step"], log["loss"], args.out / "training_curve.png", log["val_step"], log["val_loss"],
                        answer_loss=log["answer_loss"])
    remove_checkpoint(args.out)
    ppl = report["final"].get("perplexity", {}).get("overall", {}).get("ppl")
    pk = {r["length"]: r["accuracy"] for r in report["final"].get("passkey", {}).get("rows", [])}
    print(f"saved the teacher to {args.out}: validation perplexity {ppl:.2f}, passkey accuracy {pk}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

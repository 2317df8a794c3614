"""Memory planner: how many sequences of `max_model_len` tokens fit in the cache budget at a depth.

    bytes per sequence = (max_model_len + 1) * KV bytes per token at this depth + DSLA state bytes
    max concurrent sequences = min(max_num_seqs, (budget - scratch state row) // bytes per sequence)

KV bytes per token shrink as layers become DSLA while the state bytes grow by a fixed amount per
layer, so for long contexts a deeper replica admits more concurrent sequences.

The budget is `memory_budget_bytes` when given; on a GPU otherwise this process's share,

    gpu_memory_fraction * total - torch.cuda.memory_reserved() (this process's weights) - activation reserve

so that replicas sharing a GPU (fractional `num_gpus`, each given its fraction) each plan a cache in
their own share instead of subtracting one another's memory; on the CPU otherwise `CPU_DEFAULT_BUDGET`.
Memory outside PyTorch's allocator (the CUDA context, cuBLAS workspaces) is covered by the margin in
the activation reserve.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .cache import CacheSpec

CPU_DEFAULT_BUDGET = 2 * 1024**3
GPU_MARGIN_BYTES = 1024**3  # CUDA graphs, cuBLAS workspaces, allocator fragmentation


@dataclass(frozen=True)
class MemoryPlan:
    """The cache plan of one depth (exposed as `engine.plan`)."""

    depth: int
    max_model_len: int
    num_kv_layers: int
    num_dsla_layers: int
    kv_bytes_per_token: int
    state_bytes_per_seq: int
    bytes_per_seq: int
    budget_bytes: int
    max_seqs: int
    limited_by: str  # "memory" or "max_num_seqs"

    @property
    def cache_bytes(self) -> int:
        return self.max_seqs * self.bytes_per_seq + self.state_bytes_per_seq

    def to_dict(self) -> dict:
        return asdict(self) | {"cache_bytes": self.cache_bytes}

    def describe(self) -> str:
        gib = 1024**3
        return (f"depth {self.depth}: {self.num_kv_layers} softmax + {self.num_dsla_layers} DSLA layers, "
                f"{self.bytes_per_seq / gib:.3f} GiB per sequence of {self.max_model_len} tokens "
                f"(KV {self.kv_bytes_per_token} B/token, DSLA state {self.state_bytes_per_seq} B), "
                f"budget {self.budget_bytes / gib:.2f} GiB -> {self.max_seqs} sequences "
                f"(limited by {self.limited_by})")


def plan_memory(spec: CacheSpec, depth: int, budget_bytes: int, max_num_seqs: int) -> MemoryPlan:
    """Size the cache. Raises ValueError when not even one sequence fits, saying what it needs."""
    per_seq = spec.bytes_per_slot
    by_memory = max(0, (budget_bytes - spec.fixed_bytes) // per_seq)
    if by_memory < 1:
        raise ValueError(
            f"the cache budget of {budget_bytes / 1024**3:.3f} GiB does not fit one sequence of "
            f"max_model_len={spec.max_model_len} at depth {depth}: it needs "
            f"{(per_seq + spec.fixed_bytes) / 1024**3:.3f} GiB; lower max_model_len, raise "
            f"memory_budget_bytes / gpu_memory_fraction, or serve deeper")
    max_seqs = min(max_num_seqs, by_memory)
    return MemoryPlan(depth=depth, max_model_len=spec.max_model_len, num_kv_layers=len(spec.kv_layers),
                      num_dsla_layers=len(spec.dsla_layers), kv_bytes_per_token=spec.kv_bytes_per_token,
                      state_bytes_per_seq=spec.state_bytes_per_seq, bytes_per_seq=per_seq,
                      budget_bytes=int(budget_bytes), max_seqs=int(max_seqs),
                      limited_by="max_num_seqs" if max_num_seqs <= by_memory else "memory")


def activation_reserve_bytes(config, prefill_chunk_tokens: int, max_num_seqs: int) -> int:
    """A generous bound on the transient memory of one step (not cache), in bytes: per prefill token
    its hidden states, projections, fp32 gates and MLP activations (~(8 hidden + 4 ffn) * 4) and a
    bf16 logits row (prompt log-probabilities); per decode row (at most 1024 counted) the fp32
    logits and the sampler's copies; plus a fixed margin."""
    hidden, ffn, vocab = config.hidden_size, config.intermediate_size, config.vocab_size
    prefill = prefill_chunk_tokens * ((8 * hidden + 4 * ffn) * 4 + 2 * vocab)
    decode = min(max_num_seqs, 1024) * (16 * vocab + (8 * hidden + 4 * ffn) * 4)
    return prefill + decode + GPU_MARGIN_BYTES


def share_budget(total_bytes: int, reserved_bytes: int, gpu_memory_fraction: float, reserve_bytes: int) -> int:
    """The cache budget of one process that may use `gpu_memory_fraction` of a GPU of `total_bytes`:
    its share, minus what it has already allocated itself (`reserved_bytes`: its weights) and the
    activation reserve. Other processes on the same GPU (replicas with fractional `num_gpus`) do not
    count: each plans in its own share. Raises ValueError when nothing is left."""
    budget = int(gpu_memory_fraction * total_bytes) - reserved_bytes - reserve_bytes
    if budget <= 0:
        gib = 1024**3
        raise ValueError(
            f"no GPU memory left for the cache: this process's share, {gpu_memory_fraction:.2f} of "
            f"{total_bytes / gib:.1f} GiB, minus the {reserved_bytes / gib:.1f} GiB it already holds (weights) "
            f"and a {reserve_bytes / gib:.1f} GiB activation reserve, leaves nothing; raise gpu_memory_fraction, "
            f"lower prefill_chunk_tokens or max_num_seqs, or give memory_budget_bytes")
    return budget


def default_budget(device: torch.device, gpu_memory_fraction: float, reserve_bytes: int) -> int:
    """The cache budget when none is given (see the module docstring and `share_budget`)."""
    if device.type != "cuda":
        return CPU_DEFAULT_BUDGET
    total = torch.cuda.get_device_properties(device).total_memory
    return share_budget(total, torch.cuda.memory_reserved(device), gpu_memory_fraction, reserve_bytes)

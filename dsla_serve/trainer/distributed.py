"""The process group of a conversion run: one process per device, or a single process.

Launched by `torchrun` or the `deepspeed` launcher, RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR /
MASTER_PORT come from the environment. Run as a plain process (CLI, tests, the Ray actor), a world of
one is set up here (an in-memory store), since DeepSpeed always wants a process group. CPU runs use
gloo with DeepSpeed's CPU accelerator; GPU runs use NCCL.

DeepSpeed is imported here lazily, never at package import.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass

import torch


def resolve_device(spec: str) -> torch.device:
    """`auto` -> this process's GPU if CUDA is available, else the CPU; `cuda` -> the local rank's GPU."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cuda":
        spec = f"cuda:{local_rank}"
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {spec!r} requested but CUDA is not available on this machine")
    return torch.device(spec)


def _prepare_deepspeed(device: torch.device) -> None:
    """Prepare DeepSpeed for `device`: accelerator choice, log level, no unused JIT build, no noise.

    On the CPU accelerator DeepSpeed's communication backend compiles a shared-memory all-reduce
    extension (`deepspeed_shm_comm`, ~30 s with a C++ compiler, then cached) the moment the process
    group is created. It serves only `inference_all_reduce`, never training, so it is marked
    incompatible here and the training all-reduces go through gloo as usual.
    """
    if device.type == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        import deepspeed
    except ImportError as e:
        raise RuntimeError(f"training.optimizer is deepspeed but DeepSpeed cannot be imported ({e}): install it "
                           "(pip install deepspeed) or set training.optimizer: adamw") from None
    import deepspeed.ops
    from deepspeed.utils import logger

    logger.setLevel(logging.WARNING)
    # DeepSpeed 0.19.8's ZeRO all-gather calls a collective that torch 2.13 deprecates (still correct).
    warnings.filterwarnings("ignore", message=r".*all_gather_into_tensor. is deprecated", category=FutureWarning)
    if device.type == "cpu":
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


@dataclass(frozen=True)
class DistContext:
    """This process's place in the run and the collectives the trainer needs."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of `values` over all processes (float64 on the CPU for exact agreement)."""
        if self.world_size == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device())
        torch.distributed.all_reduce(t)
        return t.tolist()

    def broadcast_object(self, obj):
        """Rank 0's `obj` on every process."""
        if self.world_size == 1:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0, device=self._comm_device())
        return box[0]

    def _comm_device(self) -> torch.device:
        return self.device if torch.distributed.get_backend() == "nccl" else torch.device("cpu")


def init_distributed(device_spec: str = "auto", deepspeed: bool = True) -> DistContext:
    """Create (or join) the process group and return this process's DistContext.

    Under a launcher (RANK and WORLD_SIZE set) the group is joined through the environment. Otherwise
    a world of one is made on an in-memory store, without MASTER_* / RANK variables, so that processes
    this one starts (a torchrun, a test) do not inherit a launcher environment. Idempotent.
    `deepspeed=False` (the plain AdamW strategy) neither imports DeepSpeed nor makes a group for a
    world of one, which needs none.
    """
    launched = "WORLD_SIZE" in os.environ and "RANK" in os.environ
    os.environ.setdefault("LOCAL_RANK", "0")  # DeepSpeed's engine reads it even in a world of one
    device = resolve_device(device_spec)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # A group made by the caller (a test, user code under torchrun) is adopted as it is.
    backend = torch.distributed.get_backend() if torch.distributed.is_initialized() else \
        ("nccl" if device.type == "cuda" else "gloo")
    if not deepspeed:
        if launched and not torch.distributed.is_initialized():
            torch.distributed.init_process_group(backend)
        if not torch.distributed.is_initialized():
            return DistContext(rank=0, world_size=1, local_rank=int(os.environ["LOCAL_RANK"]), device=device)
        return DistContext(rank=torch.distributed.get_rank(), world_size=torch.distributed.get_world_size(),
                           local_rank=int(os.environ["LOCAL_RANK"]), device=device)
    _prepare_deepspeed(device)
    import deepspeed as ds

    if not launched and not torch.distributed.is_initialized():
        # an in-memory store: no port to pick, so no race with other processes for one
        torch.distributed.init_process_group(backend, store=torch.distributed.HashStore(), rank=0, world_size=1)
    ds.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False)
    return DistContext(rank=torch.distributed.get_rank(), world_size=torch.distributed.get_world_size(),
                       local_rank=int(os.environ["LOCAL_RANK"]), device=device)


def close_launched_group() -> None:
    """Destroy the process group of a launched run (torchrun: several processes) before the process
    exits: a gloo group left to interpreter shutdown can abort it ("terminate called without an
    active exception") after a successful run. A world of one made here is kept (it is reused)."""
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()

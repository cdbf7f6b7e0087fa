"""torch.distributed for stages launched by ``torchrun``: which process this is, and a
barrier. Outside torchrun (WORLD_SIZE unset) everything is a single process."""

from __future__ import annotations

import contextlib
import datetime
import os

import torch


def world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment."""
    return (
        int(os.environ.get("RANK", 0)),
        int(os.environ.get("WORLD_SIZE", 1)),
        int(os.environ.get("LOCAL_RANK", 0)),
    )


def init(device: torch.device) -> torch.device:
    """Join the process group when launched by torchrun (NCCL on GPU, gloo on CPU); return
    this process's device (one GPU per local rank)."""
    rank, size, local = world()
    if size == 1:
        return device
    import torch.distributed as dist

    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # processes with fewer (or no) shards wait at the barrier while the others generate:
        # far longer than the default 10-minute collective timeout
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo",
            rank=rank,
            world_size=size,
            timeout=datetime.timedelta(hours=48),
        )
    return device


@contextlib.contextmanager
def process_group(device: torch.device):
    """The set-up and tear-down of a torchrun stage: ``init`` on entry (yielding this
    process's device), ``finish`` on exit however the stage ends."""
    device = init(device)
    try:
        yield device
    finally:
        finish()


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_finite(value: torch.Tensor) -> bool:
    """Whether ``value`` is finite in every process (so all of them stop together)."""
    ok = torch.isfinite(value.detach()).all().float().reshape(1)
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item())


def finish() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

"""torchrun support shared by training and generation: who this process is, its device, the process group.

One process runs as a world of size 1 with the same code path. Under ``torchrun`` the
environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``...) selects the rank.
Devices are named alike everywhere: ``auto``, ``cpu``, ``cuda`` (this rank's GPU) or ``cuda:N``.
Training's collectives (DDP, averaged losses) are in ``medsynth.training.distributed``.

Example:
    >>> ctx = init_distributed("cpu")
    >>> ctx.rank, ctx.world_size, ctx.device.type
    (0, 1, 'cpu')
    >>> shutdown(ctx)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist

from medsynth.errors import InputError


@dataclass
class DistContext:
    """This process's place in a ``torchrun`` job (rank 0 of 1 without one) and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    initialised_here: bool = False  # this process joined the group, so it leaves it (``shutdown``)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """The device a name means: ``auto`` (a GPU if there is one), ``cpu``, ``cuda`` or ``cuda:N``.

    Under torchrun ``cuda`` means this rank's GPU (``LOCAL_RANK``, modulo the GPUs present).

    Raises:
        InputError: another name, or a CUDA device on a machine without one.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda" or re.fullmatch(r"cuda:\d+", device):
        if not torch.cuda.is_available():
            raise InputError(f"--device {device}: no CUDA GPU is available here; use --device cpu")
        if device == "cuda":
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device(device)
    raise InputError(f"--device {device!r}: expected cpu, cuda or cuda:N")


def init_distributed(
    device: str = "auto", *, backend: str | None = None, timeout: timedelta | None = None
) -> DistContext:
    """Join the torchrun process group if the environment asks for one; else a world of one.

    Args:
        device: a device name (see ``resolve_device``); checked before any group is joined.
        backend: the process group's backend; default NCCL on a GPU, gloo on the CPU.
        timeout: how long collectives wait for the slowest rank (default: torch's).

    Raises:
        InputError: an unknown device name, or CUDA asked for where there is none.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    # Outside a torchrun job, stray RANK / LOCAL_RANK variables mean nothing.
    rank = int(os.environ.get("RANK", "0")) if world > 1 else 0
    local_rank = int(os.environ.get("LOCAL_RANK", "0")) if world > 1 else 0
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    ctx = DistContext(rank, world, local_rank, dev)
    if ctx.distributed and not dist.is_initialized():
        dist.init_process_group(backend=backend or ("nccl" if dev.type == "cuda" else "gloo"), timeout=timeout)
        ctx.initialised_here = True
    return ctx


def shutdown(ctx: DistContext) -> None:
    """Leave the process group if ``init_distributed`` joined it."""
    if ctx.initialised_here and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    """Wait until every rank gets here (a no-op in a world of one)."""
    if ctx.distributed:
        dist.barrier()

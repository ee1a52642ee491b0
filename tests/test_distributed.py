"""medsynth.distributed: one device vocabulary and one world-of-one context for training and generation."""

from __future__ import annotations

import pytest
import torch

from medsynth.distributed import DistContext, barrier, init_distributed, resolve_device, shutdown
from medsynth.errors import InputError


def test_device_names():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    for bad in ("tpu", "cuda:x", "CPU", ""):
        with pytest.raises(InputError, match=r"expected cpu, cuda or cuda:N"):
            resolve_device(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_cuda_without_a_gpu_says_so():
    for name in ("cuda", "cuda:1"):
        with pytest.raises(InputError, match=rf"--device {name}: no CUDA GPU is available here; use --device cpu"):
            resolve_device(name)


def test_without_torchrun_the_world_is_one_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("RANK", "3")  # stray variables outside a torchrun job mean nothing
    ctx = init_distributed("cpu")
    assert ctx == DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    assert ctx.is_main and not ctx.distributed
    barrier(ctx)  # no process group: nothing to wait for
    shutdown(ctx)

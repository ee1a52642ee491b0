"""Training's side of torchrun: DDP wrapping, collectives on losses, per-rank batches, balanced classes.

Who this process is and its device (``DistContext``, ``init_distributed``, ``barrier``) are
``medsynth.distributed``, shared with generation. Each rank draws its batch from
``torch.utils.data.DistributedSampler`` (disjoint shards of one seeded permutation per epoch).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from medsynth.conditions import group_key
from medsynth.distributed import DistContext

__all__ = ["BatchOrder", "DistContext", "any_rank", "balanced_items", "class_keys", "mean_across_ranks", "wrap"]


def wrap(module: nn.Module, ctx: DistContext) -> nn.Module:
    """DDP-wrap ``module`` when distributed (gradients averaged across ranks); unchanged otherwise."""
    if not ctx.distributed:
        return module
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


def mean_across_ranks(value: float, ctx: DistContext) -> float:
    """The average of a float over ranks (validation losses)."""
    if not ctx.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return float(t.item()) / ctx.world_size


def any_rank(flag: bool, ctx: DistContext) -> bool:
    """True on every rank if it is True on any (a stop signal)."""
    if not ctx.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=ctx.device)
    dist.all_reduce(t)
    return bool(t.item() > 0)


class BatchOrder:
    """Which dataset indices micro-batch ``k`` of optimizer step ``step`` uses on this rank.

    A pure function of (seed, step, k, rank): no iterator state, so a resumed run sees exactly
    the batches an uninterrupted run would. Each epoch is one ``DistributedSampler`` permutation.
    """

    def __init__(
        self, n: int, batch_size: int, grad_accum: int, ctx: DistContext, seed: int, items: Sequence[int] | None = None
    ) -> None:
        # ``items``: the dataset indices an epoch walks through (repeats allowed, see
        # ``balanced_items``); default each index once.
        self.items = list(range(n)) if items is None else [int(i) for i in items]
        n = len(self.items)
        if n < batch_size * ctx.world_size:
            raise ValueError(f"{n} training items are fewer than one batch ({batch_size} x {ctx.world_size} ranks)")
        # DistributedSampler takes only len() of its dataset, so a range stands in for one.
        self.sampler: DistributedSampler[int] = DistributedSampler(
            range(n),  # type: ignore[arg-type]
            num_replicas=ctx.world_size,
            rank=ctx.rank,
            shuffle=True,
            seed=seed,
            drop_last=True,
        )
        self.batch_size = batch_size
        self.grad_accum = grad_accum
        self.per_epoch = len(self.sampler) // batch_size
        self._epoch = -1
        self._indices: list[int] = []

    def __call__(self, step: int, k: int) -> list[int]:
        g = step * self.grad_accum + k
        epoch, pos = divmod(g, self.per_epoch)
        if epoch != self._epoch:
            self.sampler.set_epoch(epoch)
            self._indices = list(iter(self.sampler))
            self._epoch = epoch
        return [self.items[i] for i in self._indices[pos * self.batch_size : (pos + 1) * self.batch_size]]


def class_keys(pathologies: Sequence[str | Sequence[str]], modalities: Sequence[str]) -> list[str]:
    """The group key (``nodule/CT``, see ``medsynth.conditions``) of each item, for ``balanced_items``."""
    return [group_key(p, m) for p, m in zip(pathologies, modalities, strict=True)]


def balanced_items(classes: Sequence[str]) -> list[int]:
    """Indices in which every class appears as often as the largest one.

    Each class's indices are cycled up to the largest class's count, so an epoch holds
    ``n_classes * max_count`` items and every scan of a class is seen equally often.

    Example:
        >>> balanced_items(["a", "a", "a", "b"])
        [0, 1, 2, 3, 3, 3]
    """
    by_class: dict[str, list[int]] = {}
    for i, c in enumerate(classes):
        by_class.setdefault(c, []).append(i)
    most = max((len(v) for v in by_class.values()), default=0)
    return sorted(idx[j % len(idx)] for idx in by_class.values() for j in range(most))

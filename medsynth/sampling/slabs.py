"""The machinery of ``medsynth.sampling.tiling``: MONAI AutoencoderKL blocks as slab operations.

Each operation knows which input rows (along the last spatial axis) it needs for a range of output
rows and how to compute them from a slab, so a chain of them gives the whole network's result
slab by slab; ``run_plan`` executes a ``Plan`` (which tensors stay whole, which GroupNorm
statistics each pass gathers) made by ``medsynth.sampling.tiling``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.blocks.upsample import UpSample
from monai.networks.nets.autoencoderkl import AEKLDownsample, AEKLResBlock, AutoencoderKL
from torch import nn

from medsynth.sampling.memory import format_bytes

# --- the operations a slab goes through -----------------------------------------------------


class Conv:
    """A zero-padded convolution; "rows" are positions along the last spatial axis (the slab axis)."""

    def __init__(self, conv: nn.Module, pads: list[tuple[int, int]] | None = None) -> None:
        assert isinstance(conv, (nn.Conv2d, nn.Conv3d))
        self.conv = conv
        self.k, self.s = list(conv.kernel_size), list(conv.stride)
        own = [(int(p), int(p)) for p in conv.padding]
        self.pads = pads if pads is not None else own
        # Stride 1, symmetric "same" padding: run the module as is and crop the rows next to an
        # inner slab edge (there it padded with zeros instead of the neighbour's rows).
        self.fast = (
            pads is None
            and all(s == 1 for s in self.s)
            and all(k == 2 * p + 1 for k, (p, _) in zip(self.k, own, strict=True))
        )
        self.cin, self.cout = conv.in_channels, conv.out_channels

    @staticmethod
    def supports(conv: object) -> bool:
        return (
            isinstance(conv, (nn.Conv2d, nn.Conv3d))
            and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str)
            and all(d == 1 for d in conv.dilation)
            and conv.groups == 1
        )

    def size(self, n: list[int]) -> list[int]:
        return [(m + lo + hi - k) // s + 1 for m, (lo, hi), k, s in zip(n, self.pads, self.k, self.s, strict=True)]

    def need(self, a: int, b: int, n: int) -> tuple[int, int]:
        s, k, pl = self.s[-1], self.k[-1], self.pads[-1][0]
        return max(0, s * a - pl), min(n, s * (b - 1) - pl + k)

    def rows_made(self, lo: int, hi: int) -> int:
        return hi - lo if self.fast else max(0, (hi - lo - self.k[-1]) // self.s[-1] + 1)

    def __call__(self, x: torch.Tensor, lo: int, hi: int, n: int) -> tuple[torch.Tensor, int, int]:
        if self.fast:
            y = self.conv(x)
            p = self.pads[-1][0]
            start, end = (0 if lo == 0 else p), (hi - lo if hi == n else hi - lo - p)
            return y[..., start:end], lo + start, lo + end
        s, pl, ph = self.s[-1], self.pads[-1][0], self.pads[-1][1]
        padl, padh = (pl if lo == 0 else 0), (ph if hi == n else 0)
        first = lo - padl
        trim = (-(first + pl)) % s  # align the first window with the whole convolution's grid
        x = x[..., trim:]
        flat: list[int] = []
        for plo, phi in reversed([*self.pads[:-1], (padl, padh)]):
            flat += [plo, phi]
        y = F.conv3d if x.dim() == 5 else F.conv2d
        out = y(F.pad(x, flat), self.conv.weight, self.conv.bias, stride=self.s)
        i0 = (first + trim + pl) // s
        return out, i0, i0 + out.shape[-1]

    def macs(self, voxels_out: int) -> float:
        return float(voxels_out) * self.cin * self.cout * math.prod(self.k)


class Up:
    """Nearest-neighbour x2 upsampling, or a transposed convolution with kernel = stride = 2."""

    def __init__(self, module: nn.Module, channels: int) -> None:
        self.module, self.cin, self.cout = module, channels, channels
        if isinstance(module, (nn.ConvTranspose2d, nn.ConvTranspose3d)):
            self.cin, self.cout = module.in_channels, module.out_channels

    @staticmethod
    def supports(module: object) -> bool:
        if isinstance(module, nn.Upsample):
            f = module.scale_factor
            factors = list(f) if isinstance(f, tuple) else [f]
            return (
                module.mode == "nearest"
                and module.size is None
                and all(v is not None and float(v) == 2.0 for v in factors)
            )
        if isinstance(module, (nn.ConvTranspose2d, nn.ConvTranspose3d)):
            return (
                all(k == 2 for k in module.kernel_size)
                and all(s == 2 for s in module.stride)
                and all(p == 0 for p in module.padding)
                and all(p == 0 for p in module.output_padding)
                and all(d == 1 for d in module.dilation)
            )
        return False

    def size(self, n: list[int]) -> list[int]:
        return [2 * m for m in n]

    def need(self, a: int, b: int, n: int) -> tuple[int, int]:
        return a // 2, (b + 1) // 2

    def __call__(self, x: torch.Tensor, lo: int, hi: int, n: int) -> tuple[torch.Tensor, int, int]:
        return self.module(x), 2 * lo, 2 * hi

    def macs(self, voxels_out: int) -> float:
        return float(voxels_out) * self.cout * (self.cin if not isinstance(self.module, nn.Upsample) else 1)


class Norm:
    """GroupNorm (then SiLU inside a residual block) with statistics of the whole tensor."""

    def __init__(self, gn: nn.GroupNorm, silu: bool) -> None:
        self.gn, self.silu, self.cin, self.cout = gn, silu, gn.num_channels, gn.num_channels
        self.scale: torch.Tensor | None = None
        self.shift: torch.Tensor | None = None

    def size(self, n: list[int]) -> list[int]:
        return list(n)

    def need(self, a: int, b: int, n: int) -> tuple[int, int]:
        return a, b

    def __call__(self, x: torch.Tensor, lo: int, hi: int, n: int) -> tuple[torch.Tensor, int, int]:
        assert self.scale is not None and self.shift is not None, "statistics are computed before use"
        view = (1, -1) + (1,) * (x.dim() - 2)
        y = x * self.scale.view(view)
        y.add_(self.shift.view(view))
        return (F.silu(y, inplace=True) if self.silu else y), lo, hi

    def macs(self, voxels_out: int) -> float:
        return 3.0 * voxels_out * self.cout


class Save:
    """Keep the block input for the residual connection."""

    def size(self, n: list[int]) -> list[int]:
        return list(n)


class Add:
    """``shortcut(saved block input) + h``: the end of an ``AEKLResBlock``."""

    def __init__(self, shortcut: Conv | None) -> None:
        self.shortcut = shortcut

    def size(self, n: list[int]) -> list[int]:
        return list(n)


class Whole:
    """A block run on the whole tensor (attention, or anything this module does not slab)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def size(self, n: list[int]) -> list[int]:
        return list(n)  # attention keeps the shape


Op = Conv | Up | Norm | Save | Add | Whole


def _conv(module: object) -> nn.Module | None:
    """The torch convolution of a MONAI ``Convolution`` (or a bare one) when it can be slabbed."""
    conv = getattr(module, "conv", None) if isinstance(module, Convolution) else module
    return conv if isinstance(conv, nn.Module) and Conv.supports(conv) else None


def _blocks(module: nn.Module, name: str) -> list[nn.Module]:
    blocks = getattr(module, name)
    assert isinstance(blocks, nn.Module)
    return list(blocks.children())


def block_ops(block: nn.Module) -> list[Op]:
    """One MONAI AutoencoderKL block as slab operations (``[Whole]`` when it cannot be slabbed)."""
    if isinstance(block, Convolution) and (conv := _conv(block)) is not None:
        return [Conv(conv)]
    if isinstance(block, nn.GroupNorm):  # the last norm before the output conv: no activation
        return [Norm(block, silu=False)]
    if isinstance(block, AEKLDownsample) and (conv := _conv(block.conv)) is not None:
        d = len(Conv(conv).k)
        return [Conv(conv, pads=[(0, 1)] * d)]  # AsymmetricPad, then an unpadded conv
    if isinstance(block, AEKLResBlock):
        c1, c2 = _conv(block.conv1), _conv(block.conv2)
        nin = block.nin_shortcut
        short = None if isinstance(nin, nn.Identity) else _conv(nin)
        norms = (block.norm1, block.norm2)
        ok = all(isinstance(n, nn.GroupNorm) for n in norms) and (short is not None or isinstance(nin, nn.Identity))
        if c1 is not None and c2 is not None and ok:
            # AEKLResBlock.forward: x + conv2(silu(norm2(conv1(silu(norm1(x)))))), x through nin_shortcut.
            return [
                Save(),
                Norm(norms[0], silu=True),
                Conv(c1),
                Norm(norms[1], silu=True),
                Conv(c2),
                Add(None if short is None else Conv(short)),
            ]
    if isinstance(block, UpSample):
        ops: list[Op] = []
        channels = 0
        for name, child in block.named_children():
            conv = _conv(child)
            if name in ("preconv", "postconv") and conv is not None:
                ops.append(Conv(conv))
                channels = ops[-1].cout  # type: ignore[union-attr]
            elif name in ("upsample_non_trainable", "deconv") and Up.supports(child):
                ops.append(Up(child, channels))
            else:
                return [Whole(block)]
        return ops
    return [Whole(block)]


@dataclass
class Chain:
    """The operations of a network, the shapes between them and where its blocks begin."""

    ops: list[Op]
    boundaries: set[int]
    shapes: list[tuple[int, ...]] = field(default_factory=list)  # (C, *spatial) at each position

    @classmethod
    def of(cls, blocks: list[nn.Module], first: list[Op], shape: tuple[int, ...]) -> Chain:
        ops, boundaries = list(first), {0, len(first)}
        for block in blocks:
            ops += block_ops(block)
            boundaries.add(len(ops))
        chain = cls(ops, boundaries)
        c, spatial = shape[0], list(shape[1:])
        chain.shapes = [(c, *spatial)]
        for op in ops:
            spatial = op.size(spatial)
            if isinstance(op, (Conv, Up, Norm)):
                c = op.cout
            elif isinstance(op, Add) and op.shortcut is not None:
                c = op.shortcut.cout
            chain.shapes.append((c, *spatial))
        return chain

    @property
    def min_rows(self) -> int:
        return min(s[-1] for s in self.shapes)

    def nbytes(self, pos: int, rows: int | None = None, itemsize: int = 4) -> int:
        c, *spatial = self.shapes[pos]
        return c * (spatial[-1] if rows is None else rows) * math.prod(spatial[:-1]) * itemsize

    def slabs(self, pos: int, window: int) -> list[tuple[int, int]]:
        """The rows each slab is responsible for at ``pos``: ``window`` latent rows, scaled."""
        n = self.shapes[pos][-1]
        step = max(1, math.ceil(window * n / self.min_rows))
        return [(a, min(n, a + step)) for a in range(0, n, step)]

    def need(self, start: int, end: int, a: int, b: int) -> list[tuple[int, int]]:
        """Row ranges at positions start..end that make rows [a, b) at ``end``."""
        ranges = [(a, b)]
        skips: list[tuple[int, int]] = []
        for pos in range(end - 1, start - 1, -1):
            op, (lo, hi) = self.ops[pos], ranges[-1]
            if isinstance(op, (Conv, Up, Norm)):
                lo, hi = op.need(lo, hi, self.shapes[pos][-1])
            elif isinstance(op, Add):
                skips.append((lo, hi))
            elif isinstance(op, Save) and skips:
                slo, shi = skips.pop()
                lo, hi = min(lo, slo), max(hi, shi)
            ranges.append((lo, hi))
        return ranges[::-1]


def decoder_chain(ae: AutoencoderKL, latent_shape: tuple[int, ...]) -> Chain:
    """``AutoencoderKL.decode``: ``post_quant_conv`` (1x1), then the decoder's blocks."""
    post = _conv(ae.post_quant_conv)
    assert post is not None
    return Chain.of(_blocks(ae.decoder, "blocks"), [Conv(post)], latent_shape)


def encoder_chain(ae: AutoencoderKL, image_shape: tuple[int, ...]) -> Chain:
    """The encoder's blocks (``AutoencoderKL.encode`` then applies the 1x1 ``quant_conv_*``)."""
    return Chain.of(_blocks(ae.encoder, "blocks"), [], image_shape)


# --- plans and their execution ---------------------------------------------------------------


@dataclass(frozen=True)
class Pass:
    """One sweep over the slabs: from the kept tensor at ``start`` to position ``end``."""

    start: int
    end: int
    stats: bool  # ``end`` is a GroupNorm's input: accumulate its statistics
    keep: bool  # keep the tensor at ``end`` whole (the next anchor, or the result)
    whole: bool = False  # a block run on the whole tensor
    peak_bytes: int = 0
    macs: float = 0.0


@dataclass(frozen=True)
class Plan:
    """How one item is decoded (or encoded): ``window`` latent rows per slab, or whole."""

    window: int | None  # None: the network's own forward, whole
    passes: tuple[Pass, ...]
    peak_bytes: int  # estimated working memory of one item, plus ``reserved``
    macs: float
    budget: int
    batched: bool = False  # whole, all items in one call (else one item at a time)

    def describe(self) -> str:
        how = "whole" if self.window is None else f"slabs of {self.window} latent rows, {len(self.passes)} passes"
        return f"{how}; estimated peak {format_bytes(self.peak_bytes)} of a {format_bytes(self.budget)} budget"


# --- running a plan ------------------------------------------------------------------------


class Moments:
    """Per-channel count, mean and centred sum of squares, merged slab by slab in float64."""

    def __init__(self, channels: int, device: torch.device) -> None:
        self.n = 0
        self.mean = torch.zeros(channels, dtype=torch.float64, device=device)
        self.m2 = torch.zeros(channels, dtype=torch.float64, device=device)

    def add(self, x: torch.Tensor) -> None:
        dims = [0, *range(2, x.dim())]
        nb = x.numel() // x.shape[1]
        mb = x.sum(dim=dims, dtype=torch.float64) / nb
        d = x - mb.to(x.dtype).view(1, -1, *[1] * (x.dim() - 2))
        m2b = d.mul_(d).sum(dim=dims, dtype=torch.float64)
        delta, n = mb - self.mean, self.n + nb
        self.mean += delta * (nb / n)
        self.m2 += m2b + delta * delta * (self.n * nb / n)
        self.n = n

    def finish(self, norm: Norm, dtype: torch.dtype) -> None:
        gn = norm.gn
        g = gn.num_groups
        mean_c, m2_c = self.mean.view(g, -1), self.m2.view(g, -1)
        mean_g = mean_c.mean(dim=1, keepdim=True)
        m2_g = (m2_c + self.n * (mean_c - mean_g) ** 2).sum(dim=1, keepdim=True)
        var_g = m2_g / (self.n * mean_c.shape[1])  # biased, as GroupNorm
        rstd = (var_g + gn.eps).rsqrt().expand_as(mean_c).reshape(-1)
        mean = mean_g.expand_as(mean_c).reshape(-1)
        w = gn.weight.double() if gn.weight is not None else torch.ones_like(rstd)
        b = gn.bias.double() if gn.bias is not None else torch.zeros_like(rstd)
        norm.scale = (w * rstd).to(dtype)
        norm.shift = (b - mean * w * rstd).to(dtype)


def forward_slab(chain: Chain, anchor: torch.Tensor, start: int, end: int, a: int, b: int) -> torch.Tensor:
    ranges = chain.need(start, end, a, b)
    lo, hi = ranges[0]
    x = anchor[..., lo:hi]
    saved: list[tuple[torch.Tensor, int, int]] = []
    for i, pos in enumerate(range(start, end)):
        op, n = chain.ops[pos], chain.shapes[pos][-1]
        want = ranges[i + 1]
        if isinstance(op, Save):
            saved.append((x, lo, hi))
            continue
        if isinstance(op, Add):
            s, slo, _ = saved.pop()
            skip = s[..., lo - slo : hi - slo]
            if op.shortcut is not None:
                skip = op.shortcut.conv(skip)  # 1x1: no halo
            x = x + skip
            continue
        assert isinstance(op, (Conv, Up, Norm))
        x, lo, hi = op(x, lo, hi, n)
        assert lo <= want[0] and hi >= want[1], (pos, (lo, hi), want)
        x, lo, hi = x[..., want[0] - lo : want[1] - lo], want[0], want[1]
    return x


def run_plan(chain: Chain, plan: Plan, x: torch.Tensor) -> torch.Tensor:
    """One item ``(1, C, *spatial)`` through ``chain`` by ``plan``."""
    anchor = x
    for p in plan.passes:
        if p.whole:
            op = chain.ops[p.start]
            assert isinstance(op, Whole)
            anchor = op.module(anchor)
            continue
        assert plan.window is not None, "a whole plan runs the network's own forward"
        target = anchor.new_empty((1, *chain.shapes[p.end])) if p.keep else None
        op_end = chain.ops[p.end] if p.end < len(chain.ops) else None
        moments = Moments(chain.shapes[p.end][0], x.device) if p.stats else None
        for a, b in chain.slabs(p.end, plan.window):
            y = forward_slab(chain, anchor, p.start, p.end, a, b)
            if moments is not None:
                moments.add(y)
            if target is not None:
                target[..., a:b] = y
            del y
        if moments is not None:
            assert isinstance(op_end, Norm)
            moments.finish(op_end, x.dtype)
        if target is not None:
            anchor = target
    return anchor


def items(x: torch.Tensor) -> Iterator[torch.Tensor]:
    for j in range(x.shape[0]):
        yield x[j : j + 1]

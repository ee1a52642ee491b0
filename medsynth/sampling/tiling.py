"""Seamless, memory-bounded decoding and encoding: MONAI's ``AutoencoderKL`` run slab by slab.

The decoder works at full image resolution with tens of channels (a 256^3 x 16 float32 map is
1 GB), so a whole decode of a clinical volume holds several gigabytes. Cutting the latent into
windows and decoding each one alone (MONAI's ``SlidingWindowInferer``) bounds the memory but
gives each window its own GroupNorm statistics: tens of HU of seams. Here the network is run
layer by layer on slabs along the last spatial axis, so the result equals a whole decode
(the last axis, not the first: PyTorch's CPU convolution picks oneDNN only when
N x C x D x H is large, and falls back to an im2col path that needs 27x the input's memory for
slabs that are thin in D; thin in W keeps oneDNN):

- every convolution gets its input slab with the halo it needs (one row per side for a 3x3
  kernel), from the real neighbours inside the volume and zeros at its true border, exactly as
  the whole convolution pads;
- every GroupNorm gets the statistics of the *whole* tensor: a pass streams all slabs up to
  that norm's input and accumulates per-channel count, mean and centred sum of squares in
  float64 (Chan et al.'s pairwise update, steadier than raw sums of squares), then the later
  passes apply ``weight * (x - mean) / sqrt(var + eps) + bias`` slab by slab;
- a pass starts from the last tensor kept whole (an "anchor") and recomputes what lies between;
  a block boundary is kept whole when it fits the memory budget, so low-resolution levels are
  computed once and only the full-resolution levels, where memory is short, are recomputed.

MONAI's own ``MaisiGroupNorm3D`` and split convolutions (``monai.apps.generation.maisi``) do
the same for MAISI's autoencoder, but its modules have other parameter names and layouts and
cannot load an ``AutoencoderKL``'s weights, and they still hold whole full-resolution tensors;
this module reuses the MONAI modules' own weights (``Convolution.conv``, ``nn.GroupNorm``,
``UpSample``) and re-runs only the order of operations of ``AEKLResBlock``. Blocks it does not
know (attention, which is global by nature) run whole on a kept tensor; medsynth's autoencoders
have them at the latent resolution only, where the tensor is small.

The slab thickness (``window``, in latent rows) is chosen from a memory budget
(``medsynth.sampling.memory``) by an estimate of each pass's working set, or set by hand.
"""

from __future__ import annotations

import math
from functools import cache

import torch

from medsynth.errors import InputError
from medsynth.models.ldm import LatentDiffusionModel
from medsynth.sampling.memory import bound_allocator_caching, format_bytes, memory_budget, parse_memory
from medsynth.sampling.slabs import (
    Add,
    Chain,
    Conv,
    Norm,
    Pass,
    Plan,
    Save,
    Up,
    Whole,
    decoder_chain,
    encoder_chain,
    items,
    run_plan,
)

# The estimate counts, per operation, its input and output slabs plus the same again for the
# convolution backend's scratch and layout copies (oneDNN reorders to blocked formats); the
# benchmark (benchmarks/bench_decode.py) checks estimate against measured peak.
_CONV_SCRATCH = 1.0


def check_window(window: object) -> int | None:
    """``window`` as a positive int (latent rows per slab) or None (chosen from the budget)."""
    if window is None:
        return None
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise InputError(
            f"decode_window={window!r}: expected a positive number of latent rows per slab (int), "
            "or None to choose it from max_memory"
        )
    return window


# --- planning: which tensors stay whole, and the working set of each pass ----------------------


def _sweep_cost(chain: Chain, start: int, end: int, window: int | None, itemsize: int) -> tuple[int, float]:
    """(working bytes, multiply-adds) of streaming ``start`` -> ``end`` in slabs (None: whole)."""
    slabs = [(0, chain.shapes[end][-1])] if window is None else chain.slabs(end, window)
    peak, macs = 0, 0.0
    for a, b in slabs:
        ranges = chain.need(start, end, a, b)
        saved = 0
        for i, pos in enumerate(range(start, end)):
            op = chain.ops[pos]
            (lo, hi), (olo, ohi) = ranges[i], ranges[i + 1]
            b_in = chain.nbytes(pos, hi - lo, itemsize)
            rows_out = op.rows_made(lo, hi) if isinstance(op, Conv) else ohi - olo
            b_out = chain.nbytes(pos + 1, max(rows_out, ohi - olo), itemsize)
            voxels = (ohi - olo) * math.prod(chain.shapes[pos + 1][1:-1])
            here = b_in + b_out + saved
            if isinstance(op, Conv):
                here += int(_CONV_SCRATCH * (b_in + b_out)) + (0 if op.fast else b_in)
                macs += op.macs(voxels)
            elif isinstance(op, (Up, Norm)):
                macs += op.macs(voxels)
            elif isinstance(op, Save):
                saved = b_in
            elif isinstance(op, Add):
                here += b_out
                if op.shortcut is not None:
                    here += int(_CONV_SCRATCH * 2 * b_out)
                    macs += op.shortcut.macs(voxels)
                saved = 0
            peak = max(peak, here)
        peak = max(peak, 2 * chain.nbytes(end, b - a, itemsize))  # the statistics' centred copy
    return peak, macs


def _plan(
    chain: Chain,
    window: int | None,
    budget: int,
    reserved: int,
    itemsize: int,
    strict: bool = True,
    keep_share: float = 1.0,
) -> Plan | None:
    """The greedy plan for ``window`` (None: whole), or None when ``strict`` and it exceeds ``budget``.

    Not ``strict``: a hand-set window; passes that do not fit run anyway, keeping no more whole
    than they must. A tensor is kept whole when the pass fits ``keep_share`` of the budget: the
    greedy choice has no look-ahead, and keeping too much early can leave later passes short.
    """
    n = len(chain.ops)
    if window is None:
        peak, macs = _sweep_cost(chain, 0, n, None, itemsize)
        total = peak + reserved + chain.nbytes(0, None, itemsize)
        return Plan(None, (Pass(0, n, False, True, peak_bytes=total, macs=macs),), total, macs, budget)

    @cache
    def cost(start: int, end: int) -> tuple[int, float]:
        return _sweep_cost(chain, start, end, window, itemsize)

    passes: list[Pass] = []
    anchor, known = 0, set()
    while anchor < n:
        held = reserved + chain.nbytes(anchor, None, itemsize)
        if isinstance(chain.ops[anchor], Whole):
            passes.append(Pass(anchor, anchor + 1, False, True, whole=True, peak_bytes=held * 4))
            anchor += 1
            continue
        limit = next(
            p
            for p in range(anchor + 1, n + 1)
            if p == n or isinstance(chain.ops[p], Whole) or (isinstance(chain.ops[p], Norm) and p not in known)
        )
        stats = limit < n and isinstance(chain.ops[limit], Norm)
        must_keep = not stats  # the result, or the input of a whole block (both block boundaries)
        # Keep the farthest block boundary up to ``limit`` that fits: later passes start there.
        for end in sorted((b for b in chain.boundaries if anchor < b <= limit), reverse=True):
            work, macs = cost(anchor, end)
            total = held + work + chain.nbytes(end, None, itemsize)
            if total <= keep_share * budget or (end == limit and must_keep and total <= budget):
                passes.append(Pass(anchor, end, stats and end == limit, True, peak_bytes=total, macs=macs))
                break
        else:
            work, macs = cost(anchor, limit)
            total = held + work + (chain.nbytes(limit, None, itemsize) if must_keep else 0)
            if strict and (must_keep or total > budget):
                return None
            passes.append(Pass(anchor, limit, stats, must_keep, peak_bytes=total, macs=macs))
        last = passes[-1]
        if last.stats:
            known.add(last.end)
        if last.keep:
            anchor = last.end
    peak = max(p.peak_bytes for p in passes)
    return Plan(window, tuple(passes), peak, sum(p.macs for p in passes), budget)


_KEEP_SHARES = (1.0, 0.75, 0.5, 0.25, 0.0)


def _choose(chain: Chain, window: int | None, budget: int, batch: int, itemsize: int, what: str) -> Plan:
    """The plan for ``batch`` items: whole when it fits (all items at once if they fit), else slabs."""
    rows = chain.min_rows
    reserved = batch * chain.nbytes(len(chain.ops), None, itemsize)  # the finished items' outputs
    whole = _plan(chain, None, budget, reserved, itemsize)
    assert whole is not None
    batched = _plan(chain, None, budget, 0, itemsize)
    assert batched is not None
    if window is not None:
        if window >= rows:  # one slab: the network's own forward
            return whole
        found = [
            p for share in _KEEP_SHARES if (p := _plan(chain, window, budget, reserved, itemsize, keep_share=share))
        ]
        plan = min(found, key=lambda p: p.macs) if found else None
        # A hand-set window runs even where the estimate exceeds the budget: the user chose it.
        return plan or _plan(chain, window, budget, reserved, itemsize, strict=False)  # type: ignore[return-value]
    if batch * batched.peak_bytes <= budget:
        return Plan(None, batched.passes, batch * batched.peak_bytes, batch * batched.macs, budget, batched=True)
    if whole.peak_bytes <= budget:
        return whole
    plans = [
        p
        for w in range(rows - 1, 0, -1)
        for share in _KEEP_SHARES
        if (p := _plan(chain, w, budget, reserved, itemsize, keep_share=share)) is not None
    ]
    if not plans:
        smallest = _plan(chain, 1, 0, reserved, itemsize, strict=False)
        assert smallest is not None
        raise InputError(
            f"max_memory={format_bytes(budget)}: {what} of shape {list(chain.shapes[0][1:])} needs about "
            f"{format_bytes(smallest.peak_bytes)} even in slabs of one latent row; give a larger max_memory"
        )
    return min(plans, key=lambda p: (p.macs, -(p.window or 0)))


# --- public API ----------------------------------------------------------------------------


def _budget(max_memory: object, device: torch.device) -> int:
    return memory_budget(parse_memory(max_memory), device)


def decode_plan(
    model: LatentDiffusionModel,
    latent_shape: tuple[int, ...] | None = None,
    *,
    window: int | None = None,
    max_memory: int | str | None = None,
    batch: int = 1,
) -> Plan:
    """How ``decode_tiled`` would decode ``batch`` latents of ``latent_shape`` (default the model's).

    Raises:
        InputError: a bad ``window`` or ``max_memory``, or a budget too small for any window.
    """
    check_window(window)
    shape = tuple(latent_shape or model.latent_shape)
    chain = decoder_chain(model.autoencoder, shape)
    itemsize = next(model.autoencoder.parameters()).element_size()
    budget = _budget(max_memory, model.device)
    return _choose(chain, window, budget, batch, itemsize, "decoding a latent")


@torch.no_grad()
def decode_tiled(
    model: LatentDiffusionModel,
    z: torch.Tensor,
    *,
    window: int | None = None,
    max_memory: int | str | None = None,
) -> torch.Tensor:
    """``model.decode(z)`` in bounded memory, equal to a whole decode (float rounding aside).

    Args:
        model: the latent diffusion model (its autoencoder and latent scale factor are used).
        z: ``(B, C, *latent_spatial)`` scaled latents; decoded one item at a time.
        window: latent rows (along the last spatial axis) per slab; None chooses it from ``max_memory``
            (a whole decode when that fits). A window >= the latent's rows is a whole decode.
        max_memory: budget in bytes or ``"4GB"``-style; default half the free memory of ``z``'s
            device (``medsynth.sampling.memory``).

    Example:
        >>> x = decode_tiled(model, z, max_memory="2GB")  # doctest: +SKIP
    """
    shape = tuple(z.shape[1:])
    plan = decode_plan(model, shape, window=window, max_memory=max_memory, batch=z.shape[0])
    if plan.batched:
        return model.decode(z)
    z = z / model.scale_factor
    if plan.window is None:
        return torch.cat([model.autoencoder.decode(item) for item in items(z)])
    chain = decoder_chain(model.autoencoder, shape)
    if z.device.type == "cpu":
        bound_allocator_caching()
    return torch.cat([run_plan(chain, plan, item) for item in items(z)])


def encode_plan(
    model: LatentDiffusionModel,
    image_shape: tuple[int, ...],
    *,
    window: int | None = None,
    max_memory: int | str | None = None,
    batch: int = 1,
) -> Plan:
    """How ``encode_tiled`` would encode ``batch`` images of ``image_shape`` ``(C, *spatial)``."""
    check_window(window)
    chain = encoder_chain(model.autoencoder, tuple(image_shape))
    itemsize = next(model.autoencoder.parameters()).element_size()
    budget = _budget(max_memory, model.device)
    return _choose(chain, window, budget, batch, itemsize, "encoding an image")


@torch.no_grad()
def encode_tiled(
    model: LatentDiffusionModel,
    x: torch.Tensor,
    *,
    window: int | None = None,
    max_memory: int | str | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``model.encode(x, generator)`` in bounded memory: the encoder run slab by slab.

    Same arguments as ``decode_tiled``; ``window`` counts latent rows here too.
    """
    plan = encode_plan(model, tuple(x.shape[1:]), window=window, max_memory=max_memory, batch=x.shape[0])
    if plan.batched:
        return model.encode(x, generator=generator)
    if plan.window is None:
        return torch.cat([model.encode(item, generator=generator) for item in items(x)])
    ae = model.autoencoder
    chain = encoder_chain(ae, tuple(x.shape[1:]))
    if x.device.type == "cpu":
        bound_allocator_caching()
    h = torch.cat([run_plan(chain, plan, item) for item in items(x)])
    # AutoencoderKL.encode's tail, on the small latent-resolution tensor.
    z_mu = ae.quant_conv_mu(h)
    if generator is not None:
        z_sigma = torch.exp(torch.clamp(ae.quant_conv_log_sigma(h), -30.0, 20.0) / 2)
        noise = torch.randn(z_mu.shape, generator=generator, device=z_mu.device, dtype=z_mu.dtype)
        z_mu = z_mu + z_sigma * noise
    return z_mu * model.scale_factor

"""Tile-wise decoding of latents, so large 3D volumes fit in memory.

The autoencoder's decoder works at full image resolution, with tens of channels, so decoding
a whole 128^3 volume at once holds several full-resolution feature maps (gigabytes). Decoding
overlapping *latent* windows one at a time holds the feature maps of one window only; MONAI's
``SlidingWindowInferer`` does the tiling, scales each window's output position by the decoder's
upsampling factor and blends overlaps with a Gaussian weight.

Trade-off: memory falls with the window (about with its volume) while time rises (more
overlapping windows, each decoded in full), and the result is not bit-identical to a full
decode: the decoder's GroupNorm statistics and zero padding are computed per window, so seams
are blended rather than absent. Larger windows and overlaps shrink the difference; measured
numbers are in docs/performance.md ("3D decoding").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

import torch
from monai.inferers import SlidingWindowInferer

from medsynth.errors import InputError


def check_window(window: int | Sequence[int] | None, overlap: float, spatial_dims: int) -> None:
    """``InputError`` unless ``window`` is None or positive ints (one or one per axis) and 0 <= overlap < 1."""
    if window is not None:
        values = [window] if isinstance(window, int) else list(window)
        ok = len(values) in (1, spatial_dims) and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values
        )
        if not ok:
            raise InputError(
                f"decode_window={window!r}: expected a positive latent window edge (int) or "
                f"{spatial_dims} of them, or None to decode whole latents"
            )
    if not (isinstance(overlap, (int, float)) and 0.0 <= float(overlap) < 1.0):
        raise InputError(f"decode_overlap={overlap!r}: expected a fraction in [0, 1), e.g. 0.25")


def decode_tiled(
    decode: Callable[[torch.Tensor], torch.Tensor],
    z: torch.Tensor,
    *,
    window: int | Sequence[int],
    overlap: float = 0.25,
    output_device: torch.device | str | None = None,
) -> torch.Tensor:
    """Decode latents ``z`` window by window and blend the windows (MONAI ``SlidingWindowInferer``).

    Args:
        decode: latent -> image for one window (e.g. ``model.decode``); it may upsample.
        z: ``(B, C, *latent_spatial)`` latents.
        window: latent window edge, one int or one per spatial axis (clamped to the latent size).
        overlap: fraction of a window shared with its neighbour.
        output_device: where the blended image is accumulated; ``"cpu"`` keeps a GPU's memory to
            one window's activations while the full-resolution result lives in host memory.
            Default: ``z``'s device.

    Returns:
        ``(B, C_out, *image_spatial)`` on ``output_device``.

    Example:
        >>> x = decode_tiled(model.decode, z, window=8, overlap=0.25)  # doctest: +SKIP
    """
    spatial = z.shape[2:]
    check_window(window, overlap, len(spatial))
    edges = [window] * len(spatial) if isinstance(window, int) else list(window)
    if len(edges) == 1:
        edges = edges * len(spatial)
    roi = [min(int(w), int(s)) for w, s in zip(edges, spatial, strict=True)]
    inferer = SlidingWindowInferer(
        roi_size=roi,
        sw_batch_size=1,
        overlap=float(overlap),
        mode="gaussian",
        sw_device=z.device,
        device=torch.device(output_device) if output_device is not None else z.device,
    )
    # One item at a time: the blend buffers are full-resolution, so this bounds them to one volume.
    # The inferer returns what ``decode`` returns: one tensor here.
    return torch.cat([cast(torch.Tensor, inferer(z[j : j + 1], decode)) for j in range(z.shape[0])])

"""Scanners: what the acquisition adds to a painted phantom (contrast, kernel, noise, bias field).

A phantom's anatomy and lesions do not depend on the scanner; the scanner decides the MR
contrast (the column of tissue values the canvas paints with) and what is done to the painted
image last. Two scanners:

* ``A`` (the default; every phantom made before scanners existed is an ``A`` phantom): CT with
  a smooth kernel, slightly correlated Gaussian noise (a white field Gaussian-filtered with
  sigma 0.6 voxel, 10-20 HU); MR T2-weighted with a mild smooth multiplicative bias field
  (0.8-1.2) and Rician noise (sigma 12-22).
* ``B``: CT with a sharp (edge-enhancing) kernel, an unsharp mask of the image (gain 0.3-0.6, sigma 1 voxel), and band-pass
  noise whose power peaks at high spatial frequencies (20-35 HU), the texture of a bone/lung
  reconstruction kernel; MR T1-weighted (``canvas.MR_T1``) with a strong receive-coil bias field
  that brightens the periphery of the field of view (about 1.3-1.6x from centre to the body
  wall, plus a random tilt) and Rician noise (sigma 10-18).

Scanner A draws its noise from exactly the random stream it always did, so A phantoms are the
same images as before; B draws from its own stream.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medsynth.data.phantoms.canvas import MR_T1
from medsynth.data.phantoms.shapes import F32
from medsynth.errors import InputError
from medsynth.seeding import numpy_rng

SCANNERS: tuple[str, ...] = ("A", "B")


def check_scanner(scanner: str) -> str:
    """The scanner name upper-cased, or ``InputError`` when it is not one of ``SCANNERS``."""
    name = str(scanner).strip().upper()
    if name not in SCANNERS:
        raise InputError(f"scanner {scanner!r} is not a phantom scanner; expected one of {', '.join(SCANNERS)}")
    return name


def tissue_values(modality: str, scanner: str) -> dict[str, float] | None:
    """The canvas's column of tissue values; None: ``canvas.TISSUES``' column of the modality."""
    return MR_T1 if (modality == "MR" and scanner == "B") else None


def _spatial_sigma(shape: tuple[int, ...], sigma: float) -> tuple[float, ...]:
    # a 2D phantom is (1, H, W): no filtering across its one slice
    return tuple(0.0 if n == 1 else sigma for n in shape)


def _ct_noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Scanner A: slightly correlated Gaussian noise with a subject-specific level of 10-20 HU."""
    level = rng.uniform(10.0, 20.0)
    n = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=F32), 0.6)
    return n * F32(level / max(float(n.std()), 1e-6))


def _ct_sharp(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Scanner B: an edge-enhancing kernel (unsharp mask) and band-pass noise of 20-35 HU.

    The noise is the difference of two Gaussian-filtered copies of one white field (sigma 0.5
    and 1.5 voxel): its power spectrum is zero at zero frequency and peaks near half the
    Nyquist frequency, where a sharp kernel's noise power spectrum peaks.
    """
    gain, level = rng.uniform(0.3, 0.6), rng.uniform(20.0, 35.0)
    shape = image.shape
    blurred = ndimage.gaussian_filter(image, _spatial_sigma(shape, 1.0))
    white = rng.standard_normal(shape, dtype=F32)
    n = ndimage.gaussian_filter(white, _spatial_sigma(shape, 0.5)) - ndimage.gaussian_filter(
        white, _spatial_sigma(shape, 1.5)
    )
    n *= F32(level / max(float(n.std()), 1e-6))
    return (image + F32(gain) * (image - blurred) + n).astype(F32)


def _mr_bias(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Scanner A: a smooth multiplicative bias field, about 0.8-1.2 (receive-coil sensitivity)."""
    u, v, w = x / 175.0, y / 175.0, z / 175.0
    c = rng.normal(scale=[0.08, 0.08, 0.05, 0.04, 0.04, 0.03])
    log_b = c[0] * u + c[1] * v + c[2] * w + c[3] * u * u + c[4] * v * v + c[5] * u * v
    return np.exp(np.clip(log_b, -0.2, 0.2)).astype(F32)


def _mr_coil_bias(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Scanner B: a surface-coil bias field, bright at the body wall, dim at the centre, tilted.

    ``log b = g (u² + v² - 0.3) + tilt``, ``g`` 0.4-0.7, so the body wall (u² + v² about 0.65)
    is ``exp(0.65 g)``, 1.3-1.6 times the centre; clipped to [exp(-0.6), exp(0.6)].
    """
    u, v, w = x / 175.0, y / 175.0, z / 175.0
    g = rng.uniform(0.4, 0.7)
    c = rng.normal(scale=[0.12, 0.12, 0.08])
    log_b = g * (u * u + v * v - 0.3) + c[0] * u + c[1] * v + c[2] * w
    return np.exp(np.clip(log_b, -0.6, 0.6)).astype(F32)


def _rician(rng: np.random.Generator, signal: np.ndarray, sigma: float) -> np.ndarray:
    re = signal + sigma * rng.standard_normal(signal.shape, dtype=F32)
    im = sigma * rng.standard_normal(signal.shape, dtype=F32)
    return np.hypot(re, im)  # magnitude image: Rician noise, never negative


def acquire(
    image: np.ndarray,
    *,
    modality: str,
    scanner: str,
    seed: int,
    dim: int,
    size: int,
    x: np.ndarray,
    y: np.ndarray,
    z: np.ndarray,
) -> np.ndarray:
    """The scanner's kernel, bias field and noise over a painted ``image``; (x, y, z) in the anatomy frame, mm.

    The noise depends on (seed, dim, size, modality, scanner), never on the pathology, so a
    diseased phantom minus its normal twin is exactly the lesion (for scanner B's CT, the
    lesion through the kernel).
    """
    if scanner == "A":
        nrng = numpy_rng("medsynth-phantom", "noise", seed, dim, size, modality)  # the stream A always used
        if modality == "CT":
            image += _ct_noise(nrng, image.shape)
            return np.clip(image, -1024.0, 3071.0, out=image)
        sigma = nrng.uniform(12.0, 22.0)
        return _rician(nrng, image * _mr_bias(nrng, x, y, z), sigma)
    nrng = numpy_rng("medsynth-phantom", "noise", seed, dim, size, modality, "scanner", scanner)
    if modality == "CT":
        return np.clip(_ct_sharp(nrng, image), -1024.0, 3071.0)
    sigma = nrng.uniform(10.0, 18.0)
    return _rician(nrng, image * _mr_coil_bias(nrng, x, y, z), sigma)

"""Distribution metrics between two sets of images or of feature vectors.

Every function is a pure function of its inputs (plus an explicit seed where it subsamples), so
the fidelity report can compute each figure twice: synthetic vs real, and real vs real.

Which implementation each figure uses:

* FID: MONAI's ``FIDMetric`` (Fréchet distance of Gaussian fits; scipy's ``sqrtm``).
* KID: written here (MONAI has none): the unbiased MMD² with the cubic polynomial kernel of
  Bińkowski et al. 2018, averaged over random subsets.
* MMD: MONAI's ``MMDMetric`` (unbiased MMD², linear kernel) on the images themselves, so one
  figure does not depend on the learned encoder at all.
* Precision and recall: written here (MONAI has none): k-NN manifolds of Kynkäänniemi et al. 2019.
* Diversity: MONAI's ``MultiScaleSSIMMetric`` between random pairs of one set.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations
from typing import cast

import numpy as np
import torch

from medsynth.seeding import numpy_rng

# MS-SSIM weights of Wang et al. 2003, finest scale first; fewer scales use the first ones,
# renormalised, so small images keep the same relative weighting.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _as_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    return t.detach().to(torch.float64).cpu()


def frechet_distance(real: np.ndarray | torch.Tensor, fake: np.ndarray | torch.Tensor) -> float:
    """FID between two feature sets ``(N, D)`` (Heusel et al. 2017), via MONAI's ``FIDMetric``.

    Example:
        >>> a = np.random.default_rng(0).normal(size=(200, 4))
        >>> round(frechet_distance(a, a), 6)
        0.0
    """
    from monai.metrics import FIDMetric

    r, f = _as_tensor(real), _as_tensor(fake)
    if r.ndim != 2 or f.ndim != 2 or r.shape[1] != f.shape[1] or min(len(r), len(f)) < 2:
        raise ValueError(f"FID needs two (N>=2, D) feature sets of equal D; got {tuple(r.shape)}, {tuple(f.shape)}")
    # Clamp the tiny negative values sqrtm's rounding can give for identical sets.
    return max(float(FIDMetric()(f, r)), 0.0)


def kernel_inception_distance(
    real: np.ndarray | torch.Tensor,
    fake: np.ndarray | torch.Tensor,
    *,
    subset_size: int = 100,
    n_subsets: int = 50,
    seed: int = 0,
) -> tuple[float, float]:
    """KID (Bińkowski et al. 2018): unbiased MMD² with k(x, y) = (x·y/D + 1)³; (mean, std) over subsets.

    Each subset draws ``m = min(subset_size, n // 2)`` vectors from each set without replacement,
    ``n`` the smaller set's size: half, so that subsets differ and the std says how much the
    estimate moves. The estimate is unbiased at any ``m``, so it can be read at small sizes.
    """
    r, f = _as_tensor(real), _as_tensor(fake)
    if r.ndim != 2 or f.ndim != 2 or r.shape[1] != f.shape[1]:
        raise ValueError(f"KID needs two (N, D) feature sets of equal D; got {tuple(r.shape)}, {tuple(f.shape)}")
    if min(len(r), len(f)) < 4:
        raise ValueError(f"KID needs at least 4 vectors in each set; got {len(r)} and {len(f)}")
    m = min(subset_size, min(len(r), len(f)) // 2)
    d = r.shape[1]
    rng = numpy_rng("kid", seed)
    values = []
    for _ in range(n_subsets):
        x = r[torch.from_numpy(rng.choice(len(r), m, replace=False))]
        y = f[torch.from_numpy(rng.choice(len(f), m, replace=False))]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        off = m * (m - 1)
        mmd2 = (kxx.sum() - kxx.diagonal().sum()) / off + (kyy.sum() - kyy.diagonal().sum()) / off
        values.append(float(mmd2 - 2 * kxy.mean()))
    return float(np.mean(values)), float(np.std(values))


def image_mmd(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Unbiased MMD² with a linear kernel on images ``(N, C, *spatial)``, per pixel (MONAI ``MMDMetric``).

    With a linear kernel this is the unbiased squared distance between the two mean images;
    dividing each image by sqrt(number of voxels) (MONAI's ``y_mapping``) makes it a per-voxel
    mean, comparable across image sizes. Encoder-free, so it catches intensity or layout shifts
    the learned features may ignore. MONAI needs both sets the same size: the larger one is cut
    to the smaller's length (callers pass class-matched sets, so the cut keeps the class mix).
    """
    from monai.metrics import MMDMetric

    n = min(len(real), len(fake))
    if n < 2:
        raise ValueError(f"MMD needs at least 2 images in each set; got {len(real)} and {len(fake)}")
    voxels = float(np.prod(real.shape[1:]))
    metric = MMDMetric(y_mapping=lambda x: x / voxels**0.5)
    return float(metric(real[:n].double(), fake[:n].double()))


def precision_recall(
    real: np.ndarray | torch.Tensor, fake: np.ndarray | torch.Tensor, *, k: int = 3
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN manifolds.

    Precision: the fraction of ``fake`` vectors inside the real manifold (the union of balls
    around each real vector whose radius is its distance to its k-th nearest real neighbour).
    Recall: the fraction of ``real`` vectors inside the fake manifold, built the same way.
    """
    r, f = _as_tensor(real), _as_tensor(fake)
    if min(len(r), len(f)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} vectors per set; got {len(r)}, {len(f)}")

    def radii(x: torch.Tensor) -> torch.Tensor:
        dist = torch.cdist(x, x)
        # Column 0 of the sorted distances is the point itself (distance 0).
        return dist.sort(dim=1).values[:, k]

    def coverage(manifold: torch.Tensor, probes: torch.Tensor) -> float:
        inside = torch.cdist(probes, manifold) <= radii(manifold)[None, :]
        return float(inside.any(dim=1).double().mean())

    return coverage(r, f), coverage(f, r)


def ms_ssim_settings(size: Sequence[int] | int, spatial_dims: int = 2) -> dict:
    """Valid ``MultiScaleSSIMMetric`` settings for images whose smallest spatial side is ``size``.

    MONAI needs ``size // (n_scales - 1)**2 > kernel_size - 1``, and the coarsest of the
    ``n_scales`` halvings must still hold the kernel. The standard 11-pixel Gaussian (sigma 1.5)
    is kept and scales are dropped until both hold; the first standard weights are renormalised.
    The default five scales need 176 px; 64 px gets 3 scales, 32 px gets 2. Only images too
    small for two scales fall back to a smaller kernel.
    """
    side = min(size) if isinstance(size, Sequence) else int(size)
    for kernel in (11, 9, 7, 5, 3):
        for n_scales in range(5, 1, -1):
            div = (n_scales - 1) ** 2
            if side // div > kernel - 1 and side // 2 ** (n_scales - 1) >= kernel:
                w = np.asarray(MS_SSIM_WEIGHTS[:n_scales], dtype=np.float64)
                return {
                    "spatial_dims": spatial_dims,
                    "kernel_size": kernel,
                    "kernel_sigma": 1.5,
                    "weights": tuple(float(v) for v in w / w.sum()),
                    "data_range": 1.0,
                }
    raise ValueError(f"images of side {side} px are too small for MS-SSIM (need at least 6 px)")


def mean_pairwise_ms_ssim(images: torch.Tensor, *, max_pairs: int = 300, seed: int = 0) -> float:
    """Mean MS-SSIM over pairs of distinct images ``(N, C, *spatial)`` scaled to [0, 1].

    A diversity figure: near 1 means the set repeats one image, lower means more varied.
    Uses all pairs when there are at most ``max_pairs``, else a seeded random subset of pairs.
    """
    from monai.metrics import MultiScaleSSIMMetric

    n = len(images)
    if n < 2:
        raise ValueError(f"diversity needs at least 2 images; got {n}")
    pairs = list(combinations(range(n), 2))
    if len(pairs) > max_pairs:
        rng = numpy_rng("ms-ssim-pairs", seed)
        pairs = [pairs[i] for i in sorted(rng.choice(len(pairs), max_pairs, replace=False))]
    a = torch.stack([images[i] for i, _ in pairs]).float()
    b = torch.stack([images[j] for _, j in pairs]).float()
    settings = ms_ssim_settings(tuple(images.shape[2:]), spatial_dims=images.ndim - 2)
    metric = MultiScaleSSIMMetric(**settings, reduction="none")
    # reduction="none" gives one tensor of per-pair values (MONAI types the return more widely).
    values = torch.cat(
        [cast(torch.Tensor, metric(a[i : i + 256], b[i : i + 256])).flatten() for i in range(0, len(a), 256)]
    )
    return float(values.mean())

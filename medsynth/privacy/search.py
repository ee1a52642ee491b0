"""Nearest reference of each query, by the best normalized cross-correlation over edits.

Feature maps (``features.py``) are body-standardised, pose-normalised and band-limited, and
they are zero (the body mean) outside the body, so they are already zero-mean: the similarity
of a query ``q`` with field of view ``m`` and a reference ``c`` shifted by ``s`` is

    NCC(s) = <m q, c_s> / (|m q| * |m c_s|)

a cosine over the query's field of view (Padfield's masked NCC without re-centring, which the
zero-mean maps make unnecessary). Where the query sees everything (``m = 1``) it is the plain
NCC; where it was cropped through the body, the missing part counts neither way. An overlap
that holds less than ``min_overlap`` of the reference's energy scores 0, so a small crop cannot
match everything. All shifts come at once from FFTs with *circular* wrap-around (both terms are
correlations): the body sits in the middle of the grid with background around it, so shifts up
to ``max_shift`` pixels wrap only background.

**Stage one, coarse retrieval.** Thumbnails (16x16 in 2D, 8x8x8 in 3D, box-filtered), zero-mean
and unit-norm, so an inner product is the NCC at zero shift. Each query is expanded into its
flips on every spatial axis times the envelope's rotations, and the ``k`` references with the
highest inner product over those variants are kept. The inner products run in FAISS
(``IndexFlatIP``, exact) when faiss-cpu is installed, else as a torch matmul: same candidates.

**Stage two, NCC over the transform envelope, coarse to fine.** Each candidate keeps the flip
that won stage one. (a) At thumbnail resolution, every candidate is scored over every other zoom
of the zoom grid, every rotation and shifts up to ``max_shift`` (in full-resolution pixels).
(b) The ``refine`` best are scored at full resolution over the whole envelope: zooms 0.8 to 1.25
in geometric steps of 4.6%, rotations of +-5 and +-10 degrees (2D in-plane; 3D about the axial
axis, array axis 0 of the ``SPL`` maps), shifts up to ``max_shift``. The best of those is the
nearest reference and its NCC is the score, in ``[-1, 1]``; 1 is a copy up to the edits above.

**Confirmation.** The query at its best transform is compared with the nearest reference (over
the query's field of view) by SSIM (scikit-image, Gaussian window, sigma 1.5).
The adaptive ratio is the nearest's distance ``1 - NCC`` over the mean distance to the other
``k - 1`` candidates, all from step (a): small when one reference stands out, about 1 when
several are equally near.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from skimage.metrics import structural_similarity

from medsynth.errors import InputError

try:  # optional: exact inner-product retrieval at scale; torch matmul gives the same candidates
    import faiss
except ImportError:  # pragma: no cover - depends on the environment
    faiss = None


DEVA = {}
PRESELECT = 4  # stage one keeps PRESELECT * k references by plain NCC before the masked re-ranking
REFINE_STEPS = 4  # probe-and-parabola rounds of the continuous refinement (delta halves each round)


def _default_zooms() -> tuple[float, ...]:
    # 11 geometric steps from 0.8 to 1.25: each step is 4.6%, within the 5% the issue asks for.
    return tuple(float(z) for z in np.round(np.geomspace(0.8, 1.25, 11), 4))


@dataclass(frozen=True)
class Envelope:
    """The edits the search sees through, and its effort.

    Args:
        zooms: zoom factors.
        rotations: rotation angles in degrees (2D in-plane; 3D about the axial axis).
        max_shift: largest shift per axis, in feature pixels, searched by FFT.
        k: candidates kept by stage one.
        refine: candidates scored at full resolution over the whole envelope.
        thumb: thumbnail side for stage one and the coarse step of stage two.
        min_overlap: least share of a reference's energy the query's field of view must cover.
    """

    zooms: tuple[float, ...] = field(default_factory=_default_zooms)
    rotations: tuple[float, ...] = (-10.0, -5.0, 0.0, 5.0, 10.0)
    max_shift: int = 4
    k: int = 16
    refine: int = 3
    thumb: int = 16
    min_overlap: float = 0.5

    @classmethod
    def default(cls, spatial_dims: int) -> "Envelope":
        """The 2D defaults; in 3D (16^3 maps) 8^3 thumbnails and shifts up to 2 pixels."""
        return cls() if spatial_dims == 2 else cls(max_shift=2, thumb=8)

    def to_dict(self) -> dict:
        return {
            "zooms": list(self.zooms),
            "rotations": list(self.rotations),
            "max_shift": self.max_shift,
            "k": self.k,
            "refine": self.refine,
            "thumb": self.thumb,
            "min_overlap": self.min_overlap,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Envelope":
        d = dict(d)
        d["zooms"], d["rotations"] = tuple(d["zooms"]), tuple(d["rotations"])
        return cls(**d)


@dataclass
class SearchResult:
    """Per query: best score, nearest reference, confirmation and the winning transform.

    ``nearest`` is -1 for a query with no body (score 0, SSIM NaN, ratio 1). ``aligned`` holds
    each query at its best transform, in the nearest reference's frame.
    """

    score: np.ndarray  # (n,) float
    nearest: np.ndarray  # (n,) int
    ratio: np.ndarray  # (n,) float
    ssim: np.ndarray  # (n,) float
    aligned: np.ndarray  # (n, *grid) float32
    transform: list[dict]  # per query: flip axes, zoom, rotation (deg), shift (pixels)


def _flip_sets(dims: int) -> list[tuple[int, ...]]:
    """Every subset of spatial axes to flip (4 in 2D, 8 in 3D)."""
    return [tuple(a for a in range(dims) if (m >> a) & 1) for m in range(2**dims)]


def _thetas(dims: int, flips: list[tuple[int, ...]], zooms, rotations) -> torch.Tensor:
    """affine_grid matrices for every (flip, zoom, rotation), in that nesting order.

    grid_sample reads the output at p from the input at theta @ p, with coordinates in reversed
    array-axis order (x = last axis). Rotation acts on the last two array axes: the slice plane
    in 2D, and in 3D the axial plane of an ``SPL`` map (array axis 0 is superior).
    """
    mats = []
    for flip in flips:
        sign = np.ones(dims)
        sign[list(flip)] = -1.0
        fmat = np.diag(sign[::-1])  # reversed axis order for grid coordinates
        for z in zooms:
            for deg in rotations:
                c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
                rot = np.eye(dims)
                rot[:2, :2] = [[c, -s], [s, c]]
                m = np.zeros((dims, dims + 1))
                m[:, :dims] = (rot @ fmat) / z
                mats.append(m)
    return torch.tensor(np.stack(mats), dtype=torch.float32)


def _warp(x: torch.Tensor, thetas: torch.Tensor) -> torch.Tensor:
    """Variants of each multi-channel map.

    Args:
        x: (n, ch, *g) maps.
        thetas: (V, d, d+1) shared by every map, or (n, V, d, d+1) per map.

    Returns:
        (n, V, ch, *g).
    """
    n, ch, g = x.shape[0], x.shape[1], tuple(x.shape[2:])
    v = thetas.shape[-3]
    if thetas.dim() == 3:  # one sampling grid per variant, shared by every map
        grid = F.affine_grid(thetas, [v, ch, *g], align_corners=False)
        grid = grid[None].expand(n, *grid.shape).reshape(n * v, *grid.shape[1:])
    else:
        grid = F.affine_grid(thetas.reshape(n * v, *thetas.shape[2:]), [n * v, ch, *g], align_corners=False)
    src = x[:, None].expand(n, v, ch, *g).reshape(n * v, ch, *g)
    out = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.reshape(n, v, ch, *g)


def _with_flips(x: torch.Tensor, flips: list[tuple[int, ...]], dims: int) -> torch.Tensor:
    """(n, ...) -> (n, flips, ...): flipping a warped map about the grid centre gives exactly the
    variant ``_thetas`` describes for that flip (sampling at ``R F p / z`` either way)."""
    return torch.stack([torch.flip(x, [a - dims for a in f]) if f else x for f in flips], dim=1)


def _pool(x: torch.Tensor, size: int, dims: int) -> torch.Tensor:
    """Box-filter the last ``dims`` axes down to ``size`` per axis."""
    lead = x.shape[:-dims]
    pool = F.adaptive_avg_pool2d if dims == 2 else F.adaptive_avg_pool3d
    out = pool(x.reshape(-1, 1, *x.shape[-dims:]), (size,) * dims)
    if DEVA.get("blur"):
        from monai.networks.layers import GaussianFilter
        out = GaussianFilter(dims, DEVA["blur"] / 10)(out)
    return out.reshape(*lead, *out.shape[2:])


def _window(g: int, dims: int, radius: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask of circular shifts within ``radius`` per axis, and their signed values (M, dims)."""
    idx = torch.arange(g)
    ok = torch.minimum(idx, g - idx) <= radius
    mask = ok
    for _ in range(dims - 1):
        mask = mask[..., None] & ok
    pos = torch.nonzero(mask)  # same order as x[..., mask]
    return mask, torch.where(pos > g // 2, pos - g, pos)


def _sumsq(x: torch.Tensor, dims: int) -> torch.Tensor:
    return x.pow(2).flatten(-dims).sum(-1)


def _every_other(n: int) -> list[int]:
    """Every other index of a grid of ``n``, including the middle one (the identity)."""
    return list(range((n // 2) % 2, n, 2))


class FeatureSearch:
    """A reference set of feature maps, ready to be searched.

    Args:
        maps: ``(N, *grid)`` feature maps (``Features.maps``).
        envelope: the transform envelope and search effort.
        backend: stage-one retrieval: ``"auto"`` (FAISS if installed, else torch), ``"faiss"``
            or ``"torch"``.
        ssim_range: SSIM data range in feature units (the clipped range, ``2 * clip``).

    Example:
        >>> ref = FeatureSearch(train.maps, Envelope.default(2))     # doctest: +SKIP
        >>> res = ref.search(queries.maps, queries.fov)              # doctest: +SKIP
        >>> res.score, res.nearest                                   # doctest: +SKIP
    """

    def __init__(
        self, maps: np.ndarray, envelope: Envelope, backend: str = "auto", ssim_range: float = 10.0
    ) -> None:
        ref = torch.as_tensor(np.asarray(maps, dtype=np.float32))
        if ref.dim() not in (3, 4) or ref.shape[0] == 0 or len(set(ref.shape[1:])) != 1:
            raise InputError(f"privacy search: need (N, *grid) square feature maps, N >= 1; got {tuple(ref.shape)}")
        self.dims = ref.dim() - 1
        self.grid = int(ref.shape[1])
        if self.grid % envelope.thumb:
            raise InputError(f"privacy search: thumbnail side {envelope.thumb} must divide the map side {self.grid}")
        self.envelope = envelope
        self.ssim_range = float(ssim_range)
        self.maps = ref
        self.thumbs = _pool(ref, envelope.thumb, self.dims)
        self.desc = self._unit_flat(self.thumbs)
        if backend not in ("auto", "faiss", "torch"):
            raise InputError(f"privacy search backend: unknown {backend!r}; expected auto, faiss or torch")
        if backend == "faiss" and faiss is None:
            raise InputError("privacy search backend 'faiss' needs faiss-cpu: pip install faiss-cpu")
        self.backend = "faiss" if backend != "torch" and faiss is not None else "torch"
        self._faiss = None
        if self.backend == "faiss":
            self._faiss = faiss.IndexFlatIP(self.desc.shape[1])
            self._faiss.add(self.desc.numpy())
        self._flips = _flip_sets(self.dims)
        self._rot_only = _thetas(self.dims, [()], (1.0,), envelope.rotations)
        self._zoom_a = _every_other(len(envelope.zooms)) if DEVA.get("zo", 1) else list(range(len(envelope.zooms)))
        self._rot_a = _every_other(len(envelope.rotations)) if DEVA.get("ro", 1) else list(range(len(envelope.rotations)))
        self._coarse = _thetas(
            self.dims,
            [()],
            tuple(envelope.zooms[i] for i in self._zoom_a),
            tuple(envelope.rotations[i] for i in self._rot_a),
        )
        # Every (flip, zoom, rotation) of the envelope, looked up by index in step (b).
        self._all = _thetas(self.dims, self._flips, envelope.zooms, envelope.rotations).reshape(
            len(self._flips), len(envelope.zooms), len(envelope.rotations), self.dims, self.dims + 1
        )
        radius_thumb = math.ceil(envelope.max_shift * envelope.thumb / self.grid)
        self._win_thumb = _window(envelope.thumb, self.dims, radius_thumb)
        self._win = _window(self.grid, self.dims, envelope.max_shift)

    def __len__(self) -> int:
        return int(self.maps.shape[0])

    @staticmethod
    def _unit_flat(x: torch.Tensor) -> torch.Tensor:
        """Rows of the flattened maps, zero-mean and unit-norm (all-constant rows stay 0)."""
        flat = x.reshape(x.shape[0], -1)
        flat = flat - flat.mean(dim=1, keepdim=True)
        norm = flat.norm(dim=1, keepdim=True)
        return torch.where(norm > 1e-8, flat / norm.clamp_min(1e-8), torch.zeros_like(flat)).contiguous()

    # -- stage one ---------------------------------------------------------------------------

    def _candidates(
        self, q: torch.Tensor, m: torch.Tensor, exclude: torch.Tensor, k: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k references by max zero-shift NCC over (flip, rotation) thumbnails, and each one's flip.

        The inner-product search (FAISS or torch) keeps ``PRESELECT * k`` references by plain NCC;
        those are re-ranked by the masked NCC over the query's field of view (a cropped copy
        lacks part of the body, which the plain NCC counts against its source).
        """
        n, d = q.shape[0], self.dims
        qm = torch.stack([q, m], dim=1)
        thumbs = _with_flips(_warp(_pool(qm, self.envelope.thumb, d), self._rot_only), self._flips, d)
        nv = thumbs.shape[1] * thumbs.shape[2]
        thumbs = thumbs.reshape(n, nv, 2, -1)  # (n, flips x rotations, 2, thumb pixels)
        desc = self._unit_flat(thumbs[:, :, 0].reshape(n * nv, -1)).reshape(n, nv, -1)
        k1 = min(len(self) - int(bool((exclude >= 0).any())), PRESELECT * k)
        if self._faiss is not None:
            # Exact top-(k1+1) per variant, merged: a reference in the top k1 of the max over
            # variants is in the top k1 of the variant where it peaks, so the merge loses nothing.
            sc, ids = self._faiss.search(desc.reshape(n * nv, -1).numpy(), k1 + 1)
            ids, sc = torch.from_numpy(ids).reshape(n, -1), torch.from_numpy(sc).reshape(n, -1)
            sc[(ids < 0) | (ids == exclude[:, None])] = -math.inf
            # Keep each reference's best entry: order by score, then stably by id, and mask every
            # entry but the first of each id.
            order = torch.argsort(sc, dim=1, descending=True, stable=True)
            ids, sc = ids.gather(1, order), sc.gather(1, order)
            order = torch.argsort(ids, dim=1, stable=True)
            ids, sc = ids.gather(1, order), sc.gather(1, order)
            sc[:, 1:][ids[:, 1:] == ids[:, :-1]] = -math.inf
            pre = ids.gather(1, sc.topk(k1, dim=1).indices)
        else:
            dense = (desc @ self.desc.T).amax(dim=1)
            rows = torch.nonzero(exclude >= 0).flatten()
            dense[rows, exclude[rows]] = -math.inf
            pre = dense.topk(k1, dim=1).indices
        # Masked NCC at zero shift, per variant: <m q, c> / (|m q| |m c|).
        ref = self.thumbs.reshape(len(self), -1)[pre]  # (n, k1, t)
        mq = thumbs[:, :, 0] * thumbs[:, :, 1]
        num = torch.einsum("nvt,nkt->nvk", mq, ref)
        energy = torch.einsum("nvt,nkt->nvk", thumbs[:, :, 1], ref.pow(2))
        ref_energy = ref.pow(2).sum(-1)[:, None]
        q_norm = mq.norm(dim=-1)[..., None]
        ok = (energy >= self.envelope.min_overlap * ref_energy) & (ref_energy > 0) & (q_norm > 0)
        score = torch.where(ok, num / (q_norm * energy.clamp_min(1e-12).sqrt()).clamp_min(1e-12), -2.0)
        best, variant = score.max(dim=1)  # (n, k1)
        top = best.topk(k, dim=1).indices
        return pre.gather(1, top), variant.gather(1, top) // len(self.envelope.rotations)

    # -- stage two ---------------------------------------------------------------------------

    def _spectra(self, qm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(..., 2, *g) query maps and fields of view -> spectra of ``m q`` and ``m``, and ``|m q|``."""
        axes = tuple(range(-self.dims, 0))
        q = qm[..., 0, :, :] if self.dims == 2 else qm[..., 0, :, :, :]
        m = qm[..., 1, :, :] if self.dims == 2 else qm[..., 1, :, :, :]
        q = q * m
        return torch.fft.rfftn(q, dim=axes), torch.fft.rfftn(m, dim=axes), _sumsq(q, self.dims).sqrt()

    def _ncc(
        self,
        spec_q: torch.Tensor,
        spec_m: torch.Tensor,
        q_norm: torch.Tensor,
        refs: torch.Tensor,
        window: tuple[torch.Tensor, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Masked NCC, max over the shifts in ``window`` and over variants, per (query, candidate).

        Args:
            spec_q, spec_m, q_norm: from ``_spectra``, shaped (n, k, V, ...): each candidate's variants.
            refs: (n, k, *g) candidate maps.

        Returns:
            score, best variant index and best shift index, each (n, k).
        """
        d = self.dims
        axes = tuple(range(-d, 0))
        g = refs.shape[-1]
        mask = window[0]
        ref_energy = _sumsq(refs, d)[..., None, None]  # (n, k, 1, 1)
        spec_c = torch.fft.rfftn(refs, dim=axes).conj()[:, :, None]
        spec_c2 = torch.fft.rfftn(refs.pow(2), dim=axes).conj()[:, :, None]
        # num[s] = sum_x q(x + s) c(x); energy[s] = sum_x m(x + s) c(x)^2: the reference's energy
        # inside the shifted query's field of view.
        num = torch.fft.irfftn(spec_q * spec_c, s=(g,) * d, dim=axes)[..., mask]
        energy = torch.fft.irfftn(spec_m * spec_c2, s=(g,) * d, dim=axes)[..., mask]
        ok = (energy >= self.envelope.min_overlap * ref_energy) & (ref_energy > 0) & (q_norm[..., None] > 0)
        ncc = num / (q_norm[..., None] * energy.clamp_min(1e-12).sqrt()).clamp_min(1e-12)
        # Rounding in the FFTs can overshoot 1 by ~1e-6.
        ncc = torch.where(ok, ncc, torch.zeros_like(ncc)).clamp(-1.0, 1.0)
        best_shift_score, best_shift = ncc.max(dim=3)
        score, variant = best_shift_score.max(dim=2)
        return score, variant, best_shift.gather(2, variant[..., None])[..., 0]

    def _chunk(self) -> int:
        """Queries per batch, keeping the largest intermediate tensors near 128 MB."""
        env = self.envelope
        coarse = env.k * self._coarse.shape[0] * env.thumb**self.dims * 8 * 4
        fine = min(env.refine, env.k) * 9 * self.grid**self.dims * 8 * 4
        stage1 = 0 if self._faiss is not None else len(self._flips) * len(env.rotations) * len(self) * 4
        return max(1, min(128, int(128e6 // max(coarse, fine, stage1))))

    def search(
        self,
        maps: np.ndarray,
        fov: np.ndarray | None = None,
        exclude: np.ndarray | None = None,
        *,
        refine: bool = True,
    ) -> SearchResult:
        """Score every query against the reference set.

        Args:
            maps: ``(n, *grid)`` query feature maps.
            fov: ``(n, *grid)`` their fields of view (``Features.fov``); default: everything.
            exclude: optional ``(n,)`` reference index to skip per query (-1: none), to search a
                set against itself.
            refine: False stops after the thumbnail-resolution step of stage two (faster; its
                scores are on their own scale: compare them only with each other).
        """
        q_all = torch.as_tensor(np.asarray(maps, dtype=np.float32))
        if q_all.dim() != self.dims + 1 or tuple(q_all.shape[1:]) != (self.grid,) * self.dims:
            raise InputError(
                f"privacy search: query maps of shape {tuple(q_all.shape[1:])} do not match "
                f"the reference maps {(self.grid,) * self.dims}"
            )
        n = q_all.shape[0]
        m_all = torch.ones_like(q_all) if fov is None else torch.as_tensor(np.asarray(fov, dtype=np.float32))
        ex_all = torch.full((n,), -1, dtype=torch.long) if exclude is None else torch.as_tensor(exclude).long()
        k = min(self.envelope.k, len(self) - int(bool((ex_all >= 0).any())))
        if k < 1:
            raise InputError("privacy search: the reference set has no other scan to compare with")
        res = SearchResult(
            score=np.zeros(n),
            nearest=np.full(n, -1, dtype=np.int64),
            ratio=np.ones(n),
            ssim=np.full(n, np.nan),
            aligned=np.zeros(tuple(q_all.shape), np.float32),
            transform=[{} for _ in range(n)],
        )
        chunk = self._chunk()
        with torch.no_grad():
            for start in range(0, n, chunk):
                stop = min(n, start + chunk)
                self._search_chunk(q_all[start:stop], m_all[start:stop], ex_all[start:stop], k, refine, res, start)
        return res

    def _search_chunk(self, q, m, ex, k, refine, res: SearchResult, start: int) -> None:
        env, d = self.envelope, self.dims
        n, nrot_a = q.shape[0], len(self._rot_a)
        rows = torch.arange(n)
        cand, flip = self._candidates(q, m, ex, k)
        qm = torch.stack([q, m], dim=1)

        # (a) every candidate, thumbnail resolution, every other zoom and rotation.
        coarse = _with_flips(_pool(_warp(qm, self._coarse), env.thumb, d), self._flips, d)
        spec_q, spec_m, q_norm = self._spectra(coarse)  # (n, flips, V, ...)
        pick = (rows[:, None], flip)
        s_a, v_a, sh_a = self._ncc(spec_q[pick], spec_m[pick], q_norm[pick], self.thumbs[cand], self._win_thumb)
        zoom_i = torch.tensor(self._zoom_a)[v_a // nrot_a]
        rot_i = torch.tensor(self._rot_a)[v_a % nrot_a]
        best = s_a.argmax(dim=1)
        score, b_zoom, b_rot = s_a[rows, best], zoom_i[rows, best], rot_i[rows, best]
        b_shift = self._win_thumb[1][sh_a[rows, best]].float() * (self.grid // env.thumb)
        b_zoom = torch.tensor(env.zooms)[b_zoom]
        b_rot = torch.tensor(env.rotations)[b_rot]
        if refine:
            # (b) the best few: continuous refinement at full resolution from (a)'s best transform.
            r = min(env.refine, k)
            top = s_a.topk(r, dim=1).indices
            pick = (rows[:, None].expand(n, r), top)
            zf = torch.tensor(env.zooms)[zoom_i[pick]]
            rf = torch.tensor(env.rotations)[rot_i[pick]]
            sf = self._win_thumb[1][sh_a[pick]].float() * (self.grid // env.thumb)
            qm_r = qm[:, None].expand(n, r, *qm.shape[1:]).reshape(n * r, *qm.shape[1:])
            s_b, z_b, r_b, sh_b = self._refine(
                qm_r, self.maps[cand[pick]].reshape(n * r, *q.shape[1:]), flip[pick].reshape(-1),
                zf.reshape(-1), rf.reshape(-1), sf.reshape(n * r, d),
            )
            s_b = s_b.reshape(n, r)
            best_t = s_b.argmax(dim=1)
            best = top[rows, best_t]
            flat = rows * r + best_t
            score, b_zoom, b_rot, b_shift = s_b[rows, best_t], z_b[flat], r_b[flat], sh_b[flat]
        dist = (1.0 - s_a).clamp_min(0.0)
        others = torch.ones_like(dist, dtype=torch.bool)
        others[rows, best] = False
        mean_other = (dist * others).sum(1) / others.sum(1).clamp_min(1)
        ratio = torch.where(others.any(1), dist[rows, best] / mean_other.clamp_min(1e-12), torch.ones(n))
        nearest, b_flip = cand[rows, best], flip[rows, best]
        aligned, fov = self._align(qm, self._affine(b_flip, b_zoom, b_rot, b_shift))
        ssim = self._ssim(aligned, self.maps[nearest] * fov)

        keep = (q.flatten(1).abs().amax(dim=1) > 0).numpy()
        idx = np.arange(start, start + n)[keep]
        res.score[idx] = score.numpy()[keep]
        res.nearest[idx] = nearest.numpy()[keep]
        res.ratio[idx] = ratio.numpy()[keep]
        res.ssim[idx] = ssim[keep]
        res.aligned[idx] = aligned.numpy()[keep]
        for j in np.nonzero(keep)[0]:
            res.transform[start + j] = {
                "flip_axes": list(self._flips[int(b_flip[j])]),
                "zoom": round(float(b_zoom[j]), 4),
                "rotation_deg": round(float(b_rot[j]), 2),
                "shift_px": [round(float(v), 2) for v in b_shift[j]],
            }

    def _affine(self, flip: torch.Tensor, zoom: torch.Tensor, rot: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """affine_grid matrices (B, d, d+1) sampling the query at ``R F (p + s) / z``.

        The same form as ``_thetas`` plus a shift ``s`` (pixels, array-axis order), so that the
        warped query at ``x`` lines up with the reference at ``x`` (as ``num[s]`` in ``_ncc``).
        Differentiable in ``zoom``, ``rot`` (degrees) and ``shift``.
        """
        d = self.dims
        c, s = torch.cos(torch.deg2rad(rot)), torch.sin(torch.deg2rad(rot))
        zero, one = torch.zeros_like(c), torch.ones_like(c)
        if d == 2:
            rmat = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)
        else:
            rmat = torch.stack(
                [torch.stack([c, -s, zero], -1), torch.stack([s, c, zero], -1), torch.stack([zero, zero, one], -1)], -2
            )
        signs = torch.tensor([[-1.0 if a in f else 1.0 for a in range(d)][::-1] for f in self._flips])[flip]
        amat = rmat * signs[:, None, :] / zoom[:, None, None]
        offset = amat @ (shift.flip(-1) * (2.0 / self.grid))[..., None]
        return torch.cat([amat, offset], dim=-1)

    def _masked_ncc(self, warped: torch.Tensor, refs: torch.Tensor) -> torch.Tensor:
        """Masked NCC of aligned pairs: warped (B, 2, *g) query and field of view, refs (B, *g)."""
        d = self.dims
        m = warped[:, 1]
        q = warped[:, 0] * m
        num = (q * refs).flatten(1).sum(1)
        energy = (m * refs.pow(2)).flatten(1).sum(1)
        ref_energy = _sumsq(refs, d)
        q_norm = _sumsq(q, d).sqrt()
        ok = (energy >= self.envelope.min_overlap * ref_energy) & (ref_energy > 0) & (q_norm > 0)
        ncc = num / (q_norm * energy.clamp_min(1e-12).sqrt()).clamp_min(1e-12)
        return torch.where(ok, ncc, torch.zeros_like(ncc)).clamp(-1.0, 1.0)

    def _refine(self, qm, refs, flip, zoom, rot, shift) -> tuple[torch.Tensor, ...]:
        """Continuous local maximisation of the masked NCC over zoom, rotation and shift.

        The grid search of step (a) lands within half a step of the optimum; a half-pixel or 2%
        misalignment still costs several percent of NCC, as much as separates a copy from a
        look-alike subject. So, from (a)'s best transform (the flip stays fixed), each parameter
        is probed at +-delta, moved to the vertex of the parabola through the three values, and
        delta is halved, REFINE_STEPS times; everything stays inside the envelope, and the best
        transform seen wins. Derivative-free: autograd through grid_sample was ~10x slower.
        """
        env, d = self.envelope, self.dims
        # Parameters in units of 5% zoom (log), 5 degrees and 1 pixel.
        lo = torch.tensor([math.log(min(env.zooms)) / 0.05, min(env.rotations) / 5.0] + [-env.max_shift] * d)
        hi = torch.tensor([math.log(max(env.zooms)) / 0.05, max(env.rotations) / 5.0] + [env.max_shift] * d)
        p = torch.cat([torch.log(zoom)[:, None] / 0.05, rot[:, None] / 5.0, shift], dim=1)
        p = torch.maximum(torch.minimum(p, hi), lo)
        b, npar = p.shape
        eye = torch.eye(npar)

        def evaluate(params: torch.Tensor) -> torch.Tensor:  # (b, c, npar) -> (b, c)
            c = params.shape[1]
            flat = params.reshape(b * c, npar)
            theta = self._affine(flip.repeat_interleave(c), torch.exp(flat[:, 0] * 0.05), flat[:, 1] * 5.0, flat[:, 2:])
            src = qm.repeat_interleave(c, dim=0)
            grid = F.affine_grid(theta, list(src.shape), align_corners=False)
            warped = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            return self._masked_ncc(warped, refs.repeat_interleave(c, dim=0)).reshape(b, c)

        best = evaluate(p[:, None])[:, 0]
        delta = DEVA.get("d0", 5) / 10
        for _ in range(DEVA.get("rs", REFINE_STEPS)):
            probes = torch.cat([p[:, None] + delta * eye, p[:, None] - delta * eye], dim=1)
            probes = torch.maximum(torch.minimum(probes, hi), lo)
            f = evaluate(probes)  # (b, 2 npar)
            f_plus, f_minus = f[:, :npar], f[:, npar:]
            curv = 2.0 * best[:, None] - f_plus - f_minus
            # Vertex of the parabola where it is concave, else a full step toward the better side.
            step = torch.where(
                curv > 1e-9,
                0.5 * delta * (f_plus - f_minus) / curv.clamp_min(1e-9),
                delta * torch.sign(f_plus - f_minus),
            ).clamp(-delta, delta)
            moved = torch.maximum(torch.minimum(p + step, hi), lo)
            f_moved = evaluate(moved[:, None])[:, 0]
            # Keep the best of: the parabola's vertex, the best probe, the current point.
            all_p = torch.cat([moved[:, None], probes, p[:, None]], dim=1)
            all_f = torch.cat([f_moved[:, None], f, best[:, None]], dim=1)
            i = all_f.argmax(dim=1)
            p, best = all_p[torch.arange(b), i], all_f[torch.arange(b), i]
            delta *= 0.5
        return best, torch.exp(p[:, 0] * 0.05), p[:, 1] * 5.0, p[:, 2:]

    def _align(self, qm: torch.Tensor, thetas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each query (times its field of view) and its field of view, in the reference's frame."""
        grid = F.affine_grid(thetas, list(qm.shape), align_corners=False)
        warped = F.grid_sample(qm, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return warped[:, 0] * warped[:, 1], warped[:, 1]

    def _ssim(self, a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
        """Mean SSIM per pair of feature maps, in standardised units over ``ssim_range``.

        scikit-image's Gaussian-window SSIM (sigma 1.5, Wang et al.'s settings); MONAI's
        ``compute_ssim_and_cs`` gives the same numbers but its dense convolutions were ~10x
        slower here on CPU for small maps.
        """
        return np.array(
            [
                structural_similarity(
                    x, y, data_range=self.ssim_range, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
                )
                for x, y in zip(a.numpy(), b.numpy())
            ]
        )

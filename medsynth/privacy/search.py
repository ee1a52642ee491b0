"""Nearest reference of each query, by the best normalized cross-correlation over edits.

Feature maps (``features.py``) are body-standardised, pose-normalised and band-limited, and
zero (the body mean) outside the body, so they are already zero-mean. The similarity of a
query ``q`` with field of view ``m`` and a reference ``c`` shifted by ``s`` is

    NCC(s) = sum(m q c_s) / sqrt(sum(m q^2) * sum(m c_s^2))

a cosine weighted by the query's field of view (Padfield's masked NCC without re-centring, which
the zero-mean maps make unnecessary; ``m`` is fractional at edges after interpolation). Where the query sees everything (``m = 1``) it is the plain
NCC; where it was cropped through the body, the missing part counts neither way. An overlap
holding less than ``min_overlap`` of the reference's energy scores 0, so a small crop cannot
match everything. Shifts are searched by FFT: both terms are *circular* cross-correlations
(``irfft(Q * conj(C))``); the body sits in the middle of the grid with background around it,
so shifts up to ``max_shift`` pixels wrap only background.

The transform envelope (``envelope.py``): flips on every spatial axis; zooms from 0.8 to 1.25 in
geometric steps of 4.6%; rotations of 0, +-5 and +-10 degrees (2D in-plane; 3D about the axial
axis, array axis 0 of the ``SPL`` maps); shifts up to ``max_shift`` pixels. Pose normalisation
has already removed most of each (``features.py``), so the search is coarse to fine:

1. **Coarse retrieval.** Thumbnails (16x16 in 2D, 8x8x8 in 3D, box-filtered), zero-mean and
   unit-norm, so an inner product is the NCC at zero shift. Each query is expanded into its
   flips x the zooms next to 1 x the rotations; the ``PRESELECT * k`` references with the highest
   inner product over those variants are found by FAISS (``IndexFlatIP``, exact) when faiss-cpu
   is installed, else by a torch matmul (the same references).
2. **Re-ranking over the whole envelope grid.** Those references are scored by the masked NCC
   at zero shift for every flip, zoom and rotation of the envelope (thumbnails); the ``k`` best
   stay, each with its best transform.
3. **Shifts by FFT.** Each of the ``k`` is scored over shifts up to ``max_shift`` (thumbnail
   FFTs) around its best transform and the neighbouring zooms and rotations.
4. **Continuous refinement.** The ``refine`` best are scored at full resolution, maximising the
   masked NCC over zoom, rotation and shift continuously (inside the envelope) from step 3's
   best; a half-pixel or 2% misalignment costs as much NCC as separates a copy from a
   look-alike subject. The best is the nearest reference, its NCC the score, in ``[-1, 1]``;
   1 is a copy up to the edits above.

**Confirmation.** The query at its best transform is compared with the nearest reference (over
the query's field of view) by SSIM (scikit-image, Gaussian window, sigma 1.5). The adaptive
ratio is the nearest's distance ``1 - NCC`` over the mean distance to the other ``k - 1``
candidates, all from step 3: small when one reference stands out, about 1 when several are
equally near.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from skimage.metrics import structural_similarity

from medsynth.errors import InputError
from medsynth.privacy.envelope import Envelope, Warper, warp

try:  # optional: exact inner-product retrieval at scale; torch matmul gives the same candidates
    faiss: Any = importlib.import_module("faiss")
except ImportError:  # pragma: no cover - depends on the environment
    faiss = None

PRESELECT = 4  # step 1 keeps PRESELECT * k references for the masked re-ranking of step 2
# Step 3 tries each candidate's transform and these (zoom, rotation) index steps around it.
STENCIL = ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))
# Rounds of the continuous refinement (the probe halves each round): on the ``refine`` best
# candidates, then on the leader alone.
REFINE_ROUNDS = (2, 3)


@dataclass
class SearchResult:
    """Per query: best score, nearest reference, confirmation and the winning transform.

    ``nearest`` is -1 for a query with no body (score 0, SSIM NaN, ratio 1). ``aligned`` holds
    each query (over its field of view) at its best transform, in the nearest reference's frame.
    """

    score: np.ndarray  # (n,) float
    nearest: np.ndarray  # (n,) int
    ratio: np.ndarray  # (n,) float
    ssim: np.ndarray  # (n,) float
    aligned: np.ndarray  # (n, *grid) float32
    transform: list[dict[str, Any]]  # per query: flip axes, zoom, rotation (deg), shift (pixels)


def _pool(x: torch.Tensor, size: int, dims: int) -> torch.Tensor:
    """Box-filter the last ``dims`` axes down to ``size`` per axis."""
    lead = x.shape[:-dims]
    pool = F.adaptive_avg_pool2d if dims == 2 else F.adaptive_avg_pool3d
    out = pool(x.reshape(-1, 1, *x.shape[-dims:]), size)  # an int: that size on every axis
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


def _guarded_ncc(
    num: torch.Tensor, q_energy: torch.Tensor, energy: torch.Tensor, ref_energy: torch.Tensor, min_overlap: float
) -> torch.Tensor:
    """``num / sqrt(q_energy * energy)``, 0 where the overlap holds too little of the reference.

    With ``num = sum m q c``, ``q_energy = sum m q^2`` and ``energy = sum m c^2`` this is a cosine
    weighted by the field of view ``m`` (fractional at edges after interpolation), so it cannot
    exceed 1 (Cauchy-Schwarz); the clamp only removes rounding.
    """
    ok = (energy >= min_overlap * ref_energy) & (ref_energy > 0) & (q_energy > 0)
    ncc = num / (q_energy * energy).clamp_min(1e-24).sqrt()
    return torch.where(ok, ncc, torch.zeros_like(ncc)).clamp(-1.0, 1.0)


class FeatureSearch:
    """A reference set of feature maps, ready to be searched.

    Args:
        maps: ``(N, *grid)`` feature maps (``Features.maps``).
        envelope: the transform envelope and search effort.
        backend: step-1 retrieval: ``"auto"`` (FAISS if installed, else torch), ``"faiss"``
            or ``"torch"``.
        ssim_range: SSIM data range in feature units (the clipped range, ``2 * clip``).

    Example:
        >>> ref = FeatureSearch(train.maps, Envelope.default(2))     # doctest: +SKIP
        >>> res = ref.search(queries.maps, queries.fov)              # doctest: +SKIP
        >>> res.score, res.nearest                                   # doctest: +SKIP
    """

    def __init__(self, maps: np.ndarray, envelope: Envelope, backend: str = "auto", ssim_range: float = 10.0) -> None:
        ref = torch.as_tensor(np.asarray(maps, dtype=np.float32))
        if ref.dim() not in (3, 4) or ref.shape[0] == 0 or len(set(ref.shape[1:])) != 1:
            raise InputError(f"privacy search: need (N, *grid) square feature maps, N >= 1; got {tuple(ref.shape)}")
        self.dims = d = ref.dim() - 1
        self.grid = int(ref.shape[1])
        if self.grid % envelope.thumb:
            raise InputError(f"privacy search: thumbnail side {envelope.thumb} must divide the map side {self.grid}")
        if backend not in ("auto", "faiss", "torch"):
            raise InputError(f"privacy search backend: unknown {backend!r}; expected auto, faiss or torch")
        if backend == "faiss" and faiss is None:
            raise InputError("privacy search backend 'faiss' needs faiss-cpu: pip install faiss-cpu")
        self.envelope = env = envelope
        self.ssim_range = float(ssim_range)
        self.maps = ref
        self.thumbs = _pool(ref, env.thumb, d)
        self.desc = self._unit_flat(self.thumbs)
        self.backend = "faiss" if backend != "torch" and faiss is not None else "torch"
        self._faiss: Any = None
        if self.backend == "faiss":
            self._faiss = faiss.IndexFlatIP(self.desc.shape[1])
            self._faiss.add(self.desc.numpy())
        self._warper = Warper(d, self.grid)
        nz, nr = len(env.zooms), len(env.rotations)
        self._zooms = torch.tensor(env.zooms)
        self._rots = torch.tensor(env.rotations)
        # Every (zoom, rotation) of the envelope, unflipped: flips are applied by torch.flip.
        zz, rr = torch.meshgrid(torch.arange(nz), torch.arange(nr), indexing="ij")
        self._grid_z, self._grid_r = zz.reshape(-1), rr.reshape(-1)
        zero = torch.zeros(nz * nr, dtype=torch.long)
        self._envelope_thetas = self._warper.thetas(
            zero, self._zooms[self._grid_z], self._rots[self._grid_r], torch.zeros(nz * nr, d)
        )
        near = (self._grid_z - nz // 2).abs() <= 1  # the zooms next to 1.0, for step 1
        self._near_one = torch.nonzero(near).flatten()
        self._win = _window(self.grid, d, env.max_shift)

    def __len__(self) -> int:
        return int(self.maps.shape[0])

    @staticmethod
    def _unit_flat(x: torch.Tensor) -> torch.Tensor:
        """Rows of the flattened maps, zero-mean and unit-norm (all-constant rows stay 0)."""
        flat = x.reshape(x.shape[0], -1)
        flat = flat - flat.mean(dim=1, keepdim=True)
        norm = flat.norm(dim=1, keepdim=True)
        return torch.where(norm > 1e-8, flat / norm.clamp_min(1e-8), torch.zeros_like(flat)).contiguous()

    # -- steps 1 and 2 -----------------------------------------------------------------------

    def _candidates(self, qm: torch.Tensor, exclude: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
        """Top-k references with each one's best (flip, zoom index, rotation index).

        Steps 1 (plain NCC retrieval of ``PRESELECT * k``) and 2 (masked NCC over the whole
        envelope grid at zero shift), on thumbnails.
        """
        n, d = qm.shape[0], self.dims
        # Step 1 variants: thumbnails of every flip x zoom next to 1 x rotation.
        near = self._warper.flipped(
            warp(_pool(qm[:, :1], self.envelope.thumb, d), self._envelope_thetas[self._near_one])
        )
        nv = near.shape[1] * near.shape[2]
        desc = self._unit_flat(near.reshape(n * nv, -1)).reshape(n, nv, -1)
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
        # Step 2: masked NCC at zero shift, every envelope variant x preselected reference, at
        # full resolution where affordable (2D: thumbnails rank look-alike subjects too coarsely).
        if self.envelope.rerank_full:
            full, ref = self._warper.flipped(warp(qm, self._envelope_thetas)), self.maps
        else:
            full, ref = (
                self._warper.flipped(warp(_pool(qm, self.envelope.thumb, d), self._envelope_thetas)),
                self.thumbs,
            )
        nflip, nzr = full.shape[1], full.shape[2]  # (n, flips, zooms x rotations, 2, ...)
        full = full.reshape(n, nflip * nzr, 2, -1)
        ref = ref.reshape(len(self), -1)[pre]  # (n, k1, pixels)
        mq, m = full[:, :, 0] * full[:, :, 1], full[:, :, 1]
        num = torch.einsum("nvt,nkt->nvk", mq, ref)
        energy = torch.einsum("nvt,nkt->nvk", m, ref.pow(2))
        q_energy = (mq * full[:, :, 0]).sum(-1)[..., None]
        score = _guarded_ncc(num, q_energy, energy, ref.pow(2).sum(-1)[:, None], self.envelope.min_overlap)
        best, variant = score.max(dim=1)  # (n, k1)
        top = best.topk(k, dim=1).indices
        variant = variant.gather(1, top)
        zr = variant % nzr
        return pre.gather(1, top), variant // nzr, self._grid_z[zr], self._grid_r[zr]

    # -- step 3 ------------------------------------------------------------------------------

    def _shift_search(self, qm, cand, flip, zi, ri) -> tuple[torch.Tensor, ...]:
        """Masked NCC over FFT shifts, around each candidate's transform +-1 step
        in zoom and rotation. Returns score, zoom index, rotation index and shift (pixels)."""
        env, d = self.envelope, self.dims
        n, k = cand.shape
        stencil = torch.tensor(STENCIL)  # (S, 2): zoom and rotation steps
        ns = stencil.shape[0]
        zz = (zi[..., None] + stencil[:, 0]).clamp(0, len(env.zooms) - 1)  # (n, k, S)
        rr = (ri[..., None] + stencil[:, 1]).clamp(0, len(env.rotations) - 1)
        ff = flip[..., None].expand(n, k, ns)
        thetas = self._warper.thetas(
            ff.reshape(-1), self._zooms[zz.reshape(-1)], self._rots[rr.reshape(-1)], torch.zeros(n * k * ns, d)
        )
        variants = warp(qm, thetas.reshape(n, k * ns, d, d + 1))
        variants = variants.reshape(n, k, ns, 2, *variants.shape[3:])
        axes = tuple(range(-d, 0))
        mq, m = variants[:, :, :, 0] * variants[:, :, :, 1], variants[:, :, :, 1]
        refs = self.maps[cand]  # (n, k, *g)
        t = self.grid
        mask, shift_vals = self._win
        spec_c = torch.fft.rfftn(refs, dim=axes).conj()[:, :, None]
        spec_c2 = torch.fft.rfftn(refs.pow(2), dim=axes).conj()[:, :, None]
        # num[s] = sum_x q(x + s) c(x); energy[s] = sum_x m(x + s) c(x)^2, the reference's energy
        # inside the shifted query's field of view.
        num = torch.fft.irfftn(torch.fft.rfftn(mq, dim=axes) * spec_c, s=(t,) * d, dim=axes)[..., mask]
        energy = torch.fft.irfftn(torch.fft.rfftn(m, dim=axes) * spec_c2, s=(t,) * d, dim=axes)[..., mask]
        q_energy = (mq * variants[:, :, :, 0]).flatten(-d).sum(-1)[..., None]
        ncc = _guarded_ncc(num, q_energy, energy, _sumsq(refs, d)[..., None, None], env.min_overlap)
        by_variant, shift_i = ncc.max(dim=3)
        score, v = by_variant.max(dim=2)
        shift = shift_vals[shift_i.gather(2, v[..., None])[..., 0]].float()
        return score, zz.gather(2, v[..., None])[..., 0], rr.gather(2, v[..., None])[..., 0], shift

    # -- step 4 ------------------------------------------------------------------------------

    def _refine(self, qm, refs, flip, zoom, rot, shift, rounds: int, delta: float = 1.0) -> tuple[torch.Tensor, ...]:
        """Continuous local maximisation of the masked NCC over zoom, rotation and shift.

        Each parameter is probed at +-delta, moved to the vertex of the parabola through the
        three values (a full step toward the better side where it is not concave), and delta
        halves; ``rounds`` rounds, inside the envelope; the best transform seen wins. The flip
        stays fixed. Derivative-free: autograd through grid_sample was ~10x slower on CPU.
        Returns the best score and its zoom, rotation and shift.
        """
        env, d = self.envelope, self.dims
        # Parameters in units of 5% zoom (log), 5 degrees and 1 pixel.
        lo = torch.tensor([math.log(min(env.zooms)) / 0.05, min(env.rotations) / 5.0] + [-env.max_shift] * d)
        hi = torch.tensor([math.log(max(env.zooms)) / 0.05, max(env.rotations) / 5.0] + [env.max_shift] * d)
        p = torch.cat([torch.log(zoom)[:, None] / 0.05, rot[:, None] / 5.0, shift], dim=1)
        p = torch.maximum(torch.minimum(p, hi), lo)
        b, npar = p.shape
        eye = torch.eye(npar)
        c = refs.flatten(1)
        c2 = c.pow(2)
        c_energy = c2.sum(-1)[:, None]

        def evaluate(params: torch.Tensor) -> torch.Tensor:  # (b, v, npar) -> (b, v)
            v = params.shape[1]
            flat = params.reshape(b * v, npar)
            theta = self._warper.thetas(
                flip.repeat_interleave(v), torch.exp(flat[:, 0] * 0.05), flat[:, 1] * 5.0, flat[:, 2:]
            )
            warped = warp(qm, theta.reshape(b, v, d, d + 1))  # (b, v, 2, *g)
            q, m = warped[:, :, 0].flatten(2), warped[:, :, 1].flatten(2)
            mq = m * q
            num = torch.einsum("bcp,bp->bc", mq, c)
            q_energy = torch.einsum("bcp,bcp->bc", mq, q)
            energy = torch.einsum("bcp,bp->bc", m, c2)
            return _guarded_ncc(num, q_energy, energy, c_energy, env.min_overlap)

        best = evaluate(p[:, None])[:, 0]
        for _ in range(rounds):
            probes = torch.cat([p[:, None] + delta * eye, p[:, None] - delta * eye], dim=1)
            probes = torch.maximum(torch.minimum(probes, hi), lo)
            f = evaluate(probes)  # (b, 2 npar)
            f_plus, f_minus = f[:, :npar], f[:, npar:]
            curv = 2.0 * best[:, None] - f_plus - f_minus
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

    # -- the search --------------------------------------------------------------------------

    def _chunk(self) -> int:
        """Queries per batch, keeping the largest intermediate tensors near 128 MB."""
        env, d = self.envelope, self.dims
        grid_variants = len(self._warper.flips) * len(env.zooms) * len(env.rotations) * env.thumb**d * 2 * 4
        step2 = len(self._warper.flips) * len(env.zooms) * len(env.rotations) * PRESELECT * env.k * 4 * 3
        step3 = env.k * len(STENCIL) * self.grid**d * 10 * 4
        step4 = env.refine * (2 * d + 5) * self.grid**d * 2 * 4 * 3
        step1 = 0 if self._faiss is not None else len(self._warper.flips) * len(self._near_one) * len(self) * 4
        return max(1, min(128, int(128e6 // max(grid_variants, step1, step2, step3, step4))))

    def search(
        self, maps: np.ndarray, fov: np.ndarray | None = None, exclude: np.ndarray | None = None
    ) -> SearchResult:
        """Score every query against the reference set.

        Args:
            maps: ``(n, *grid)`` query feature maps.
            fov: ``(n, *grid)`` their fields of view (``Features.fov``); default: everything.
            exclude: optional ``(n,)`` reference index to skip per query (-1: none), to search a
                set against itself.
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
                self._search_chunk(q_all[start:stop], m_all[start:stop], ex_all[start:stop], k, res, start)
        return res

    def _search_chunk(self, q, m, ex, k, res: SearchResult, start: int) -> None:
        env, d = self.envelope, self.dims
        n = q.shape[0]
        rows = torch.arange(n)
        qm = torch.stack([q, m], dim=1)
        cand, flip, zi, ri = self._candidates(qm, ex, k)
        s3, zi, ri, shift = self._shift_search(qm, cand, flip, zi, ri)
        r = min(env.refine, k)
        top = s3.topk(r, dim=1).indices
        pick = (rows[:, None].expand(n, r), top)
        qm_r = qm[:, None].expand(n, r, *qm.shape[1:]).reshape(n * r, *qm.shape[1:])
        s4, zoom, rot, sh = self._refine(
            qm_r,
            self.maps[cand[pick]].reshape(n * r, *q.shape[1:]),
            flip[pick].reshape(-1),
            self._zooms[zi[pick]].reshape(-1),
            self._rots[ri[pick]].reshape(-1),
            shift[pick].reshape(n * r, d),
            rounds=REFINE_ROUNDS[0],
        )
        s4 = s4.reshape(n, r)
        best_t = s4.argmax(dim=1)
        best = top[rows, best_t]
        flat = rows * r + best_t
        b_flip = flip[rows, best]
        # Only the leader goes on, with the finer probes of the remaining rounds.
        score, b_zoom, b_rot, b_shift = self._refine(
            qm,
            self.maps[cand[rows, best]],
            b_flip,
            zoom[flat],
            rot[flat],
            sh[flat],
            rounds=REFINE_ROUNDS[1],
            delta=0.5 ** REFINE_ROUNDS[0],
        )
        dist = (1.0 - s3).clamp_min(0.0)
        others = torch.ones_like(dist, dtype=torch.bool)
        others[rows, best] = False
        mean_other = (dist * others).sum(1) / others.sum(1).clamp_min(1)
        ratio = torch.where(others.any(1), dist[rows, best] / mean_other.clamp_min(1e-12), torch.ones(n))
        nearest = cand[rows, best]
        warped = warp(qm, self._warper.thetas(b_flip, b_zoom, b_rot, b_shift)[:, None])[:, 0]
        aligned, fov = warped[:, 0] * warped[:, 1], warped[:, 1]
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
                "flip_axes": list(self._warper.flips[int(b_flip[j])]),
                "zoom": round(float(b_zoom[j]), 4),
                "rotation_deg": round(float(b_rot[j]), 2),
                "shift_px": [round(float(v), 2) for v in b_shift[j]],
            }

    def _ssim(self, a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
        """Mean SSIM per pair of feature maps, in standardised units over ``ssim_range``.

        scikit-image's Gaussian-window SSIM (sigma 1.5, Wang et al.'s settings); MONAI's
        ``compute_ssim_and_cs`` gives the same numbers but was ~10x slower here on CPU for
        small maps.
        """
        return np.array(
            [
                structural_similarity(
                    x, y, data_range=self.ssim_range, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
                )
                for x, y in zip(a.numpy(), b.numpy())
            ]
        )

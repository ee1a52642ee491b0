"""The lesion privacy gate: every inserted lesion checked against the training lesions.

Lesion insertion (``medsynth.lesions``) paints a lesion made by the small lesion model into a
background. With about ten training lesions a class, that model is where memorization happens,
so each inserted lesion is compared with the **training lesions** (one crop per connected
component of the training masks), with the whole-image check's machinery: the same
``FeatureSearch`` and transform envelope (flips, zooms 0.8-1.25, rotations up to 10 degrees,
shifts), the same ``PrivacyIndex`` (saved in ``MODEL_DIR/lesion/privacy/``) and the same
calibration (tau is the q-quantile of held-out lesion -> training lesion similarity, per group
with at least ``min_group_size`` held-out lesions, pooled otherwise). On top of the envelope the
search tries every axis permutation that keeps the crop's shape (a transpose; with the flips
these are all the quarter turns), since a lesion, unlike a chest, has no upright pose.

**The lesion alone.** ``lesion_crop`` sets every voxel of the scan outside the lesion mask to
the lesion's own mean intensity (the neutral value) *on the scan's grid*, then samples a box
centred on the mask's centre of mass at the crop's spacing, so no sample mixes in a voxel of
the surroundings: a training lesion pasted into another scan, at another place, in other
anatomy, gives the same crop as its source, and a new lesion in anatomy like a training
lesion's does not score high for that. No margin (``NEUTRAL_MARGIN = 0``), measured on
2D 64^2 CT phantoms (15 nodules, 15 masses; 40 + 40 held out; q = 0.95): a 1-voxel ring of lung
outweighed the lesion (held-out nodules matched at median 0.98, tau 0.995, 5 of 10 pasted copies
flagged); without it tau is 0.977, 10 of 10 copies (flipped, turned) score 1.000, and one lesion
in two backgrounds scores identically. The partial-volume rim inside the mask still carries the lesion's outline.

**Features.** The whole-image features (``features.py``) were measured on the same neutralised
crops: they work about as well on phantoms (tau 0.975, copies 1.000) but find a "body" by a
threshold between the 1st and 99th percentile, which on a neutralised crop can be the whole
crop or only the lesion's bright part depending on the lesion's contrast, and pose
normalisation then rescales that "body" to a fixed radius: lesions lose their size (held-out
masses matched training masses at median 0.88, against 0.82 with the maps below). A lesion
map is instead the crop minus its neutral value (0 outside the lesion, zero mean inside),
divided by its RMS, clipped, resampled over the crop's box to the default grid (32 pixels per
axis in 2D, 16 in 3D) and band-limited like the whole-image maps: the lesion keeps its
physical size, and the envelope's zooms see through resizing by 25%. The index stores a
``FeatureConfig`` for its grid and clip; its ``features``/``check`` (whole-image features)
do not apply to lesion crops: use ``check_lesions``.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage as ndi

from medsynth.conditions import group_key
from medsynth.errors import InputError
from medsynth.io.atomic import atomic_path
from medsynth.io.scan import Scan
from medsynth.lesions.composite import resample_to
from medsynth.lesions.morphology import label_components
from medsynth.models.verify import record_folder
from medsynth.privacy.calibration import check_quantile
from medsynth.privacy.envelope import Envelope
from medsynth.privacy.features import FeatureConfig, Features
from medsynth.privacy.index import PrivacyIndex, PrivacyVerdict
from medsynth.privacy.search import FeatureSearch, SearchResult

if TYPE_CHECKING:
    from medsynth.data.catalog import Catalog

__all__ = ["LESION_INDEX_DIR", "build_lesion_index", "check_lesions", "lesion_crop", "load_lesion_index"]

LESION_INDEX_DIR = "lesion/privacy"  # relative to the model directory
CROP_SETTINGS = "lesion_crop.json"  # beside index.json: the crop the index was built with
CROP_VERSION = 1
NEUTRAL_MARGIN = 0  # voxels of surroundings kept around the mask (see the module docstring)
MIN_GROUP_SIZE = 50  # as the whole-image index
SELFTEST_SOURCES = 8


# -- the crop -------------------------------------------------------------------------------


def _spatial_mask(mask: np.ndarray, scan: Scan, what: str) -> np.ndarray:
    m = np.asarray(mask) != 0
    if m.ndim == scan.spatial_dims + 1 and m.shape[0] == 1:
        m = m[0]
    if m.shape != scan.shape:
        raise InputError(f"{what or 'lesion'}: mask of shape {m.shape} does not lie on the scan's grid {scan.shape}")
    if not m.any():
        raise InputError(f"{what or 'lesion'}: the lesion mask is empty; nothing to check")
    return m


def _crop_affine(scan: Scan, first: np.ndarray, step: np.ndarray) -> np.ndarray:
    """Index -> RAS of the crop: the scan's axes scaled by ``step``, voxel 0 at scan index ``first``."""
    d = len(step)
    affine = scan.affine.copy()
    affine[:3, :d] = scan.affine[:3, :d] * step
    affine[:3, 3] = (scan.affine @ np.concatenate([first, np.zeros(3 - d), [1.0]]))[:3]
    return affine


def lesion_crop(scan: Scan, mask: np.ndarray, *, spacing: Sequence[float], size: Sequence[int], what: str = "") -> Scan:
    """The lesion alone: a ``size``-voxel box at ``spacing`` mm around the mask's centre of mass.

    Sampled linearly from the scan's own grid (Gaussian pre-smoothing when shrinking) after every
    voxel outside the mask was set to the lesion's mean (the neutral value; off-image voxels
    too), in the scan's modality units; crop voxels no lesion voxel reaches hold exactly the
    neutral value, the crop's most frequent one.
    A mask of several components is cropped as one, around their joint centre of mass
    (``build_lesion_index`` splits masks into components first).

    Args:
        scan: the scan holding the lesion.
        mask: bool, the scan's spatial shape (or with one leading channel).
        spacing: the crop's voxel size in mm, one per spatial axis.
        size: the crop's shape in voxels.
        what: a label for error messages.

    Returns:
        A ``Scan`` of shape ``size`` (the scan's channels) whose affine places it in the scan's
        patient space, its modality the scan's.

    Raises:
        InputError: a mask off the scan's grid or empty; spacing/size of the wrong length.
    """
    m = _spatial_mask(mask, scan, what)
    dims = scan.spatial_dims
    if len(spacing) != dims or len(size) != dims or min(spacing) <= 0 or min(size) < 1:
        raise InputError(f"lesion crop: expected {dims} positive spacings and sizes; got {list(spacing)}, {list(size)}")
    size = tuple(int(s) for s in size)
    spacing = tuple(float(s) for s in spacing)
    # Sample points centred on the centre of mass itself, not on its nearest voxel: a flipped or
    # turned copy is then sampled at the mirrored points, and its map is the mirrored map
    # (a half-voxel offset would become a shift the search must find as well as the flip).
    centre = np.asarray(ndi.center_of_mass(m))
    step = np.asarray(spacing) / np.asarray(scan.spacing)
    axes = [c + (np.arange(n) - (n - 1) / 2.0) * st for c, n, st in zip(centre, size, step)]
    points = np.stack(np.meshgrid(*axes, indexing="ij"))
    image = scan.array.astype(np.float32)
    neutral = image[:, m].mean(axis=1)
    if NEUTRAL_MARGIN:
        m = ndi.binary_dilation(m, iterations=NEUTRAL_MARGIN)
    # Neutralised on the scan's own grid, before any interpolation, so no sample mixes in a
    # voxel of the surroundings: outside the mask every voxel is the lesion's mean.
    image = np.where(m[None], image, neutral.reshape(-1, *([1] * dims)))
    weight = m.astype(np.float32)
    if (step > 1.0).any():  # shrinking: smooth first so the samples do not alias
        sigma = [max(0.0, (st - 1.0) / 2.0) for st in step]
        image = np.stack([ndi.gaussian_filter(c, sigma, mode="nearest") for c in image])
        weight = ndi.gaussian_filter(weight, sigma)
    crop = np.stack(
        [ndi.map_coordinates(c, points, order=1, mode="constant", cval=float(v)) for c, v in zip(image, neutral)]
    )
    cover = ndi.map_coordinates(weight, points, order=1, mode="constant", cval=0.0)
    # Exactly the neutral value wherever no lesion voxel reached the sample (interpolating a
    # constant need not give it back bit for bit): ``lesion_maps`` finds the lesion as the
    # voxels that differ from the crop's most frequent value.
    out = np.where(cover[None] > 1e-6, crop, neutral.reshape(-1, *([1] * dims))).astype(np.float32)
    first = points.reshape(dims, -1)[:, 0]
    meta = {k: v for k, v in scan.metadata.items() if k in ("pathology", "pathologies", "synthetic")}
    return Scan(out, _crop_affine(scan, first, step), scan.modality, meta)


# -- feature maps ---------------------------------------------------------------------------


def lesion_feature_config(spatial_dims: int) -> FeatureConfig:
    """The maps' grid and clip (stored in the index); ``work`` is unused for lesion maps."""
    base = FeatureConfig.default(spatial_dims)
    return FeatureConfig(spatial_dims, base.grid, base.grid, clip=base.clip, smooth=base.smooth)


def _one_map(crop: Scan, cfg: FeatureConfig) -> np.ndarray | None:
    arr = crop.array.mean(axis=0).astype(np.float64)
    values, counts = np.unique(arr, return_counts=True)
    neutral = values[int(np.argmax(counts))]
    dev = arr - neutral
    lesion = dev != 0.0
    if lesion.sum() < 1:
        return None
    rms = float(np.sqrt(np.mean(dev[lesion] ** 2)))
    if rms <= 1e-6 * max(1.0, abs(float(neutral))):
        return None
    z = np.clip(dev / rms, -cfg.clip, cfg.clip)
    grid = (cfg.grid,) * cfg.spatial_dims
    # The crop's physical box onto the grid, keeping voxel edges (the crop's own spacing is what
    # the index stores, so every crop of an index has the same box).
    z = resample_to(z.astype(np.float32), (1.0,) * z.ndim, tuple(n / cfg.grid for n in z.shape), shape=grid)
    z = ndi.gaussian_filter(z.astype(np.float64), cfg.smooth)
    return z.astype(np.float32)


def lesion_maps(crops: Sequence[Scan], cfg: FeatureConfig) -> Features:
    """Feature maps of lesion crops (``lesion_crop``); a crop with no contrast is ``empty``."""
    n = len(crops)
    shape = (n,) + (cfg.grid,) * cfg.spatial_dims
    maps, fov, empty = np.zeros(shape, np.float32), np.ones(shape, np.float32), np.zeros(n, bool)
    for i, crop in enumerate(crops):
        out = _one_map(crop, cfg)
        if out is None:
            empty[i] = True
        else:
            maps[i] = out
    return Features(maps, fov, empty)


def permutations(size: Sequence[int], spacing: Sequence[float]) -> list[tuple[int, ...]]:
    """Axis orders that keep the crop's physical box (with the envelope's flips: the quarter turns)."""
    extent = [round(float(n) * float(s), 6) for n, s in zip(size, spacing, strict=True)]
    return [p for p in itertools.permutations(range(len(extent))) if [extent[a] for a in p] == extent]


def _search_permuted(
    search: FeatureSearch, maps: np.ndarray, perms: Sequence[tuple[int, ...]], exclude: np.ndarray | None = None
) -> SearchResult:
    """``search.search`` of every permutation of each map; per query the best one's result."""
    best: SearchResult | None = None
    for p in perms:
        res = search.search(np.ascontiguousarray(np.transpose(maps, (0, *(a + 1 for a in p)))), None, exclude)
        if best is None:
            best = res
            continue
        better = res.score > best.score
        for name in ("score", "nearest", "ratio", "ssim", "aligned"):
            getattr(best, name)[better] = getattr(res, name)[better]
        for i in np.nonzero(better)[0]:
            best.transform[i] = {**res.transform[i], "axes": list(p)}
    assert best is not None
    return best


# -- the index ------------------------------------------------------------------------------


def _crop_settings(spacing: Sequence[float], size: Sequence[int]) -> dict[str, Any]:
    return {
        "version": CROP_VERSION,
        "spacing": [float(s) for s in spacing],
        "size": [int(s) for s in size],
        "neutral_margin": NEUTRAL_MARGIN,
    }


def _lesions_of(catalog: Catalog, spacing: Sequence[float], size: Sequence[int]) -> tuple[list[Scan], list[str]]:
    """One crop per connected lesion of every mask in ``catalog``, and its group."""
    crops, groups = [], []
    for i, record in enumerate(catalog.records):
        if record.mask is None:
            continue
        scan = catalog.load(i)
        mask = catalog.load_mask(i, scan)
        if mask is None or not mask.any():
            continue
        labels, count, _ = label_components(np.asarray(mask).reshape(scan.shape))
        for k in range(1, count + 1):
            crops.append(lesion_crop(scan, labels == k, spacing=spacing, size=size, what=f"row {i + 1}"))
            groups.append(group_key(record.pathologies, record.modality))
    return crops, groups


def _selftest(
    crops: Sequence[Scan], feats: Features, groups: Sequence[str], table: dict[str, float], search: FeatureSearch, perms
) -> dict[str, Any]:
    """Recall over planted copies of training lesions: exact, flipped, quarter turn, 5% noise."""
    rng = np.random.default_rng(len(crops))
    usable = [i for i in range(len(crops)) if not feats.empty[i]]
    pick = sorted(rng.choice(usable, size=min(SELFTEST_SOURCES, len(usable)), replace=False)) if usable else []
    last = crops[0].spatial_dims if crops else 2
    turn = (1, 2) if len(perms) > 1 else None
    edits: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "exact": lambda a: a,
        "flipped": lambda a: np.flip(a, axis=-1),
        "noise-5%": lambda a: a + rng.normal(0.0, 0.05 * float(np.ptp(a)), a.shape) * (a != a.flat[0]),
    }
    if turn is not None:
        edits["rotated-90"] = lambda a: np.rot90(a, axes=(last - 1, last))
    queries, sources, kinds = [], [], []
    for i in pick:
        for kind, edit in edits.items():
            queries.append(crops[i].with_array(np.ascontiguousarray(edit(crops[i].array)).astype(np.float32)))
            sources.append(int(i))
            kinds.append(kind)
    if not queries:
        return {"planted": 0, "recall": float("nan"), "per_edit": {}, "sources": 0}
    res = _search_permuted(search, lesion_maps(queries, lesion_feature_config(search.dims)).maps, perms)
    tau = np.array([table.get(groups[s], table["pooled"]) for s in sources])
    hit = (res.score > tau) & (res.nearest == np.array(sources))
    per_edit = {k: float(np.mean([h for h, kk in zip(hit, kinds) if kk == k])) for k in edits}
    return {"planted": len(queries), "recall": float(hit.mean()), "per_edit": per_edit, "sources": len(pick)}


def build_index(
    train: Sequence[Scan],
    holdout: Sequence[Scan],
    *,
    train_groups: Sequence[str],
    holdout_groups: Sequence[str],
    perms: Sequence[tuple[int, ...]],
    quantile: float = 0.99,
    min_group_size: int = MIN_GROUP_SIZE,
) -> PrivacyIndex:
    """A ``PrivacyIndex`` of lesion crops: training maps, holdout->train scores, tau, self-test."""
    check_quantile(quantile)
    if len(train) < 2 or len(holdout) < 1:
        raise InputError(
            f"lesion privacy index: need 2 training and 1 held-out lesions; got {len(train)}, {len(holdout)}"
        )
    cfg = lesion_feature_config(train[0].spatial_dims)
    env = Envelope.default(cfg.spatial_dims)
    tr, ho = lesion_maps(train, cfg), lesion_maps(holdout, cfg)
    if tr.empty.all() or ho.empty.all():
        raise InputError("lesion privacy index: no training or no held-out lesion has any contrast to compare")
    tr_maps = tr.maps.astype(np.float16).astype(np.float32)
    ho_maps = ho.maps.astype(np.float16).astype(np.float32)
    search = FeatureSearch(tr_maps, env, ssim_range=2 * cfg.clip)
    hres = _search_permuted(search, ho_maps, perms)
    query = np.nonzero(~tr.empty)[0]
    sres = _search_permuted(search, tr_maps[query], perms, exclude=query)
    index = PrivacyIndex(
        feature_config=cfg,
        envelope=env,
        train_maps=tr_maps,
        train_groups=list(train_groups),
        train_ids=[f"lesion-{i:05d}" for i in range(len(train))],
        holdout_maps=ho_maps,
        holdout_groups=list(holdout_groups),
        holdout_scores=np.where(ho.empty, 0.0, hres.score),
        holdout_empty=ho.empty,
        train_self_scores=sres.score,
        train_self_nearest=sres.nearest,
        train_self_query=query,
        quantile=quantile,
        min_group_size=min_group_size,
    )
    index._train_search = search
    index.selftest = _selftest(train, tr, train_groups, index.thresholds(), search, perms)
    return index


def build_lesion_index(
    model_dir: str | Path,
    train: Catalog,
    holdout: Catalog,
    *,
    quantile: float = 0.99,
    log: Callable[[str], None] = print,
) -> Path | None:
    """Index the training lesions of a model directory's lesion model; save it in ``lesion/privacy``.

    Crops are cut at the lesion model's ``spacing`` and ``crop_size`` (the lesion plus what the
    model saw around it; everything outside the mask is neutralised anyway), one per connected
    lesion of each mask of ``train`` (the training lesions, ids ``lesion-00000``...) and of
    ``holdout`` (calibration); groups are ``"pathology/modality"``. Rows without a mask or with
    an empty one (normal scans) contribute nothing.

    Returns:
        The folder, or None after logging one line saying why no index was built (no lesion
        model, no training or no held-out lesions).

    Raises:
        InputError: unreadable scans or masks, a damaged lesion model, a bad quantile.
    """
    from medsynth.lesions.model import load_lesion_model
    from medsynth.privacy.catalogs import check_disjoint

    check_quantile(quantile)
    model_dir = Path(model_dir)
    model = load_lesion_model(model_dir)
    if model is None:
        log(f"lesion privacy index: not built, {model_dir} has no lesion model (lesion/)")
        return None
    spacing, size = model.config.spacing, model.config.crop_size
    check_disjoint(train, holdout)
    # Only lesions of the pathologies the lesion model makes: what it could have memorised.
    known = set(model.config.pathologies)
    train, holdout = (
        c.subset([i for i, r in enumerate(c.records) if set(r.pathologies) <= known]) for c in (train, holdout)
    )
    tr, tg = _lesions_of(train, spacing, size)
    if len(tr) < 2:
        log(f"lesion privacy index: not built, the training set has {len(tr)} lesion(s) in its masks; need 2")
        return None
    ho, hg = _lesions_of(holdout, spacing, size)
    if not ho:
        log(
            "lesion privacy index: not built, the holdout has no lesion masks to calibrate on; "
            "add held-out scans with masks (or set privacy.gate: false for insertion)"
        )
        return None
    index = build_index(
        tr, ho, train_groups=tg, holdout_groups=hg, perms=permutations(size, spacing), quantile=quantile
    )
    folder = model_dir / LESION_INDEX_DIR
    with atomic_path(folder) as tmp:
        index.save(tmp)
        (tmp / CROP_SETTINGS).write_text(json.dumps(_crop_settings(spacing, size), indent=1) + "\n", encoding="utf-8")
    record_folder(model_dir, LESION_INDEX_DIR)  # config.json's size and sha256 records (models.verify)
    tau = index.thresholds()["pooled"]
    log(f"lesion privacy index: {len(tr)} training and {len(ho)} held-out lesions, tau {tau:.4f} -> {folder}")
    return folder


def _remedy(folder: Path) -> str:
    return f"{folder}: {{}}; rebuild it with `medsynth train ...` (lesion model training) or set privacy.gate: false"


def load_lesion_index(model_dir: str | Path) -> PrivacyIndex:
    """The lesion index of a model directory, with its crop settings attached.

    Raises:
        InputError: absent or damaged (one line naming the folder and what to do).
    """
    folder = Path(model_dir) / LESION_INDEX_DIR
    msg = _remedy(folder)
    if not folder.is_dir():
        raise InputError(msg.format("no lesion privacy index"))
    try:
        settings = json.loads((folder / CROP_SETTINGS).read_text(encoding="utf-8"))
        if not isinstance(settings, dict) or settings.get("version") != CROP_VERSION:
            raise ValueError("version")
        spacing, size = [float(s) for s in settings["spacing"]], [int(s) for s in settings["size"]]
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise InputError(msg.format(f"damaged lesion privacy index (missing or unreadable {CROP_SETTINGS})")) from None
    try:
        index = PrivacyIndex.load(folder)
    except InputError as exc:
        first = str(exc).split(";")[0].replace(f"{folder}: ", "")
        raise InputError(msg.format(f"damaged lesion privacy index ({first})")) from None
    if len(spacing) != index.spatial_dims or len(size) != index.spatial_dims:
        raise InputError(msg.format("damaged lesion privacy index (crop settings of the wrong dimension)"))
    index.lesion_crop = {"spacing": spacing, "size": size}  # type: ignore[attr-defined]
    return index


def _settings_of(index: PrivacyIndex) -> tuple[list[float], list[int]]:
    crop = getattr(index, "lesion_crop", None)
    if not crop:
        raise InputError("check_lesions: this index has no lesion crop settings; load it with load_lesion_index")
    return crop["spacing"], crop["size"]


def check_lesions(
    index: PrivacyIndex,
    scans: Sequence[Scan],
    masks: Sequence[np.ndarray],
    groups: Sequence[str],
    *,
    quantile: float | None = None,
) -> list[PrivacyVerdict]:
    """Each scan's lesion (its mask on the scan's grid) checked against the training lesions.

    The lesion is cut with ``lesion_crop`` at the index's stored crop settings; ``nearest`` names
    the nearest training lesion (``lesion-00017``). Verdicts are the whole-image check's.

    Raises:
        InputError: lists of different lengths, an empty mask or one off its scan's grid, a scan
            of the other dimensionality.
    """
    if not len(scans) == len(masks) == len(groups):
        raise InputError(
            f"check_lesions: {len(scans)} scans, {len(masks)} masks and {len(groups)} groups; need one each"
        )
    if not scans:
        return []
    spacing, size = _settings_of(index)
    for i, scan in enumerate(scans):
        if scan.spatial_dims != index.spatial_dims:
            raise InputError(f"lesion[{i}]: a {scan.spatial_dims}D scan against a {index.spatial_dims}D lesion index")
    crops = [
        lesion_crop(s, m, spacing=spacing, size=size, what=f"lesion[{i}]") for i, (s, m) in enumerate(zip(scans, masks))
    ]
    return check_crops(index, crops, groups, quantile=quantile)


def check_crops(
    index: PrivacyIndex, crops: Sequence[Scan], groups: Sequence[str], *, quantile: float | None = None
) -> list[PrivacyVerdict]:
    """``check_lesions`` for crops already cut; the verdict of each crop's best axis order."""
    spacing, size = _settings_of(index)
    perms = permutations(size, spacing)
    feats = lesion_maps(crops, index.feature_config)
    best: list[PrivacyVerdict] | None = None
    for p in perms:
        order = (0, *(a + 1 for a in p))
        f = Features(np.ascontiguousarray(np.transpose(feats.maps, order)), feats.fov, feats.empty)
        out = index.check_features(f, groups, quantile=quantile)
        for v in out:
            v.transform = {**v.transform, "axes": list(p)}
        if best is None:
            best = out
            continue
        for i, v in enumerate(out):
            holdout = max(best[i].holdout_score, v.holdout_score)
            if v.score > best[i].score:
                best[i] = v
            best[i].holdout_score = holdout
            best[i].closer_to_train = bool(best[i].score > holdout)
    assert best is not None
    for i, v in enumerate(best):
        if feats.empty[i]:  # no contrast: nothing to compare (score 0, never flagged)
            v.nearest, v.nearest_index, v.aligned, v.ssim = "", -1, None, None
    return best

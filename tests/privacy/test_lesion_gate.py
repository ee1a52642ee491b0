"""The lesion privacy gate: inserted lesions against the training lesions (medsynth.privacy.lesions).

Phantom datasets with masks (2D 64^2 CT nodules and masses; one tiny 3D case): training
lesions pasted into other backgrounds must be flagged, new lesions mostly not, and the
surroundings must not move a lesion's score.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from scipy import ndimage as ndi

from medsynth.data.catalog import Catalog
from medsynth.data.phantoms import make_phantom, phantom_dataset, phantom_lesion_mask
from medsynth.errors import InputError
from medsynth.lesions.composite import composite
from medsynth.lesions.model import LesionModel, LesionModelConfig, save_lesion_model
from medsynth.lesions.morphology import label_components
from medsynth.lesions.placement import paste_mask, place
from medsynth.lesions.regions import resolve_region
from medsynth.privacy.calibration import flagged_rate_test
from medsynth.privacy.lesion_report import write_lesion_report
from medsynth.privacy.lesions import (
    LESION_INDEX_DIR,
    build_index,
    build_lesion_index,
    check_lesions,
    lesion_crop,
    load_lesion_index,
    permutations,
)

SPACING = [350.0 / 64] * 2
CROP = [24, 24]
QUANTILE = 0.95
UNET = {"channels": [8, 16], "attention_levels": [False, True], "num_head_channels": 8, "norm_num_groups": 4}
EDITS = {"copy": lambda a: a, "flip": lambda a: np.flip(a, 1), "rot90": lambda a: np.rot90(a)}


def _model_dir(path, dims=2, spacing=SPACING, crop=CROP):
    cfg = LesionModelConfig(
        spatial_dims=dims,
        crop_size=crop,
        spacing=spacing,
        pathologies=["mass", "nodule"],
        modalities=["CT"],
        intensity={"CT": {"kind": "linear", "lo": -1000, "hi": 1000}},
        unet={**UNET, "num_res_blocks": 1},
        cond_dim=8,
        margin=1,
    )
    save_lesion_model(LesionModel(cfg), path)
    return path


def _catalog(path, seed, counts):
    return Catalog.from_csv(
        phantom_dataset(path, dim=2, count=sum(counts.values()), seed=seed, class_counts=counts, masks=True)
    )


def _lesions(cat):
    """(scan, component mask, group) of every lesion, in build_lesion_index's order."""
    out = []
    for i, r in enumerate(cat.records):
        if r.mask is None:
            continue
        scan = cat.load(i)
        labels, n, _ = label_components(cat.load_mask(i, scan)[0])
        out += [(scan, labels == k, f"{r.pathology}/{r.modality}") for k in range(1, n + 1)]
    return out


def _paste(scan, mask, background, edit, rng):
    """The lesion's box (lesion and 3 voxels around it), edited, pasted into the lungs of ``background``."""
    box = tuple(slice(max(0, b.start - 3), b.stop + 3) for b in ndi.find_objects(mask.astype(np.int8))[0])
    image, small = edit(scan.array[0][box]), edit(mask[box])
    offset = place(small, resolve_region(background, "lungs"), rng, margin=2)
    full = paste_mask(background.shape, small, offset)
    layer = background.array.copy()
    layer[0][tuple(slice(o, o + n) for o, n in zip(offset, small.shape))] = image
    return background.with_array(composite(background.array, layer, full, margin=2, spacing=background.spacing)), full


@pytest.fixture(scope="module")
def gate(tmp_path_factory):
    root = tmp_path_factory.mktemp("lesion-gate")
    train = _catalog(root / "train", 1, {("nodule", "CT"): 10, ("mass", "CT"): 10, ("normal", "CT"): 3})
    holdout = _catalog(root / "holdout", 2, {("nodule", "CT"): 30, ("mass", "CT"): 30})
    model_dir = _model_dir(root / "model")
    lines: list[str] = []
    folder = build_lesion_index(model_dir, train, holdout, quantile=QUANTILE, log=lines.append)
    backgrounds = [make_phantom(dim=2, modality="CT", seed=900 + i, size=64) for i in range(8)]
    new = _lesions(_catalog(root / "new", 3, {("nodule", "CT"): 10, ("mass", "CT"): 10}))
    return {
        "root": root,
        "model": model_dir,
        "folder": folder,
        "lines": lines,
        "train": _lesions(train),
        "index": load_lesion_index(model_dir),
        "backgrounds": backgrounds,
        "new": new,
        "holdout": holdout,
    }


def test_pasted_training_lesions_are_flagged_and_matched(gate):
    rng = np.random.default_rng(0)
    index, bgs = gate["index"], gate["backgrounds"]
    assert gate["folder"] == gate["model"] / LESION_INDEX_DIR and len(index.train_ids) == 20
    for name, edit in EDITS.items():
        sources = list(range(0, 20, 3))
        cases = [_paste(*gate["train"][j][:2], bgs[k % len(bgs)], edit, rng) for k, j in enumerate(sources)]
        groups = [gate["train"][j][2] for j in sources]
        verdicts = check_lesions(index, [c[0] for c in cases], [c[1] for c in cases], groups)
        scores = [v.score for v in verdicts]
        assert all(not v.passed for v in verdicts), (name, scores, verdicts[0].threshold)
        assert [v.nearest for v in verdicts] == [f"lesion-{j:05d}" for j in sources], name
        assert min(scores) > 0.99, (name, scores)  # measured 1.000 for every copy, flip and turn


def test_new_lesions_are_flagged_at_about_one_minus_q(gate):
    new = gate["new"]
    verdicts = check_lesions(gate["index"], [s for s, _, _ in new], [m for _, m, _ in new], [g for _, _, g in new])
    flagged = sum(not v.passed for v in verdicts)
    assert flagged < len(new) // 4, [round(v.score, 3) for v in verdicts]
    assert not flagged_rate_test(flagged, len(verdicts), QUANTILE)[1]
    # the held-out lesions themselves: at most 1 - q above tau by construction, and not none below
    scores, tau = gate["index"].holdout_scores, gate["index"].thresholds()["pooled"]
    assert 0 < (scores > tau).mean() <= 1 - QUANTILE and scores.min() < tau


def test_the_surroundings_do_not_decide(gate):
    rng = np.random.default_rng(1)
    index, bgs = gate["index"], gate["backgrounds"]
    deltas = []
    for j, (scan, mask, group) in enumerate(gate["new"][::2]):
        a, b = (
            _paste(scan, mask, bgs[j % 8], EDITS["copy"], rng),
            _paste(scan, mask, bgs[(j + 3) % 8], EDITS["copy"], rng),
        )
        va, vb, vo = check_lesions(index, [a[0], b[0], scan], [a[1], b[1], mask], [group] * 3)
        deltas += [abs(va.score - vb.score), abs(va.score - vo.score)]
    assert max(deltas) < 0.01, deltas  # measured 0.0: nothing outside the mask reaches the crop


def test_lesion_crop_neutralises_outside_the_mask():
    scan = make_phantom(dim=2, pathologies="nodule", modality="CT", seed=5, size=64)
    mask = phantom_lesion_mask(dim=2, pathologies="nodule", seed=5, size=64)
    crop = lesion_crop(scan, mask, spacing=[4.0, 4.0], size=[20, 20])
    assert crop.shape == (20, 20) and crop.modality == "CT" and crop.spacing == pytest.approx((4.0, 4.0))
    values, counts = np.unique(crop.array, return_counts=True)
    assert counts.max() > 0.8 * crop.array.size  # all but the lesion is one neutral value
    assert values[counts.argmax()] == pytest.approx(float(scan.array[0][mask[0]].mean()), abs=1e-3)
    with pytest.raises(InputError, match="empty"):
        lesion_crop(scan, np.zeros(scan.shape, bool), spacing=[4.0, 4.0], size=[20, 20])


def test_saved_index_holds_opaque_ids_only(gate):
    meta = (gate["folder"] / "index.json").read_text()
    ids = json.loads(meta)["train_ids"]
    assert ids and all(re.fullmatch(r"lesion-\d{5}", i) for i in ids)
    for text in (meta, (gate["folder"] / "lesion_crop.json").read_text()):
        assert "case-" not in text and "phantom-s" not in text and str(gate["root"]) not in text
    assert len(gate["lines"]) == 1 and "20 training and 60 held-out lesions" in gate["lines"][0]


def test_missing_or_damaged_index_is_one_line(gate, tmp_path):
    with pytest.raises(InputError) as exc:
        load_lesion_index(tmp_path)
    assert "\n" not in str(exc.value) and "privacy.gate: false" in str(exc.value) and "medsynth train" in str(exc.value)
    import shutil

    for damage in ("lesion_crop.json", "index.safetensors"):
        copy = tmp_path / damage
        shutil.copytree(gate["folder"], copy / LESION_INDEX_DIR)
        (copy / LESION_INDEX_DIR / damage).write_bytes(b"\x00not it")
        with pytest.raises(InputError) as exc:
            load_lesion_index(copy)
        assert "\n" not in str(exc.value) and "damaged" in str(exc.value)


def test_no_holdout_lesions_or_no_model_builds_nothing(gate, tmp_path):
    normal = _catalog(tmp_path / "normal", 4, {("normal", "CT"): 3})
    train = gate["holdout"]
    lines: list[str] = []
    assert build_lesion_index(gate["model"], train, normal, log=lines.append) is None
    assert len(lines) == 1 and "holdout has no lesion" in lines[0]
    assert build_lesion_index(tmp_path, train, normal, log=lines.append) is None
    assert len(lines) == 2 and "no lesion model" in lines[1]


def test_report_shows_flagged_lesion_beside_its_nearest_training_lesion(gate, tmp_path):
    rng = np.random.default_rng(2)
    index = gate["index"]
    copy = _paste(*gate["train"][4][:2], gate["backgrounds"][0], EDITS["flip"], rng)
    scan, mask, group = gate["new"][0]
    verdicts = check_lesions(index, [copy[0], scan], [copy[1], mask], [gate["train"][4][2], group])
    crops = [lesion_crop(s, m, spacing=SPACING, size=CROP) for s, m in ((copy[0], copy[1]), (scan, mask))]
    rows = [v.to_dict() for v in verdicts]  # as read back from a manifest: no aligned maps
    js, page = write_lesion_report(
        tmp_path,
        index=index,
        case_ids=["case-00000", "case-00001"],
        verdicts=rows,
        crops=crops,
        backgrounds=["dataset", "synthetic"],
        settings={"quantile": QUANTILE},
    )
    summary = json.loads(js.read_text())
    assert summary["n_checked"] == 2 and summary["n_flagged"] >= 1 and "pooled" in summary["thresholds"]
    assert summary["samples"][0]["flagged"] and summary["samples"][0]["nearest"] == "lesion-00004"
    text = page.read_text()
    # The flagged lesion's row names its nearest training lesion and the tau that judged it; the
    # row under it holds its figure (its crop, the training lesion's map, their difference).
    row, figure = text[text.index("<tr><td>case-00000</td>") :].split("</tr>")[:2]
    group = summary["samples"][0]["group"]
    assert "<td>lesion-00004</td>" in row and (f"<td>{group} (pooled τ)</td>" in row or f"<td>{group}</td>" in row)
    assert figure.startswith('<tr class="msr-img"><td colspan=8><img src="data:image/png;base64,')
    assert "beside its nearest training match, and their difference" in figure
    assert ("<tr><td>case-00001</td>" in text) == summary["samples"][1]["flagged"]  # flagged cases only
    assert "<th>nearest training lesion</th>" in text and "<th>matched transform</th>" in text
    assert "Sensitive: this report contains feature maps of training lesions" in text
    assert "real scans from the user's dataset" in text and "not gated by the whole-image check" in text
    assert str(tmp_path) not in text and "phantom-s" not in text


def test_3d_pasted_copy_is_flagged_and_new_lesions_mostly_not():
    def mass(seed):
        scan = make_phantom(dim=3, pathologies="mass", modality="CT", seed=seed, size=32)
        labels, _, sizes = label_components(phantom_lesion_mask(dim=3, pathologies="mass", seed=seed, size=32)[0])
        return scan, labels == int(np.argmax(sizes)) + 1

    spacing, size = [350.0 / 32] * 3, [8, 8, 8]
    train = [mass(100 + i) for i in range(6)]
    holdout = [mass(200 + i) for i in range(12)]
    index = build_index(
        [lesion_crop(s, m, spacing=spacing, size=size) for s, m in train],
        [lesion_crop(s, m, spacing=spacing, size=size) for s, m in holdout],
        train_groups=["mass/CT"] * 6,
        holdout_groups=["mass/CT"] * 12,
        perms=permutations(size, spacing),
        quantile=0.9,
    )
    index.lesion_crop = {"spacing": spacing, "size": size}
    scan, mask = train[2]
    turned = scan.with_array(np.ascontiguousarray(np.rot90(scan.array, axes=(1, 3))))
    new = [mass(300 + i) for i in range(4)]
    verdicts = check_lesions(
        index,
        [scan, turned, *(s for s, _ in new)],
        [mask, np.ascontiguousarray(np.rot90(mask, axes=(0, 2))), *(m for _, m in new)],
        ["mass/CT"] * 6,
    )
    assert [v.passed for v in verdicts[:2]] == [False, False] and {v.nearest for v in verdicts[:2]} == {"lesion-00002"}
    assert sum(not v.passed for v in verdicts[2:]) <= 2, [v.score for v in verdicts]

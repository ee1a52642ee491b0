"""Lesion insertion against copy-paste, the oracle and the real baseline (issue #13, docs/evaluation.md).

Three experiments on built-in 2D phantoms at 64² (5.47 mm pixels), each with a real training set,
a lesion model trained on that set alone (``medsynth.lesions``: the model ``medsynth train`` builds
when the data has masks), its lesion privacy index, and a real test set of new subjects:

* ``ct`` (the claim): 300 CT scans each of normal, mass and effusion and only 10 CT nodules.
  Arms, each adding N nodule cases to the real set: ``copy-paste`` (the 10 training nodules
  flipped and pasted at random places inside the lungs of the training set's own normals),
  ``insertion`` (the lesion model's nodules inpainted into those normals, each one through the
  lesion privacy gate), ``oracle`` (N more real nodules from new subjects); N in ``COUNTS``.
* ``mr`` (modality): the ``ct`` set plus 300 MR scans each of normal, mass and effusion and no MR
  nodule. The lesion model learns MR appearance from the MR masses; MR nodules are inserted
  into the MR normals. Scored on MR test scans.
* ``size``: the 10 training nodules are all under 20 mm across; 20-28 mm nodules are inserted,
  against copy-paste with the pasted nodules rescaled to the same drawn sizes; recall is
  measured on held-out 20-28 mm nodules.
* ``latent`` (pixel or latent space, issue #13 part 2): the ``ct`` experiment's 200 inserted
  cases with the inpainted region replaced by its round trip through the whole-image model's
  autoencoder (``builtin:phantom-2d``; the background outside the inpainted region kept, as a
  latent-space inpainter composited in pixel space would keep it). A lesion model in that latent
  space draws its lesions through that decoder, so this arm bounds what it could add from above.

The downstream classifier is ``medsynth.evaluation.classifier.ImageClassifier`` (written for the
whole-image utility claim, never tuned against the lesion model), trained plainly (no class
weighting) for the same number of steps in every arm, ``--seeds`` seeds per arm; the same runs are
repeated with MONAI's ResNet-10 (``--second-classifier``) as a classifier of another family.

Usage (from the repository root; each stage reuses what earlier runs left in runs/lesion-utility)::

    python benchmarks/lesion_utility.py --stage data
    python benchmarks/lesion_utility.py --stage train      # the three lesion models (CPU, ~15 min each)
    python benchmarks/lesion_utility.py --stage evaluate   # every arm; writes results.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi

from medsynth.conditions import group_key
from medsynth.data.catalog import Catalog
from medsynth.io.atomic import atomic_write_text
from medsynth.io.scan import Scan
from medsynth.lesions.composite import composite
from medsynth.lesions.placement import paste_mask, place
from medsynth.lesions.regions import resolve_region
from medsynth.lesions.shapes import diameter_of
from medsynth.seeding import derive_seed, numpy_rng

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "runs" / "lesion-utility"
SIZE = 64
COMMON = ("normal", "mass", "effusion")
RARE = "nodule"
N_COMMON, N_RARE, N_TEST = 300, 10, 100
COUNTS = (25, 50, 100, 200, 300)
MAIN_COUNT = 200
SMALL_MM, LARGE_MM = 20.0, (20.0, 28.0)
INTENSITY = {"CT": {"kind": "linear", "lo": -1000.0, "hi": 1000.0}, "MR": {"kind": "linear", "lo": 0.0, "hi": 1100.0}}
LESION_TRAIN = {"steps": 1200, "batch_size": 16, "lr": 3e-4, "crop": 24}
# The whole-image utility claim's budget (docs/evaluation.md): 300 steps of batch 32, plain training.
CLASSIFIER_STEPS = 300


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- data ---------------------------------------------------------------------------------------


def _counts(modalities: tuple[str, ...], common: int, rare: dict[str, int]) -> dict[tuple[str, str], int]:
    out = {(p, m): common for p in COMMON for m in modalities}
    out.update({(RARE, m): n for m, n in rare.items() if n})
    return out


# name: (dataset seed, class counts); different seeds share no subject.
SETS: dict[str, tuple[int, dict[tuple[str, str], int]]] = {
    "train-ct": (101, _counts(("CT",), N_COMMON, {"CT": N_RARE})),
    "train-mr": (102, {(p, "MR"): N_COMMON for p in COMMON}),  # added to train-ct in the mr experiment
    "holdout": (202, {**{(p, m): 20 for p in ("mass",) for m in ("CT", "MR")}, (RARE, "CT"): 0}),
    "test": (303, _counts(("CT", "MR"), N_TEST, {"CT": N_TEST, "MR": N_TEST})),
    "oracle": (505, {(RARE, "CT"): max(COUNTS)}),
    "holdout-nodules": (707, {(RARE, "CT"): 50}),  # calibration of the lesion gate only
    "nodule-pool": (606, {(RARE, "CT"): 600}),  # sorted by size into the size experiment's sets
}


def make_data() -> None:
    from medsynth.data.phantoms import phantom_dataset

    for name, (seed, counts) in SETS.items():
        counts = {k: v for k, v in counts.items() if v}
        out = WORK / "data" / name
        if not (out / "labels.csv").is_file():
            log(f"data: {name} ({sum(counts.values())} phantoms with masks)")
            phantom_dataset(
                out, dim=2, count=sum(counts.values()), seed=seed, size=SIZE, class_counts=counts, masks=True
            )


class Set:
    """The scans, masks and labels of one phantom set, read once."""

    def __init__(self, name: str, rows: list[int] | None = None) -> None:
        self.catalog = Catalog.from_csv(WORK / "data" / name / "labels.csv")
        idx = range(len(self.catalog)) if rows is None else rows
        self.catalog = self.catalog.subset(list(idx))
        self.scans = [self.catalog.load(i) for i in range(len(self.catalog))]
        self.masks = [self._mask(i, s) for i, s in enumerate(self.scans)]
        self.labels = [self.catalog.records[i].pathologies[0] for i in range(len(self.catalog))]
        self.modalities = [s.modality for s in self.scans]

    def _mask(self, i: int, scan: Scan) -> np.ndarray | None:
        """Row ``i``'s lesion mask on the scan's spatial grid (no channel axis), or None."""
        mask = self.catalog.load_mask(i, scan)
        return None if mask is None else np.asarray(mask).reshape(scan.shape)

    def where(self, pathology: str, modality: str) -> list[int]:
        return [i for i, (p, m) in enumerate(zip(self.labels, self.modalities)) if p == pathology and m == modality]


def _diameters(s: Set, idx: list[int]) -> list[float]:
    return [diameter_of(s.masks[i], s.scans[i].spacing) for i in idx]


def size_split() -> tuple[list[int], list[int]]:
    """Rows of the nodule pool: 10 training nodules under 20 mm, and the held-out 20-28 mm nodules."""
    pool = Set("nodule-pool")
    d = _diameters(pool, list(range(len(pool.scans))))
    small = [i for i, v in enumerate(d) if v < SMALL_MM][:N_RARE]
    large = [i for i, v in enumerate(d) if LARGE_MM[0] <= v <= LARGE_MM[1]][:N_TEST]
    return small, large


# --- lesion models ------------------------------------------------------------------------------


def _combined_csv(path: Path, parts: list[tuple[str, Any]]) -> Catalog:
    """One dataset CSV under WORK/data of the rows of several sets; ``parts``: (set name, keep(i, row) or None).

    Every set numbers its subjects from 00000 (with different anatomy seeds), so the set's name is
    prefixed to keep subjects distinct.
    """
    import csv

    rows: list[dict[str, str]] = []
    for name, keep in parts:
        with (WORK / "data" / name / "labels.csv").open(newline="") as fh:
            for i, r in enumerate(csv.DictReader(fh)):
                if keep is None or keep(i, r):
                    rows.append(
                        {
                            "path": f"{name}/{r['path']}",
                            "pathology": r["pathology"],
                            "modality": r["modality"],
                            "subject": f"{name}-{r['subject']}",
                            "mask": f"{name}/{r['mask']}" if r.get("mask") else "",
                        }
                    )
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "pathology", "modality", "subject", "mask"])
        w.writeheader()
        w.writerows(rows)
    return Catalog.from_csv(path)


def _train_catalog(exp: str) -> Catalog:
    """The experiment's real training set as one catalog (for the lesion model and its index)."""
    if exp == "size":
        small = set(size_split()[0])
        parts = [("train-ct", lambda i, r: r["pathology"] != RARE), ("nodule-pool", lambda i, r: i in small)]
    else:
        parts = [("train-ct", None), *([("train-mr", None)] if exp == "mr" else [])]
    return _combined_csv(WORK / "data" / f"{exp}-train.csv", parts)


def train_lesion(exp: str) -> Path:
    """Train the experiment's lesion model on its training set alone; build its lesion privacy index."""
    from medsynth.lesions.model import LesionModelConfig, save_lesion_model
    from medsynth.lesions.shapes import MaskBank
    from medsynth.lesions.train import train_lesion_model
    from medsynth.training.lesion_stage import examples_of

    model_dir = WORK / exp / "model"
    if (model_dir / "lesion" / "config.json").is_file():
        log(f"{exp}: reusing {model_dir}")
        return model_dir
    train = _train_catalog(exp)
    spacing = [350.0 / SIZE] * 2
    cfg = LesionModelConfig(
        spatial_dims=2,
        crop_size=[LESION_TRAIN["crop"]] * 2,
        spacing=spacing,
        pathologies=["mass", RARE],
        modalities=sorted({r.modality for r in train.records}),
        intensity={m: INTENSITY[m] for m in sorted({r.modality for r in train.records})},
        scheduler={
            "kind": "ddpm",
            "num_train_timesteps": 1000,
            "schedule": "scaled_linear_beta",
            "beta_start": 0.0015,
            "beta_end": 0.0195,
            "prediction_type": "v_prediction",
        },
    )
    # The crops `medsynth train` would use: every mass and nodule of the training masks.
    examples, masks, spacings, _, _ = examples_of(train, cfg.preprocessing(), cfg, ["mass", RARE])
    counts = dict(Counter(ex.key for ex in examples))
    log(f"{exp}: lesion examples {counts}; training {LESION_TRAIN['steps']} steps")
    t0 = time.time()
    model, summary = train_lesion_model(
        examples,
        cfg,
        steps=LESION_TRAIN["steps"],
        batch_size=LESION_TRAIN["batch_size"],
        lr=LESION_TRAIN["lr"],
        seed=0,
        work_dir=WORK / exp / "work",
        checkpoint_every=100,
        log=log,
    )
    save_lesion_model(model, model_dir, MaskBank.from_masks(masks, spacings))
    minutes = (time.time() - t0) / 60
    atomic_write_text(
        WORK / exp / "lesion_training.json",
        json.dumps({"examples": counts, "minutes": minutes, "summary": summary}, indent=1, default=float) + "\n",
    )
    return model_dir


def ensure_lesion_index(exp: str) -> None:
    """The lesion privacy index of the experiment's lesion model: its training lesions, calibrated on
    held-out lesions of new subjects that the lesion model never saw: masses and 50 CT nodules.

    Why held-out nodules: calibrated on masses alone (tau 0.947) the gate flagged 292 of 583
    inserted nodules, because at 5.5 mm pixels new subjects' nodules score up to 0.9995 against
    the training nodules; tau must come from lesions of the class it judges.
    """
    from medsynth.privacy.lesions import build_lesion_index

    model_dir = WORK / exp / "model"
    if (model_dir / "lesion" / "privacy").is_dir():
        return
    train = Catalog.from_csv(WORK / "data" / f"{exp}-train.csv")
    ct_only = None if exp == "mr" else (lambda i, r: r["modality"] == "CT")
    holdout = _combined_csv(WORK / "data" / f"{exp}-holdout.csv", [("holdout", ct_only), ("holdout-nodules", None)])
    build_lesion_index(model_dir, train, holdout, log=log)


# --- making the added cases ---------------------------------------------------------------------


def _normals(s: Set, modality: str) -> list[int]:
    return s.where("normal", modality)


def copy_paste(
    train: Set, n: int, modality: str, *, seed: int, sizes_mm: tuple[float, float] | None = None
) -> tuple[list[Scan], list[np.ndarray]]:
    """``n`` normals of ``train`` with one of its real nodules pasted (flipped) inside the lungs.

    With ``sizes_mm``, each pasted nodule is first rescaled to a diameter drawn in that range.
    """
    nodules = train.where(RARE, modality) or train.where(RARE, "CT")
    normals = _normals(train, modality)
    out, masks = [], []
    for k in range(n):
        rng = numpy_rng("lesion-utility", "copy-paste", seed, k)
        src = nodules[k % len(nodules)]
        scan, mask = train.scans[src], train.masks[src]
        assert mask is not None
        box = ndi.find_objects(mask.astype(np.uint8))[0]
        box = tuple(slice(max(b.start - 2, 0), b.stop + 2) for b in box)
        patch, pmask = scan.array[0][box], mask[box]
        if sizes_mm is not None:
            factor = rng.uniform(*sizes_mm) / diameter_of(pmask, scan.spacing)
            patch = ndi.zoom(patch, factor, order=1)
            pmask = ndi.zoom(pmask.astype(np.float32), factor, order=1) > 0.5
        for axis in range(2):
            if rng.random() < 0.5:
                patch, pmask = np.flip(patch, axis), np.flip(pmask, axis)
        bg = train.scans[normals[k % len(normals)]]
        region = resolve_region(bg, "lungs")
        offset = place(pmask, region, rng, margin=2)
        full = paste_mask(bg.shape, pmask, offset)
        layer = bg.array.copy()
        sl = tuple(slice(o, o + s) for o, s in zip(offset, pmask.shape))
        layer[0][sl] = np.where(pmask, patch, layer[0][sl])
        # Pasted into the mask with a soft 2-voxel band, as the insertion composites its lesions.
        arr = composite(bg.array, layer, full, margin=2, spacing=bg.spacing)
        out.append(bg.with_array(arr, pathology=RARE))
        masks.append(full)
    return out, masks


def insertion(
    model_dir: Path, train: Set, n: int, modality: str, *, seed: int, sizes_mm: tuple[float, float]
) -> tuple[list[Scan], dict[str, Any]]:
    """``n`` normals of ``train`` with a lesion-model nodule inserted, each through the lesion gate.

    A flagged lesion is drawn again with the next attempt's seed (``privacy.on_flag: resample``).
    """
    from medsynth.lesions.case import insert_case
    from medsynth.lesions.model import load_lesion_model, load_mask_bank
    from medsynth.privacy.lesions import check_lesions, load_lesion_index

    normals = _normals(train, modality)
    cache = model_dir.parent / f"inserted-{modality}-{seed}-{n}.npz"
    if cache.is_file():  # the cases of an earlier run (plain arrays: no pickle)
        with np.load(cache, allow_pickle=False) as z:
            arrays, info = z["arrays"], json.loads(str(z["info"]))
        scans = [train.scans[normals[k % len(normals)]].with_array(a, pathology=RARE) for k, a in enumerate(arrays)]
        return scans, info
    model = load_lesion_model(model_dir)
    assert model is not None
    bank = load_mask_bank(model_dir)
    index = load_lesion_index(model_dir)
    out, scores, flagged = [], [], 0
    for k in range(n):
        bg = train.scans[normals[k % len(normals)]]
        for attempt in range(5):
            case = insert_case(
                model, bg, RARE, seed=derive_seed(seed, k, attempt), size_mm=sizes_mm, bank=bank, steps=20
            )
            verdict = check_lesions(index, [case.scan], [case.mask], [group_key([RARE], modality)])[0]
            scores.append(verdict.score)
            if verdict.passed:
                break
            flagged += 1
        out.append(case.scan)
    info = {"checked": len(scores), "flagged": flagged, "max_score": float(max(scores))}
    np.savez(cache, arrays=np.stack([c.array for c in out]), info=json.dumps(info))
    return out, info


def gate_rate(model_dir: Path, cases: list[Scan], masks: list[np.ndarray], modality: str) -> dict[str, Any]:
    """The lesion gate's verdicts on ready-made cases (copy-paste: their lesions are training lesions)."""
    from medsynth.privacy.lesions import check_lesions, load_lesion_index

    index = load_lesion_index(model_dir)
    verdicts = check_lesions(index, cases, masks, [group_key([RARE], modality)] * len(cases))
    scores = [v.score for v in verdicts]
    return {
        "checked": len(verdicts),
        "flagged": sum(not v.passed for v in verdicts),
        "median_score": float(np.median(scores)),
        "threshold": float(verdicts[0].threshold),
    }


# --- scoring ------------------------------------------------------------------------------------


def score(
    train_scans: list[Scan],
    train_labels: list[str],
    test: Set,
    test_rows: list[int],
    *,
    seeds: int,
    family: str = "medsynth",
) -> dict[str, Any]:
    """Mean over seeds of nodule recall and balanced accuracy on ``test_rows``."""
    from medsynth.evaluation.classifier import ClassifierConfig, ImageClassifier, prepare
    from medsynth.evaluation.utility import balanced_accuracy, per_class_recall, t_interval

    classes = [*COMMON, RARE]
    x = prepare(train_scans, SIZE)
    xt = prepare([test.scans[i] for i in test_rows], SIZE)
    yt = [test.labels[i] for i in test_rows]
    recalls, bas = [], []
    for s in range(seeds):
        if family == "medsynth":
            clf = ImageClassifier(
                classes,
                ClassifierConfig(
                    spatial_dims=2, in_size=SIZE, steps=CLASSIFIER_STEPS, batch_size=32, balanced=False, seed=s
                ),
            )
            clf.fit(x, train_labels)
            pred = [classes[k] for k in clf.predict_proba(xt).argmax(axis=1)]
        else:
            pred = _resnet_predict(x, train_labels, xt, classes, seed=s)
        recalls.append(per_class_recall(yt, pred, classes)[RARE])
        bas.append(balanced_accuracy(yt, pred, classes))
    return {
        "nodule_recall": float(np.mean(recalls)),
        "nodule_recall_ci": t_interval(recalls),
        "balanced_accuracy": float(np.mean(bas)),
        "balanced_accuracy_ci": t_interval(bas),
        "per_seed": {"nodule_recall": recalls, "balanced_accuracy": bas},
    }


def _resnet_predict(x: torch.Tensor, y: list[str], xt: torch.Tensor, classes: list[str], *, seed: int) -> list[str]:
    """MONAI ResNet-10, plain cross-entropy, Adam, the same step budget and batch size."""
    from monai.networks.nets import resnet10

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "resnet-init"))
        net = resnet10(spatial_dims=2, n_input_channels=1, num_classes=len(classes))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    target = torch.tensor([classes.index(v) for v in y])
    g = torch.Generator().manual_seed(derive_seed(seed, "resnet-order"))
    net.train()
    for _ in range(CLASSIFIER_STEPS):
        idx = torch.randint(len(x), (32,), generator=g)
        loss = torch.nn.functional.cross_entropy(net(x[idx]), target[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        logits = torch.cat([net(xt[i : i + 256]) for i in range(0, len(xt), 256)])
    return [classes[k] for k in logits.argmax(1).tolist()]


# --- experiments --------------------------------------------------------------------------------


RESULTS = {"file": "results.json"}  # --results: parallel runs of different experiments write apart


def _save(results: dict[str, Any]) -> None:
    atomic_write_text(WORK / RESULTS["file"], json.dumps(results, indent=1, default=float) + "\n")


def _load_results() -> dict[str, Any]:
    path = WORK / RESULTS["file"]
    return json.loads(path.read_text()) if path.is_file() else {}


def experiment_ct(results: dict[str, Any], seeds: int, family: str, counts: tuple[int, ...] = COUNTS) -> None:
    train, test, oracle = Set("train-ct"), Set("test"), Set("oracle")
    rows = [i for i, m in enumerate(test.modalities) if m == "CT"]
    model_dir = WORK / "ct" / "model"
    sizes = _diameters(train, train.where(RARE, "CT"))
    size_range = (min(sizes), max(sizes))
    res = results.setdefault(family, {}).setdefault("ct", {"training_nodule_mm": size_range})
    base_x, base_y = train.scans, train.labels

    def arm(name: str, extra: list[Scan]) -> None:
        if name in res:
            return
        t0 = time.time()
        res[name] = score(base_x + extra, base_y + [RARE] * len(extra), test, rows, seeds=seeds, family=family)
        log(
            f"ct/{family}/{name}: {res[name]['nodule_recall']:.3f} / {res[name]['balanced_accuracy']:.3f} "
            f"({time.time() - t0:.0f} s)"
        )
        _save(results)

    arm("real", [])
    pasted, pasted_masks = copy_paste(train, max(COUNTS), "CT", seed=0)
    arm(f"oracle-{MAIN_COUNT}", oracle.scans[:MAIN_COUNT])
    for n in counts:
        arm(f"copy-paste-{n}", pasted[:n])
    ensure_lesion_index("ct")
    res["copy_paste_gate"] = gate_rate(model_dir, pasted, pasted_masks, "CT")
    if "insertion_gate" not in res or any(f"insertion-{n}" not in res for n in counts):
        inserted, gate = insertion(model_dir, train, max(COUNTS), "CT", seed=0, sizes_mm=size_range)
        res["insertion_gate"] = gate
        log(
            f"ct: lesion gate flags {res['copy_paste_gate']['flagged']}/{max(COUNTS)} pasted, "
            f"{gate['flagged']}/{gate['checked']} inserted attempts"
        )
        for n in counts:
            arm(f"insertion-{n}", inserted[:n])


def experiment_mr(results: dict[str, Any], seeds: int, family: str) -> None:
    """MR nodules from a lesion model that saw CT nodules and MR masses, into MR normals."""
    ct, mr, test = Set("train-ct"), Set("train-mr"), Set("test")
    train_scans, train_labels = ct.scans + mr.scans, ct.labels + mr.labels
    joint = Set.__new__(Set)
    joint.scans, joint.labels, joint.modalities = train_scans, train_labels, ct.modalities + mr.modalities
    joint.masks = ct.masks + mr.masks
    rows = [i for i, m in enumerate(test.modalities) if m == "MR"]
    sizes = _diameters(ct, ct.where(RARE, "CT"))
    res = results.setdefault(family, {}).setdefault("mr", {"training_nodule_mm": (min(sizes), max(sizes))})

    def arm(name: str, extra: list[Scan]) -> None:
        if name in res:
            return
        res[name] = score(
            train_scans + extra, train_labels + [RARE] * len(extra), test, rows, seeds=seeds, family=family
        )
        log(f"mr/{family}/{name}: {res[name]['nodule_recall']:.3f} / {res[name]['balanced_accuracy']:.3f}")
        _save(results)

    arm("real", [])
    inserted, gate = insertion(
        WORK / "mr" / "model", joint, MAIN_COUNT, "MR", seed=1, sizes_mm=(min(sizes), max(sizes))
    )
    res["insertion_gate"] = gate
    arm(f"insertion-{MAIN_COUNT}", inserted)


def experiment_size(results: dict[str, Any], seeds: int, family: str) -> None:
    """20-28 mm nodules from a lesion model whose training nodules are all under 20 mm."""
    small, large = size_split()
    base, pool, test = Set("train-ct"), Set("nodule-pool"), Set("test")
    keep = [i for i, p in enumerate(base.labels) if p != RARE]
    train = Set.__new__(Set)
    train.scans = [base.scans[i] for i in keep] + [pool.scans[i] for i in small]
    train.masks = [base.masks[i] for i in keep] + [pool.masks[i] for i in small]
    train.labels = [base.labels[i] for i in keep] + [RARE] * len(small)
    train.modalities = [base.modalities[i] for i in keep] + ["CT"] * len(small)
    # The test set: the CT test scans of the other classes and the held-out 20-28 mm nodules.
    scored = Set.__new__(Set)
    others = [i for i, (p, m) in enumerate(zip(test.labels, test.modalities)) if m == "CT" and p != RARE]
    scored.scans = [test.scans[i] for i in others] + [pool.scans[i] for i in large]
    scored.labels = [test.labels[i] for i in others] + [RARE] * len(large)
    scored.modalities = ["CT"] * len(scored.scans)
    rows = list(range(len(scored.scans)))
    res = results.setdefault(family, {}).setdefault(
        "size",
        {
            "training_nodule_mm": [round(v, 1) for v in _diameters(pool, small)],
            "test_nodules": len(large),
            "test_nodule_mm": [round(min(_diameters(pool, large)), 1), round(max(_diameters(pool, large)), 1)],
        },
    )

    def arm(name: str, extra: list[Scan]) -> None:
        if name in res:
            return
        res[name] = score(
            train.scans + extra, train.labels + [RARE] * len(extra), scored, rows, seeds=seeds, family=family
        )
        log(f"size/{family}/{name}: {res[name]['nodule_recall']:.3f} / {res[name]['balanced_accuracy']:.3f}")
        _save(results)

    arm("real", [])
    pasted, _ = copy_paste(train, MAIN_COUNT, "CT", seed=2, sizes_mm=LARGE_MM)
    arm(f"copy-paste-rescaled-{MAIN_COUNT}", pasted)
    ensure_lesion_index("size")
    inserted, gate = insertion(WORK / "size" / "model", train, MAIN_COUNT, "CT", seed=2, sizes_mm=LARGE_MM)
    res["insertion_gate"] = gate
    arm(f"insertion-{MAIN_COUNT}", inserted)


def experiment_latent(results: dict[str, Any], seeds: int, family: str) -> None:
    """The ``ct`` insertion arm with its lesions through the whole-image autoencoder (the latent ceiling)."""
    from medsynth.models.artifact import load_model

    train, test = Set("train-ct"), Set("test")
    rows = [i for i, m in enumerate(test.modalities) if m == "CT"]
    sizes = _diameters(train, train.where(RARE, "CT"))
    inserted, _ = insertion(WORK / "ct" / "model", train, max(COUNTS), "CT", seed=0, sizes_mm=(min(sizes), max(sizes)))
    inserted = inserted[:MAIN_COUNT]
    normals = _normals(train, "CT")
    model = load_model("builtin:phantom-2d")
    latent = []
    with torch.inference_mode():
        for k, case in enumerate(inserted):
            bg = train.scans[normals[k % len(normals)]]
            changed = ndi.binary_dilation(np.abs(case.array[0] - bg.array[0]) > 0, iterations=1)
            x = model.preprocessing.to_model(case)[None]
            trip = model.preprocessing.from_model(model.decode(model.encode(x))[0], "CT")
            latent.append(case.with_array(np.where(changed[None], trip.array, bg.array).astype(np.float32)))
    res = results.setdefault(family, {}).setdefault("latent", {"autoencoder": "builtin:phantom-2d"})
    name = f"insertion-{MAIN_COUNT}-through-autoencoder"
    if name not in res:
        res[name] = score(
            train.scans + latent, train.labels + [RARE] * len(latent), test, rows, seeds=seeds, family=family
        )
        log(f"latent/{family}/{name}: {res[name]['nodule_recall']:.3f} / {res[name]['balanced_accuracy']:.3f}")
        _save(results)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", choices=["data", "train", "evaluate", "all"], default="all")
    ap.add_argument("--experiments", default="ct,mr,size")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--second-classifier", action="store_true")
    ap.add_argument("--counts", default=",".join(map(str, COUNTS)), help="added cases per arm in the ct sweep")
    ap.add_argument("--results", default="results.json", help="file under runs/lesion-utility for the figures")
    args = ap.parse_args()
    RESULTS["file"] = args.results
    torch.set_num_threads(1)
    exps = args.experiments.split(",")
    if args.stage in ("data", "all"):
        make_data()
    if args.stage in ("train", "all"):
        for exp in exps:
            train_lesion(exp)
    if args.stage in ("evaluate", "all"):
        results = _load_results()
        for family in ["medsynth", *(["resnet10"] if args.second_classifier else [])]:
            for exp in exps:
                if exp == "ct":
                    experiment_ct(results, args.seeds, family, tuple(int(c) for c in args.counts.split(",")))
                else:
                    runs = {"mr": experiment_mr, "size": experiment_size, "latent": experiment_latent}
                    runs[exp](results, args.seeds, family)
        _save(results)


if __name__ == "__main__":
    main()

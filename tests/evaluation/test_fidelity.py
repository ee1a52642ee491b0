"""Fidelity: the metric functions on controlled inputs, the real-data split, the loader, the report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.linalg
import torch

from medsynth.errors import InputError
from medsynth.evaluation import metrics as M
from medsynth.evaluation.fidelity import stratified_split
from medsynth.evaluation.sources import LabelledScans, load_labelled
from medsynth.io.scan import Scan


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: on a busy 2-core machine, 2 threads run these small CNNs 4x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- metric functions -------------------------------------------------------------------------


def test_fid_matches_closed_form_and_grows_with_shift():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 5))
    b = rng.normal(size=(400, 5)) @ np.diag([1, 2, 1, 1, 0.5]) + 0.7
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    expected = np.sum((mu_a - mu_b) ** 2) + np.trace(ca + cb - 2 * scipy.linalg.sqrtm(ca @ cb).real)
    assert M.frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
    assert M.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert M.frechet_distance(a, a + 2.0) == pytest.approx(4.0 * 5, rel=1e-6)


def test_kid_is_unbiased_near_zero_for_one_distribution_and_positive_for_two():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(300, 8)), rng.normal(size=(300, 8))
    same, same_std = M.kernel_inception_distance(a, b, subset_size=100, n_subsets=40, seed=0)
    shifted, _ = M.kernel_inception_distance(a, b + 1.0, subset_size=100, n_subsets=40, seed=0)
    assert abs(same) < 3 * same_std + 1e-3
    assert shifted > 20 * max(abs(same), 1e-3)
    # explicit seed: same inputs, same value
    assert M.kernel_inception_distance(a, b, seed=3) == M.kernel_inception_distance(a, b, seed=3)


def test_precision_recall_separate_quality_from_coverage():
    rng = np.random.default_rng(2)
    # real: two well-separated clusters
    real = np.concatenate([rng.normal(size=(100, 2)), rng.normal(size=(100, 2)) + 20])
    fresh = np.concatenate([rng.normal(size=(100, 2)), rng.normal(size=(100, 2)) + 20])
    collapsed = rng.normal(size=(200, 2)) * 0.5  # only one mode, but realistic
    off = rng.normal(size=(200, 2)) + 100  # nowhere near the data
    p, r = M.precision_recall(real, fresh)
    assert p > 0.85 and r > 0.85
    p, r = M.precision_recall(real, collapsed)
    assert p > 0.95 and 0.2 < r <= 0.5  # at most the one covered mode
    assert M.precision_recall(real, off) == (0.0, 0.0)


def test_image_mmd_is_squared_mean_difference_per_voxel():
    rng = torch.Generator().manual_seed(0)
    a = torch.rand(40, 1, 16, 16, generator=rng)
    b = torch.rand(40, 1, 16, 16, generator=rng)
    assert abs(M.image_mmd(a, b)) < 0.01
    assert M.image_mmd(a, b + 0.3) == pytest.approx(0.09, abs=0.01)


@pytest.mark.parametrize("side", [16, 32, 48, 64, 128, 192])
def test_ms_ssim_settings_are_valid_for_monai(side):
    from monai.metrics import MultiScaleSSIMMetric

    cfg = M.ms_ssim_settings(side)
    assert sum(cfg["weights"]) == pytest.approx(1.0)
    x = torch.rand(2, 1, side, side)
    value = MultiScaleSSIMMetric(**cfg)(x, x)  # raises if the settings do not fit the size
    assert float(value.mean()) == pytest.approx(1.0, abs=1e-4)
    if side == 64:
        assert (cfg["kernel_size"], len(cfg["weights"])) == (11, 3)


def test_diversity_is_one_for_a_collapsed_set_and_lower_for_varied_images():
    g = torch.Generator().manual_seed(0)
    varied = torch.rand(12, 1, 64, 64, generator=g)
    collapsed = varied[:1].repeat(12, 1, 1, 1)
    assert M.mean_pairwise_ms_ssim(collapsed) == pytest.approx(1.0, abs=1e-4)
    assert M.mean_pairwise_ms_ssim(varied) < 0.2
    # 3D works through the same call
    vol = torch.rand(4, 1, 32, 32, 32, generator=g)
    assert M.mean_pairwise_ms_ssim(vol) < 0.2


# --- split and loader -------------------------------------------------------------------------


def _scan(value: float = 0.0, modality: str = "CT") -> Scan:
    return Scan(np.full((1, 8, 8), value, np.float32), np.eye(4), modality)


def test_stratified_split_is_per_class_subject_disjoint_and_deterministic():
    pathologies = ["normal"] * 40 + ["nodule"] * 3
    subjects = [f"s{i // 2}" for i in range(40)] + [None, None, None]  # two scans per normal subject
    data = LabelledScans([_scan() for _ in pathologies], pathologies, ["CT"] * 43, subjects)
    parts = stratified_split(data, [0.5, 0.25, 0.25], seed=0)
    assert sorted(sum(parts, [])) == list(range(43))
    assert [len([i for i in p if i < 40]) for p in parts] == [20, 10, 10]
    assert [len([i for i in p if i >= 40]) for p in parts] == [1, 1, 1]  # the rare class reaches every part
    owners = [{subjects[i] for i in p if subjects[i]} for p in parts]
    assert not (owners[0] & owners[1] or owners[0] & owners[2] or owners[1] & owners[2])
    assert stratified_split(data, [0.5, 0.25, 0.25], seed=0) == parts
    assert stratified_split(data, [0.5, 0.25, 0.25], seed=1) != parts


def test_load_labelled_reads_a_manifest_and_rejects_bad_ones(tmp_path):
    from medsynth.io import write_scan

    out = tmp_path / "gen"
    lines = []
    for i, (path, mod) in enumerate([("nodule", "CT"), (["nodule", "effusion"], "CT"), ("normal", "MR")]):
        written = write_scan(_scan(float(i), mod), out / "nifti" / f"case-{i}", "nifti", case_id=f"case-{i}")
        lines.append(
            {
                "case_id": f"case-{i}",
                "pathology": path,
                "modality": mod,
                "files": {"png": "missing.png", "nifti": str(written.relative_to(out))},
            }
        )
    (out / "manifest.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    data = load_labelled(out)
    assert data.labels == ["nodule/CT", "nodule|effusion/CT", "normal/MR"]
    assert [float(s.array.mean()) for s in data.scans] == [0.0, 1.0, 2.0]  # NIfTI preferred over PNG
    assert data.scans[2].modality == "MR"

    (out / "manifest.jsonl").write_text(json.dumps({"pathology": "nodule", "modality": "CT", "files": {}}) + "\n")
    with pytest.raises(InputError, match=r"manifest.jsonl:1: files \[\] has none of the readable formats"):
        load_labelled(out, role="--synthetic")
    (out / "manifest.jsonl").write_text("{not json\n")
    with pytest.raises(InputError, match="manifest.jsonl:1: not a JSON object"):
        load_labelled(out)
    with pytest.raises(InputError, match="no manifest.jsonl"):
        load_labelled(tmp_path / "gen" / "nifti")
    with pytest.raises(InputError, match="no such file or folder"):
        load_labelled(tmp_path / "nowhere.csv", role="--real")


# --- the report end to end on phantoms ---------------------------------------------------------

CLASSES = [("normal", "CT"), ("effusion", "CT"), ("normal", "MR"), ("effusion", "MR")]


def _phantoms(n: int, seed: int, classes=CLASSES, shown=None) -> LabelledScans:
    """``n`` phantoms per class; ``shown`` maps a class to the class actually drawn (a mislabel)."""
    from medsynth.data.phantoms import make_phantom
    from medsynth.seeding import derive_seed

    scans, paths, mods = [], [], []
    for p, m in classes:
        dp, dm = (shown or {}).get((p, m), (p, m))
        for i in range(n):
            scans.append(make_phantom(dim=2, pathologies=dp, modality=dm, seed=derive_seed(seed, p, m, i), size=32))
            paths.append(p)
            mods.append(m)
    return LabelledScans(scans, paths, mods)


@pytest.fixture(scope="module")
def real_set() -> LabelledScans:
    return _phantoms(24, seed=1)


def test_fidelity_scores_good_synthetic_like_real_and_catches_mislabelled_collapsed_sets(real_set, tmp_path):
    from medsynth.evaluation.fidelity import FidelityConfig, evaluate_fidelity

    cfg = FidelityConfig(in_size=32, encoder_steps=100, encoder_channels=(8, 16))
    good = _phantoms(10, seed=2)
    # Bad: every class shows the wrong pathology in the wrong modality, and one image repeated.
    swap = {
        ("normal", "CT"): ("effusion", "MR"),
        ("effusion", "CT"): ("normal", "MR"),
        ("normal", "MR"): ("effusion", "CT"),
        ("effusion", "MR"): ("normal", "CT"),
    }
    one = _phantoms(1, seed=3, shown=swap)
    bad = LabelledScans(
        [s for s in one.scans for _ in range(10)],
        [p for p in one.pathologies for _ in range(10)],
        [m for m in one.modalities for _ in range(10)],
    )
    # a class the real set lacks is left out, not silently compared
    extra = _phantoms(2, seed=4, classes=[("mass", "CT")])
    rg = evaluate_fidelity(real_set, good.concat(extra), tmp_path / "good", cfg)
    rb = evaluate_fidelity(real_set, bad, tmp_path / "bad", cfg)

    on_disk = json.loads((tmp_path / "good" / "fidelity.json").read_text())
    assert on_disk["metrics"] == rg["metrics"]
    assert rg["classes"] == {
        "compared": ["effusion/CT", "effusion/MR", "normal/CT", "normal/MR"],
        "excluded": {"mass/CT": "not in the real set"},
    }
    # split: 24 per class -> 12 encoder, 6 + 6 held out; matched sets of 6 per class
    assert (rg["sizes"]["encoder"], rg["sizes"]["real_a"], rg["sizes"]["real_b"]) == (48, 24, 24)
    assert rg["sizes"]["matched_per_set"] == 24
    for name in rg["plots"]:
        assert (tmp_path / "good" / name).stat().st_size > 1000
    assert set(rg["metrics"]) >= {
        "fid",
        "kid",
        "mmd",
        "precision",
        "recall",
        "conditional_accuracy",
        "diversity_ms_ssim",
    }

    g, b = rg["metrics"], rb["metrics"]
    # the real baseline does not depend on the synthetic set
    assert g["fid"]["real_baseline"] == b["fid"]["real_baseline"]
    assert g["conditional_accuracy"]["real_baseline"] >= 0.8
    # good synthetic data reads like a second real sample ...
    assert g["conditional_accuracy"]["synthetic"] >= g["conditional_accuracy"]["real_baseline"] - 0.15
    assert g["kid"]["synthetic"] < 0.5 * b["kid"]["synthetic"]
    # FID is biased at 24 scans in 128 dimensions, so only its ordering is asserted
    assert g["fid"]["synthetic"] < b["fid"]["synthetic"]
    assert abs(g["diversity_ms_ssim"]["synthetic"] - g["diversity_ms_ssim"]["real_baseline"]) < 0.1
    # ... the mislabelled, collapsed set is caught by every figure meant to catch it
    assert b["conditional_accuracy"]["synthetic"] <= 0.1
    assert b["modality_accuracy"]["synthetic"] <= 0.1
    assert b["diversity_ms_ssim"]["synthetic"] == pytest.approx(1.0, abs=1e-4)
    assert b["recall"]["synthetic"] < g["recall"]["synthetic"]
    assert b["mmd"]["synthetic"] > 10 * abs(g["mmd"]["synthetic"])


def test_fidelity_refuses_sets_with_nothing_to_compare(real_set, tmp_path):
    from medsynth.evaluation.fidelity import FidelityConfig, evaluate_fidelity

    only_mass = _phantoms(3, seed=5, classes=[("mass", "CT")])
    with pytest.raises(InputError, match=r"no class of the synthetic set \(mass/CT\) can be compared"):
        evaluate_fidelity(real_set, only_mass, tmp_path, FidelityConfig(in_size=32, encoder_steps=5))
    assert not (tmp_path / "fidelity.json").exists()


def test_cli_fidelity_runs_on_csv_and_output_dir_and_fails_in_one_line(tmp_path, capsys):
    from medsynth.cli import main
    from medsynth.data.phantoms import phantom_dataset
    from medsynth.io import write_scan

    real_csv = phantom_dataset(
        tmp_path / "real", dim=2, count=24, seed=7, size=32, pathologies=("normal", "effusion"), modalities=("CT",)
    )
    gen = tmp_path / "gen"
    synth = _phantoms(4, seed=8, classes=[("normal", "CT"), ("effusion", "CT")])
    gen.mkdir()
    with (gen / "manifest.jsonl").open("w") as fh:
        for i, (scan, p, m) in enumerate(zip(synth.scans, synth.pathologies, synth.modalities)):
            path = write_scan(scan, gen / "nifti" / f"case-{i}", "nifti", case_id=f"case-{i}")
            fh.write(
                json.dumps(
                    {
                        "case_id": f"case-{i}",
                        "pathology": p,
                        "modality": m,
                        "files": {"nifti": str(path.relative_to(gen))},
                    }
                )
                + "\n"
            )
    code = main(
        [
            "evaluate",
            "fidelity",
            "--real",
            str(real_csv),
            "--synthetic",
            str(gen),
            "--out",
            str(tmp_path / "eval"),
            "--size",
            "32",
            "--encoder-steps",
            "20",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "conditional_accuracy" in out and "fidelity.json" in out
    report = json.loads((tmp_path / "eval" / "fidelity.json").read_text())
    assert report["sizes"]["synthetic"] == 8
    assert "phantom-" not in json.dumps(report)  # no subject identifiers in the report

    code = main(
        [
            "evaluate",
            "fidelity",
            "--real",
            str(tmp_path / "missing.csv"),
            "--synthetic",
            str(gen),
            "--out",
            str(tmp_path / "eval2"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("medsynth: error: --real") and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "eval2").exists()

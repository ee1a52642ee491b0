"""The decode's memory budget in a run: ``sampler.max_memory`` / ``decode_window`` and ``--max-memory``."""

from __future__ import annotations

import numpy as np

from medsynth.cli import main
from medsynth.io import read_scan
from medsynth.models.artifact import load_model
from medsynth.sampling.tiling import decode_plan


def _ct_only(make_protocol, model_dir, **sampler):
    doc = make_protocol(model_dir, output={"dir": "out", "formats": ["nifti"]})
    doc["quotas"] = [{"pathology": "normal", "modality": "CT", "count": 2}]
    doc["sampler"].update(batch_size=1, **sampler)  # the budget below is one latent's
    return doc


def _volumes(out) -> dict[str, np.ndarray]:
    return {p.name: read_scan(p).array.astype(np.float64) for p in sorted((out / "nifti").glob("*.nii.gz"))}


def test_a_budget_or_window_decodes_in_slabs_with_the_same_volumes(model_dirs, make_protocol, write_protocol, tmp_path):
    model = load_model(model_dirs["3d"])  # 8^3, latent 2 x 4^3
    whole = decode_plan(model, max_memory="1GiB")
    assert whole.window is None
    budget = whole.peak_bytes - 1  # one byte short of a whole decode
    assert decode_plan(model, max_memory=budget).window is not None  # so: slabs

    ref_doc = _ct_only(make_protocol, model_dirs["3d"])
    assert main(["generate", str(write_protocol(ref_doc, "ref.yaml")), "--out", str(tmp_path / "ref"), "--json"]) == 0
    slab_doc = _ct_only(make_protocol, model_dirs["3d"], decode_window=1)
    assert (
        main(["generate", str(write_protocol(slab_doc, "slab.yaml")), "--out", str(tmp_path / "slab"), "--json"]) == 0
    )
    cli = ["generate", str(write_protocol(ref_doc, "ref.yaml")), "--out", str(tmp_path / "cli"), "--json"]
    assert main([*cli, "--max-memory", str(budget)]) == 0

    ref = _volumes(tmp_path / "ref")
    assert len(ref) == 2
    for other in ("slab", "cli"):
        got = _volumes(tmp_path / other)
        assert got.keys() == ref.keys()
        for name, want in ref.items():
            diff = np.abs(got[name] - want)  # HU
            assert diff.max() <= 1.0 and diff.mean() <= 0.1, (other, name, diff.max())


def test_a_budget_too_small_to_decode_is_refused_before_sampling(
    model_dirs, make_protocol, write_protocol, tmp_path, capsys
):
    plain = write_protocol(_ct_only(make_protocol, model_dirs["3d"]), "plain.yaml")
    in_protocol = write_protocol(_ct_only(make_protocol, model_dirs["3d"], max_memory=1000), "budget.yaml")
    for i, args in enumerate(([str(plain), "--max-memory", "1000"], [str(in_protocol)])):
        assert main(["generate", *args, "--json", "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1
        assert "max_memory=1000 B: decoding a latent of shape [4, 4, 4] needs about" in err
        assert "even in slabs of one latent row; give a larger max_memory" in err
        assert not list((tmp_path / "out").rglob("*.nii.gz")) and not (tmp_path / "out" / "manifest.jsonl").exists()
        (tmp_path / "out").rename(tmp_path / f"refused{i}")  # the two protocols differ: another folder each
    # A hand-set window runs as asked, whatever the budget.
    hand = _ct_only(make_protocol, model_dirs["3d"], max_memory=1000, decode_window=1)
    assert main(["generate", str(write_protocol(hand, "hand.yaml")), "--json"]) == 0
    assert len(list((tmp_path / "out" / "nifti").glob("*.nii.gz"))) == 2


def test_bad_budgets_are_one_line_errors(make_protocol, model_dirs, write_protocol, capsys):
    path = write_protocol(_ct_only(make_protocol, model_dirs["3d"]))
    for value in ("4XB", "-1", "0"):
        assert main(["generate", str(path), f"--max-memory={value}"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"medsynth: error: --max-memory={value!r}: expected a memory size") and "\n" not in err
    for field, value, expected in (
        ("max_memory", "4XB", "sampler.max_memory: expected a memory size"),
        ("max_memory", -5, "sampler.max_memory: expected a memory size"),
        ("max_memory", 1.5, "sampler.max_memory: expected a memory size"),
        ("decode_window", 0, "sampler.decode_window: 0 is out of range; expected a value >= 1"),
    ):
        bad = _ct_only(make_protocol, model_dirs["3d"], **{field: value})
        assert main(["validate", str(write_protocol(bad))]) == 2
        err = capsys.readouterr().err.strip()
        assert expected in err and len(err.splitlines()) == 1, err

"""`output: {shape, spacing}` and per-quota grids: checked at validate time, written as asked, extrapolation recorded."""

from __future__ import annotations

import json

import numpy as np

from medsynth.cli import main
from medsynth.io import read_scan


def _manifest(out) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def test_validate_refuses_bad_grids_before_any_model_runs(model_dirs, make_protocol, write_protocol, capsys):
    # tiny-2d: 16 x 16 at 2.5 mm, downsampling 2; no trained_fov record, so 40 x 40 mm only.
    doc = make_protocol(model_dirs["2d"], output={"dir": "out", "formats": ["nifti"], "shape": [15, 16]})
    assert main(["validate", str(write_protocol(doc))]) == 2
    err = capsys.readouterr().err
    assert "output.shape/spacing: shape [15, 16] cannot be sampled" in err and "[14, 16] or [16, 16]" in err

    doc = make_protocol(model_dirs["2d"])
    doc["quotas"][1]["shape"] = [32, 32]
    assert main(["validate", str(write_protocol(doc))]) == 2
    err = capsys.readouterr().err
    assert "quotas[1].shape/spacing: field of view 80.0x80.0 mm is outside the 40.0x40.0 mm" in err
    assert len(err.strip().splitlines()) == 1

    doc = make_protocol(model_dirs["3d"], output={"dir": "out", "formats": ["nifti"], "shape": [8, 8]})
    assert main(["validate", str(write_protocol(doc))]) == 2
    assert "expected 3 values" in capsys.readouterr().err


def test_generate_writes_each_quota_on_its_grid_and_records_extrapolation(
    model_dirs, make_protocol, write_protocol, tmp_path, capsys
):
    doc = make_protocol(
        model_dirs["2d"],
        output={"dir": "out", "formats": ["nifti"], "spacing": [1.25, 1.25], "shape": [32, 32]},
    )
    doc["quotas"][1]["shape"] = [32, 32]
    doc["quotas"][1]["spacing"] = [2.5, 2.5]
    doc["output"]["allow_fov_extrapolation"] = True
    assert main(["generate", str(write_protocol(doc)), "--json"]) == 0
    out = tmp_path / "out"
    records = _manifest(out)
    fine = [r for r in records if r["pathology"] == "normal"]
    wide = [r for r in records if r["pathology"] == "nodule"]
    assert len(fine) == 3 and len(wide) == 2
    for r in fine:
        assert r["grid"] == {"shape": [32, 32], "spacing": [1.25, 1.25], "fov_extrapolated": False}
        scan = read_scan(out / r["files"]["nifti"])
        assert scan.shape == (32, 32) and np.allclose(scan.spacing[:2], 1.25)
    for r in wide:
        assert r["grid"]["fov_extrapolated"] is True
        scan = read_scan(out / r["files"]["nifti"])
        assert scan.shape == (32, 32) and np.allclose(scan.spacing[:2], 2.5)
    summary = json.loads((out / "summary.json").read_text())
    grids = {q["class"]: q["grid"] for q in summary["quotas"]}
    assert grids["nodule/MR"]["fov_extrapolated"] is True and grids["normal/CT"]["fov_extrapolated"] is False


def test_a_protocol_without_a_grid_keeps_its_plan_and_manifest(model_dirs, make_protocol, write_protocol, tmp_path):
    from medsynth.protocol.plan import validate_protocol

    path = write_protocol(make_protocol(model_dirs["2d"]))
    plan = validate_protocol(path)
    assert all(q.grid is None for q in plan.quotas)
    assert main(["generate", str(path)]) == 0
    assert all("grid" not in r for r in _manifest(tmp_path / "out"))

"""A weak privacy index is named, refused by validate/generate, and accepted only on the record."""

from __future__ import annotations

from pathlib import Path

import yaml

from medsynth.cli import main
from medsynth.privacy.index import stored_strength
from medsynth.privacy.strength import IndexStrength, strength_summary, weakness_banner
from medsynth.protocol.gate import Gate
from medsynth.protocol.plan_privacy import IMAGE_INDEX
from medsynth.protocol.schema import PrivacySpec

PRETRAINED = Path(__file__).resolve().parents[2] / "medsynth" / "models" / "pretrained"


def _strength(holdout, recall=1.0, per_edit=None, min_group_size=50):
    st = {"recall": recall, "per_edit": per_edit or {"exact": recall}, "planted": 9}
    return IndexStrength.of(holdout, min_group_size, st)


def test_a_strong_index_has_no_weaknesses():
    s = _strength(["a/CT"] * 60 + ["b/CT"] * 10)
    assert s.threshold_scans("a/CT") == (60, "own") and s.threshold_scans("b/CT") == (70, "pooled")
    assert s.weaknesses(["a/CT", "b/CT"]) == []


def test_low_recall_on_one_edit_and_a_thin_pooled_threshold_are_named():
    s = _strength(["a/CT"] * 20 + ["b/MR"] * 20, recall=0.95, per_edit={"exact": 1.0, "shift": 0.5})
    weak = s.weaknesses(["a/CT", "b/MR"])
    assert len(weak) == 2
    assert "shift 0.50" in weak[0] and "0.95" in weak[0]
    assert "a/CT, b/MR" in weak[1] and "40 holdout scans" in weak[1]
    assert _strength([], recall=float("nan")).weaknesses([]) == [
        "it has no self-test result (it was built without one)"
    ]


def test_a_group_with_a_threshold_of_its_own_under_50_is_named():
    s = _strength(["a/CT"] * 30, min_group_size=20)
    assert s.weaknesses(["a/CT"]) == ["a/CT's own threshold rests on 30 holdout scans (needs >= 50)"]


def test_strength_round_trips_and_the_banner_is_red_only_when_weak():
    s = _strength(["a/CT"] * 20, recall=0.5)
    assert IndexStrength.from_dict(s.to_dict()) == s
    section = strength_summary(s, ["a/CT"], {"accept_weak_index": True})
    assert section["accepted"] and len(section["weaknesses"]) == 2
    banner = weakness_banner(section)
    assert "color:#a00" in banner and "accept_weak_index: true" in banner
    assert weakness_banner(strength_summary(_strength(["a/CT"] * 60), ["a/CT"], {})) == ""


def test_the_shipped_image_indexes_are_strong_and_the_2d_lesion_one_is_weak():
    # Both image indexes meet both bars; the 3D one since its features stopped mirroring the body
    # at a field-of-view edge (flip+shift+noise 36 -> 45 of 48, docs/privacy.md). The 2D lesion
    # index misses the recall bar: 5%-noise copies of 1-4 pixel nodules fall under tau.
    s2 = stored_strength(PRETRAINED / "phantom-2d" / "privacy")
    assert s2.weaknesses(s2.holdout) == [] and s2.pooled == 320 and s2.planted == 432
    s3 = stored_strength(PRETRAINED / "phantom-3d" / "privacy")
    assert sum(s3.holdout.values()) == 96 and s3.planted == 432
    assert s3.weaknesses(list(s3.holdout)) == [] and min(s3.per_edit.values()) >= 0.9
    lesion = stored_strength(PRETRAINED / "phantom-2d" / "lesion" / "privacy")
    (weakness,) = lesion.weaknesses(list(lesion.holdout))
    assert "noise-5% 0.00" in weakness


def _protocol(tmp_path, accept):
    doc = {
        "protocol": 1,
        "name": "weak",
        "model": "builtin:phantom-2d",
        "seed": 1,
        "sampler": {"steps": 2},
        "quotas": [{"pathology": "nodule", "modality": "CT", "count": 1, "insert": {"into": "generated"}}],
        "privacy": {"accept_weak_index": accept},
    }
    path = tmp_path / f"weak-{accept}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_validate_and_generate_refuse_a_weak_index_unless_accepted(tmp_path, capsys):
    refused = _protocol(tmp_path, False)
    for cmd in (["validate", refused], ["generate", refused, "--out", str(tmp_path / "out")]):
        assert main(cmd) == 2
        err = capsys.readouterr().err
        assert (
            "lesion privacy index is weak" in err and "self-test recall is 0.75" in err and "accept_weak_index" in err
        )
        assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # refused before an output folder is claimed
    assert main(["validate", _protocol(tmp_path, True)]) == 0
    out = capsys.readouterr().out
    assert "self-test recall 0.750 over 32 planted copies" in out
    assert "WEAK (accepted by privacy.accept_weak_index): its self-test recall is 0.75" in out


def test_verdicts_of_an_accepted_weak_index_are_marked_in_the_manifest_entry():
    weak = Gate(Path("."), PrivacySpec(accept_weak_index=True), frozenset({IMAGE_INDEX}))
    strong = Gate(Path("."), PrivacySpec())
    verdict = {"score": 0.5, "threshold": float("nan")}
    assert weak._record(verdict, IMAGE_INDEX) == {"gate": True, "score": 0.5, "threshold": None, "weak_index": True}
    assert "weak_index" not in strong._record(verdict, IMAGE_INDEX)

"""ManifestRecord and the JSON-lines reader: exact round trips, the preferred file, damaged lines."""

from __future__ import annotations

import json

import pytest

from medsynth.protocol.manifest import (
    LineError,
    ManifestRecord,
    RejectedRecord,
    read_jsonl,
    read_manifest,
    read_rejected,
)

# A line as the runner writes it (keys sorted, compact), with a DICOM series and an extend source.
LINE = (
    '{"attempt":1,"case_id":"nodule-CT-00003","created":"2026-01-01T00:00:00+00:00",'
    '"extend":{"source_index":0,"strength":0.5},'
    '"files":{"dicom":"dicom/nodule-CT-00003","nifti":"nifti/nodule-CT-00003.nii.gz","png":"png/nodule-CT-00003.png"},'
    '"modality":"CT","model":{"id":"builtin:phantom-2d","sha256":"ab"},"pathology":"effusion|nodule",'
    '"privacy":{"gate":true,"nearest":"train-00162","passed":true,"score":0.94,"ssim":null},'
    '"protocol_sha256":"cd","sampler":{"batch_size":12,"guidance_scale":3.0,"method":"dpm++","steps":20},'
    '"seed":6952788546179835772,"sha256":{"dicom":{"00001.dcm":"ef"},"nifti":"01","png":"23"}}'
)


def test_a_runner_line_round_trips_to_the_same_bytes():
    record = ManifestRecord.from_dict(json.loads(LINE))
    assert record.to_json() == LINE
    assert record.case_id == "nodule-CT-00003" and record.seed == 6952788546179835772
    assert record.extend == {"source_index": 0, "strength": 0.5}
    # Without extend (a sampled case) the key is absent, not null.
    plain = json.loads(LINE)
    del plain["extend"]
    assert '"extend"' not in ManifestRecord.from_dict(plain).to_json()


def test_keys_of_a_newer_version_are_kept():
    data = {**json.loads(LINE), "mask": {"nifti": "masks/a.nii.gz"}}
    assert ManifestRecord.from_dict(data).to_dict() == data


def test_preferred_file_is_nifti_then_dicom_then_png():
    files = {"png": "png/a.png", "dicom": "dicom/a", "nifti": "nifti/a.nii.gz"}
    expected = ["nifti/a.nii.gz", "dicom/a", "png/a.png"]
    for fmt, want in zip(["nifti", "dicom", "png"], expected):
        record = ManifestRecord(pathology="normal", modality="CT", files=dict(files))
        assert record.preferred_file() == want
        del files[fmt]
    with pytest.raises(
        ValueError, match=r"files \['mask'\] has none of the readable formats \['nifti', 'dicom', 'png'\]"
    ):
        ManifestRecord(pathology="normal", modality="CT", files={"mask": "m.nii.gz"})


def test_a_hand_made_line_needs_pathology_modality_and_files():
    record = ManifestRecord.from_dict(
        {"pathology": ["nodule", "effusion"], "modality": "CT", "files": {"png": "a.png"}}
    )
    assert record.pathology == "nodule|effusion"  # a list is joined in its order
    assert record.case_id is None and record.to_dict() == {
        "pathology": "nodule|effusion",
        "modality": "CT",
        "files": {"png": "a.png"},
    }
    with pytest.raises(ValueError, match="expected a JSON object with pathology, modality and files"):
        ManifestRecord.from_dict({"pathology": "nodule", "files": {"png": "a.png"}})
    with pytest.raises(ValueError, match="seed must be an integer, not True"):
        ManifestRecord.from_dict({"pathology": "nodule", "modality": "CT", "files": {"png": "a.png"}, "seed": True})
    with pytest.raises(ValueError, match="files must be an object"):
        ManifestRecord.from_dict({"pathology": "nodule", "modality": "CT", "files": ["a.png"]})


def test_rejected_records_round_trip_and_need_every_field():
    line = (
        '{"action":"drop","attempt":0,"case_id":"normal-CT-00002","created":"2026-01-01T00:00:00+00:00",'
        '"final":true,"modality":"CT","pathology":"normal","privacy":{"gate":true,"passed":false},"seed":5}'
    )
    assert RejectedRecord.from_dict(json.loads(line)).to_json() == line
    with pytest.raises(ValueError, match="final missing"):
        RejectedRecord.from_dict({k: v for k, v in json.loads(line).items() if k != "final"})


def test_the_reader_numbers_lines_skips_blank_ones_and_rejects_damaged_ones(tmp_path):
    path = tmp_path / "manifest.jsonl"
    path.write_text(LINE + "\n\n" + LINE + "\n")
    assert [n for n, _ in read_manifest(path)] == [1, 3]
    assert read_manifest(tmp_path / "missing.jsonl") == []

    path.write_text(LINE + "\n{not json\n" + LINE + "\n")
    with pytest.raises(LineError) as err:
        read_manifest(path)
    assert err.value.line == 2 and err.value.syntax
    path.write_text(LINE + "\n" + json.dumps({"pathology": "normal"}) + "\n")
    with pytest.raises(LineError) as err:
        read_manifest(path)
    assert err.value.line == 2 and not err.value.syntax
    assert err.value.detail == "expected a JSON object with pathology, modality and files"
    path.write_text('{"action": "drop"}\n')
    with pytest.raises(LineError, match="line 1: expected a JSON object with case_id"):
        read_rejected(path)


def test_a_torn_last_line_is_dropped_only_from_a_run_journal(tmp_path):
    path = tmp_path / "manifest.jsonl"
    for torn in (LINE[: len(LINE) // 2], LINE[: len(LINE) // 2] + "\n"):
        path.write_text(LINE + "\n" + torn)
        with pytest.raises(LineError) as err:
            read_manifest(path)  # a finished output folder has no torn line: it is damage
        assert err.value.line == 2
        assert len(read_manifest(path, torn_tail=True)) == 1
    # Bytes after the last newline are torn in a journal even when they parse.
    path.write_text(LINE + "\n" + LINE)
    assert len(read_manifest(path)) == 2 and len(read_manifest(path, torn_tail=True)) == 1
    # A damaged line before the last is never a torn one.
    path.write_text(LINE + "\n{not json\n" + LINE + "\n")
    with pytest.raises(LineError):
        read_jsonl(path, torn_tail=True)


def test_repair_cuts_the_torn_line_off_the_file(tmp_path):
    path = tmp_path / "manifest.jsonl"
    path.write_text(LINE + "\n" + LINE[:40])
    read_jsonl(path, torn_tail=True)
    assert path.read_text() == LINE + "\n" + LINE[:40]  # reading alone changes nothing
    read_jsonl(path, torn_tail=True, repair=True)
    assert path.read_text() == LINE + "\n"

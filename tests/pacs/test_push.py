"""``medsynth push`` against a real Orthanc: both ways, refused logins, byte-for-byte round trips, resume."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pynetdicom.dsutils import split_dataset

from medsynth.cli.main import main

Orthanc = Any  # conftest.Orthanc (a test module cannot import conftest)


def _push(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["push", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for p in sorted((out / "push").glob("*.jsonl")) for line in p.read_text().splitlines()]


def _qido_instances(orthanc: Orthanc, pacs: Any) -> set[str]:
    """Every SOP Instance UID the server lists, by QIDO-RS (dicomweb-client, authenticated)."""
    from dicomweb_client.api import DICOMwebClient
    from dicomweb_client.session_utils import create_session_from_user_pass

    client = DICOMwebClient(orthanc.dicomweb, session=create_session_from_user_pass(pacs.USER, pacs.PASSWORD))
    uids = set()
    for study in client.search_for_studies():
        study_uid = pydicom.Dataset.from_json(study).StudyInstanceUID
        for inst in client.search_for_instances(study_instance_uid=study_uid):
            uids.add(str(pydicom.Dataset.from_json(inst).SOPInstanceUID))
    return uids


def _cfind_instances(orthanc: Orthanc, pacs: Any) -> set[str]:
    """Every SOP Instance UID the server lists, by C-FIND (pynetdicom, study root, study then image level)."""
    from pydicom.dataset import Dataset
    from pynetdicom import AE
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND  # type: ignore[attr-defined]

    ae = AE(ae_title=pacs.FIND_AET)
    ae.add_requested_context(FIND)
    assoc = ae.associate("127.0.0.1", orthanc.dicom_port, ae_title=pacs.ORTHANC_AET)
    assert assoc.is_established

    def find(**keys: str) -> list[Dataset]:
        q = Dataset()
        for k, v in keys.items():
            setattr(q, k, v)
        return [ident for status, ident in assoc.send_c_find(q, FIND) if ident is not None]

    try:
        studies = [d.StudyInstanceUID for d in find(QueryRetrieveLevel="STUDY", StudyInstanceUID="")]
        return {
            str(d.SOPInstanceUID)
            for s in studies
            for d in find(QueryRetrieveLevel="IMAGE", StudyInstanceUID=s, SeriesInstanceUID="", SOPInstanceUID="")
        }
    finally:
        assoc.release()


def _dataset_bytes(data: bytes, tmp: Path) -> bytes:
    """The encoded dataset after the file meta (what a C-STORE carries)."""
    tmp.write_bytes(data)
    _, offset = split_dataset(tmp)
    return data[offset:]


def test_dicomweb_round_trip_is_byte_identical_and_a_second_push_stores_nothing(
    pacs: Any, orthanc: Orthanc, study: Path, credentials: None, capsys, caplog
) -> None:
    caplog.set_level(logging.DEBUG)  # what the libraries log, too, must not hold the password
    local = pacs.local_instances(study)
    assert len(local) == 24  # 3 cases x 8 slices

    code, out, err = _push(capsys, str(study), "--dicomweb", orthanc.dicomweb + "/")
    assert code == 0, err
    assert "pushed 24 instance(s)" in out and "3 case(s) complete" in out
    assert orthanc.instance_count() == 24
    assert _qido_instances(orthanc, pacs) == set(local)
    # STOW-RS carries whole Part 10 files and Orthanc keeps them as received: identical bytes.
    for uid, path in local.items():
        assert orthanc.file_of(uid) == path.read_bytes(), path

    records = _records(study)
    assert {(r["file"], r["sop_instance_uid"]) for r in records} == {
        (p.relative_to(study).as_posix(), u) for u, p in local.items()
    }
    assert {r["target"] for r in records} == {f"dicomweb:{orthanc.dicomweb}"}
    before = sorted(p.read_bytes() for p in (study / "push").glob("*.jsonl"))

    code, out2, err2 = _push(capsys, str(study), "--dicomweb", orthanc.dicomweb)
    assert code == 0, err2
    assert "pushed 0 instance(s)" in out2 and "24 were already stored" in out2
    assert sorted(p.read_bytes() for p in (study / "push").glob("*.jsonl")) == before
    assert orthanc.instance_count() == 24

    for text in (out, err, out2, err2, caplog.text):
        assert pacs.PASSWORD not in text
    assert pacs.PASSWORD.encode() not in pacs.all_text_under(study)


def test_dimse_round_trip_sends_the_dataset_bytes_and_is_found_by_c_find(
    pacs: Any, orthanc: Orthanc, study: Path, capsys, caplog, tmp_path: Path
) -> None:
    caplog.set_level(logging.DEBUG)
    local = pacs.local_instances(study)
    code, out, err = _push(capsys, str(study), "--dimse", orthanc.dimse, "--calling-aet", pacs.PUSH_AET)
    assert code == 0, err
    assert "pushed 24 instance(s) to dimse:" in out
    assert _cfind_instances(orthanc, pacs) == set(local)
    for uid, path in local.items():
        stored, mine = orthanc.file_of(uid), path.read_bytes()
        # C-STORE carries the dataset only; the receiver writes the file meta (PS3.10 7.1). The
        # dataset bytes are identical; Orthanc's meta names DCMTK as its implementation.
        assert _dataset_bytes(stored, tmp_path / "a.dcm") == _dataset_bytes(mine, tmp_path / "b.dcm"), path
        theirs, ours = (pydicom.dcmread(io.BytesIO(b)).file_meta for b in (stored, mine))
        differ = {e.keyword for e in ours if e.tag not in theirs or theirs[e.tag].value != e.value}
        assert differ <= {"FileMetaInformationGroupLength", "ImplementationClassUID", "ImplementationVersionName"}
    code, out, err = _push(capsys, str(study), "--dimse", orthanc.dimse)
    assert code == 0 and "pushed 0 instance(s)" in out and "24 were already stored" in out
    assert orthanc.instance_count() == 24


@pytest.mark.parametrize("password", [None, "wrong-Hq7vX2-password"])
def test_a_refused_login_is_one_line_exit_2_and_nothing_is_recorded(
    pacs: Any, orthanc: Orthanc, study: Path, password: str | None, monkeypatch, capsys, caplog
) -> None:
    caplog.set_level(logging.DEBUG)
    if password is not None:
        monkeypatch.setenv("MEDSYNTH_DICOMWEB_USER", pacs.USER)
        monkeypatch.setenv("MEDSYNTH_DICOMWEB_PASSWORD", password)
    code, out, err = _push(capsys, str(study), "--dicomweb", orthanc.dicomweb)
    assert code == 2
    assert out == "" and len(err.strip().splitlines()) == 1, err
    assert "refused the login (HTTP 401)" in err and "nothing was stored" in err
    assert not (study / "push").exists()
    assert orthanc.instance_count() == 0
    if password is not None:
        assert password not in err + caplog.text
        assert password.encode() not in pacs.all_text_under(study)


def test_a_rejected_calling_ae_title_is_one_line_exit_2(pacs: Any, orthanc: Orthanc, study: Path, capsys) -> None:
    code, out, err = _push(capsys, str(study), "--dimse", orthanc.dimse, "--calling-aet", "STRANGER")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    # Rejected (A-ASSOCIATE-RJ) or, when the peer's close is seen first, aborted: both name the cause.
    assert any(f"{how} the association from calling AE title 'STRANGER'" in err for how in ("rejected", "aborted"))
    assert "admits this calling AE title" in err
    assert not (study / "push").exists() and orthanc.instance_count() == 0


@pytest.mark.parametrize("how", ["dicomweb", "dimse"])
def test_an_unreachable_server_is_one_line_exit_2(pacs: Any, study: Path, how: str, credentials: None, capsys) -> None:
    port = pacs.free_port()  # nothing listens there
    target = f"http://127.0.0.1:{port}/dicom-web" if how == "dicomweb" else f"ORTHANC@127.0.0.1:{port}"
    code, out, err = _push(capsys, str(study), f"--{how}", target)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "cannot reach" in err and "connection refused" in err
    assert pacs.PASSWORD not in err
    assert not (study / "push").exists()


def test_a_url_with_credentials_is_refused_without_showing_them(pacs: Any, study: Path, capsys) -> None:
    code, out, err = _push(
        capsys, str(study), "--dicomweb", f"http://{pacs.USER}:{pacs.PASSWORD}@127.0.0.1:1/dicom-web"
    )
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "must not carry credentials" in err and "MEDSYNTH_DICOMWEB_PASSWORD" in err
    assert pacs.PASSWORD not in err and pacs.USER not in err


@pytest.mark.parametrize("how", ["dimse", "dicomweb"])
def test_a_push_cut_short_by_the_server_resumes_to_the_complete_set(
    pacs: Any, start_orthanc, study: Path, how: str, credentials: None, capsys, monkeypatch, tmp_path: Path
) -> None:
    """Orthanc dies (a Lua hook calls os.exit) right after storing its 13th instance, mid-way through case 2."""
    import medsynth.pacs.dicomweb as dicomweb

    monkeypatch.setitem(dicomweb.RETRY, "wait_exponential_multiplier", 10)  # retry a dead server quickly
    lua = tmp_path / "die.lua"
    lua.write_text(
        "stored = 0\n"
        "function OnStoredInstance(instanceId, tags, metadata, origin)\n"
        "  stored = stored + 1\n"
        "  if stored == 13 then os.exit(1) end\n"
        "end\n"
    )
    orthanc = start_orthanc(LuaScripts=[str(lua)])
    target = orthanc.dimse if how == "dimse" else orthanc.dicomweb
    code, _, err = _push(capsys, str(study), f"--{how}", target)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "run the same command again to resume" in err
    orthanc.wait_stopped()
    first = _records(study)
    # C-STORE: each instance the server confirmed: 12, or 13 when its answer to the 13th left
    # before the process died. STOW-RS: the whole first case (8), confirmed in one answer; case
    # 2's request died. Never more than the server stored (13).
    assert len(first) in ((12, 13) if how == "dimse" else (8,))
    assert f"{len(first)} instance(s) were stored before it stopped" in err

    del orthanc.config["LuaScripts"]
    orthanc.start()  # the same storage: what it stored before it died is still there
    assert orthanc.instance_count() == 13
    code, out, err = _push(capsys, str(study), f"--{how}", target)
    assert code == 0, err
    assert f"pushed {24 - len(first)} instance(s)" in out and f"{len(first)} were already stored" in out
    records = _records(study)
    assert records[: len(first)] == first  # appended to, never rewritten
    assert sorted(r["sop_instance_uid"] for r in records) == sorted(pacs.local_instances(study))
    assert orthanc.instance_count() == 24

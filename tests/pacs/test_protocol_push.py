"""``output.push`` of a protocol: checked at validate time, each case pushed as it is finished, resumable."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from medsynth.cli.main import main


def _write(tmp_path: Path, doc: dict[str, Any]) -> Path:
    path = tmp_path / "protocol.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for p in sorted((out / "push").glob("*.jsonl")) for line in p.read_text().splitlines()]


def test_generate_pushes_each_case_and_a_rerun_pushes_nothing_new(
    pacs: Any, orthanc: Any, model_dir: Path, tmp_path: Path, credentials: None, capsys
) -> None:
    protocol = _write(tmp_path, pacs.study_protocol(model_dir, push={"dicomweb": orthanc.dicomweb}))
    assert main(["validate", str(protocol)]) == 0
    capsys.readouterr()
    assert main(["generate", str(protocol), "--json"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    push = [e for e in events if e["event"] == "push"]
    assert len(push) == 1 and push[0]["stored"] == 24 and push[0]["cases"] == 3
    # each case is pushed right after its manifest line: the push event comes after every case
    assert [e["event"] for e in events].index("push") > max(i for i, e in enumerate(events) if e["event"] == "case")
    out = tmp_path / "out"
    assert orthanc.instance_count() == 24
    assert sorted(r["sop_instance_uid"] for r in _records(out)) == sorted(pacs.local_instances(out))
    for uid, path in pacs.local_instances(out).items():
        assert orthanc.file_of(uid) == path.read_bytes()
    assert pacs.PASSWORD.encode() not in pacs.all_text_under(out)

    assert main(["generate", str(protocol), "--json"]) == 0  # a finished run: nothing generated, nothing pushed
    push = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"push"' in line]
    assert push[0]["stored"] == 0 and push[0]["already"] == 24
    assert len(_records(out)) == 24 and orthanc.instance_count() == 24


def test_a_generate_cut_short_by_the_pacs_resumes_the_push(
    pacs: Any, start_orthanc: Any, model_dir: Path, tmp_path: Path, capsys
) -> None:
    """Orthanc dies after its 12th instance (case 2 of 3); the rerun pushes the rest and makes case 3."""
    lua = tmp_path / "die.lua"
    lua.write_text(
        "stored = 0\nfunction OnStoredInstance(i, t, m, o)\n  stored = stored + 1\n"
        "  if stored == 12 then os.exit(1) end\nend\n"
    )
    orthanc = start_orthanc(LuaScripts=[str(lua)])
    protocol = _write(
        tmp_path, pacs.study_protocol(model_dir, push={"dimse": orthanc.dimse, "calling_aet": pacs.PUSH_AET})
    )
    assert main(["generate", str(protocol)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("medsynth: error: DICOM peer") and "run the same command again to resume" in err[-1]
    orthanc.wait_stopped()
    out = tmp_path / "out"
    manifest = (out / "manifest.jsonl").read_text().splitlines()
    assert len(manifest) == 2  # the run stopped at case 2's push, before case 3 was generated
    assert len(_records(out)) in (11, 12)

    del orthanc.config["LuaScripts"]
    orthanc.start()
    assert main(["generate", str(protocol)]) == 0
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 3
    assert sorted(r["sop_instance_uid"] for r in _records(out)) == sorted(pacs.local_instances(out))
    assert orthanc.instance_count() == 24


@pytest.mark.parametrize("how", ["dicomweb", "dimse"])
def test_an_unreachable_pacs_fails_validate_and_generate_before_any_case(
    pacs: Any, model_dir: Path, tmp_path: Path, how: str, capsys
) -> None:
    port = pacs.free_port()
    where = f"http://127.0.0.1:{port}/dicom-web" if how == "dicomweb" else f"ORTHANC@127.0.0.1:{port}"
    protocol = _write(tmp_path, pacs.study_protocol(model_dir, push={how: where}))
    for command in ("validate", "generate"):
        assert main([command, str(protocol)]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err
        assert "output.push: cannot reach" in err and "connection refused" in err
        assert "checked before generating anything" in err
    assert not (tmp_path / "out").exists()


def test_a_refused_login_fails_validate(pacs: Any, orthanc: Any, model_dir: Path, tmp_path: Path, capsys) -> None:
    protocol = _write(tmp_path, pacs.study_protocol(model_dir, push={"dicomweb": orthanc.dicomweb}))
    assert main(["generate", str(protocol)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "refused the login (HTTP 401)" in err
    assert not (tmp_path / "out").exists() and orthanc.instance_count() == 0


@pytest.mark.parametrize(
    "push",
    [
        {"dicomweb": "http://medsynth-tester:pw-Zq8r3TxK-never-printed@127.0.0.1:1/dicom-web"},
        {"dicomweb": "http://127.0.0.1:1/dicom-web?access_token=pw-Zq8r3TxK-never-printed"},
        {"dicomweb": "http://127.0.0.1:1/dicom-web", "password": "pw-Zq8r3TxK-never-printed"},
        {"dicomweb": "http://127.0.0.1:1/dicom-web", "token": "pw-Zq8r3TxK-never-printed"},
    ],
)
def test_credentials_in_a_protocol_are_refused_without_showing_them(
    pacs: Any, model_dir: Path, tmp_path: Path, push: dict[str, str], capsys
) -> None:
    protocol = _write(tmp_path, pacs.study_protocol(model_dir, push=push))
    assert main(["validate", str(protocol)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert "credentials are not allowed in a protocol" in err and "MEDSYNTH_DICOMWEB_PASSWORD" in err
    assert pacs.PASSWORD not in err


@pytest.mark.parametrize(
    ("push", "formats", "expected"),
    [
        ({"dicomweb": "http://127.0.0.1:1/dicom-web"}, ["nifti"], "add dicom to formats"),
        ({"dimse": "ORTHANC@127.0.0.1"}, ["dicom"], "expected AET@HOST:PORT"),
        ({"dimse": "A-VERY-LONG-AE-TITLE@h:4242"}, ["dicom"], "is not an AE title"),
        ({"dicomweb": "ftp://pacs/dicom-web"}, ["dicom"], "expected an http:// or https:// URL"),
        ({"dicomweb": "http://x", "calling_aet": "ME"}, ["dicom"], "unknown key 'calling_aet'"),
        ({"dicomweb": "http://x", "dimse": "A@h:1"}, ["dicom"], "unknown key"),
        ({"dicomweb": "http://127.0.0.1:1/d", "ca_bundle": "missing.pem"}, ["dicom"], "no such file"),
        ("http://x", ["dicom"], "expected {dicomweb: URL} or {dimse: AET@HOST:PORT}"),
    ],
)
def test_a_bad_push_is_one_line_at_validate(
    pacs: Any, model_dir: Path, tmp_path: Path, push: Any, formats: list[str], expected: str, capsys
) -> None:
    doc = pacs.study_protocol(model_dir, push=push)
    doc["output"]["formats"] = formats
    assert main(["validate", str(_write(tmp_path, doc))]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "push" in err and expected in err, err

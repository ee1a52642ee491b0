"""Parsing push targets and reading DICOMweb credentials (no server needed)."""

from __future__ import annotations

import pytest

from medsynth.errors import InputError
from medsynth.pacs.target import Credentials, dicomweb_credentials, parse_target, redact_url


def test_targets_parse_and_name_themselves_without_credentials(tmp_path) -> None:
    t = parse_target(dicomweb="https://pacs.example.org:8443/dicom-web/")
    assert (t.kind, t.url, t.key) == ("dicomweb", "https://pacs.example.org:8443/dicom-web", "dicomweb:" + t.url)
    d = parse_target(dimse="STORESCP@10.0.0.7:104", calling_aet="RESEARCH")
    assert (d.aet, d.host, d.port, d.calling_aet) == ("STORESCP", "10.0.0.7", 104, "RESEARCH")
    assert d.key == "dimse:STORESCP@10.0.0.7:104" and len(d.digest) == 16
    assert parse_target(dimse="A@[::1]:4242").key == "dimse:A@[::1]:4242"
    bundle = tmp_path / "ca.pem"
    bundle.write_text("x")
    assert parse_target(dicomweb="https://h/dw", ca_bundle=bundle).ca_bundle == bundle


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, "give exactly one of --dicomweb URL and --dimse AET@HOST:PORT"),
        ({"dicomweb": "https://h", "dimse": "A@h:1"}, "give exactly one"),
        ({"dicomweb": "https://u:secret-9@h/dw"}, "must not carry credentials"),
        ({"dicomweb": "https://h/dw?token=secret-9"}, "must not have a query string"),
        ({"dicomweb": "pacs.example.org/dicom-web"}, "expected an http:// or https:// URL"),
        ({"dicomweb": "https://h:99999/dw"}, "not a URL with a valid host and port"),
        ({"dicomweb": "https://h/dw", "calling_aet": "X"}, "applies to --dimse only"),
        ({"dimse": "h:104"}, "--dimse: 'h:104': expected AET@HOST:PORT"),
        ({"dimse": "A@h:0"}, "port '0' is not a number from 1 to 65535"),
        ({"dimse": "A@h:x"}, "port 'x'"),
        ({"dimse": "SEVENTEEN-CHARSXX@h:1"}, "is not an AE title"),
        ({"dimse": "BACK\\SLASH@h:1"}, "is not an AE title"),
        ({"dimse": "A@h:1", "calling_aet": " PAD"}, "calling AE title ' PAD' is not an AE title"),
        ({"dimse": "A@bad host:1"}, "is not a host name"),
        ({"dimse": "A@h:1", "ca_bundle": "/nonexistent/ca.pem"}, "--ca-bundle: /nonexistent/ca.pem: no such file"),
    ],
)
def test_bad_targets_are_one_line_errors_that_never_echo_a_secret(kwargs, expected) -> None:
    with pytest.raises(InputError) as err:
        parse_target(**kwargs)
    assert expected in str(err.value) and "\n" not in str(err.value)
    assert "secret-9" not in str(err.value)


def test_redact_url_blanks_credentials_and_queries() -> None:
    assert redact_url("https://u:p@h:1/x?t=1") == "https://***@h:1/x?***"
    assert redact_url("https://h/x") == "https://h/x"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"MEDSYNTH_DICOMWEB_USER": "", "MEDSYNTH_DICOMWEB_PASSWORD": ""}, None),
        ({"MEDSYNTH_DICOMWEB_USER": "u", "MEDSYNTH_DICOMWEB_PASSWORD": "p"}, ("basic", "u", "p")),
        ({"MEDSYNTH_DICOMWEB_TOKEN": "t"}, ("bearer", None, "t")),
    ],
)
def test_credentials_come_from_the_environment(env, expected) -> None:
    got = dicomweb_credentials(env)
    assert (got if got is None else (got.kind, got.user, got.secret)) == expected


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"MEDSYNTH_DICOMWEB_USER": "u"}, "MEDSYNTH_DICOMWEB_USER is set but MEDSYNTH_DICOMWEB_PASSWORD is not"),
        ({"MEDSYNTH_DICOMWEB_PASSWORD": "p-secret"}, "MEDSYNTH_DICOMWEB_PASSWORD is set but MEDSYNTH_DICOMWEB_USER"),
        ({"MEDSYNTH_DICOMWEB_TOKEN": "t", "MEDSYNTH_DICOMWEB_USER": "u"}, "set one kind of credentials"),
    ],
)
def test_inconsistent_credentials_are_refused(env, expected) -> None:
    with pytest.raises(InputError, match=expected) as err:
        dicomweb_credentials(env)
    assert "p-secret" not in str(err.value)


def test_credentials_never_show_their_secret() -> None:
    c = Credentials("basic", "alice", "hunter2-secret")
    assert "hunter2-secret" not in repr(c) + str(c) + f"{c}"

"""The ``output.push`` key of a protocol: a DICOMweb or a DIMSE target, never credentials.

Kept apart from ``schema.py`` (which imports it) so that each stays small. The URL and address
checks are ``medsynth.pacs.target``'s, so a protocol and ``medsynth push`` accept the same
targets; ``refuse_credentials`` runs on the raw mapping before any field, where an error line
does not repeat the value it was given.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, ConfigDict, Discriminator, Field, Tag, model_validator

from medsynth.pacs.target import (
    CREDENTIAL_KEYS,
    ENV_PASSWORD,
    ENV_TOKEN,
    ENV_USER,
    check_aet,
    check_dicomweb_url,
    check_dimse,
    redact_url,
)
from medsynth.strict import StrictModel


def _nonblank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


Text = Annotated[str, AfterValidator(_nonblank)]


class _Strict(StrictModel):
    # As schema._Strict (not imported: schema imports this module): no coercion, frozen.
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


def refuse_credentials(data: Any) -> None:
    """ValueError when the raw protocol mapping's ``output.push`` holds credentials (keys, or in its URL)."""
    output = data.get("output") if isinstance(data, dict) else None
    push = output.get("push") if isinstance(output, dict) else None
    if not isinstance(push, dict):
        return
    keys = sorted(str(k) for k in push if str(k).lower() in CREDENTIAL_KEYS)
    url = push.get("dicomweb")
    url = url if isinstance(url, str) else ""
    if keys or "@" in url.partition("//")[2].partition("/")[0] or "?" in url:
        what = f"keys {', '.join(keys)}" if keys else f"URL {redact_url(url)}"
        raise ValueError(
            f"output.push: credentials are not allowed in a protocol ({what}); set "
            f"{ENV_USER} and {ENV_PASSWORD}, or {ENV_TOKEN}, in the environment of generate"
        )


def _push_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        return "<dicomweb>" if "dicomweb" in value else "<dimse>" if "dimse" in value else None
    return None


class DicomwebPushSpec(_Strict):
    """Push each finished case to a DICOMweb server (STOW-RS)."""

    dicomweb: Text = Field(
        description="The service root URL, e.g. https://pacs.example.org/dicom-web; no user:password@ "
        "(credentials come from MEDSYNTH_DICOMWEB_USER + MEDSYNTH_DICOMWEB_PASSWORD or MEDSYNTH_DICOMWEB_TOKEN)."
    )
    ca_bundle: Text | None = Field(
        None, description="PEM file of a private CA that signed the server's certificate, relative to the protocol."
    )

    @model_validator(mode="after")
    def _url(self) -> DicomwebPushSpec:
        check_dicomweb_url(self.dicomweb)  # ValueError: its message never shows credentials
        return self


class DimsePushSpec(_Strict):
    """Push each finished case to a DICOM C-STORE SCP (DIMSE)."""

    dimse: Text = Field(description="AET@HOST:PORT of the PACS, e.g. ORTHANC@pacs.example.org:4242.")
    calling_aet: Text | None = Field(None, description="This side's AE title as the PACS knows it (default MEDSYNTH).")
    ca_bundle: Text | None = Field(
        None, description="PEM file of a private CA: DICOM TLS, the peer verified against it; relative to the protocol."
    )

    @model_validator(mode="after")
    def _address(self) -> DimsePushSpec:
        check_dimse(self.dimse)
        if self.calling_aet is not None:
            check_aet(self.calling_aet, "calling_aet")
        return self


PushField = Annotated[
    Annotated[DicomwebPushSpec, Tag("<dicomweb>")] | Annotated[DimsePushSpec, Tag("<dimse>")],
    Discriminator(
        _push_kind,
        custom_error_type="push_kind",
        custom_error_message="expected {dicomweb: URL} or {dimse: AET@HOST:PORT} (with optional ca_bundle)",
    ),
]

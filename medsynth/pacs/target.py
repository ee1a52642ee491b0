"""Where a push goes (``--dicomweb URL``, ``--dimse AET@HOST:PORT``) and the DICOMweb credentials.

Credentials come from the environment only, never from the command line or a protocol, so they
stay out of shell histories, process lists, protocol files and every output medsynth writes:

* ``MEDSYNTH_DICOMWEB_USER`` and ``MEDSYNTH_DICOMWEB_PASSWORD``: HTTP Basic authentication;
* ``MEDSYNTH_DICOMWEB_TOKEN``: a bearer token (``Authorization: Bearer ...``).

A URL carrying ``user:password@`` or a query string (where tokens hide) is refused, and the
refusal shows the URL with that part blanked out. DIMSE has no passwords: a PACS admits a DIMSE
peer by its calling AE title (and address), optionally over TLS (``--ca-bundle``).

Example:
    >>> t = parse_target(dimse="ORTHANC@127.0.0.1:4242")
    >>> t.key, t.calling_aet
    ('dimse:ORTHANC@127.0.0.1:4242', 'MEDSYNTH')
    >>> parse_target(dicomweb="https://pacs.example.org/dicom-web/").key
    'dicomweb:https://pacs.example.org/dicom-web'
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from medsynth.errors import InputError

DICOMWEB, DIMSE = "dicomweb", "dimse"
ENV_USER = "MEDSYNTH_DICOMWEB_USER"
ENV_PASSWORD = "MEDSYNTH_DICOMWEB_PASSWORD"
ENV_TOKEN = "MEDSYNTH_DICOMWEB_TOKEN"
DEFAULT_CALLING_AET = "MEDSYNTH"
# Keys a protocol's output.push must not have: credentials belong in the environment.
CREDENTIAL_KEYS = frozenset({"user", "username", "password", "passwd", "token", "credentials", "auth"})
_ENV_HINT = f"set {ENV_USER} and {ENV_PASSWORD}, or {ENV_TOKEN}, in the environment instead"
# AE title (PS3.5 6.2, VR AE): 1-16 characters of the default repertoire without backslash or
# control characters, not only spaces. Stricter: no leading or trailing spaces (they are padding).
_AET = re.compile(r"^[\x21-\x5b\x5d-\x7e](?:[\x20-\x5b\x5d-\x7e]{0,14}[\x21-\x5b\x5d-\x7e])?$")
_HOST = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?)$")


def redact_url(url: str) -> str:
    """``url`` with any ``user:password@`` and query string blanked (for messages only)."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc.rpartition("@")[2]
        if "@" in parts.netloc:
            netloc = "***@" + netloc
        return urlunsplit((parts.scheme, netloc, parts.path, "***" if parts.query else "", ""))
    except ValueError:
        return "<unparseable URL>"


def check_dicomweb_url(url: str) -> str:
    """The URL normalised (no trailing ``/``), or ValueError saying what is wrong (never echoing secrets).

    Raises:
        ValueError: not http(s), no host, credentials in it (``user:password@``), a query string
            or fragment, or a bad port.
    """
    shown = redact_url(url)
    try:
        parts = urlsplit(url.strip())
        port = parts.port  # parses the port: ValueError when it is not a number in range
    except ValueError:
        raise ValueError(f"{shown} is not a URL with a valid host and port") from None
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise ValueError(f"{shown}: a URL must not carry credentials (user:password@); {_ENV_HINT}")
    if parts.query or parts.fragment:
        raise ValueError(f"{shown}: a URL must not have a query string or fragment (tokens go in {ENV_TOKEN})")
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{shown}: expected an http:// or https:// URL of the DICOMweb service root")
    if not parts.hostname or not _HOST.match(parts.netloc.rsplit(":", 1)[0] if port else parts.netloc):
        raise ValueError(f"{shown}: expected a host name, e.g. https://pacs.example.org/dicom-web")
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def check_aet(aet: str, what: str = "AE title") -> str:
    """``aet`` if it is a valid AE title, else ValueError naming ``what``."""
    if not _AET.match(aet):
        raise ValueError(
            f"{what} {aet!r} is not an AE title: expected 1-16 printable ASCII characters, "
            "no backslash, no leading or trailing spaces"
        )
    return aet


def check_dimse(spec: str) -> tuple[str, str, int]:
    """``AET@HOST:PORT`` -> (aet, host, port), or ValueError saying what is expected."""
    expected = "expected AET@HOST:PORT, e.g. ORTHANC@pacs.example.org:4242"
    aet, at, address = spec.rpartition("@")
    host, colon, port_text = address.rpartition(":")
    if not at or not colon or not aet:
        raise ValueError(f"{spec!r}: {expected}")
    check_aet(aet, "called AE title")
    if not _HOST.match(host):
        raise ValueError(f"{spec!r}: {host!r} is not a host name or address; {expected}")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{spec!r}: port {port_text!r} is not a number from 1 to 65535")
    return aet, host.strip("[]"), int(port_text)


@dataclass(frozen=True)
class Target:
    """A PACS to push to: a DICOMweb service root, or a DIMSE C-STORE SCP.

    ``key`` names it in messages and push records; it holds no credentials. ``ca_bundle`` is a
    PEM file of private CA certificates: it verifies an https:// server, and for DIMSE turns
    on DICOM TLS.
    """

    kind: str  # DICOMWEB or DIMSE
    url: str | None = None  # DICOMweb service root, normalised
    aet: str | None = None  # DIMSE: the called AE title
    host: str | None = None
    port: int | None = None
    calling_aet: str = DEFAULT_CALLING_AET
    ca_bundle: Path | None = None

    @property
    def key(self) -> str:
        """``dicomweb:<url>`` or ``dimse:<AET>@<host>:<port>``."""
        if self.kind == DICOMWEB:
            return f"{DICOMWEB}:{self.url}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"{DIMSE}:{self.aet}@{host}:{self.port}"

    @property
    def digest(self) -> str:
        """The first 16 hex digits of sha256(key): the push record's file name."""
        return hashlib.sha256(self.key.encode("utf-8")).hexdigest()[:16]

    def __str__(self) -> str:
        return self.key


def parse_target(
    *,
    dicomweb: str | None = None,
    dimse: str | None = None,
    calling_aet: str | None = None,
    ca_bundle: str | os.PathLike[str] | None = None,
    where: str = "",
) -> Target:
    """The target of exactly one of ``dicomweb`` and ``dimse``.

    Args:
        where: what messages name as the source; the CLI's option names when empty (a protocol
            passes ``"<file>: output.push"``).

    Raises:
        InputError: neither or both given, a bad URL or address, a bad AE title, a CA bundle
            that is not a file, or ``calling_aet`` with a DICOMweb target.
    """
    prefix = f"{where}: " if where else ""
    if (dicomweb is None) == (dimse is None):
        raise InputError(f"{prefix}give exactly one of --dicomweb URL and --dimse AET@HOST:PORT")
    bundle = None
    if ca_bundle is not None:
        bundle = Path(ca_bundle).expanduser()
        if not bundle.is_file():
            what = f"{where}.ca_bundle" if where else "--ca-bundle"
            raise InputError(f"{what}: {bundle}: no such file; expected a PEM file of CA certificates")
    try:
        if dicomweb is not None:
            if calling_aet is not None:
                raise ValueError("calling_aet applies to --dimse only (DICOMweb has no AE titles)")
            return Target(DICOMWEB, url=check_dicomweb_url(dicomweb), ca_bundle=bundle)
        assert dimse is not None
        aet, host, port = check_dimse(dimse)
        calling = check_aet(calling_aet, "calling AE title") if calling_aet is not None else DEFAULT_CALLING_AET
        return Target(DIMSE, aet=aet, host=host, port=port, calling_aet=calling, ca_bundle=bundle)
    except ValueError as exc:
        where_ = prefix or ("--dicomweb: " if dicomweb is not None else "--dimse: ")
        raise InputError(f"{where_}{exc}") from None


@dataclass(frozen=True, repr=False)
class Credentials:
    """DICOMweb credentials read from the environment; ``repr`` and ``str`` never show the secret."""

    kind: str  # "basic" or "bearer"
    user: str | None
    secret: str

    def __repr__(self) -> str:
        return f"Credentials({self.kind}, from {ENV_USER if self.kind == 'basic' else ENV_TOKEN})"

    __str__ = __repr__

    @property
    def source(self) -> str:
        """Which variables they came from (for messages)."""
        return f"{ENV_USER}/{ENV_PASSWORD}" if self.kind == "basic" else ENV_TOKEN


def dicomweb_credentials(environ: Mapping[str, str] | None = None) -> Credentials | None:
    """The DICOMweb credentials in the environment, or None (an empty variable counts as unset).

    Raises:
        InputError: a user without a password (or the reverse), or both a user and a token.
    """
    env = os.environ if environ is None else environ
    user, password, token = (env.get(k) or None for k in (ENV_USER, ENV_PASSWORD, ENV_TOKEN))
    if token is not None and (user is not None or password is not None):
        raise InputError(f"both {ENV_TOKEN} and {ENV_USER}/{ENV_PASSWORD} are set; set one kind of credentials")
    if token is not None:
        return Credentials("bearer", None, token)
    if (user is None) != (password is None):
        have, lack = (ENV_USER, ENV_PASSWORD) if user is not None else (ENV_PASSWORD, ENV_USER)
        raise InputError(f"{have} is set but {lack} is not; set both (or {ENV_TOKEN} for a bearer token)")
    if user is not None and password is not None:
        return Credentials("basic", user, password)
    return None

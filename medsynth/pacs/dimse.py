"""Storing instances with DIMSE C-STORE (``pynetdicom``), and checking the peer with C-ECHO first.

One association serves the whole push; it proposes each (SOP Class, Transfer Syntax) pair the
files use, exactly as stored, and is renegotiated when a file needs a pair it lacks. Files are
sent as pynetdicom's chunked dataset (``STORE_SEND_CHUNKED_DATASET``): the encoded bytes after
the file meta, as they are on disk, so the peer receives exactly the dataset medsynth wrote
(never re-encoded, and never held in memory whole).

DIMSE has no passwords: a PACS admits a peer by its calling AE title (``--calling-aet``) and
address. With ``--ca-bundle`` the association runs over TLS (PS3.15 B.1), the peer's
certificate verified against that bundle.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from medsynth.pacs.failure import PushError, network_cause
from medsynth.pacs.target import Target

CONNECT_TIMEOUT = 10.0
DIMSE_TIMEOUT = 120.0  # a PACS may take a while to commit a large instance
_MAX_CONTEXTS = 128  # presentation context IDs are odd numbers 1-255 (PS3.8 9.3.2.2)
_WARNINGS = (0x0001, 0xB000, 0xB006, 0xB007)  # stored, with a warning (PS3.4 B.2.3)


@contextmanager
def _send_chunked() -> Iterator[None]:
    """pynetdicom sends a file's dataset bytes as they are (its switch is process-wide: restored after)."""
    from pynetdicom import _config

    before = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        yield
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = before


def _pair(path: Path) -> tuple[str, str, str]:
    """(SOP Class UID, Transfer Syntax UID, SOP Instance UID) from the file meta."""
    from pynetdicom.dsutils import split_dataset

    meta, _ = split_dataset(path)
    return str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID), str(meta.MediaStorageSOPInstanceUID)


class DimseStore:
    """An association with one C-STORE SCP: ``check()`` it, then ``store()`` batches of files."""

    def __init__(self, target: Target) -> None:
        from pynetdicom import AE

        assert target.host is not None and target.port is not None and target.aet is not None
        self.target = target
        self.host, self.port, self.aet = target.host, target.port, target.aet
        self.ae = AE(ae_title=target.calling_aet)
        self.ae.acse_timeout = CONNECT_TIMEOUT
        self.ae.connection_timeout = CONNECT_TIMEOUT
        self.ae.network_timeout = DIMSE_TIMEOUT
        self.ae.dimse_timeout = DIMSE_TIMEOUT
        self._assoc: Any = None
        self._pairs: set[tuple[str, str]] = set()

    @property
    def _where(self) -> str:
        return f"DICOM peer {self.aet}@{self.host}:{self.port}"

    def _reachable(self) -> None:
        """A TCP connection first: pynetdicom reports a failed connect only in its log."""
        try:
            socket.create_connection((self.host, self.port), timeout=CONNECT_TIMEOUT).close()
        except OSError as exc:
            raise PushError(f"cannot reach {self._where}: {network_cause(exc)}") from None

    def _associate(self, pairs: set[tuple[str, str]]) -> tuple[Any, set[tuple[str, str]]]:
        t = self.target
        self.ae.requested_contexts = []
        for sop_class, syntax in sorted(pairs):
            self.ae.add_requested_context(sop_class, syntax)
        tls = None
        if t.ca_bundle is not None:
            tls = (ssl.create_default_context(cafile=str(t.ca_bundle)), self.host)
        self._reachable()
        assoc = self.ae.associate(self.host, self.port, ae_title=self.aet, tls_args=tls)
        if not assoc.is_established:
            if assoc.is_rejected:
                raise PushError(
                    f"{self._where} rejected the association from calling AE title {t.calling_aet!r}: "
                    "check the called AE title, and that the PACS admits this calling AE title and address"
                )
            if tls:
                raise PushError(f"{self._where}: the TLS handshake failed (check --ca-bundle)")
            # Orthanc, refusing a calling AE title, sends A-ASSOCIATE-RJ and closes; pynetdicom
            # sometimes sees the close first and reports an abort, so an abort names the same causes.
            raise PushError(
                f"{self._where} aborted the association from calling AE title {t.calling_aet!r} "
                "before accepting it: check the called AE title, and that the PACS admits this calling AE title "
                "and address"
            )
        accepted = {(str(c.abstract_syntax), str(c.transfer_syntax[0])) for c in assoc.accepted_contexts}
        return assoc, accepted

    def _close_assoc(self) -> None:
        if self._assoc is not None and self._assoc.is_established:
            self._assoc.release()
        self._assoc = None

    def check(self) -> None:
        """A C-ECHO: the peer answers and admits this calling AE title.

        Raises:
            PushError: unreachable, association rejected or aborted, or the echo failed.
        """
        from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

        self._close_assoc()
        assoc, _ = self._associate({(str(Verification), "1.2.840.10008.1.2")})
        try:
            status = assoc.send_c_echo()
        finally:
            assoc.release()
        if "Status" not in status or status.Status != 0x0000:
            raise PushError(f"{self._where} did not answer a C-ECHO with success")

    def store(self, files: Sequence[Path], on_stored: Callable[[Path, str], None]) -> list[str]:
        """C-STORE each file; ``on_stored(file, SOP Instance UID)`` after each success; the failures.

        Raises:
            PushError: the peer could not be reached, or the association ended mid-way (what was
                stored before has been passed to ``on_stored``).
        """
        info = {f: _pair(f) for f in files}
        needed = {(c, s) for c, s, _ in info.values()}
        if self._assoc is None or not self._assoc.is_established or not needed <= self._pairs:
            want = self._pairs | needed
            if len(want) > _MAX_CONTEXTS:
                want = needed
            self._close_assoc()
            self._assoc, accepted = self._associate(want)
            self._pairs = accepted
            refused = sorted(needed - accepted)
            if refused:
                self._close_assoc()
                raise PushError(
                    f"{self._where} does not accept SOP Class {refused[0][0]} in transfer syntax {refused[0][1]}"
                )
        failures = []
        with _send_chunked():
            for f in files:
                try:
                    status = self._assoc.send_c_store(f)
                except (RuntimeError, OSError):  # pynetdicom: "must be established" once the peer has gone
                    status = {}
                code = int(status.Status) if "Status" in status else None
                if code is None:
                    self._close_assoc()
                    raise PushError(f"{self._where}: no answer to C-STORE of {f.name} (the association ended)")
                if code == 0x0000 or code in _WARNINGS:
                    on_stored(f, info[f][2])
                else:
                    failures.append(f"{f}: C-STORE status {code:#06x}")
        return failures

    def close(self) -> None:
        self._close_assoc()

"""Storing instances with DICOMweb STOW-RS (``dicomweb-client``), and checking the server first.

Authentication is a ``requests`` auth object on the session (Basic, or a bearer token), not a
default header: ``dicomweb-client`` logs each request's own headers at debug level, and a
session's auth never passes through that log.

Retries are the client's own: a STOW-RS request that fails (a network error, or HTTP 429, 408,
503, 504) is sent again up to ``RETRY["max_attempts"]`` times with exponential back-off (2, 4,
8, 16 s), so a push rides out a short outage; a PACS keeps one copy of an instance sent twice.
The check before a push does not retry: an unreachable server or a refused login is reported
at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medsynth.pacs.failure import PushError, network_cause
from medsynth.pacs.target import ENV_PASSWORD, ENV_TOKEN, ENV_USER, Credentials, Target

if TYPE_CHECKING:
    import requests

# (connect, read) seconds: a PACS may take a while to answer a large STOW-RS request.
TIMEOUT = (10.0, 300.0)
# dicomweb-client's retry settings for STOW-RS (its defaults, named here so that they are visible).
RETRY: dict[str, Any] = {"max_attempts": 5, "wait_exponential_multiplier": 1000}


def _auth(credentials: Credentials | None) -> Any:
    import requests.auth

    class _Bearer(requests.auth.AuthBase):
        def __init__(self, token: str) -> None:
            self._token = token

        def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
            r.headers["Authorization"] = f"Bearer {self._token}"
            return r

        def __repr__(self) -> str:
            return "<bearer token>"

    if credentials is None:
        return None
    if credentials.kind == "bearer":
        return _Bearer(credentials.secret)
    return requests.auth.HTTPBasicAuth(credentials.user or "", credentials.secret)


class DicomwebStore:
    """A session with one DICOMweb server: ``check()`` it, then ``store()`` batches of files."""

    def __init__(self, target: Target, credentials: Credentials | None) -> None:
        import requests
        import requests.utils
        from dicomweb_client.api import DICOMwebClient

        assert target.url is not None
        self.target = target
        self.credentials = credentials
        session = requests.Session()
        session.auth = _auth(credentials)
        if target.ca_bundle is not None:
            session.verify = str(target.ca_bundle)
            # With trust_env, requests lets REQUESTS_CA_BUNDLE override session.verify; --ca-bundle
            # must win, so the environment is read here for proxies only.
            session.trust_env = False
            session.proxies = requests.utils.get_environ_proxies(target.url)
        self._session = session
        self.client = DICOMwebClient(url=target.url, session=session, timeout=TIMEOUT)
        self.client.set_http_retry_params(retry=True, **RETRY)

    def _failure(self, exc: Exception, what: str) -> PushError:
        """One line for a failed request (the server's status, or the network's cause)."""
        import requests

        where = f"DICOMweb server {self.target.url}"
        if isinstance(exc, requests.HTTPError) and exc.response is not None:
            status = exc.response.status_code
            if status in (401, 403):
                given = (
                    f"the credentials in {self.credentials.source}"
                    if self.credentials
                    else f"no credentials ({ENV_USER} and {ENV_PASSWORD}, or {ENV_TOKEN}, are not set)"
                )
                verb = "refused the login" if status == 401 else "refused access"
                return PushError(f"{where} {verb} (HTTP {status}) for {what} with {given}; nothing was stored")
            return PushError(f"{where} answered {what} with HTTP {status} {exc.response.reason or ''}".rstrip())
        if isinstance(exc, requests.RequestException):
            hint = "; give the private CA with --ca-bundle" if "TLS certificate" in network_cause(exc) else ""
            return PushError(f"cannot reach {where}: {network_cause(exc)}{hint}")
        return PushError(f"{where}: {what} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")

    def check(self) -> None:
        """One QIDO-RS query (``/studies?limit=1``): the server answers and accepts the login.

        Raises:
            PushError: unreachable, TLS not trusted, login refused, or an error status.
        """
        self.client.set_http_retry_params(retry=False)
        try:
            self.client.search_for_studies(limit=1)
        except Exception as exc:  # requests' and dicomweb-client's errors: worded by _failure
            raise self._failure(exc, "a QIDO-RS query") from None
        finally:
            self.client.set_http_retry_params(retry=True, **RETRY)

    def store(self, files: Sequence[Path], on_stored: Callable[[Path, str], None]) -> list[str]:
        """STOW-RS ``files`` in one request; ``on_stored(file, SOP Instance UID)`` for each one the
        server confirms (``ReferencedSOPSequence``); returns the failures it reports.

        The files are read with pydicom and written back by ``dicomweb-client`` (``dcmwrite``),
        which reproduces a file pydicom wrote byte for byte (tests/pacs compares them).

        Raises:
            PushError: the request failed as a whole (nothing of it was stored).
        """
        import pydicom

        datasets = [pydicom.dcmread(f) for f in files]
        by_uid = {str(ds.SOPInstanceUID): f for ds, f in zip(datasets, files)}
        try:
            answer = self.client.store_instances(datasets)
        except Exception as exc:  # requests' and dicomweb-client's errors: worded by _failure
            raise self._failure(exc, "STOW-RS") from None
        for item in answer.get("ReferencedSOPSequence", []):
            uid = str(item.ReferencedSOPInstanceUID)
            if uid in by_uid:
                on_stored(by_uid[uid], uid)
        return [
            f"{by_uid.get(str(item.get('ReferencedSOPInstanceUID')), '?')}: "
            f"failure reason {int(item.get('FailureReason', 0)):#06x}"
            for item in answer.get("FailedSOPSequence", [])
        ]

    def close(self) -> None:
        self._session.close()  # DICOMwebClient has no close(): the session it was given is closed here

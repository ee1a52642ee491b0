"""``--ca-bundle``: an https:// DICOMweb server whose certificate a private CA signed.

Debian's Orthanc 1.10.1 crashes (SIGSEGV) on its first TLS connection with OpenSSL 3 (seen on
bookworm), so TLS is terminated by a small proxy in front of it (Python's ssl, the certificate
made with openssl): real TLS for the client under test, the real Orthanc behind it.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import socketserver
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from medsynth.cli.main import main


def _private_ca(folder: Path) -> tuple[Path, Path]:
    """(CA certificate, server PEM with certificate and key for 127.0.0.1), made with openssl."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: no certificates to test TLS with")

    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True, timeout=60)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=medsynth test CA")  # fmt: skip
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=127.0.0.1")  # fmt: skip
    (folder / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    ssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.crt", "-days", "2", "-extfile", "san.cnf")  # fmt: skip
    server = folder / "server.pem"
    server.write_text((folder / "server.crt").read_text() + (folder / "server.key").read_text())
    return folder / "ca.pem", server


class _TlsProxy(socketserver.ThreadingTCPServer):
    """Accepts TLS on 127.0.0.1 and forwards the plain bytes to ``upstream`` (Orthanc's HTTP port)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, server_pem: Path, upstream: int) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(str(server_pem))
        self.upstream = upstream
        super().__init__(("127.0.0.1", 0), _Forward)


class _Forward(socketserver.BaseRequestHandler):
    server: _TlsProxy

    def handle(self) -> None:
        try:
            client = self.server.context.wrap_socket(self.request, server_side=True)
        except (ssl.SSLError, OSError):
            return  # a client that does not trust the certificate hangs up during the handshake
        with client, socket.create_connection(("127.0.0.1", self.server.upstream)) as up:

            def pump(src: socket.socket, dst: socket.socket) -> None:
                try:
                    while data := src.recv(65536):
                        dst.sendall(data)
                except OSError:
                    pass
                finally:
                    for s in (src, dst):
                        with contextlib.suppress(OSError):  # already closed by the other side
                            s.shutdown(socket.SHUT_RDWR)

            back = threading.Thread(target=pump, args=(up, client), daemon=True)
            back.start()
            pump(client, up)
            back.join(timeout=30)


@pytest.fixture
def tls_proxy() -> Iterator[Any]:
    proxies: list[_TlsProxy] = []

    def start(server_pem: Path, upstream: int) -> int:
        proxy = _TlsProxy(server_pem, upstream)
        threading.Thread(target=proxy.serve_forever, daemon=True).start()
        proxies.append(proxy)
        return int(proxy.server_address[1])

    yield start
    for proxy in proxies:
        proxy.shutdown()
        proxy.server_close()


def test_ca_bundle_verifies_a_private_ca_and_its_absence_is_one_line(
    pacs: Any, orthanc: Any, tls_proxy: Any, study: Path, tmp_path: Path, credentials: None, monkeypatch, capsys
) -> None:
    ca, server = _private_ca(tmp_path)
    url = f"https://127.0.0.1:{tls_proxy(server, orthanc.http_port)}/dicom-web"

    assert main(["push", str(study), "--dicomweb", url]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "TLS certificate not trusted" in err and "--ca-bundle" in err
    assert not (study / "push").exists()

    # --ca-bundle wins over a REQUESTS_CA_BUNDLE of the environment (which would not trust this server)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(server))
    assert main(["push", str(study), "--dicomweb", url, "--ca-bundle", str(ca)]) == 0, capsys.readouterr().err
    assert "pushed 24 instance(s)" in capsys.readouterr().out
    assert orthanc.instance_count() == 24

    assert main(["push", str(study), "--dicomweb", url, "--ca-bundle", str(tmp_path / "nope.pem")]) == 2
    err = capsys.readouterr().err
    assert "--ca-bundle" in err and "no such file" in err

"""A real Orthanc on the loopback interface, with authentication on, and a generated study to push.

Orthanc (Debian ``orthanc`` + ``orthanc-dicomweb``) is started by the tests themselves, never the
Debian service: a JSON config in a temporary folder, free ports, HTTP remote access off (loopback
only), HTTP Basic users, DICOM peers admitted by AE title *and* address (127.0.0.1), a storage
folder of its own. Tests skip, saying why, only where the ``Orthanc`` binary is absent.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from base64 import b64encode
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

torch.set_num_threads(1)  # the CI box has 2 cores shared by several jobs

USER = "medsynth-tester"
# Unusual on purpose: tests look for it in every output, log and file.
PASSWORD = "pw-Zq8r3TxK-never-printed"
ORTHANC_AET = "ORTHANC"
PUSH_AET = "MEDSYNTH"  # the calling AE title Orthanc admits for C-STORE and C-ECHO
FIND_AET = "FINDER"  # the tests' own C-FIND SCU
PLUGIN_PATHS = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so", "/usr/lib/orthanc/libOrthancDicomWeb.so")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _plugin() -> str:
    for path in PLUGIN_PATHS:
        if Path(path).is_file():
            return path
    found = sorted(Path("/usr").glob("**/libOrthancDicomWeb.so*"))
    if not found:
        pytest.fail("Orthanc is installed but its DICOMweb plugin is not: apt-get install orthanc-dicomweb")
    return str(found[0])


@dataclass
class Orthanc:
    """One running Orthanc: its ports, its folder, and a few REST helpers (authenticated)."""

    root: Path
    http_port: int
    dicom_port: int
    config: dict[str, Any]
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def dimse(self) -> str:
        return f"{ORTHANC_AET}@127.0.0.1:{self.dicom_port}"

    def rest(self, path: str, data: bytes | None = None) -> bytes:
        req = urllib.request.Request(self.url + path, data=data)
        req.add_header("Authorization", "Basic " + b64encode(f"{USER}:{PASSWORD}".encode()).decode())
        with urllib.request.urlopen(req, timeout=30) as answer:
            return bytes(answer.read())

    def json(self, path: str, data: bytes | None = None) -> Any:
        return json.loads(self.rest(path, data))

    def instance_count(self) -> int:
        return int(self.json("/statistics")["CountInstances"])

    def file_of(self, sop_instance_uid: str) -> bytes:
        """The stored file of an instance, as Orthanc keeps it (``/instances/{id}/file``)."""
        found = self.json("/tools/lookup", sop_instance_uid.encode())
        ids = [f["ID"] for f in found if f["Type"] == "Instance"]
        assert len(ids) == 1, f"{sop_instance_uid}: {found}"
        return self.rest(f"/instances/{ids[0]}/file")

    def log(self) -> str:
        path = self.root / "orthanc.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def start(self) -> Orthanc:
        cfg = self.root / "orthanc.json"
        cfg.write_text(json.dumps(self.config, indent=2))
        with open(self.root / "orthanc.log", "ab") as log:
            self.process = subprocess.Popen(["Orthanc", str(cfg)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"Orthanc exited with {self.process.returncode}:\n{self.log()}")
            try:
                self.json("/system")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.2)
        self.stop()
        pytest.fail(f"Orthanc did not answer within 60 s:\n{self.log()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    def wait_stopped(self, timeout: float = 30) -> None:
        """Wait for an Orthanc that shuts itself down (a Lua script's /tools/shutdown)."""
        assert self.process is not None
        self.process.wait(timeout=timeout)
        self.process = None


def orthanc_config(root: Path, http_port: int, dicom_port: int, find_port: int, **extra: Any) -> dict[str, Any]:
    storage = root / "storage"
    storage.mkdir(exist_ok=True)
    return {
        "Name": "medsynth-test",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "StorageCompression": False,  # files kept as received: the byte comparison reads them back
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": ORTHANC_AET,
        "RemoteAccessAllowed": False,  # HTTP from the loopback interface only
        "AuthenticationEnabled": True,
        "RegisteredUsers": {USER: PASSWORD},
        "Plugins": [_plugin()],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        # DICOM: only these peers, by AE title and address (so loopback only), may store, echo or find.
        "DicomModalities": {
            "medsynth": [PUSH_AET, "127.0.0.1", free_port()],
            "finder": [FIND_AET, "127.0.0.1", find_port],
        },
        "DicomAlwaysAllowStore": False,
        "DicomAlwaysAllowEcho": False,
        "DicomAlwaysAllowFind": False,
        "DicomCheckModalityHost": True,
        "DicomCheckCalledAet": True,
        "OverwriteInstances": False,
        "HttpCompressionEnabled": False,
        **extra,
    }


@pytest.fixture
def start_orthanc(tmp_path: Path) -> Iterator[Callable[..., Orthanc]]:
    """``start_orthanc(**config)`` -> a running Orthanc in ``tmp_path/orthanc-N``; all stopped at teardown."""
    if shutil.which("Orthanc") is None:
        pytest.skip("the Orthanc binary is not installed (apt-get install orthanc orthanc-dicomweb)")
    started: list[Orthanc] = []

    def start(**extra: Any) -> Orthanc:
        root = tmp_path / f"orthanc-{len(started)}"
        root.mkdir()
        http, dicom = free_port(), free_port()
        server = Orthanc(root, http, dicom, orthanc_config(root, http, dicom, free_port(), **extra))
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def pacs() -> Any:
    """This module: its constants and helpers (test modules cannot import a conftest in importlib mode)."""
    return sys.modules[__name__]


@pytest.fixture
def orthanc(start_orthanc: Callable[..., Orthanc]) -> Orthanc:
    return start_orthanc()


@pytest.fixture
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """The right DICOMweb credentials in the environment (and no token)."""
    monkeypatch.delenv("MEDSYNTH_DICOMWEB_TOKEN", raising=False)
    monkeypatch.setenv("MEDSYNTH_DICOMWEB_USER", USER)
    monkeypatch.setenv("MEDSYNTH_DICOMWEB_PASSWORD", PASSWORD)


@pytest.fixture(autouse=True)
def _no_inherited_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MEDSYNTH_DICOMWEB_USER", "MEDSYNTH_DICOMWEB_PASSWORD", "MEDSYNTH_DICOMWEB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")  # a proxy in the environment must not see loopback


# -- a generated study ------------------------------------------------------------------------------


def tiny_model(root: Path) -> Path:
    """An untrained 3D model (8^3 voxels: eight slices, so eight DICOM instances, per case)."""
    from medsynth.models.artifact import save_model
    from medsynth.models.ldm import LatentDiffusionModel, ModelConfig

    cfg = ModelConfig(
        spatial_dims=3,
        in_channels=1,
        pathologies=["normal", "nodule"],
        modalities=["CT", "MR"],
        autoencoder={
            "channels": [8, 8],
            "latent_channels": 2,
            "num_res_blocks": 1,
            "attention_levels": [False, False],
            "norm_num_groups": 4,
        },
        unet={
            "channels": [8, 8],
            "attention_levels": [False, False],
            "num_res_blocks": 1,
            "num_head_channels": 8,
            "norm_num_groups": 4,
        },
        cond_dim=8,
        preprocessing={
            "spatial_dims": 3,
            "size": [8, 8, 8],
            "spacing": [2.5, 2.5, 2.5],
            "intensity": {
                "CT": {"kind": "linear", "lo": -1000, "hi": 1000},
                "MR": {"kind": "linear", "lo": 0, "hi": 1200},
            },
            "slice_thickness": 3.0,
        },
        scale_factor=0.7,
        scheduler={
            "kind": "ddpm",
            "num_train_timesteps": 1000,
            "schedule": "scaled_linear_beta",
            "beta_start": 0.0015,
            "beta_end": 0.0195,
            "prediction_type": "epsilon",
        },
        name="tiny-3d-pacs",
    )
    torch.manual_seed(1234)
    return save_model(LatentDiffusionModel(cfg).eval(), root / "tiny3d")


def study_protocol(model: Path, **output: Any) -> dict[str, Any]:
    """Two CT and one MR case of the tiny model, written as DICOM (and NIfTI), gate off (no index)."""
    return {
        "protocol": 1,
        "name": "pacs-study",
        "model": str(model),
        "seed": 20261204,
        "output": {"dir": "out", "formats": ["dicom", "nifti"], **output},
        "sampler": {"method": "ddim", "steps": 2, "guidance_scale": 2.0, "batch_size": 2},
        "quotas": [
            {"pathology": "nodule", "modality": "CT", "count": 2},
            {"pathology": "normal", "modality": "MR", "count": 1},
        ],
        "privacy": {"gate": False},
    }


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("pacs-model"))


@pytest.fixture(scope="session")
def generated_study(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Path:
    """A real ``medsynth generate`` output folder (3 cases x 8 instances), made once."""
    from medsynth.cli.main import main

    root = tmp_path_factory.mktemp("pacs-study")
    protocol = root / "protocol.yaml"
    protocol.write_text(yaml.safe_dump(study_protocol(model_dir)))
    assert main(["generate", str(protocol)]) == 0
    return root / "out"


@pytest.fixture
def study(generated_study: Path, tmp_path: Path) -> Path:
    """A fresh copy of the generated study (pushes write their record into the folder)."""
    return Path(shutil.copytree(generated_study, tmp_path / "study"))


def local_instances(out: Path) -> dict[str, Path]:
    """SOP Instance UID -> file of every DICOM instance of the output folder's cases."""
    import pydicom

    return {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p
        for p in sorted((out / "dicom").rglob("*.dcm"))
    }


def all_text_under(folder: Path) -> bytes:
    """Every file's bytes under ``folder`` (to look for a secret in)."""
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())

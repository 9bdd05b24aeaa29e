"""Fixtures for batch inference: tiny real models, DICOM series made from the real images, an Orthanc PACS.

Orthanc (Debian packages ``orthanc`` and ``orthanc-dicomweb``) is started once per session on
127.0.0.1 at a free port, with a temporary configuration and storage folder, and stopped at the end.
Without the binary the PACS tests skip, unless MEDTL_REQUIRE_SERVICES=1 (CI), where they fail.
The same rule holds for ``dciodvfy`` (Debian package ``dicom3tools``).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import torch

ORTHANC_PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc/plugins", "/usr/local/share/orthanc/plugins")


def require_tool(name: str, what: str) -> str:
    """Path of ``name``; skip without it, or fail when MEDTL_REQUIRE_SERVICES=1."""
    path = shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.path.exists(p)), None)
    if path is None:
        message = f"{name} not found: install {what}"
        if os.environ.get("MEDTL_REQUIRE_SERVICES") == "1":
            pytest.fail(f"MEDTL_REQUIRE_SERVICES=1 but {message}")
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def dciodvfy():
    """``dciodvfy_errors(path)``: the "Error" lines dciodvfy prints (warnings, e.g. for the private code
    scheme, are allowed)."""
    tool = require_tool("dciodvfy", "the Debian package dicom3tools")

    def errors(path) -> list[str]:
        run = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60, check=False)
        return [line for line in (run.stdout + run.stderr).splitlines() if "Error" in line]

    return errors


# -- models ---------------------------------------------------------------------------------------

def _save(path: Path, spatial_dims: int, intensity: dict, labels: list[str], seed: int = 0, **meta) -> Path:
    from medtl.models import Head, Model, build_encoder, save_checkpoint

    torch.manual_seed(seed)
    encoder = build_encoder("resnet10", spatial_dims=spatial_dims, in_channels=1)
    task = "binary" if len(labels) == 2 else "multiclass"
    model = Model(encoder, Head(encoder.out_features, task, len(labels)))
    return save_checkpoint(path, model, intensity=intensity, label_names=labels, **meta)


@pytest.fixture(scope="session")
def model_2d(tmp_path_factory) -> Path:
    """A random-weight 2D ResNet-10 chest X-ray classifier (cxr preset at 32 px), as a medtl checkpoint."""
    return _save(tmp_path_factory.mktemp("models") / "cxr2d.pt", 2,
                 {"preset": "cxr", "image_size": 32, "clahe": False}, ["no_finding", "pneumonia"], image_size=32)


@pytest.fixture(scope="session")
def model_3d(tmp_path_factory) -> Path:
    """A random-weight 3D ResNet-10 brain MRI classifier (mri3d preset, 16^3 voxels at 8 mm)."""
    return _save(tmp_path_factory.mktemp("models") / "mri3d.pt", 3,
                 {"preset": "mri3d", "spacing": [8.0, 8.0, 8.0], "volume_shape": [16, 16, 16]},
                 ["F", "M"], image_size=[16, 16, 16])


# -- DICOM made from the real images --------------------------------------------------------------

@pytest.fixture(scope="session")
def dicom_root(data_root) -> Path:
    return data_root / "dicom"


@pytest.fixture(scope="session")
def mprage_files(dicom_root) -> list[Path]:
    return sorted((dicom_root / "mr_series_t1_mprage").glob("*.dcm"))


def copy_as_new_series(files: list[Path], dest: Path, tag: str, **attributes) -> list[Path]:
    """Copies of real instances under new Study/Series/SOP UIDs (derived from ``tag``) and ``attributes``."""
    import pydicom
    from pydicom.uid import generate_uid

    dest.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(entropy_srcs=[tag, "study"]), generate_uid(entropy_srcs=[tag, "series"])
    out = []
    for i, f in enumerate(files):
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[tag, str(i)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        for key, value in attributes.items():
            setattr(ds, key, value)
        path = dest / f"{tag}-{i:03d}.dcm"
        ds.save_as(path)
        out.append(path)
    return out


@pytest.fixture(scope="session")
def new_series():
    """:func:`copy_as_new_series`, for tests (conftest modules are not imported by name)."""
    return copy_as_new_series


# -- Orthanc --------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 2.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory):
    """A running Orthanc with DICOMweb; yields its DICOMweb root URL, e.g. http://127.0.0.1:PORT/dicom-web."""
    binary = require_tool("Orthanc", "the Debian packages orthanc and orthanc-dicomweb")
    plugin = next((Path(d) / "libOrthancDicomWeb.so" for d in ORTHANC_PLUGIN_DIRS
                   if (Path(d) / "libOrthancDicomWeb.so").exists()), None)
    if plugin is None:
        if os.environ.get("MEDTL_REQUIRE_SERVICES") == "1":
            pytest.fail("MEDTL_REQUIRE_SERVICES=1 but the Orthanc DICOMweb plugin is missing (orthanc-dicomweb)")
        pytest.skip("Orthanc DICOMweb plugin not found: install orthanc-dicomweb")
    home = tmp_path_factory.mktemp("orthanc")
    last_log = ""
    for _attempt in range(3):  # a free port can be taken between choosing and binding it
        port = _free_port()
        config = {
            "Name": "medtl-test", "StorageDirectory": str(home / "db"), "IndexDirectory": str(home / "db"),
            "HttpPort": port, "DicomServerEnabled": False, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "Plugins": [str(plugin)], "SaveJobs": False, "ConcurrentJobs": 1,
            "OverwriteInstances": True, "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        (home / "orthanc.json").write_text(json.dumps(config))
        log = open(home / "orthanc.log", "w")
        proc = subprocess.Popen([binary, str(home / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT,
                                cwd=home)
        deadline = time.time() + 30
        while time.time() < deadline and proc.poll() is None:
            try:
                _get(f"http://127.0.0.1:{port}/system")
                break
            except OSError:
                time.sleep(0.2)
        if proc.poll() is None and time.time() < deadline:
            try:
                yield f"http://127.0.0.1:{port}/dicom-web"
            finally:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                log.close()
            return
        proc.kill()
        proc.wait()
        log.close()
        last_log = (home / "orthanc.log").read_text()[-2000:]
    pytest.fail(f"Orthanc did not start:\n{last_log}")

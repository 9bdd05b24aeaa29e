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
import urllib.error
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
def model_mr2d(tmp_path_factory) -> Path:
    """The same random-weight 2D ResNet-10, as a brain MRI model (mri2d preset): the model whose SRs an MR
    series gets (a chest X-ray model's finding is never written into an MR study)."""
    return _save(tmp_path_factory.mktemp("models") / "mr2d.pt", 2, {"preset": "mri2d", "image_size": 32},
                 ["no_finding", "pneumonia"], image_size=32)


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


def orthanc_plugin() -> Path:
    require_tool("Orthanc", "the Debian packages orthanc and orthanc-dicomweb")
    plugin = next((Path(d) / "libOrthancDicomWeb.so" for d in ORTHANC_PLUGIN_DIRS
                   if (Path(d) / "libOrthancDicomWeb.so").exists()), None)
    if plugin is None:
        if os.environ.get("MEDTL_REQUIRE_SERVICES") == "1":
            pytest.fail("MEDTL_REQUIRE_SERVICES=1 but the Orthanc DICOMweb plugin is missing (orthanc-dicomweb)")
        pytest.skip("Orthanc DICOMweb plugin not found: install orthanc-dicomweb")
    return plugin


class OrthancServer:
    """One Orthanc process on 127.0.0.1 with DICOMweb; ``extra`` is merged into its configuration
    (e.g. ``AuthenticationEnabled`` and ``RegisteredUsers``). ``stop()`` and ``start()`` again keep
    the storage and the port: a PACS outage and its end."""

    def __init__(self, home: Path, **extra):
        self.home, self.extra = home, extra
        self.port: int | None = None
        self.proc = None
        self._log = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/dicom-web"

    def start(self) -> OrthancServer:
        binary = require_tool("Orthanc", "the Debian packages orthanc and orthanc-dicomweb")
        plugin = orthanc_plugin()
        last_log = ""
        for _attempt in range(3):  # a free port can be taken between choosing and binding it
            port = self.port or _free_port()
            config = {
                "Name": "medtl-test", "StorageDirectory": str(self.home / "db"),
                "IndexDirectory": str(self.home / "db"),
                "HttpPort": port, "DicomServerEnabled": False, "RemoteAccessAllowed": False,
                "AuthenticationEnabled": False, "Plugins": [str(plugin)], "SaveJobs": False, "ConcurrentJobs": 1,
                "OverwriteInstances": True, "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}, **self.extra,
            }
            (self.home / "orthanc.json").write_text(json.dumps(config))
            self._log = open(self.home / "orthanc.log", "w")
            self.proc = subprocess.Popen([binary, str(self.home / "orthanc.json")], stdout=self._log,
                                         stderr=subprocess.STDOUT, cwd=self.home)
            deadline = time.time() + 30
            while time.time() < deadline and self.proc.poll() is None:
                try:
                    _get(f"http://127.0.0.1:{port}/system")
                    break
                except urllib.error.HTTPError:  # 401 with authentication on: up all the same
                    break
                except OSError:
                    time.sleep(0.2)
            if self.proc.poll() is None and time.time() < deadline:
                self.port = port
                return self
            self.stop()
            last_log = (self.home / "orthanc.log").read_text()[-2000:]
        pytest.fail(f"Orthanc did not start:\n{last_log}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None


@pytest.fixture(scope="session")
def orthanc_server():
    """:class:`OrthancServer`, for tests that start their own (conftest modules are not imported by name)."""
    return OrthancServer


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory):
    """A running Orthanc with DICOMweb; yields its DICOMweb root URL, e.g. http://127.0.0.1:PORT/dicom-web."""
    server = OrthancServer(tmp_path_factory.mktemp("orthanc")).start()
    try:
        yield server.url
    finally:
        server.stop()


# -- a PACS as hospitals deploy it: users, TLS, client certificates, bearer tokens ----------------

def _openssl(*args, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_test_pki(folder: Path) -> dict[str, Path]:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl."""
    require_tool("openssl", "the Debian package openssl")
    folder.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=medtl test CA",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             cwd=folder)
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
                      ("client", "extendedKeyUsage=clientAuth\n")):
        (folder / f"{name}.ext").write_text(ext)
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN=medtl test {name}",
                 cwd=folder)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=folder)
    for key in folder.glob("*.key"):
        key.chmod(0o600)
    return {name: folder / f"{name}.pem" for name in ("ca", "server", "client")} | {
        "server_key": folder / "server.key", "client_key": folder / "client.key"}


NGINX_CONF = """
{user}
worker_processes 1;
daemon off;
pid {home}/nginx.pid;
error_log {home}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {home}/tmp; proxy_temp_path {home}/tmp; fastcgi_temp_path {home}/tmp;
    uwsgi_temp_path {home}/tmp; scgi_temp_path {home}/tmp;
    client_max_body_size 200m;
    ssl_certificate {server}; ssl_certificate_key {server_key};
    # TLS in front of Orthanc; basic auth passes through to Orthanc's registered users.
    server {{
        listen 127.0.0.1:{basic_port} ssl;
        location / {{ proxy_pass http://127.0.0.1:{orthanc_port}; }}
    }}
    # Mutual TLS and a bearer token, as an API gateway does it; the gateway logs in to Orthanc itself.
    server {{
        listen 127.0.0.1:{mtls_port} ssl;
        ssl_client_certificate {ca}; ssl_verify_client on;
        location / {{
            if ($http_authorization != "Bearer {token}") {{ return 401; }}
            proxy_set_header Authorization "Basic {gateway_basic}";
            proxy_pass http://127.0.0.1:{orthanc_port};
        }}
    }}
}}
"""


@pytest.fixture(scope="session")
def secure_pacs(tmp_path_factory, dicom_root):
    """Orthanc with authentication (a registered user) behind nginx as TLS terminator, loaded with the
    real CR and multi-frame MR files. Yields a dict: ``http`` (Orthanc itself, basic auth),
    ``https`` (TLS, basic auth), ``mtls`` (TLS with a client certificate and a bearer token),
    ``user``, ``password``, ``token`` and the PKI files."""
    import base64
    import secrets

    import pydicom

    nginx = require_tool("nginx", "the Debian package nginx-light (.ci/orthanc.sh installs it)")
    home = tmp_path_factory.mktemp("secure-pacs")
    user, password, token = "medtl-reader", "pw-" + secrets.token_hex(8), "tok-" + secrets.token_hex(16)
    server = OrthancServer(home / "orthanc", RegisteredUsers={user: password, "gateway": "gw-" + password},
                           AuthenticationEnabled=True)
    (home / "orthanc").mkdir()
    server.start()
    pki = make_test_pki(home / "pki")
    (home / "nginx" / "tmp").mkdir(parents=True)
    ports = {"basic_port": _free_port(), "mtls_port": _free_port()}
    conf = NGINX_CONF.format(user="user root;" if os.geteuid() == 0 else "", home=home / "nginx",
                             orthanc_port=server.port, token=token,
                             gateway_basic=base64.b64encode(f"gateway:gw-{password}".encode()).decode(),
                             **{k: v for k, v in pki.items() if k in ("ca", "server", "server_key")}, **ports)
    (home / "nginx" / "nginx.conf").write_text(conf)
    proc = subprocess.Popen([nginx, "-e", "stderr", "-p", str(home / "nginx"), "-c",
                             str(home / "nginx" / "nginx.conf")],
                            stdout=subprocess.DEVNULL, stderr=open(home / "nginx" / "stderr.log", "w"))
    try:
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", ports["mtls_port"]), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail("nginx did not start:\n" + (home / "nginx" / "stderr.log").read_text()[-2000:])
                time.sleep(0.1)
        from medtl.deploy.dicomweb import DicomwebSource, PacsAuth

        files = [dicom_root / "cr_chest" / "RG1_UNCR.dcm", dicom_root / "emri_small_multiframe_mr.dcm"]
        DicomwebSource(server.url, auth=PacsAuth(user, password)).store([pydicom.dcmread(f) for f in files])
        yield {"http": server.url, "https": f"https://127.0.0.1:{ports['basic_port']}/dicom-web",
               "mtls": f"https://127.0.0.1:{ports['mtls_port']}/dicom-web", "user": user, "password": password,
               "token": token, **pki, "orthanc": server}
    finally:
        proc.terminate()
        proc.wait(10)
        server.stop()


# -- broken and malicious inputs ------------------------------------------------------------------

HOSTILE_NAME, HOSTILE_BIRTH, HOSTILE_PID = "Secretname^Patientone", "19010203", "PID-777"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(path: Path, width: int, height: int) -> Path:
    """A valid greyscale PNG of ``width`` x ``height`` zeros: tiny on disk, huge decoded."""
    import struct
    import zlib

    comp = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte + pixels
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b""))
    return path


def jpeg_declaring(real_jpeg: Path, path: Path, width: int, height: int) -> Path:
    """A real JPEG whose frame header (SOF) is patched to declare another size."""
    import struct

    data = bytearray(real_jpeg.read_bytes())
    at = next(i for i in range(2, len(data) - 9) if data[i] == 0xFF and data[i + 1] in (0xC0, 0xC1, 0xC2))
    data[at + 5:at + 9] = struct.pack(">HH", height, width)
    path.write_bytes(bytes(data))
    return path


def nifti_declaring(path: Path, shape: tuple[int, ...]) -> Path:
    """A NIfTI-1 header declaring ``shape`` float32 voxels, followed by almost no data."""
    import nibabel as nib
    import numpy as np

    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.float32)
    header["vox_offset"] = 352
    with open(path, "wb") as f:
        header.write_to(f)
        f.write(b"\x00" * 64)
    return path


def dicom_declaring(template: Path, path: Path, tag: str, rows: int, cols: int, syntax: str,
                    deflated_bytes: int = 0) -> Path:
    """A DICOM with a real header (new UIDs) that declares ``rows`` x ``cols`` 16-bit pixels.

    ``syntax`` "rle": a few bytes of RLE fragment; "native": 100 bytes of pixel data; "deflate": a
    deflated data set whose pixel data inflates to ``deflated_bytes`` zeros (streamed, never in memory).
    """
    import struct
    import zlib

    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian, RLELossless, generate_uid

    ds = pydicom.dcmread(template, stop_before_pixels=True)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(entropy_srcs=[tag, "study"]), generate_uid(
        entropy_srcs=[tag, "series"])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[tag, "0"])
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = rows, cols, 16, 16, 15
    if syntax == "rle":
        ds.file_meta.TransferSyntaxUID = RLELossless
        ds.PixelData = encapsulate([struct.pack("<16I", 1, 64, *[0] * 14) + b"\x81\x00" * 8])
        ds["PixelData"].VR = "OB"
        ds.save_as(path, enforce_file_format=True)
        return path
    if syntax == "native":
        ds.PixelData = b"\x00" * 100
        ds["PixelData"].VR = "OW"
        ds.save_as(path, enforce_file_format=True)
        return path
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    meta = DicomBytesIO()
    meta.is_little_endian, meta.is_implicit_VR = True, False
    write_file_meta_info(meta, ds.file_meta)
    comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    zeros = b"\x00" * (16 << 20)
    with open(path, "wb") as f:
        f.write(b"\x00" * 128 + b"DICM" + meta.getvalue())
        f.write(comp.compress(body.getvalue() + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, deflated_bytes)))
        for _ in range(deflated_bytes // len(zeros)):
            f.write(comp.compress(zeros))
        f.write(comp.flush())
    return path


def make_hostile_folder(root: Path, mprage_files: list[Path], data_root: Path) -> dict[str, tuple[str, str]]:
    """A folder of broken and malicious inputs around one good series, as a hostile export might be.

    Returns {file path relative to ``root``: (expected status, piece of the expected reason)} for every
    file that must get a row of its own; the good series (3 files, one row) and its files are listed
    under "good" (status ok).
    """
    import os
    import socket

    import pydicom

    expect: dict[str, tuple[str, str]] = {}
    patient = root / f"{HOSTILE_NAME}_{HOSTILE_BIRTH}"  # a folder named after the patient
    ids = {"PatientName": HOSTILE_NAME, "PatientBirthDate": HOSTILE_BIRTH, "PatientID": HOSTILE_PID}
    good = copy_as_new_series(mprage_files[10:13], patient / "mr", "hostile-good", **ids)
    expect["good"] = ("ok", "")
    # The same instance twice: a copy, and a link inside the input (walked after mr/, so mr/'s are used).
    dup, link = patient / "zcopy" / "dup.dcm", patient / "zlinks" / "link.dcm"
    for f in (dup, link):
        f.parent.mkdir()
    shutil.copy(good[0], dup)
    os.symlink(good[1], link)
    for f in (dup, link):
        expect[f.relative_to(root).as_posix()] = ("duplicate", "duplicate instance: SOP Instance UID")
    bombs = root / "bombs"
    bombs.mkdir()
    dicom_declaring(mprage_files[0], bombs / "deflate.dcm", "deflate-bomb", 32768, 32768, "deflate",
                    deflated_bytes=1 << 30)
    expect["bombs/deflate.dcm"] = ("error", "inflates to more than")
    dicom_declaring(mprage_files[0], bombs / "rle.dcm", "rle-bomb", 16000, 16000, "rle")
    dicom_declaring(mprage_files[0], bombs / "native.dcm", "native-bomb", 20000, 20000, "native")
    expect["bombs/rle.dcm"] = expect["bombs/native.dcm"] = ("error", "per instance (--max-instance-mb): not decoded")
    png_bomb(bombs / "156mpx.png", 12500, 12500)
    png_bomb(bombs / "64mpx.png", 8000, 8000)  # below Pillow's own warning (89 Mpx)
    expect["bombs/156mpx.png"] = expect["bombs/64mpx.png"] = ("error", "(--max-picture-mpx): not decoded")
    real_jpeg = min((data_root / "mri2d_tumor4").rglob("*.jpg"))
    jpeg_declaring(real_jpeg, bombs / "sof.jpg", 60000, 60000)
    expect["bombs/sof.jpg"] = ("error", "decompression bomb")
    jpeg_declaring(real_jpeg, bombs / "81mpx.jpg", 9000, 9000)
    expect["bombs/81mpx.jpg"] = ("error", "(--max-picture-mpx): not decoded")
    nifti_declaring(bombs / "volume.nii", (2048, 2048, 2048))
    expect["bombs/volume.nii"] = ("error", "(--max-volume-mvox): not decoded")
    # Things that are not regular files, and links that leave the input.
    special = root / "special"
    special.mkdir()
    os.mkfifo(special / "pipe.dcm")
    expect["special/pipe.dcm"] = ("error", "not a regular file")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(special / "sock.dcm"))
    expect["special/sock.dcm"] = ("error", "not a regular file")
    os.symlink("/etc/passwd", special / "escape.dcm")
    os.symlink("/etc", special / "outside")
    expect["special/escape.dcm"] = expect["special/outside"] = ("error", "points outside the input folder")
    os.symlink(special / "nowhere.dcm", special / "dangling.dcm")
    expect["special/dangling.dcm"] = ("error", "broken symbolic link")
    os.symlink(".", special / "loop")  # walked once, no row
    # Truncated copies of real instances (each its own series): in the header, and in the pixels.
    for i, cut in enumerate((150, 400, 900, 1500, 2500, 4000, 6000)):
        (f,) = copy_as_new_series(mprage_files[20 + i:21 + i], root / "trunc", f"hdr-{i}")
        f.write_bytes(f.read_bytes()[:cut])
        expect[f.relative_to(root).as_posix()] = ("error", "")
    for i in range(8):
        (f,) = copy_as_new_series(mprage_files[i:i + 1], root / "trunc", f"pix-{i}")
        f.write_bytes(f.read_bytes()[:-(1000 + 7919 * i)])
        expect["pix-" + str(i)] = ("error", "")  # a series row (by UID): its header is intact
    garbage = root / "garbage"
    garbage.mkdir()
    rng = __import__("random").Random(16)
    for i in range(12):
        (garbage / f"random{i:02d}.dcm").write_bytes(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 5000))))
        expect[f"garbage/random{i:02d}.dcm"] = ("error", "")
    for i in range(4):
        (garbage / f"empty{i}.dcm").write_bytes(b"")
        expect[f"garbage/empty{i}.dcm"] = ("error", "")
    for i in range(3):
        (garbage / f"corrupt{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(rng.randrange(256) for _ in range(300)))
        expect[f"garbage/corrupt{i}.png"] = ("error", "")
    (garbage / "notes.txt").write_text("not an image: ignored")
    # Header values that try to forge log lines, run as spreadsheet formulas, or steer paths.
    (f,) = copy_as_new_series(mprage_files[30:31], root / "inject", "inject", SeriesDescription="x\nERROR forged",
                              Modality="=1+1", StudyID="@SUM(1)")
    ds = pydicom.dcmread(f)
    ds.SeriesInstanceUID = "1.2.3\nERROR forged line"
    ds.save_as(f)
    expect["inject"] = ("ok", "")
    return expect


@pytest.fixture(scope="session")
def hostile(tmp_path_factory, mprage_files, data_root):
    """(folder, expectations) from :func:`make_hostile_folder`."""
    root = tmp_path_factory.mktemp("hostile")
    return root, make_hostile_folder(root, mprage_files, data_root)

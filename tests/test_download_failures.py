"""Downloader failure modes, against an HTTP server on 127.0.0.1 that misbehaves on purpose.

Every test registers throwaway datasets (removed again afterwards) whose URLs
point at the server that the ``http_server`` fixture starts and stops. After
each failure the data folder must hold no file that would pass as good at a
registered path, and a good file that was there before must be untouched.
"""

from __future__ import annotations

import errno
import hashlib
import http.server
import io
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import pytest

from i0t_helpers import download
from i0t_helpers.download import Archive, DataFile, Dataset, DownloadError

REPOSITORY = Path(__file__).resolve().parent.parent

#: 100 kB of bytes that are not all alike, so truncation and corruption change the hash.
PAYLOAD = hashlib.sha256(b"payload").digest() * 3200
PAYLOAD_TARGET = "raw/payload.bin"
PAYLOAD_MEMBER = "inner/payload.bin"
#: Seconds of HTTP timeout in these tests: long enough for loopback, short enough to keep tests fast.
TEST_TIMEOUT_SECONDS = 0.5


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# The misbehaving server ----------------------------------------------------------------------


class _Route:
    def __init__(self, body: bytes, mode: str):
        self.body = body
        self.mode = mode
        self.hits = 0


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        server = self.server
        route = server.routes.get(self.path)
        server.requests.append((self.path, self.headers.get("Range")))
        if route is None:
            self._send_status(404)
            return
        route.hits += 1
        mode = route.mode
        if mode == "truncate-once":
            mode = "truncate" if route.hits == 1 else "ok"

        if mode.startswith("status-"):
            self._send_status(int(mode.split("-")[1]))
        elif mode == "stall":
            server.release.wait(10)
        elif mode == "truncate":
            self._send_body(route.body, status=200, length=len(route.body), stop_after=len(route.body) // 2)
        elif mode == "no-range":
            self._send_body(route.body, status=200, length=len(route.body))
        elif mode in ("ok", "slow"):
            self._send_range(route.body, slow=mode == "slow")
        else:
            raise AssertionError(f"unknown server mode {mode}")

    def _send_status(self, status: int):
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.send_header("Connection", "close")
        self.end_headers()

    def _send_range(self, body: bytes, slow: bool):
        requested = self.headers.get("Range")
        if requested is None:
            self._send_body(body, status=200, length=len(body), slow=slow)
            return
        start = int(requested.removeprefix("bytes=").split("-")[0])
        if start >= len(body):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(body)}")
            self.send_header("Content-Length", "0")
            self.send_header("Connection", "close")
            self.end_headers()
            return
        content_range = f"bytes {start}-{len(body) - 1}/{len(body)}"
        self._send_body(body[start:], status=206, length=len(body) - start, content_range=content_range, slow=slow)

    def _send_body(self, body: bytes, status: int, length: int, stop_after: int | None = None,
                   content_range: str | None = None, slow: bool = False):
        self.send_response(status)
        self.send_header("Content-Length", str(length))
        if content_range is not None:
            self.send_header("Content-Range", content_range)
        self.send_header("Connection", "close")
        self.end_headers()
        data = body if stop_after is None else body[:stop_after]
        if slow:
            step = max(1, len(data) // 20)
            for start in range(0, len(data), step):
                self.wfile.write(data[start:start + step])
                self.wfile.flush()
                time.sleep(0.1)
        else:
            self.wfile.write(data)
        self.wfile.flush()
        self.close_connection = True


class LoopbackServer:
    """An HTTP server on 127.0.0.1 serving ``routes`` and recording ``(path, Range header)`` per request."""

    def __init__(self):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.routes = {}
        self.httpd.requests = []
        self.httpd.release = threading.Event()
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def serve(self, path: str, body: bytes, mode: str = "ok") -> str:
        self.httpd.routes[path] = _Route(body, mode)
        return self.base_url + path

    def set_mode(self, path: str, mode: str):
        self.httpd.routes[path].mode = mode

    def requests_for(self, path: str) -> list:
        return [range_header for requested, range_header in self.httpd.requests if requested == path]


@pytest.fixture
def http_server(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    server = LoopbackServer()
    server.thread.start()
    yield server
    server.httpd.release.set()
    server.httpd.shutdown()
    server.httpd.server_close()
    server.thread.join(5)


@pytest.fixture(autouse=True)
def fast_downloader(monkeypatch):
    """Short timeouts and no waits between retries, so every failure costs well under a few seconds.

    The mirror variable is cleared because these tests download from their own loopback server.
    """
    monkeypatch.delenv(download.MIRROR_ENV, raising=False)
    monkeypatch.setenv(download.HTTP_TIMEOUT_ENV, str(TEST_TIMEOUT_SECONDS))
    monkeypatch.setattr(download, "RETRY_WAIT_SECONDS", 0.0)
    monkeypatch.setattr(download, "DOWNLOAD_RETRIES", 2)


@pytest.fixture
def register():
    """Register throwaway datasets and remove them from the registry afterwards."""
    names = []

    def add(dataset: Dataset) -> Dataset:
        download.register_dataset(dataset)
        names.append(dataset.name)
        return dataset

    yield add
    for name in names:
        download.DATASETS.pop(name, None)


# Datasets of each kind -----------------------------------------------------------------------


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name), data)
    return buffer.getvalue()


def tar_bytes(members: dict[str, bytes], compression: str = "") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=f"w:{compression}") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class Case:
    """One throwaway dataset, the server path its download comes from and the mirror argument."""

    def __init__(self, dataset: Dataset, served_path: str, served_body: bytes, mirror: str | None):
        self.dataset = dataset
        self.served_path = served_path
        self.served_body = served_body
        self.mirror = mirror

    def fetch(self, data_dir: Path) -> list[Path]:
        return download.fetch(self.dataset.name, data_dir=data_dir, mirror=self.mirror, progressbar=False)


KINDS = ["file", "mirror-url", "zip", "tar"]


def make_case(kind: str, server: LoopbackServer, register, mode: str = "ok", name: str = "scratch") -> Case:
    """Register a dataset of ``kind`` whose one payload file comes from ``server``."""
    payload_sha = sha256_hex(PAYLOAD)
    common = dict(name=f"{name}-{kind}", description="test data", licence="none", citation="none")
    if kind == "file":
        url = server.serve("/payload.bin", PAYLOAD, mode)
        files = (DataFile(PAYLOAD_TARGET, payload_sha, len(PAYLOAD), url=url),)
        return Case(register(Dataset(files=files, **common)), "/payload.bin", PAYLOAD, None)
    if kind == "mirror-url":
        server.serve("/mirror/" + PAYLOAD_TARGET, PAYLOAD, mode)
        files = (DataFile(PAYLOAD_TARGET, payload_sha, len(PAYLOAD)),)
        return Case(register(Dataset(files=files, **common)), "/mirror/" + PAYLOAD_TARGET, PAYLOAD,
                    server.base_url + "/mirror/")

    body = zip_bytes({PAYLOAD_MEMBER: PAYLOAD}) if kind == "zip" else tar_bytes({PAYLOAD_MEMBER: PAYLOAD})
    # An uncompressed tar, so that half of the archive is many download chunks, as with the stored zip.
    archive_name = "payload.zip" if kind == "zip" else "payload.tar"
    url = server.serve("/" + archive_name, body, mode)
    archive = Archive(archive_name, url, f"sha256:{sha256_hex(body)}", len(body))
    files = (DataFile(PAYLOAD_TARGET, payload_sha, len(PAYLOAD), archive=archive_name, member=PAYLOAD_MEMBER),)
    return Case(register(Dataset(files=files, archives=(archive,), **common)), "/" + archive_name, body, None)


def registered_paths(dataset: Dataset, data_dir: Path) -> dict[Path, str]:
    """Map every registered file and archive of ``dataset`` to its SHA-256."""
    paths = {data_dir / f.target: f.sha256 for f in dataset.files}
    for archive in dataset.archives:
        paths[data_dir / "archives" / archive.name] = archive.known_hash.split(":", 1)[1]
    return paths


def assert_no_false_good_file(dataset: Dataset, data_dir: Path):
    """Fail if a registered path contains a file with the wrong hash, or a stray file is left behind."""
    expected = registered_paths(dataset, data_dir)
    for path, sha in expected.items():
        if path.exists():
            assert sha256_hex(path.read_bytes()) == sha, f"{path} is kept with the wrong content"
    if not data_dir.exists():
        return
    for path in data_dir.rglob("*"):
        if path.is_file() and path not in expected:
            assert path.name.endswith((".part", ".lock")), f"unexpected file left behind: {path}"


def assert_payload_good(data_dir: Path):
    assert (data_dir / PAYLOAD_TARGET).read_bytes() == PAYLOAD


# Failure modes of the transfer ---------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_truncated_transfer_rejected(kind, http_server, register, tmp_path):
    case = make_case(kind, http_server, register, mode="truncate")

    with pytest.raises(DownloadError, match="after 3 attempt"):
        case.fetch(tmp_path)

    assert not (tmp_path / PAYLOAD_TARGET).exists()
    assert_no_false_good_file(case.dataset, tmp_path)
    assert len(http_server.requests_for(case.served_path)) == 3


@pytest.mark.parametrize("kind", KINDS)
def test_wrong_checksum_rejected(kind, http_server, register, tmp_path):
    case = make_case(kind, http_server, register)
    damaged = bytearray(case.served_body)
    damaged[len(damaged) // 2] ^= 0xFF
    http_server.serve(case.served_path, bytes(damaged))

    with pytest.raises(DownloadError, match="failed verification"):
        case.fetch(tmp_path)

    assert not (tmp_path / PAYLOAD_TARGET).exists()
    assert not list(tmp_path.rglob("*.part")), "a partial file failing its hash must be deleted"
    assert_no_false_good_file(case.dataset, tmp_path)


@pytest.mark.parametrize("kind", KINDS)
def test_http_404_not_retried(kind, http_server, register, tmp_path):
    case = make_case(kind, http_server, register, mode="status-404")

    with pytest.raises(DownloadError, match="HTTP 404"):
        case.fetch(tmp_path)

    assert len(http_server.requests_for(case.served_path)) == 1
    assert not list(tmp_path.rglob("*.part"))
    assert_no_false_good_file(case.dataset, tmp_path)


@pytest.mark.parametrize("kind", KINDS)
def test_http_500_retried_then_rejected(kind, http_server, register, tmp_path):
    case = make_case(kind, http_server, register, mode="status-500")

    with pytest.raises(DownloadError, match="500"):
        case.fetch(tmp_path)

    assert len(http_server.requests_for(case.served_path)) == 3
    assert_no_false_good_file(case.dataset, tmp_path)


@pytest.mark.parametrize("kind", KINDS)
def test_stalled_server_times_out(kind, http_server, register, tmp_path, monkeypatch):
    monkeypatch.setattr(download, "DOWNLOAD_RETRIES", 0)
    case = make_case(kind, http_server, register, mode="stall")

    started = time.monotonic()
    with pytest.raises(DownloadError, match="timed out"):
        case.fetch(tmp_path)

    assert time.monotonic() - started < 10 * TEST_TIMEOUT_SECONDS
    assert_no_false_good_file(case.dataset, tmp_path)


@pytest.mark.parametrize("kind", KINDS)
def test_interrupted_download_resumed(kind, http_server, register, tmp_path):
    case = make_case(kind, http_server, register, mode="truncate-once")

    case.fetch(tmp_path)

    assert_payload_good(tmp_path)
    first, second = http_server.requests_for(case.served_path)
    assert first is None
    resumed_from = int(second.removeprefix("bytes=").removesuffix("-"))
    assert 0 < resumed_from <= len(case.served_body) // 2
    assert not list(tmp_path.rglob("*.part"))


def test_partial_file_resumed_by_next_run(http_server, register, tmp_path, monkeypatch):
    monkeypatch.setattr(download, "DOWNLOAD_RETRIES", 0)
    case = make_case("file", http_server, register, mode="truncate")
    with pytest.raises(DownloadError, match="the next run resumes"):
        case.fetch(tmp_path)
    partial = tmp_path / (PAYLOAD_TARGET + ".part")
    kept = partial.read_bytes()
    assert 0 < len(kept) <= len(PAYLOAD) // 2
    assert kept == PAYLOAD[:len(kept)]

    http_server.set_mode(case.served_path, "ok")
    case.fetch(tmp_path)

    assert_payload_good(tmp_path)
    assert http_server.requests_for(case.served_path) == [None, f"bytes={len(kept)}-"]
    assert not partial.exists()


def test_server_ignoring_range_restarts(http_server, register, tmp_path):
    case = make_case("file", http_server, register, mode="no-range")
    partial = tmp_path / (PAYLOAD_TARGET + ".part")
    partial.parent.mkdir(parents=True)
    partial.write_bytes(PAYLOAD[:1000])

    case.fetch(tmp_path)

    assert_payload_good(tmp_path)
    assert http_server.requests_for(case.served_path) == ["bytes=1000-"]


def test_damaged_partial_file_replaced(http_server, register, tmp_path):
    case = make_case("file", http_server, register)
    partial = tmp_path / (PAYLOAD_TARGET + ".part")
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"\x00" * 1000)

    case.fetch(tmp_path)

    assert_payload_good(tmp_path)
    assert http_server.requests_for(case.served_path) == ["bytes=1000-", None]


def test_complete_partial_file_not_downloaded_again(http_server, register, tmp_path):
    case = make_case("file", http_server, register)
    partial = tmp_path / (PAYLOAD_TARGET + ".part")
    partial.parent.mkdir(parents=True)
    partial.write_bytes(PAYLOAD)

    case.fetch(tmp_path)

    assert_payload_good(tmp_path)
    assert http_server.requests_for(case.served_path) == []


def test_oversized_response_rejected(http_server, register, tmp_path):
    case = make_case("file", http_server, register)
    http_server.serve(case.served_path, PAYLOAD + b"extra bytes")

    with pytest.raises(DownloadError, match="more than the expected"):
        case.fetch(tmp_path)

    assert not list(tmp_path.rglob("*.part"))
    assert_no_false_good_file(case.dataset, tmp_path)


class _FullDiskFile:
    """A binary file whose writes fail with ENOSPC once ``budget`` bytes have been written."""

    def __init__(self, path, mode, budget):
        self._file = open(path, mode)
        self._budget = budget

    def write(self, data):
        if self._budget < len(data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._budget -= len(data)
        return self._file.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self._file.close()


@pytest.mark.parametrize("kind", KINDS)
def test_disk_full_removes_partial(kind, http_server, register, tmp_path, monkeypatch):
    case = make_case(kind, http_server, register)

    def open_on_full_disk(path, mode="r", *args, **kwargs):
        if "r" in mode:
            return open(path, mode, *args, **kwargs)
        return _FullDiskFile(path, mode, 1 << 16)

    monkeypatch.setattr(download, "open", open_on_full_disk, raising=False)

    with pytest.raises(DownloadError, match="No space left on device"):
        case.fetch(tmp_path)

    assert not list(tmp_path.rglob("*.part")), "the partial file must be removed after a write error"
    assert len(http_server.requests_for(case.served_path)) == 1
    assert_no_false_good_file(case.dataset, tmp_path)


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_disk_full_while_extracting(kind, http_server, register, tmp_path, monkeypatch):
    case = make_case(kind, http_server, register)

    def copy_then_fail(source, destination, *args):
        destination.write(source.read(1000))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(shutil, "copyfileobj", copy_then_fail)

    with pytest.raises(DownloadError, match="No space left on device"):
        case.fetch(tmp_path)

    assert not list(tmp_path.rglob("*.part"))
    assert not (tmp_path / PAYLOAD_TARGET).exists()
    assert_no_false_good_file(case.dataset, tmp_path)


@pytest.mark.parametrize("kind", KINDS)
def test_failure_keeps_previous_good_file(kind, http_server, register, tmp_path):
    """A good file fetched earlier survives a later failed fetch of another file."""
    good_data = b"a file fetched in an earlier run"
    good_url = http_server.serve("/good.bin", good_data)
    register(Dataset("earlier", "test data", "none", "none",
                     files=(DataFile("raw/good.bin", sha256_hex(good_data), len(good_data), url=good_url),)))
    download.fetch("earlier", data_dir=tmp_path, progressbar=False)
    good_path = tmp_path / "raw/good.bin"
    modified = good_path.stat().st_mtime_ns

    case = make_case(kind, http_server, register, mode="truncate")
    with pytest.raises(DownloadError):
        case.fetch(tmp_path)

    assert good_path.read_bytes() == good_data
    assert good_path.stat().st_mtime_ns == modified
    assert download.verify("earlier", tmp_path) == {"raw/good.bin": "ok"}


@pytest.mark.parametrize("mode", ["truncate", "status-500", "status-404"])
def test_failure_keeps_existing_destination(mode, http_server, tmp_path):
    """The file at the destination (an older version, say) is untouched by a failed download."""
    url = http_server.serve("/payload.bin", PAYLOAD, mode)
    destination = tmp_path / "payload.bin"
    destination.write_bytes(b"older version of the file")

    with pytest.raises(DownloadError):
        download._download_verified(url, destination, f"sha256:{sha256_hex(PAYLOAD)}", False, size=len(PAYLOAD))

    assert destination.read_bytes() == b"older version of the file"


_CONCURRENT_SCRIPT = """
import sys
from pathlib import Path
from i0t_helpers import download
download._download_verified(sys.argv[1], Path(sys.argv[2]), "sha256:" + sys.argv[3], False, size=int(sys.argv[4]))
"""


def test_concurrent_downloads_write_one_file(http_server, tmp_path):
    url = http_server.serve("/payload.bin", PAYLOAD, "slow")
    destination = tmp_path / "payload.bin"
    command = [sys.executable, "-c", _CONCURRENT_SCRIPT, url, str(destination), sha256_hex(PAYLOAD),
               str(len(PAYLOAD))]
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY)}

    processes = [subprocess.Popen(command, env=environment, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [process.communicate(timeout=60) for process in processes]

    for process, (_, stderr) in zip(processes, results):
        assert process.returncode == 0, stderr
    assert destination.read_bytes() == PAYLOAD
    assert http_server.requests_for("/payload.bin") == [None], "the second process must wait, not download"
    assert sorted(path.name for path in tmp_path.iterdir() if not path.name.endswith(".lock")) == ["payload.bin"]


def test_timeout_environment_variable(monkeypatch):
    monkeypatch.setenv(download.HTTP_TIMEOUT_ENV, "2.5")
    assert download.http_timeout() == 2.5
    monkeypatch.delenv(download.HTTP_TIMEOUT_ENV)
    assert download.http_timeout() == download.HTTP_TIMEOUT_SECONDS
    for bad in ("0", "-1", "soon", "inf", "nan"):
        monkeypatch.setenv(download.HTTP_TIMEOUT_ENV, bad)
        with pytest.raises(ValueError, match=download.HTTP_TIMEOUT_ENV):
            download.http_timeout()


# Unsafe and damaged archives -----------------------------------------------------------------


def _zip_with_symlink(name: str, target: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(zipfile.ZipInfo(PAYLOAD_MEMBER), PAYLOAD)
        info = zipfile.ZipInfo(name)
        info.external_attr = (0o120777 << 16)
        archive.writestr(info, target)
    return buffer.getvalue()


def _tar_with_link(name: str, target: str, link_type: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo(PAYLOAD_MEMBER)
        info.size = len(PAYLOAD)
        archive.addfile(info, io.BytesIO(PAYLOAD))
        link = tarfile.TarInfo(name)
        link.type = link_type
        link.linkname = target
        archive.addfile(link)
    return buffer.getvalue()


def _tar_with_device(name: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo(PAYLOAD_MEMBER)
        info.size = len(PAYLOAD)
        archive.addfile(info, io.BytesIO(PAYLOAD))
        device = tarfile.TarInfo(name)
        device.type = tarfile.CHRTYPE
        archive.addfile(device)
    return buffer.getvalue()


UNSAFE_NAMES = ["/abs/evil.bin", "../evil.bin", "inner/../../evil.bin", "C:/evil.bin", "inner\\..\\..\\evil.bin"]

#: Label -> (archive name, archive bytes, expected error message).
UNSAFE_ARCHIVES = {
    **{f"zip {name}": ("payload.zip", zip_bytes({PAYLOAD_MEMBER: PAYLOAD, name: b"evil"}), "unsafe member")
       for name in UNSAFE_NAMES},
    **{f"tar {name}": ("payload.tar.gz", tar_bytes({PAYLOAD_MEMBER: PAYLOAD, name: b"evil"}, "gz"), "unsafe member")
       for name in UNSAFE_NAMES},
    "zip symlink": ("payload.zip", _zip_with_symlink("inner/link.bin", "../../evil.bin"), "symbolic-link member"),
    "tar symlink": ("payload.tar.gz", _tar_with_link("inner/link.bin", "../../evil.bin", tarfile.SYMTYPE),
                    "link member"),
    "tar hard link": ("payload.tar.gz", _tar_with_link("inner/link.bin", "/etc/hostname", tarfile.LNKTYPE),
                      "link member"),
    "tar device": ("payload.tar.gz", _tar_with_device("inner/device"), "special member"),
}


@pytest.mark.parametrize("label", sorted(UNSAFE_ARCHIVES))
def test_unsafe_archive_member_rejected(label, http_server, register, tmp_path):
    archive_name, body, message = UNSAFE_ARCHIVES[label]
    url = http_server.serve("/" + archive_name, body)
    archive = Archive(archive_name, url, f"sha256:{sha256_hex(body)}", len(body))
    member_file = DataFile(PAYLOAD_TARGET, sha256_hex(PAYLOAD), len(PAYLOAD), archive=archive_name,
                           member=PAYLOAD_MEMBER)
    dataset = register(Dataset("unsafe", "test data", "none", "none", files=(member_file,), archives=(archive,)))
    data_dir = tmp_path / "deep" / "data"

    with pytest.raises(DownloadError, match=f"{message} .*; nothing extracted"):
        download.fetch(dataset.name, data_dir=data_dir, progressbar=False)

    assert not (data_dir / PAYLOAD_TARGET).exists(), "no member is extracted from an unsafe archive"
    assert not [path for path in tmp_path.rglob("*evil*")], "nothing may be written outside the data folder"
    assert not [path for path in tmp_path.rglob("*") if path.is_symlink()]
    assert_no_false_good_file(dataset, data_dir)


@pytest.mark.parametrize("body", [b"not an archive at all", zip_bytes({PAYLOAD_MEMBER: PAYLOAD})[:-30]],
                         ids=["garbage", "cut zip"])
def test_damaged_archive_rejected(body, http_server, register, tmp_path):
    url = http_server.serve("/payload.zip", body)
    archive = Archive("payload.zip", url, f"sha256:{sha256_hex(body)}", len(body))
    member_file = DataFile(PAYLOAD_TARGET, sha256_hex(PAYLOAD), len(PAYLOAD), archive="payload.zip",
                           member=PAYLOAD_MEMBER)
    dataset = register(Dataset("damaged", "test data", "none", "none", files=(member_file,), archives=(archive,)))

    with pytest.raises(DownloadError, match="delete it and download again"):
        download.fetch(dataset.name, data_dir=tmp_path, progressbar=False)

    assert_no_false_good_file(dataset, tmp_path)


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_archive_member_hash_mismatch(kind, http_server, register, tmp_path):
    members = {PAYLOAD_MEMBER: PAYLOAD[:-1] + b"?"}
    body = zip_bytes(members) if kind == "zip" else tar_bytes(members)
    url = http_server.serve("/payload", body)
    archive = Archive("payload", url, f"sha256:{sha256_hex(body)}", len(body))
    member_file = DataFile(PAYLOAD_TARGET, sha256_hex(PAYLOAD), len(PAYLOAD), archive="payload",
                           member=PAYLOAD_MEMBER)
    dataset = register(Dataset("mismatch", "test data", "none", "none", files=(member_file,), archives=(archive,)))

    with pytest.raises(DownloadError, match="was not written"):
        download.fetch(dataset.name, data_dir=tmp_path, progressbar=False)

    assert not (tmp_path / PAYLOAD_TARGET).exists()
    assert_no_false_good_file(dataset, tmp_path)


@pytest.mark.parametrize("target", ["../escape.bin", "/abs/escape.bin", "raw/../../escape.bin"])
def test_target_outside_data_dir_rejected(target, http_server, register, tmp_path):
    url = http_server.serve("/payload.bin", PAYLOAD)
    register(Dataset("escape", "test data", "none", "none",
                     files=(DataFile(target, sha256_hex(PAYLOAD), len(PAYLOAD), url=url),)))

    with pytest.raises(DownloadError, match="inside the data folder"):
        download.fetch("escape", data_dir=tmp_path / "data", progressbar=False)

    assert not list(tmp_path.rglob("escape.bin"))
    assert http_server.requests_for("/payload.bin") == []


# Mirror folders ------------------------------------------------------------------------------


@pytest.fixture
def folder_case(register, tmp_path):
    mirror = tmp_path / "mirror"
    (mirror / "raw").mkdir(parents=True)
    (mirror / PAYLOAD_TARGET).write_bytes(PAYLOAD)
    dataset = register(Dataset("folder", "test data", "none", "none",
                               files=(DataFile(PAYLOAD_TARGET, sha256_hex(PAYLOAD), len(PAYLOAD)),)))
    return dataset, mirror, tmp_path / "data"


def test_mirror_folder_copy_verified(folder_case):
    dataset, mirror, data_dir = folder_case

    download.fetch(dataset.name, data_dir=data_dir, mirror=mirror, progressbar=False)

    assert_payload_good(data_dir)
    assert_no_false_good_file(dataset, data_dir)


def test_mirror_folder_damaged_copy_rejected(folder_case):
    dataset, mirror, data_dir = folder_case
    (mirror / PAYLOAD_TARGET).write_bytes(PAYLOAD[:-1])

    with pytest.raises(DownloadError, match="mirror copy is damaged"):
        download.fetch(dataset.name, data_dir=data_dir, mirror=mirror, progressbar=False)

    assert not list(data_dir.rglob("*.part"))
    assert_no_false_good_file(dataset, data_dir)


def test_mirror_folder_missing_file_rejected(folder_case):
    dataset, mirror, data_dir = folder_case
    (mirror / PAYLOAD_TARGET).unlink()

    with pytest.raises(DownloadError, match="not found in the mirror"):
        download.fetch(dataset.name, data_dir=data_dir, mirror=mirror, progressbar=False)

    assert_no_false_good_file(dataset, data_dir)


def test_mirror_folder_disk_full_removes_partial(folder_case, monkeypatch):
    dataset, mirror, data_dir = folder_case

    def copy_then_fail(source, destination):
        Path(destination).write_bytes(Path(source).read_bytes()[:1000])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(shutil, "copyfile", copy_then_fail)

    with pytest.raises(DownloadError, match="No space left on device"):
        download.fetch(dataset.name, data_dir=data_dir, mirror=mirror, progressbar=False)

    assert not list(data_dir.rglob("*.part"))
    assert_no_false_good_file(dataset, data_dir)


def test_command_line_reports_download_error(http_server, register, tmp_path, capsys):
    case = make_case("file", http_server, register, mode="status-404")

    status = download.main(["--data-dir", str(tmp_path), "get", case.dataset.name, "--quiet"])

    assert status == 2
    error_lines = capsys.readouterr().err.strip().splitlines()
    assert error_lines[-1].startswith("error: the server answered HTTP 404")


def test_archive_of_unknown_size_downloads(http_server, register, tmp_path):
    """A registered size of 0 means unknown: the download is bounded by its hash only."""
    body = zip_bytes({PAYLOAD_MEMBER: PAYLOAD})
    url = http_server.serve("/payload.zip", body)
    archive = Archive("payload.zip", url, f"md5:{hashlib.md5(body).hexdigest()}", size=0)
    member_file = DataFile(PAYLOAD_TARGET, sha256_hex(PAYLOAD), len(PAYLOAD), archive="payload.zip",
                           member=PAYLOAD_MEMBER)
    dataset = register(Dataset("unknown-size", "test data", "none", "none", files=(member_file,), archives=(archive,)))

    download.fetch(dataset.name, data_dir=tmp_path, progressbar=False)

    assert_payload_good(tmp_path)
    assert download.verify(dataset.name, tmp_path) == {PAYLOAD_TARGET: "ok"}

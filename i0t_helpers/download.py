"""Fetch, verify and build the course's data files.

Every file has a pinned URL, a size and a SHA-256 hash. Files are downloaded with
requests into a ``.part`` file that is moved into place only when its hash
matches (with a progress bar, retries that resume the partial file with HTTP
Range requests, and a lock file so that concurrent processes download a file
once), or copied from a mirror: a folder or a URL laid out like
``liang2022/``, ``coco/`` and ``flickr8k/``. A file whose hash fails is never
kept, and an existing good file is never replaced by a bad one. Zip and tar
archives with absolute, ``..``, link or device members are rejected whole.

The data folder is, in order of precedence, the ``data_dir`` argument, the
``I0T_DATA_DIR`` environment variable, ``data/`` in a source checkout of this
repository, or the user cache folder when the package was installed from a
wheel. ``I0T_DATA_MIRROR`` sets the default mirror.

The command-line front end is ``python data_download.py`` (or
``python -m i0t_helpers.download``); see :func:`main`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable
from ._files import replace_file

logger = logging.getLogger(__name__)

DATA_DIR_ENV = "I0T_DATA_DIR"
MIRROR_ENV = "I0T_DATA_MIRROR"
HTTP_TIMEOUT_ENV = "I0T_HTTP_TIMEOUT"
#: Seconds without data after which an HTTP download attempt is abandoned; ``I0T_HTTP_TIMEOUT`` overrides it.
HTTP_TIMEOUT_SECONDS = 30
#: Extra attempts after a failed download, each resuming the partial file where the server allows it.
DOWNLOAD_RETRIES = 2
#: Retry number i waits ``i * RETRY_WAIT_SECONDS`` seconds before starting.
RETRY_WAIT_SECONDS = 1.0
#: Seconds a process waits for another process that is downloading the same file.
LOCK_TIMEOUT_SECONDS = 3600

_LIANG_URL = (
    "https://raw.githubusercontent.com/Weixin-Liang/Modality-Gap/"
    "8e20cb24efa4c5f89aad694f2f65eb43ffc46d10/Figure_1_Modality_Gap/{}"
)
_COCO_CAPTIONS_URL = (
    "https://raw.githubusercontent.com/ruizewang/evaluate/"
    "1152656d3b8c66c48fc6a4357e159f5e21bd2d2d/annotations/captions_val2017.json"
)
FLICKR8K_TEXT_URL = "https://github.com/jbrownlee/Datasets/releases/download/Flickr8k/Flickr8k_text.zip"


class DownloadError(RuntimeError):
    """Raised when a data file cannot be fetched or fails verification."""


@dataclass(frozen=True)
class DataFile:
    """One file of a dataset, as stored under the data folder.

    ``target`` is the path below the data folder and also below a mirror.
    ``archive`` names the :class:`Archive` the file is a member of when it has no
    download URL of its own.
    """

    target: str
    sha256: str
    size: int
    url: str | None = None
    archive: str | None = None
    member: str | None = None


@dataclass(frozen=True)
class Archive:
    """A zip or tar archive published with a checksum, from which member files are extracted."""

    name: str
    url: str
    known_hash: str
    size: int


@dataclass(frozen=True)
class Dataset:
    """A named group of files, with their licence and the derived files built from them."""

    name: str
    description: str
    licence: str
    citation: str
    files: tuple[DataFile, ...]
    archives: tuple[Archive, ...] = ()
    build: Callable[[Path], list[Path]] | None = None
    derived: tuple[str, ...] = field(default=())
    folders: tuple["ArchiveFolder", ...] = ()


@dataclass(frozen=True)
class ArchiveFolder:
    """Every member of an archive below ``prefix``, extracted into the folder ``target``.

    An image archive contains thousands of members, too many to list each with its
    own hash, so the archive's published hash vouches for all of them: members
    are extracted only from an archive whose hash matches, through a staging
    folder that replaces ``target`` once every member is written, with a
    manifest (:data:`FOLDER_MANIFEST`) that marks the folder complete.
    ``n_files`` is the expected member count, checked as a sanity check only;
    ``suffixes`` keeps members with these lower-case suffixes (all when empty).
    """

    archive: str
    prefix: str
    target: str
    n_files: int | None = None
    suffixes: tuple[str, ...] = ()


def _liang_file(name: str, sha256: str, size: int) -> DataFile:
    return DataFile(f"liang2022/{name}", sha256, size, url=_LIANG_URL.format(name))


_LIANG_LICENCE_FILE = _liang_file(
    "LICENSE", "a5e6ddb3af783a02eacc848cbe309cc0940b4859ac653e9b1a2e21a4fea22552", 1056
)
_LIANG_CITATION = (
    "Liang, Zhang, Kwon, Yeung and Zou. Mind the Gap: Understanding the Modality Gap in Multi-modal "
    "Contrastive Representation Learning. NeurIPS 2022."
)
_COCO_CAPTIONS = DataFile(
    "coco/captions_val2017.json",
    "1018a8760deaf1fc71be2f1b8da1a1348b9c35994af4322ca2fd795a78abb79c",
    3872493,
    url=_COCO_CAPTIONS_URL,
)


def _build_starter(data_dir: Path) -> list[Path]:
    from .packs import build_coco500_packs

    return build_coco500_packs(data_dir)


DATASETS: dict[str, Dataset] = {}


def register_dataset(dataset: Dataset) -> Dataset:
    """Add ``dataset`` to the registry that ``list``, ``get`` and ``verify`` use."""
    if dataset.name in DATASETS:
        raise ValueError(f"a dataset named {dataset.name!r} is already registered")
    DATASETS[dataset.name] = dataset
    return dataset


register_dataset(Dataset(
    name="starter",
    description="500 COCO val2017 image-caption pairs embedded by CLIP ViT-B/16 and by its random-initialisation "
                "twin (Liang et al.), with every COCO caption of those images",
    licence="embeddings MIT (Liang et al.); COCO captions CC BY 4.0",
    citation=_LIANG_CITATION + " Lin et al. Microsoft COCO: Common Objects in Context. ECCV 2014.",
    files=(
        _liang_file("features_clip.npy", "7227280ace0f145d2c45afa8ab507a1cb280e9460aa271fe9052d08e35342adb", 2048128),
        _liang_file("features_clip_random.npy", "c6a5f9ca3fba36d635fd47d20b3cdd5b9ac78dc462070240fdc2ee2786110403",
                    2048128),
        _LIANG_LICENCE_FILE,
        _COCO_CAPTIONS,
    ),
    build=_build_starter,
    derived=("packs/coco500_clip.npz", "packs/coco500_clip_random.npz"),
))


# NOTE: the member names are assumed to sit at the top level of Flickr8k_text.zip; they were not
# checked against the real archive, and its size is unknown (0 below), so only its MD5 is checked.
register_dataset(Dataset(
    name="flickr8k-text",
    description="Flickr8k captions, test split and the Expert and CrowdFlower human judgments of caption quality "
                "(text only, no images)",
    licence="research use (Hodosh, Young and Hockenmaier, 2013)",
    citation="Hodosh, Young and Hockenmaier. Framing Image Description as a Ranking Task: Data, Models and "
             "Evaluation Metrics. JAIR 47, 2013.",
    files=tuple(
        DataFile(f"flickr8k/{name}", sha256, size, archive="Flickr8k_text.zip", member=name)
        for name, sha256, size in (
            ("ExpertAnnotations.txt", "56c2b1a9e1a46ba73b8b151abd7c3c8b1676fbacadb559d0c2eb6524b166cf4f", 346674),
            ("CrowdFlowerAnnotations.txt", "72a74aef443df4848fb1f3c23654ee9e0ca5b528198f68e2efedf11b6ca61260",
             2918552),
            ("Flickr8k.token.txt", "1e1f3a371ba1a1bf742e6930521c037e046b2bf3fcc2390ba8405e0301ed7689", 3395237),
            ("Flickr_8k.testImages.txt", "c0924146c131458ceba45da59670fe9520eadce1e5cafffa16a817672a9b1f17", 25775),
            ("readme.txt", "6152fc45ae9b629c4af9c8466e5ae608b80fbcb0f6316fef458dc160020a21a2", 1821),
        )
    ),
    archives=(Archive("Flickr8k_text.zip", FLICKR8K_TEXT_URL, "md5:bf6c1abcb8e4a833b7f922104de18627", size=0),),
))


register_dataset(Dataset(
    name="coco-val2017",
    description="COCO val2017: the 5,000 images (an 815.6 MB zip) and their 25,014 captions, for live encoding",
    licence="images: Flickr terms of use, as distributed by COCO; captions CC BY 4.0",
    citation="Lin et al. Microsoft COCO: Common Objects in Context. ECCV 2014.",
    files=(_COCO_CAPTIONS,),
    # The zip's MD5 is 442b8da7639aecaf257c1dceb8ba8c80; its SHA-256 is checked here.
    archives=(Archive("val2017.zip", "http://images.cocodataset.org/zips/val2017.zip",
                      "sha256:4f7e2ccb2866ec5041993c9cf2a952bbed69647b115d0f74da7ce8f4bef82f05", size=815585330),),
    folders=(ArchiveFolder("val2017.zip", "val2017/", "coco/val2017", n_files=5000, suffixes=(".jpg",)),),
))


# NOTE: the member folder "Flicker8k_Dataset/" (the archive's own spelling) and the 8,091 images are
# taken from public scripts that unpack this archive; the archive's size is unknown (0), so only its MD5
# is checked. Flickr30k is not registered: its official images are distributed through a request form,
# and no public copy with a published checksum was found.
register_dataset(Dataset(
    name="flickr8k-images",
    description="the 8,091 Flickr8k images (about 1 GB zip), for live encoding of the Flickr8k test split",
    licence="research use (Hodosh, Young and Hockenmaier, 2013); images under Flickr terms of use",
    citation="Hodosh, Young and Hockenmaier. Framing Image Description as a Ranking Task: Data, Models and "
             "Evaluation Metrics. JAIR 47, 2013.",
    files=(),
    archives=(Archive("Flickr8k_Dataset.zip",
                      "https://github.com/jbrownlee/Datasets/releases/download/Flickr8k/Flickr8k_Dataset.zip",
                      "md5:f18a1e2920de5bd84dae7cf08ec78978", size=0),),
    folders=(ArchiveFolder("Flickr8k_Dataset.zip", "Flicker8k_Dataset/", "flickr8k/images", n_files=8091,
                           suffixes=(".jpg",)),),
))


def _build_liang2022(data_dir: Path) -> list[Path]:
    from .liang2022 import build_liang2022_packs

    return build_liang2022_packs(data_dir)


_LIANG2022_MODEL_FILES = (
    ("clip", "7227280ace0f145d2c45afa8ab507a1cb280e9460aa271fe9052d08e35342adb", 2048128),
    ("clip_random", "c6a5f9ca3fba36d635fd47d20b3cdd5b9ac78dc462070240fdc2ee2786110403", 2048128),
    ("convirt", "8cfb9c31888d12726a3f8b551bed64f04b25d1c76d5353b0a3e9efeceb43edb9", 2048128),
    ("convirt_random", "2fd5698e712d5e0d72256a1b29044b2059818f0575ab12bfcb2c5ae13092007f", 2048128),
    ("videoclip", "53255cac6105c5c47dd1850d77de084957d5f83841ba9ae9254bf7ae998573da", 614528),
    ("videoclip_random", "c57ee05a606c4a9da0d71ad8b5d5c964d780af816890064a693eb178492c0f3b", 614528),
    ("clasp", "5a1d12a68729405003fe19b271a38ae35adab97c139e4b4a51d70b18c44bf628", 608384),
    ("clasp_random", "2a159d008b7527e9fbd3de49daf9116d9500d1aaa250c3a5b009b162c5f4066b", 608384),
)
register_dataset(Dataset(
    name="liang2022-all",
    description="every embedding file of Liang et al. (2022): CLIP (COCO), ConVIRT (medical images and reports), "
                "VideoCLIP (video and text) and CLASP (proteins and text), each with its random-initialisation twin",
    licence="MIT (Liang et al.)",
    citation=_LIANG_CITATION,
    files=tuple(_liang_file(f"features_{model}.npy", sha256, size) for model, sha256, size in _LIANG2022_MODEL_FILES)
    + (_LIANG_LICENCE_FILE,),
    build=_build_liang2022,
    derived=tuple(f"packs/liang2022_{model}.npz" for model, _, _ in _LIANG2022_MODEL_FILES),
))


# Paths and sources ---------------------------------------------------------------------------


def default_data_dir() -> Path:
    """Return the data folder: ``I0T_DATA_DIR``, else ``data/`` of a source checkout, else the user cache."""
    configured = os.environ.get(DATA_DIR_ENV)
    if configured:
        return Path(configured).expanduser()
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "i0t_helpers").is_dir():
        return checkout / "data"
    import pooch

    return Path(pooch.os_cache("i0t-course"))


def resolve_data_dir(data_dir=None) -> Path:
    """Return ``data_dir`` as a Path, or :func:`default_data_dir` when it is ``None``."""
    return Path(data_dir).expanduser() if data_dir is not None else default_data_dir()


def resolve_mirror(mirror=None) -> str | None:
    """Return the mirror to use: ``mirror``, else ``I0T_DATA_MIRROR``, else ``None`` (the internet)."""
    if mirror is None:
        mirror = os.environ.get(MIRROR_ENV) or None
    return None if mirror is None else str(mirror)


def _is_url(location: str) -> bool:
    return location.startswith(("http://", "https://", "ftp://"))


def file_sha256(path: Path, chunk_bytes: int = 1 << 20) -> str:
    """Return the hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(chunk_bytes), b""):
            digest.update(block)
    return digest.hexdigest()


def get_dataset(name: str) -> Dataset:
    """Return the registered dataset called ``name``."""
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(sorted(DATASETS))}") from None


# Fetching ------------------------------------------------------------------------------------


def _offline_hint() -> str:
    return (
        f"if this machine is offline, pass --mirror DIR_OR_URL (or set {MIRROR_ENV}) to a folder or server "
        f"laid out like liang2022/, coco/ and flickr8k/"
    )


def _target_path(data_dir: Path, target: str) -> Path:
    """Return ``data_dir / target``, rejecting targets that would leave the data folder."""
    posix = PurePosixPath(target.replace("\\", "/"))
    if not posix.parts or posix.is_absolute() or ".." in posix.parts or posix.parts[0].endswith(":"):
        raise DownloadError(f"data file target {target!r} must be a relative path inside the data folder")
    return data_dir / Path(*posix.parts)


def _copy_verified(source: Path, destination: Path, sha256: str):
    """Copy ``source`` to ``destination`` through a temporary file, keeping it only if the hash matches."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=destination.parent, prefix=destination.name, suffix=".part")
    os.close(handle)
    try:
        try:
            shutil.copyfile(source, temporary)
        except OSError as error:
            raise DownloadError(
                f"copying {source} to {destination} failed: {error}; free disk space or choose another "
                f"--data-dir, then run the command again"
            ) from None
        actual = file_sha256(Path(temporary))
        if actual != sha256:
            raise DownloadError(
                f"{source} has SHA-256 {actual}, expected {sha256}; the mirror copy is damaged or of another "
                f"version, so {destination} was not written. Replace the mirror file or download from the internet"
            )
        replace_file(temporary, destination)
    finally:
        Path(temporary).unlink(missing_ok=True)


def http_timeout() -> float:
    """Return the HTTP timeout in seconds: ``I0T_HTTP_TIMEOUT`` when set, else :data:`HTTP_TIMEOUT_SECONDS`."""
    configured = os.environ.get(HTTP_TIMEOUT_ENV, "").strip()
    if not configured:
        return float(HTTP_TIMEOUT_SECONDS)
    try:
        timeout = float(configured)
    except ValueError:
        timeout = float("nan")
    if not (timeout > 0 and timeout != float("inf")):
        raise ValueError(f"{HTTP_TIMEOUT_ENV} must be a positive number of seconds, got {configured!r}")
    return timeout


class _PermanentDownloadError(DownloadError):
    """A download failure that another attempt cannot fix (HTTP 4xx, a full disk, an oversized response)."""


def _partial_path(destination: Path) -> Path:
    return destination.with_name(destination.name + ".part")


def _stream_to_partial(url: str, partial: Path, timeout: float, size: int | None, progressbar: bool):
    """Append the rest of ``url`` to ``partial``, resuming from its length with an HTTP Range request.

    A server that ignores the Range header answers 200 with the whole file, which
    then replaces the partial content. Network errors propagate as
    ``requests.exceptions.RequestException`` and leave the bytes received so far
    in ``partial`` for the next attempt.
    """
    import requests
    from tqdm.auto import tqdm

    offset = partial.stat().st_size if partial.is_file() else 0
    if size is not None and offset == size:
        return
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    with requests.get(url, headers=headers, stream=True, timeout=timeout) as response:
        if offset and response.status_code == 416:
            # The partial file already contains every byte the server has, so the hash check decides.
            return
        if 400 <= response.status_code < 500 and response.status_code not in (408, 429):
            raise _PermanentDownloadError(
                f"the server answered HTTP {response.status_code} {response.reason} for {url}; check that the "
                f"URL is right, or {_offline_hint()}"
            )
        response.raise_for_status()

        resumed = bool(offset) and response.status_code == 206
        if resumed and not response.headers.get("Content-Range", "").startswith(f"bytes {offset}-"):
            raise requests.exceptions.ContentDecodingError(
                f"the server sent Content-Range {response.headers.get('Content-Range')!r} for a request from byte "
                f"{offset}"
            )
        if not resumed:
            offset = 0
        written = offset
        remaining = int(response.headers.get("Content-Length") or 0)
        with open(partial, "ab" if resumed else "wb") as output, \
                tqdm(total=offset + remaining or None, initial=offset, unit="B", unit_scale=True,
                     disable=not progressbar, desc=partial.name[:-len(".part")]) as progress:
            # Small chunks, because a read that hits the end of a cut connection discards its bytes.
            for chunk in response.iter_content(chunk_size=1 << 13):
                if size is not None and written + len(chunk) > size:
                    raise _PermanentDownloadError(
                        f"{url} sent more than the expected {size} bytes; it is not the registered file"
                    )
                try:
                    output.write(chunk)
                except OSError as error:
                    raise _PermanentDownloadError(
                        f"writing {partial} failed: {error}; free disk space or choose another --data-dir, then "
                        f"run the command again"
                    ) from None
                written += len(chunk)
                progress.update(len(chunk))
    if size is not None and written < size:
        # A server that closes the connection without announcing a length ends the stream silently.
        raise requests.exceptions.ChunkedEncodingError(f"the connection closed after {written} of {size} bytes")


def _download_verified(url: str, destination: Path, known_hash: str, progressbar: bool, size: int | None = None):
    """Download ``url`` to ``destination``, keeping it only if ``known_hash`` (``"sha256:HEX"``) matches.

    The bytes go to ``destination.part``, which is moved into place only after
    its hash matches, so ``destination`` is never a partial or unverified file and
    a previous file there survives every failure. A transfer cut short
    (connection lost, timeout, HTTP 5xx) keeps the partial file and the next
    attempt, or the next call, asks the server for the remaining bytes with an
    HTTP Range request. A hash mismatch, an HTTP 4xx answer, a response larger
    than ``size`` and a failed write (a full disk) delete the partial file. A lock
    file next to ``destination`` makes concurrent processes download it once.
    Timeout: :func:`http_timeout`; attempts: ``1 + DOWNLOAD_RETRIES``.
    """
    import requests
    from filelock import FileLock, Timeout

    timeout = http_timeout()
    size = size or None  # a registered size of 0 means unknown
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = _partial_path(destination)
    lock = FileLock(str(destination.with_name(f".{destination.name}.lock")), timeout=LOCK_TIMEOUT_SECONDS)
    try:
        lock.acquire()
    except Timeout:
        raise DownloadError(
            f"another process has been downloading {destination} for over {LOCK_TIMEOUT_SECONDS} s; stop it or "
            f"delete {lock.lock_file} if no such process runs"
        ) from None

    try:
        if destination.is_file() and _archive_hash_matches(destination, known_hash):
            logger.info("%s was downloaded by another process", destination)
            return
        attempts = 1 + DOWNLOAD_RETRIES
        for attempt in range(1, attempts + 1):
            try:
                _stream_to_partial(url, partial, timeout, size, progressbar)
            except _PermanentDownloadError:
                partial.unlink(missing_ok=True)
                raise
            except requests.exceptions.RequestException as error:
                kept = partial.stat().st_size if partial.is_file() else 0
                if attempt == attempts:
                    raise DownloadError(
                        f"could not download {url} to {destination} after {attempts} attempt(s): {error}; "
                        f"{kept} bytes are kept in {partial} and the next run resumes from there; "
                        f"{_offline_hint()}"
                    ) from None
                logger.warning("download of %s failed (%s); retrying, %d bytes kept", url, error, kept)
                time.sleep(attempt * RETRY_WAIT_SECONDS)
                continue

            if _archive_hash_matches(partial, known_hash):
                os.replace(partial, destination)
                return
            received = partial.stat().st_size
            partial.unlink()
            if attempt == attempts:
                raise DownloadError(
                    f"{url} failed verification ({received} bytes whose hash is not {known_hash}) and was not saved "
                    f"as {destination}; retry later, or use a mirror copy with --mirror"
                )
            logger.warning("%s failed verification; downloading it again from the start", url)
            time.sleep(attempt * RETRY_WAIT_SECONDS)
    finally:
        lock.release()


def _fetch_file(data_file: DataFile, data_dir: Path, mirror: str | None, progressbar: bool) -> Path:
    destination = _target_path(data_dir, data_file.target)
    if destination.is_file() and file_sha256(destination) == data_file.sha256:
        logger.info("%s is present and verified", destination)
        return destination

    if mirror is not None and not _is_url(mirror):
        source = Path(mirror).expanduser() / data_file.target
        if not source.is_file():
            raise DownloadError(
                f"{source} not found in the mirror {mirror}; the mirror must hold {data_file.target} "
                f"(layout liang2022/, coco/, flickr8k/)"
            )
        logger.info("copying %s from the mirror", data_file.target)
        _copy_verified(source, destination, data_file.sha256)
        return destination

    if mirror is not None:
        url = mirror.rstrip("/") + "/" + data_file.target
    elif data_file.url is not None:
        url = data_file.url
    else:
        raise DownloadError(f"{data_file.target} has no download URL of its own; it comes from an archive")
    logger.info("downloading %s from %s", data_file.target, url)
    _download_verified(url, destination, f"sha256:{data_file.sha256}", progressbar, size=data_file.size)
    return destination


def _check_member_name(name: str, archive_path: Path):
    """Reject archive member names that could write outside the extraction folder."""
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or ".." in posix.parts or (posix.parts and posix.parts[0].endswith(":")):
        raise DownloadError(f"{archive_path} has an unsafe member {name!r} (absolute path or '..'); nothing extracted")


def _open_zip_members(archive_path: Path):
    """Return ``(archive, {name: opener})`` for a zip file whose every member is safe to extract."""
    archive = zipfile.ZipFile(archive_path)
    openers = {}
    for info in archive.infolist():
        _check_member_name(info.filename, archive_path)
        if (info.external_attr >> 16) & 0o170000 == 0o120000:
            archive.close()
            raise DownloadError(f"{archive_path} has a symbolic-link member {info.filename!r}; nothing extracted")
        openers[info.filename] = lambda info=info: archive.open(info)
    return archive, openers


def _open_tar_members(archive_path: Path):
    """Return ``(archive, {name: opener})`` for a tar file of regular files and folders only.

    Symbolic links, hard links and device or FIFO members are rejected, like
    absolute and ``..`` names, because tar extraction would follow or create them
    outside the data folder.
    """
    archive = tarfile.open(archive_path)
    openers = {}
    for info in archive.getmembers():
        _check_member_name(info.name, archive_path)
        if info.issym() or info.islnk():
            archive.close()
            raise DownloadError(f"{archive_path} has a link member {info.name!r} -> {info.linkname!r}; nothing extracted")
        if not (info.isfile() or info.isdir()):
            archive.close()
            raise DownloadError(f"{archive_path} has a special member {info.name!r} (device or FIFO); nothing extracted")
        if info.isfile():
            openers[info.name] = lambda info=info: archive.extractfile(info)
    return archive, openers


def extract_members(archive_path: Path, members: dict[str, DataFile], data_dir: Path):
    """Extract the named zip or tar members into ``data_dir`` safely and verify each one.

    Every member name is checked before anything is written: an absolute path,
    a ``..`` component, a symbolic or hard link or a special file anywhere in
    the archive rejects the whole archive. Each requested member is written to
    ``data_dir / DataFile.target`` (never to a path taken from the archive)
    through a temporary file that is moved into place only when its SHA-256
    matches; a failed write removes the temporary file.
    """
    try:
        if zipfile.is_zipfile(archive_path):
            archive, openers = _open_zip_members(archive_path)
        elif tarfile.is_tarfile(archive_path):
            archive, openers = _open_tar_members(archive_path)
        else:
            raise DownloadError(f"{archive_path} is neither a zip nor a tar archive; delete it and download again")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as error:
        raise DownloadError(f"{archive_path} is a damaged archive ({error}); delete it and download again") from None
    with archive:
        for member_name, data_file in members.items():
            if member_name not in openers:
                raise DownloadError(f"{archive_path} has no member {member_name!r}; is it the right archive?")
            destination = _target_path(data_dir, data_file.target)
            destination.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=destination.parent, prefix=destination.name, suffix=".part")
            try:
                try:
                    with os.fdopen(handle, "wb") as output, openers[member_name]() as source:
                        shutil.copyfileobj(source, output)
                except OSError as error:
                    raise DownloadError(
                        f"writing member {member_name} of {archive_path} to {destination} failed: {error}; free "
                        f"disk space or choose another --data-dir, then run the command again"
                    ) from None
                actual = file_sha256(Path(temporary))
                if actual != data_file.sha256:
                    raise DownloadError(
                        f"member {member_name} of {archive_path} has SHA-256 {actual}, expected {data_file.sha256}; "
                        f"{destination} was not written"
                    )
                replace_file(temporary, destination)
            finally:
                Path(temporary).unlink(missing_ok=True)


def _fetch_archive_members(dataset: Dataset, archive: Archive, data_dir: Path, mirror: str | None,
                           progressbar: bool):
    members = {f.member: f for f in dataset.files if f.archive == archive.name}
    pending = {
        name: f for name, f in members.items()
        if not ((data_dir / f.target).is_file() and file_sha256(data_dir / f.target) == f.sha256)
    }
    if not pending:
        return
    if mirror is not None:
        for data_file in pending.values():
            _fetch_file(data_file, data_dir, mirror, progressbar)
        return
    archive_path = data_dir / "archives" / archive.name
    if not (archive_path.is_file() and _archive_hash_matches(archive_path, archive.known_hash)):
        logger.info("downloading %s (%.1f MB) from %s", archive.name, archive.size / 1e6, archive.url)
        _download_verified(archive.url, archive_path, archive.known_hash, progressbar, size=archive.size)
    extract_members(archive_path, pending, data_dir)


def _archive_hash_matches(path: Path, known_hash: str) -> bool:
    algorithm, _, expected = known_hash.partition(":")
    digest = hashlib.new(algorithm)
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest() == expected


# Whole folders of an archive -----------------------------------------------------------------

#: File written last into an extracted :class:`ArchiveFolder`; its presence marks the folder complete.
FOLDER_MANIFEST = ".i0t-extracted.json"


def archive_folder_status(folder: ArchiveFolder, data_dir: Path) -> str:
    """Return ``"ok"``, ``"missing"`` or ``"incomplete"`` for an extracted archive folder.

    ``"ok"`` means the manifest is present and the folder contains as many
    files as the manifest records. File contents are not hashed again.
    """
    destination = _target_path(Path(data_dir), folder.target)
    if not destination.is_dir():
        return "missing"
    try:
        manifest = json.loads((destination / FOLDER_MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "incomplete"
    n_present = sum(1 for path in destination.rglob("*") if path.is_file() and path.name != FOLDER_MANIFEST)
    return "ok" if n_present == manifest.get("n_files") else "incomplete"


def extract_folder(archive_path: Path, folder: ArchiveFolder, data_dir: Path, known_hash: str) -> Path:
    """Extract every member of ``archive_path`` below ``folder.prefix`` into ``data_dir / folder.target``.

    The caller has checked the archive against ``known_hash``, which the
    manifest records. Member names are checked as in :func:`extract_members`
    (absolute paths, ``..``, links and special files reject the whole archive).
    Members are written to a staging folder beside the target, which replaces
    the target only when all of them are written; a failure removes it.
    Returns the target folder.
    """
    destination = _target_path(Path(data_dir), folder.target)
    try:
        if zipfile.is_zipfile(archive_path):
            archive, openers = _open_zip_members(archive_path)
        elif tarfile.is_tarfile(archive_path):
            archive, openers = _open_tar_members(archive_path)
        else:
            raise DownloadError(f"{archive_path} is neither a zip nor a tar archive; delete it and download again")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as error:
        raise DownloadError(f"{archive_path} is a damaged archive ({error}); delete it and download again") from None

    with archive:
        members = sorted(
            name for name in openers
            if name.startswith(folder.prefix) and not name.endswith("/") and len(name) > len(folder.prefix)
            and (not folder.suffixes or name.lower().endswith(folder.suffixes))
        )
        if not members:
            top_level = sorted({name.split("/", 1)[0] for name in openers})[:10]
            raise DownloadError(
                f"{archive_path} has no member below {folder.prefix!r}; its top-level entries are {top_level}. "
                f"Is it the right archive?"
            )
        staging = destination.with_name(destination.name + ".extracting")
        shutil.rmtree(staging, ignore_errors=True)
        try:
            for name in members:
                output = staging / Path(*PurePosixPath(name[len(folder.prefix):]).parts)
                output.parent.mkdir(parents=True, exist_ok=True)
                with openers[name]() as source, open(output, "wb") as stream:
                    shutil.copyfileobj(source, stream)
            manifest = {"archive": archive_path.name, "known_hash": known_hash, "prefix": folder.prefix,
                        "n_files": len(members)}
            (staging / FOLDER_MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
            shutil.rmtree(destination, ignore_errors=True)
            os.replace(staging, destination)
        except OSError as error:
            shutil.rmtree(staging, ignore_errors=True)
            raise DownloadError(
                f"extracting {archive_path} into {destination} failed: {error}; free disk space or choose another "
                f"--data-dir, then run the command again"
            ) from None

    if folder.n_files is not None and len(members) != folder.n_files:
        logger.warning("%s: extracted %d files below %r, expected %d", archive_path.name, len(members),
                       folder.prefix, folder.n_files)
    logger.info("extracted %d files from %s into %s", len(members), archive_path.name, destination)
    return destination


def _fetch_archive_folder(dataset: Dataset, folder: ArchiveFolder, data_dir: Path, mirror: str | None,
                          progressbar: bool) -> Path:
    """Download the folder's archive when needed (verified by its hash) and extract the folder."""
    destination = _target_path(data_dir, folder.target)
    if archive_folder_status(folder, data_dir) == "ok":
        logger.info("%s is present and complete", destination)
        return destination
    archive = next((item for item in dataset.archives if item.name == folder.archive), None)
    if archive is None:
        raise ValueError(f"dataset {dataset.name!r} lists no archive named {folder.archive!r}")

    archive_path = data_dir / "archives" / archive.name
    if not (archive_path.is_file() and _archive_hash_matches(archive_path, archive.known_hash)):
        url = archive.url
        mirrored = None if mirror is None or _is_url(mirror) else Path(mirror).expanduser() / "archives" / archive.name
        if mirror is not None and _is_url(mirror):
            url = mirror.rstrip("/") + "/archives/" + archive.name
        if mirrored is not None and mirrored.is_file():
            logger.info("copying %s from the mirror", archive.name)
            archive_path.parent.mkdir(parents=True, exist_ok=True)
            partial = _partial_path(archive_path)
            shutil.copyfile(mirrored, partial)
            if not _archive_hash_matches(partial, archive.known_hash):
                partial.unlink()
                raise DownloadError(f"{mirrored} does not match {archive.known_hash}; replace the mirror copy")
            os.replace(partial, archive_path)
        else:
            if mirrored is not None:
                logger.info("the mirror %s has no archives/%s; downloading it from %s", mirror, archive.name, url)
            logger.info("downloading %s from %s", archive.name, url)
            _download_verified(url, archive_path, archive.known_hash, progressbar, size=archive.size)
    return extract_folder(archive_path, folder, data_dir, archive.known_hash)


def fetch(name: str, data_dir=None, mirror=None, progressbar: bool = True, build: bool = True) -> list[Path]:
    """Download (or copy from a mirror) and verify every file of dataset ``name``, then build its derived files.

    Returns the paths of the raw files followed by the derived files. Raises
    :class:`DownloadError` with the file, the URL and what to do next when
    anything fails; files already verified stay in place.
    """
    dataset = get_dataset(name)
    data_dir = resolve_data_dir(data_dir)
    mirror = resolve_mirror(mirror)
    data_dir.mkdir(parents=True, exist_ok=True)

    paths = []
    for archive in dataset.archives:
        _fetch_archive_members(dataset, archive, data_dir, mirror, progressbar)
    for folder in dataset.folders:
        paths.append(_fetch_archive_folder(dataset, folder, data_dir, mirror, progressbar))
    for data_file in dataset.files:
        if data_file.archive is None:
            paths.append(_fetch_file(data_file, data_dir, mirror, progressbar))
        else:
            paths.append(data_dir / data_file.target)
    if build and dataset.build is not None:
        paths.extend(dataset.build(data_dir))
    return paths


def verify(name: str, data_dir=None) -> dict[str, str]:
    """Re-check every raw file of dataset ``name`` on disk; returns ``{target: status}``.

    Status is ``"ok"``, ``"missing"`` or ``"hash mismatch"``.
    """
    dataset = get_dataset(name)
    data_dir = resolve_data_dir(data_dir)
    status = {}
    for data_file in dataset.files:
        path = data_dir / data_file.target
        if not path.is_file():
            status[data_file.target] = "missing"
        elif file_sha256(path) != data_file.sha256:
            status[data_file.target] = "hash mismatch"
        else:
            status[data_file.target] = "ok"
    for derived in dataset.derived:
        status[derived] = "ok" if (data_dir / derived).is_file() else "missing"
    for folder in dataset.folders:
        status[folder.target + "/"] = archive_folder_status(folder, data_dir)
    return status


def is_present(name: str, data_dir=None) -> bool:
    """Return whether every raw and derived file of ``name`` exists (hashes are not checked)."""
    dataset = get_dataset(name)
    data_dir = resolve_data_dir(data_dir)
    targets = [f.target for f in dataset.files] + list(dataset.derived)
    folders_ok = all(archive_folder_status(folder, data_dir) == "ok" for folder in dataset.folders)
    return folders_ok and all((data_dir / target).is_file() for target in targets)


# Command line --------------------------------------------------------------------------------


def _format_size(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:.1f} MB" if n_bytes >= 1e5 else f"{n_bytes / 1e3:.1f} kB"


def _command_list(arguments) -> int:
    data_dir = resolve_data_dir(arguments.data_dir)
    print(f"data folder: {data_dir}")
    for dataset in DATASETS.values():
        size = sum(f.size for f in dataset.files)
        folder_archives = {folder.archive for folder in dataset.folders}
        size += sum(archive.size for archive in dataset.archives if archive.name in folder_archives)
        state = "present" if is_present(dataset.name, data_dir) else "not downloaded"
        size_text = _format_size(size) if size else "size unknown"
        print(f"\n{dataset.name}  ({size_text}, {state})")
        print(f"  {dataset.description}")
        print(f"  licence: {dataset.licence}")
    return 0


def _command_get(arguments) -> int:
    for name in arguments.datasets:
        paths = fetch(name, arguments.data_dir, arguments.mirror, progressbar=not arguments.quiet)
        print(f"{name}: {len(paths)} files ready in {resolve_data_dir(arguments.data_dir)}")
    return 0


def _command_verify(arguments) -> int:
    """Check datasets on disk and return 1 when a file is damaged or a named dataset is incomplete.

    Without dataset names every dataset is checked, and files missing from a
    dataset nobody asked for (one never fetched, or sharing a few files with
    another) are reported but do not fail the check.
    """
    failed = False
    for name in arguments.datasets or list(DATASETS):
        states = verify(name, arguments.data_dir)
        n_missing = sum(state == "missing" for state in states.values())
        if not arguments.datasets and n_missing == len(states):
            print(f"{name}: not downloaded")
            continue
        for target, state in states.items():
            print(f"{name}: {target}: {state}")
            failed |= state == "hash mismatch" or (state == "missing" and bool(arguments.datasets))
        if not arguments.datasets and n_missing:
            print(f"{name}: incomplete ({n_missing} of {len(states)} files missing); "
                  f"run: python data_download.py get {name}")
    if failed:
        print("some files are missing or damaged; run: python data_download.py get DATASET", file=sys.stderr)
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``data_download.py``."""
    parser = argparse.ArgumentParser(
        prog="data_download.py",
        description="Download, verify and build the data files of the I0T course.",
    )
    parser.add_argument("--data-dir", default=None,
                        help=f"data folder (default: ${DATA_DIR_ENV}, else data/ in the repository)")
    subparsers = parser.add_subparsers(dest="command", required=True)

    subparsers.add_parser("list", help="show the datasets, their sizes, licences and whether they are present")

    get = subparsers.add_parser("get", help="download or copy the datasets, verify them and build derived files")
    get.add_argument("datasets", nargs="+", metavar="DATASET", help=f"one or more of: {', '.join(DATASETS)}")
    get.add_argument("--mirror", default=None,
                     help=f"folder or URL holding liang2022/, coco/, flickr8k/ (default: ${MIRROR_ENV})")
    get.add_argument("--quiet", action="store_true", help="hide progress bars")

    check = subparsers.add_parser("verify", help="re-check the SHA-256 of every file on disk")
    check.add_argument("datasets", nargs="*", metavar="DATASET",
                       help="datasets to check (default: every dataset with files on disk)")

    for sub in subparsers.choices.values():
        sub.add_argument("--data-dir", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def main(argv=None) -> int:
    """Run the ``data_download.py`` command line; returns the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    arguments = build_parser().parse_args(argv)
    commands = {"list": _command_list, "get": _command_get, "verify": _command_verify}
    try:
        return commands[arguments.command](arguments)
    except (DownloadError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

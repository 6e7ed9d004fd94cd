"""Encode images and captions with an open_clip model, with an on-disk cache.

:func:`encode_images` runs images (file paths, PIL images or uint8 arrays)
through a ``torch.utils.data.DataLoader`` whose workers apply the model's own
preprocessing; :func:`encode_texts` tokenizes captions in batches and counts the
captions that the tokenizer truncates to the model's context length. Both return
L2-normalised float32 arrays and show a tqdm progress bar. Both cache their
result on disk under a key made of the model, its pretrained tag, the precision
and a fingerprint of the inputs, so running a notebook again does not re-encode.

:func:`build_pack` turns the two into the :class:`~i0t_helpers.embeddings.EmbeddingPack`
that every analysis of the course reads, and :func:`pack_from_folder` does the
same for a folder of images with a captions file. :func:`dataset_pack` builds
the packs of COCO val2017 and of the Flickr8k test split, downloading the images
on first use.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from ._validation import check_positive_int
from .download import resolve_data_dir
from .embeddings import EmbeddingPack
from ._files import replace_file

logger = logging.getLogger(__name__)

#: Version of the cache layout; bump it when encoding changes so old entries are not reused.
CACHE_FORMAT_VERSION = 1

#: File suffixes treated as images when a folder is scanned.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")

#: Most DataLoader workers started by default; each one decodes and preprocesses images.
MAX_DEFAULT_WORKERS = 8


class TextEmbeddings(NamedTuple):
    """Caption embeddings and the number of captions truncated to the context length."""

    embeddings: np.ndarray
    n_truncated: int


# Cache ---------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """Return the embedding cache folder: ``cache/embeddings`` under the data folder."""
    return resolve_data_dir() / "cache" / "embeddings"


def _cache_key(loaded, modality: str, input_fingerprint: str, settings: dict) -> str:
    payload = {
        "format": CACHE_FORMAT_VERSION,
        "model": loaded.model_name,
        "pretrained": loaded.pretrained or "random initialisation",
        "weights": loaded.weights_fingerprint,
        "precision": loaded.precision,
        "modality": modality,
        "inputs": input_fingerprint,
        **settings,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _cache_path(cache_dir: Path, loaded, modality: str, key: str) -> Path:
    slug = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in loaded.model_name)
    return cache_dir / f"{slug}-{modality}-{key[:24]}.npz"


def _read_cache(path: Path, n_rows: int) -> dict | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            contents = {name: data[name] for name in data.files}
    except (OSError, ValueError, EOFError) as error:
        logger.warning("ignoring unreadable embedding cache file %s (%s); encoding again", path, error)
        return None
    embeddings = contents.get("embeddings")
    if embeddings is None or embeddings.ndim != 2 or embeddings.shape[0] != n_rows or embeddings.dtype != np.float32:
        logger.warning("ignoring embedding cache file %s: unexpected content; encoding again", path)
        return None
    return contents


def _write_cache(path: Path, **arrays):
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".part")
    try:
        with os.fdopen(handle, "wb") as stream:
            np.savez(stream, **arrays)
        replace_file(temporary, path)
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        logger.warning("could not write the embedding cache file %s (%s); results are not cached", path, error)


def _resolve_cache(cache, cache_dir) -> Path | None:
    if not cache:
        return None
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


# Fingerprints --------------------------------------------------------------------------------


def _image_fingerprint(images: Sequence) -> str:
    """Hash the inputs: a file by its absolute path, size and modification time, an image by its pixels."""
    from PIL import Image

    digest = hashlib.sha256()
    for item in images:
        if isinstance(item, (str, os.PathLike)):
            path = Path(item)
            stat = path.stat()
            digest.update(f"file:{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
        elif isinstance(item, Image.Image):
            digest.update(f"pil:{item.mode}:{item.size}\n".encode())
            digest.update(item.tobytes())
        else:
            array = np.ascontiguousarray(item)
            digest.update(f"array:{array.dtype}:{array.shape}\n".encode())
            digest.update(array.tobytes())
    return digest.hexdigest()


def _text_fingerprint(texts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        encoded = text.encode("utf-8")
        digest.update(f"{len(encoded)}:".encode())
        digest.update(encoded)
    return digest.hexdigest()


# Images --------------------------------------------------------------------------------------


def _check_images(images) -> list:
    from PIL import Image

    if isinstance(images, (str, os.PathLike)):
        raise TypeError(
            f"images must be a list of image paths, PIL images or arrays, got the single path {str(images)!r}; "
            f"use image_paths_in(folder) to list a folder"
        )
    images = list(images)
    if not images:
        raise ValueError("images is empty; pass at least one image path, PIL image or uint8 array")
    missing = []
    for position, item in enumerate(images):
        if isinstance(item, (str, os.PathLike)):
            if not Path(item).is_file():
                missing.append(str(item))
        elif isinstance(item, Image.Image):
            continue
        elif isinstance(item, np.ndarray):
            if item.dtype != np.uint8 or item.ndim not in (2, 3):
                raise TypeError(
                    f"images[{position}] is an array of dtype {item.dtype} and shape {item.shape}; arrays must be "
                    f"uint8 of shape (height, width) or (height, width, channels)"
                )
        else:
            raise TypeError(
                f"images[{position}] is a {type(item).__name__}; pass file paths, PIL images or uint8 arrays"
            )
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} image file(s) not found, first: {missing[0]}; check the paths or the images folder"
        )
    return images


class _ImageDataset:
    """Map-style dataset that opens one image and applies the model's preprocessing."""

    def __init__(self, images: list, preprocess):
        self.images = images
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        from PIL import Image, UnidentifiedImageError

        item = self.images[index]
        if isinstance(item, (str, os.PathLike)):
            try:
                with Image.open(item) as opened:
                    image = opened.convert("RGB")
            except (OSError, UnidentifiedImageError) as error:
                raise ValueError(f"cannot read image file {item}: {error}") from None
        elif isinstance(item, Image.Image):
            image = item.convert("RGB")
        else:
            image = Image.fromarray(item).convert("RGB")
        return self.preprocess(image)


def default_num_workers(n_images: int, batch_size: int) -> int:
    """Return the DataLoader workers used by default: none for a single batch, else up to the CPU count."""
    if n_images <= batch_size:
        return 0
    return max(0, min(MAX_DEFAULT_WORKERS, (os.cpu_count() or 1) - 1))


def encode_images(loaded, images, batch_size: int = 64, num_workers: int | None = None, progress: bool = True,
                  cache: bool = True, cache_dir=None) -> np.ndarray:
    """Encode images with the model's preprocessing and image tower.

    Parameters
    ----------
    loaded : LoadedModel
        From :func:`i0t_helpers.models.load_model`.
    images : sequence of path, PIL.Image or uint8 ndarray
        The images, in row order. Files are opened by the DataLoader workers.
    batch_size : int
        Images per forward pass.
    num_workers : int, optional
        DataLoader worker processes; default :func:`default_num_workers`.
    progress : bool
        Show a tqdm progress bar.
    cache : bool
        Read and write the on-disk cache. The key combines the model name, the
        pretrained tag (or checkpoint file, or a hash of random weights), the
        precision, the preprocessing and a fingerprint of the inputs. A file
        enters the fingerprint by its path, size and modification time, and an
        in-memory image by its pixel bytes.
    cache_dir : str or Path, optional
        Cache folder; default :func:`default_cache_dir`.

    Returns
    -------
    ndarray of shape (n_images, embed_dim), float32
        L2-normalised image embeddings.
    """
    import torch
    from tqdm.auto import tqdm

    images = _check_images(images)
    batch_size = check_positive_int(batch_size, "batch_size")
    if num_workers is None:
        num_workers = default_num_workers(len(images), batch_size)
    num_workers = check_positive_int(num_workers, "num_workers", minimum=0)

    cache_folder = _resolve_cache(cache, cache_dir)
    cache_file = None
    if cache_folder is not None:
        key = _cache_key(loaded, "image", _image_fingerprint(images), {"preprocess": repr(loaded.preprocess)})
        cache_file = _cache_path(cache_folder, loaded, "image", key)
        cached = _read_cache(cache_file, len(images))
        if cached is not None:
            logger.info("image embeddings of %d images read from the cache %s", len(images), cache_file)
            return cached["embeddings"]

    loader = torch.utils.data.DataLoader(
        _ImageDataset(images, loaded.preprocess),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=str(loaded.device).startswith("cuda"),
    )
    output = np.empty((len(images), loaded.embed_dim), dtype=np.float32)
    start = 0
    with torch.inference_mode():
        for batch in tqdm(loader, desc="images", unit="batch", disable=not progress):
            batch = batch.to(loaded.device, non_blocking=True)
            with loaded.autocast():
                features = loaded.model.encode_image(batch)
            features = torch.nn.functional.normalize(features.float(), dim=-1)
            output[start:start + len(features)] = features.cpu().numpy()
            start += len(features)

    if cache_file is not None:
        _write_cache(cache_file, embeddings=output)
        logger.info("image embeddings of %d images written to the cache %s", len(images), cache_file)
    return output


# Captions ------------------------------------------------------------------------------------


def _check_texts(texts) -> list[str]:
    if isinstance(texts, str):
        raise TypeError(f"texts must be a list of captions, got the single string {texts[:40]!r}; wrap it in a list")
    texts = list(texts)
    if not texts:
        raise ValueError("texts is empty; pass at least one caption")
    for position, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{position}] is a {type(text).__name__}, not a str; captions must be strings")
    return texts


def token_lengths(tokenizer, texts: Sequence[str]) -> np.ndarray | None:
    """Return the untruncated token count of each text, start and end tokens included.

    Supports open_clip's ``SimpleTokenizer`` (CLIP's BPE) and ``HFTokenizer``.
    Returns ``None`` for other tokenizers, whose untruncated length is not
    exposed.
    """
    if hasattr(tokenizer, "encode") and hasattr(tokenizer, "sot_token_id"):
        # SimpleTokenizer adds one start and one end token around the BPE tokens.
        return np.array([len(tokenizer.encode(text)) + 2 for text in texts], dtype=np.int64)
    inner = getattr(tokenizer, "tokenizer", None)
    if inner is not None and callable(inner):
        clean = getattr(tokenizer, "clean_fn", lambda text: text)
        cleaned = [clean(text) for text in texts]
        if getattr(tokenizer, "tokenizer_mode", "") == "clips":
            encoded = inner(cleaned, add_special_tokens=False, truncation=False)["input_ids"]
            return np.array([len(ids) + 3 for ids in encoded], dtype=np.int64)
        encoded = inner(cleaned, truncation=False)["input_ids"]
        return np.array([len(ids) for ids in encoded], dtype=np.int64)
    return None


def count_truncated(tokenizer, texts: Sequence[str], context_length: int) -> int:
    """Return how many texts the tokenizer truncates to ``context_length`` tokens.

    For a tokenizer whose untruncated length is unknown, texts whose tokens
    fill the whole context are counted, which includes texts of exactly
    ``context_length`` tokens.
    """
    lengths = token_lengths(tokenizer, texts)
    if lengths is not None:
        return int(np.count_nonzero(lengths > context_length))
    tokens = tokenizer(list(texts))
    return int((tokens[:, -1] != 0).sum())


def encode_texts(loaded, texts, batch_size: int = 256, progress: bool = True, cache: bool = True,
                 cache_dir=None) -> TextEmbeddings:
    """Encode captions with the model's tokenizer and text tower.

    Captions longer than the context length (77 tokens for CLIP) are truncated
    by the tokenizer, never rejected; their number is returned and logged.

    Parameters
    ----------
    loaded : LoadedModel
    texts : sequence of str
    batch_size : int
        Captions per forward pass.
    progress : bool
        Show a tqdm progress bar.
    cache : bool
        Read and write the on-disk cache (see :func:`encode_images`).
    cache_dir : str or Path, optional

    Returns
    -------
    TextEmbeddings
        ``embeddings`` of shape (n_texts, embed_dim), float32, L2-normalised,
        and ``n_truncated``, the number of truncated captions.
    """
    import torch
    from tqdm.auto import tqdm

    texts = _check_texts(texts)
    batch_size = check_positive_int(batch_size, "batch_size")

    cache_folder = _resolve_cache(cache, cache_dir)
    cache_file = None
    if cache_folder is not None:
        key = _cache_key(loaded, "text", _text_fingerprint(texts), {"context_length": loaded.context_length})
        cache_file = _cache_path(cache_folder, loaded, "text", key)
        cached = _read_cache(cache_file, len(texts))
        if cached is not None:
            n_truncated = int(cached.get("n_truncated", 0))
            logger.info("text embeddings of %d captions read from the cache %s", len(texts), cache_file)
            _log_truncation(n_truncated, len(texts), loaded.context_length)
            return TextEmbeddings(cached["embeddings"], n_truncated)

    n_truncated = count_truncated(loaded.tokenizer, texts, loaded.context_length)
    _log_truncation(n_truncated, len(texts), loaded.context_length)

    output = np.empty((len(texts), loaded.embed_dim), dtype=np.float32)
    with torch.inference_mode():
        for start in tqdm(range(0, len(texts), batch_size), desc="captions", unit="batch", disable=not progress):
            tokens = loaded.tokenizer(texts[start:start + batch_size]).to(loaded.device)
            with loaded.autocast():
                features = loaded.model.encode_text(tokens)
            features = torch.nn.functional.normalize(features.float(), dim=-1)
            output[start:start + len(features)] = features.cpu().numpy()

    if cache_file is not None:
        _write_cache(cache_file, embeddings=output, n_truncated=np.array(n_truncated))
        logger.info("text embeddings of %d captions written to the cache %s", len(texts), cache_file)
    return TextEmbeddings(output, n_truncated)


def _log_truncation(n_truncated: int, n_texts: int, context_length: int):
    if n_truncated:
        logger.warning(
            "%d of %d captions are longer than %d tokens and were truncated to fit the text tower",
            n_truncated, n_texts, context_length,
        )


# Packs ---------------------------------------------------------------------------------------


def build_pack(loaded, images, captions, text_image_index=None, image_ids=None, references=None,
               dataset: str = "custom", metadata: dict | None = None, batch_size: int = 64,
               text_batch_size: int = 256, num_workers: int | None = None, progress: bool = True,
               cache: bool = True, cache_dir=None) -> EmbeddingPack:
    """Encode images and captions into an :class:`EmbeddingPack`.

    Parameters
    ----------
    loaded : LoadedModel
    images : sequence of path, PIL.Image or uint8 ndarray
    captions : sequence of str
        One or more captions per image.
    text_image_index : array of int, optional
        Image row of each caption; default: caption i describes image i.
    image_ids, references : optional
        Passed to :class:`EmbeddingPack`. When ``references`` is omitted, the
        captions of each image become its references.
    dataset : str
        Dataset description stored in the metadata.
    metadata : dict, optional
        Extra JSON-serialisable metadata.
    batch_size, text_batch_size, num_workers, progress, cache, cache_dir
        Passed to :func:`encode_images` and :func:`encode_texts`.

    Returns
    -------
    EmbeddingPack
        Metadata records the model, pretrained tag, precision, dataset and the
        number of truncated captions (``n_truncated_captions``).
    """
    images = _check_images(images)
    captions = _check_texts(captions)
    if text_image_index is None:
        if len(captions) != len(images):
            raise ValueError(
                f"got {len(images)} images and {len(captions)} captions; pass text_image_index (the image row of "
                f"each caption) when an image has several captions"
            )
        text_image_index = np.arange(len(captions))
    text_image_index = np.asarray(text_image_index, dtype=np.int64)
    if references is None:
        references = [[] for _ in images]
        for caption, row in zip(captions, text_image_index):
            if 0 <= row < len(images):
                references[row].append(caption)

    image_embeds = encode_images(loaded, images, batch_size=batch_size, num_workers=num_workers,
                                 progress=progress, cache=cache, cache_dir=cache_dir)
    text_embeds, n_truncated = encode_texts(loaded, captions, batch_size=text_batch_size, progress=progress,
                                            cache=cache, cache_dir=cache_dir)
    description = loaded.describe()
    pretrained_label = description["pretrained"]
    if loaded.pretrained is not None and Path(loaded.pretrained).is_file():
        pretrained_label = Path(loaded.pretrained).name
    pack_metadata = {
        "model": f"{loaded.model_name} ({pretrained_label})",
        "open_clip_model": loaded.model_name,
        "pretrained": pretrained_label,
        "precision": description["precision"],
        "context_length": description["context_length"],
        "dataset": dataset,
        "modalities": ["image", "text"],
        "n_truncated_captions": int(n_truncated),
        **(metadata or {}),
    }
    return EmbeddingPack(
        image_embeds=image_embeds,
        text_embeds=text_embeds,
        text_image_index=text_image_index,
        captions=captions,
        image_ids=None if image_ids is None else np.asarray(image_ids),
        references=references,
        metadata=pack_metadata,
    )


# A folder of images with a captions file ------------------------------------------------------


def image_paths_in(folder) -> list[Path]:
    """Return the image files below ``folder`` (recursively), sorted by relative path."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"images folder not found: {folder}")
    paths = sorted(
        (path for path in folder.rglob("*") if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES),
        key=lambda path: path.relative_to(folder).as_posix(),
    )
    if not paths:
        raise ValueError(f"{folder} contains no image files (looked for {', '.join(IMAGE_SUFFIXES)})")
    return paths


def read_image_list(path) -> list[Path]:
    """Read a text file of image paths, one per line; relative paths are relative to the file's folder."""
    path = Path(path).expanduser()
    base = path.parent
    paths = []
    with open(path, encoding="utf-8") as stream:
        for line in stream:
            line = line.strip()
            if line and not line.startswith("#"):
                entry = Path(line).expanduser()
                paths.append(entry if entry.is_absolute() else base / entry)
    if not paths:
        raise ValueError(f"the image list {path} names no image; write one image path per line")
    return paths


def _strip_caption_number(key: str) -> str:
    """Turn Flickr-style ``name.jpg#3`` keys into the file name ``name.jpg``."""
    name, separator, number = key.rpartition("#")
    return name if separator and number.isdigit() else key


def read_captions_file(path) -> list[tuple[str, str]]:
    """Read ``(image, caption)`` pairs from a captions file, in file order.

    Accepted formats, chosen by suffix:

    * ``.json``: COCO annotations (``images`` with ``file_name`` and
      ``annotations`` with ``image_id`` and ``caption``), a dict mapping each
      image to a caption or a list of captions, or a list of objects with
      ``image`` and ``caption`` keys;
    * ``.csv``: a header row with an ``image`` (or ``file_name``) column and a
      ``caption`` column;
    * anything else: one ``image<TAB>caption`` line per caption. Flickr-style
      keys ``name.jpg#0`` are read as ``name.jpg``.

    Image entries are file names or paths relative to the images folder.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"captions file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".json":
        pairs = _read_json_captions(path)
    elif suffix == ".csv":
        pairs = _read_csv_captions(path)
    else:
        pairs = _read_tsv_captions(path)
    if not pairs:
        raise ValueError(f"{path} contains no captions")
    return pairs


def _read_json_captions(path: Path) -> list[tuple[str, str]]:
    with open(path, encoding="utf-8") as stream:
        try:
            content = json.load(stream)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from None
    if isinstance(content, dict) and "annotations" in content and "images" in content:
        file_names = {image["id"]: image["file_name"] for image in content["images"]}
        return [(file_names[note["image_id"]], note["caption"].strip()) for note in content["annotations"]]
    if isinstance(content, dict):
        pairs = []
        for image, captions in content.items():
            for caption in [captions] if isinstance(captions, str) else captions:
                pairs.append((str(image), str(caption).strip()))
        return pairs
    if isinstance(content, list) and all(isinstance(entry, dict) for entry in content):
        try:
            return [(str(entry["image"]), str(entry["caption"]).strip()) for entry in content]
        except KeyError as error:
            raise ValueError(f"every entry of {path} needs 'image' and 'caption' keys; missing {error}") from None
    raise ValueError(
        f"{path} is not a supported captions JSON: use COCO annotations, {{image: caption(s)}} or "
        f"[{{'image': ..., 'caption': ...}}]"
    )


def _read_csv_captions(path: Path) -> list[tuple[str, str]]:
    with open(path, encoding="utf-8", newline="") as stream:
        reader = csv.DictReader(stream)
        columns = reader.fieldnames or []
        image_column = next((name for name in ("image", "file_name", "filename") if name in columns), None)
        if image_column is None or "caption" not in columns:
            raise ValueError(f"{path} needs a header with an 'image' (or 'file_name') column and a 'caption' column; "
                             f"got {columns}")
        return [(row[image_column], row["caption"].strip()) for row in reader]


def _read_tsv_captions(path: Path) -> list[tuple[str, str]]:
    pairs = []
    with open(path, encoding="utf-8") as stream:
        for number, line in enumerate(stream, start=1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            image, separator, caption = line.partition("\t")
            if not separator:
                raise ValueError(f"{path}, line {number}: expected 'image<TAB>caption', got {line[:60]!r}")
            pairs.append((_strip_caption_number(image.strip()), caption.strip()))
    return pairs


def _index_images(paths: list[Path], root: Path | None) -> dict[str, Path]:
    """Map every name a captions file may use for an image (relative path, file name) to its path."""
    index: dict[str, Path] = {}
    names = {}
    for path in paths:
        names.setdefault(path.name, []).append(path)
        index[str(path)] = path
        if root is not None:
            index[path.relative_to(root).as_posix()] = path
    for name, candidates in names.items():
        if len(candidates) == 1:
            index.setdefault(name, candidates[0])
    return index


def pack_from_folder(loaded, images, captions_file, skip_missing: bool = False, **options) -> EmbeddingPack:
    """Encode a folder (or list file) of images with a captions file into an :class:`EmbeddingPack`.

    Parameters
    ----------
    loaded : LoadedModel
    images : str or Path
        A folder of images (searched recursively) or a text file listing image
        paths, one per line.
    captions_file : str or Path
        See :func:`read_captions_file` for the formats. Images appear in the
        pack in the order of their first caption; captions keep file order.
    skip_missing : bool
        Drop captions whose image is not found instead of raising
        ``FileNotFoundError``.
    **options
        Passed to :func:`build_pack` (``batch_size``, ``cache``, ...).
    """
    images = Path(images).expanduser()
    if images.is_dir():
        paths, root = image_paths_in(images), images
    elif images.is_file():
        paths, root = read_image_list(images), None
    else:
        raise FileNotFoundError(f"--images must be a folder or a text file of image paths; not found: {images}")
    index = _index_images(paths, root)

    rows: dict[Path, int] = {}
    captions, text_image_index, missing = [], [], []
    for key, caption in read_captions_file(captions_file):
        path = index.get(key) or index.get(Path(key).name)
        if path is None:
            missing.append(key)
            continue
        row = rows.setdefault(path, len(rows))
        captions.append(caption)
        text_image_index.append(row)
    if missing and not skip_missing:
        raise FileNotFoundError(
            f"{len(missing)} caption(s) name images that are not in {images}, first: {missing[0]!r}; fix the names "
            f"or pass skip_missing=True (--skip-missing) to drop them"
        )
    if missing:
        logger.warning("dropped %d caption(s) whose image is not in %s", len(missing), images)
    if not rows:
        raise ValueError(f"no caption of {captions_file} names an image in {images}")
    unused = len(paths) - len(rows)
    if unused:
        logger.info("%d image(s) in %s have no caption and are left out", unused, images)

    ordered = sorted(rows, key=rows.get)
    image_ids = [path.relative_to(root).as_posix() if root is not None else str(path) for path in ordered]
    options.setdefault("dataset", f"images from {images.name}, captions from {Path(captions_file).name}")
    return build_pack(loaded, ordered, captions, text_image_index=text_image_index, image_ids=image_ids, **options)


# Public datasets -----------------------------------------------------------------------------

#: Datasets that :func:`dataset_pack` builds, with the download datasets they need.
LIVE_DATASETS = {
    "coco-val2017": ("coco-val2017", "5,000 COCO val2017 images, 25,014 captions (about 5 per image)"),
    "flickr8k-test": ("flickr8k-images", "1,000 Flickr8k test images, 5 captions each"),
}

_CAPTION_CHOICES = ("all", "first", "last")


def _select_captions(captions_by_image: list[list[str]], choice: str) -> tuple[list[str], np.ndarray]:
    """Return the captions to encode and the image row of each, keeping all, the first or the last per image."""
    if choice not in _CAPTION_CHOICES:
        raise ValueError(f"captions must be one of {', '.join(_CAPTION_CHOICES)}; got {choice!r}")
    captions, index = [], []
    for row, image_captions in enumerate(captions_by_image):
        chosen = {"all": image_captions, "first": image_captions[:1], "last": image_captions[-1:]}[choice]
        captions.extend(chosen)
        index.extend([row] * len(chosen))
    return captions, np.asarray(index, dtype=np.int64)


def _limit_images(n_images: int | None, available: int) -> int:
    if n_images is None:
        return available
    n_images = check_positive_int(n_images, "n_images")
    if n_images > available:
        raise ValueError(f"n_images={n_images} is more than the {available} images of the dataset")
    return n_images


def coco_val2017_pack(loaded, data_dir=None, n_images: int | None = None, captions: str = "all",
                      download: bool = True, mirror=None, **options) -> EmbeddingPack:
    """Encode COCO val2017 (5,000 images, 25,014 captions) into an :class:`EmbeddingPack`.

    Images are ordered by the first appearance of their id in the
    ``annotations`` of ``captions_val2017.json``, the order in which Liang et
    al. (2022) took the 500 images of the starter pack; ``n_images=500`` with
    ``captions="last"`` therefore gives the starter pack's images and captions.

    Parameters
    ----------
    loaded : LoadedModel
    data_dir : str or Path, optional
        Data folder (default: the course's data folder).
    n_images : int, optional
        Keep only the first ``n_images`` images.
    captions : {"all", "first", "last"}
        All captions of each image (the COCO 5k retrieval protocol), or only its
        first or last caption in file order. Every caption is kept as a reference.
    download : bool
        Fetch the images (815.6 MB archive) and captions when they are missing.
    mirror : str, optional
        Mirror folder or URL for the download.
    **options
        Passed to :func:`build_pack`.
    """
    from .download import fetch, is_present

    data_dir = resolve_data_dir(data_dir)
    if not is_present("coco-val2017", data_dir):
        if not download:
            raise FileNotFoundError(f"COCO val2017 is not in {data_dir}; run: python data_download.py get coco-val2017")
        fetch("coco-val2017", data_dir=data_dir, mirror=mirror)

    with open(data_dir / "coco" / "captions_val2017.json", encoding="utf-8") as stream:
        coco = json.load(stream)
    file_names = {image["id"]: image["file_name"] for image in coco["images"]}
    captions_by_id: dict[int, list[str]] = {}
    for annotation in coco["annotations"]:
        captions_by_id.setdefault(annotation["image_id"], []).append(annotation["caption"].strip())
    image_ids = list(captions_by_id)[:_limit_images(n_images, len(captions_by_id))]

    folder = data_dir / "coco" / "val2017"
    paths = [folder / file_names[image_id] for image_id in image_ids]
    references = [captions_by_id[image_id] for image_id in image_ids]
    texts, text_image_index = _select_captions(references, captions)
    options.setdefault("dataset", f"COCO val2017, {len(paths)} images, {captions} caption(s) per image")
    metadata = {"source_urls": ["http://images.cocodataset.org/zips/val2017.zip"],
                "licences": {"captions": "CC BY 4.0 (COCO)", "images": "Flickr terms of use (COCO)"},
                **options.pop("metadata", {})}
    return build_pack(loaded, paths, texts, text_image_index=text_image_index,
                      image_ids=np.asarray(image_ids, dtype=np.int64), references=references, metadata=metadata,
                      **options)


def flickr8k_pack(loaded, data_dir=None, n_images: int | None = None, captions: str = "all",
                  download: bool = True, mirror=None, **options) -> EmbeddingPack:
    """Encode the 1,000 Flickr8k test images and their 5 captions each into an :class:`EmbeddingPack`.

    Images follow ``Flickr_8k.testImages.txt``; captions follow
    ``Flickr8k.token.txt`` (``#0`` to ``#4``). Parameters as in
    :func:`coco_val2017_pack`; the download is ``flickr8k-images`` (about
    1 GB) and ``flickr8k-text``.
    """
    from .download import fetch, is_present

    data_dir = resolve_data_dir(data_dir)
    for name in ("flickr8k-text", "flickr8k-images"):
        if not is_present(name, data_dir):
            if not download:
                raise FileNotFoundError(f"{name} is not in {data_dir}; run: python data_download.py get {name}")
            fetch(name, data_dir=data_dir, mirror=mirror)

    text_folder = data_dir / "flickr8k"
    with open(text_folder / "Flickr_8k.testImages.txt", encoding="utf-8") as stream:
        test_images = [line.strip() for line in stream if line.strip()]
    captions_by_name: dict[str, list[str]] = {}
    for key, caption in _read_tsv_captions(text_folder / "Flickr8k.token.txt"):
        captions_by_name.setdefault(key, []).append(caption)
    test_images = test_images[:_limit_images(n_images, len(test_images))]
    without_captions = [name for name in test_images if name not in captions_by_name]
    if without_captions:
        raise ValueError(f"{len(without_captions)} test image(s) have no caption in Flickr8k.token.txt, first: "
                         f"{without_captions[0]}")

    folder = data_dir / "flickr8k" / "images"
    paths = [folder / name for name in test_images]
    references = [captions_by_name[name] for name in test_images]
    texts, text_image_index = _select_captions(references, captions)
    options.setdefault("dataset", f"Flickr8k test split, {len(paths)} images, {captions} caption(s) per image")
    metadata = {"source_urls": ["https://github.com/jbrownlee/Datasets/releases/download/Flickr8k/"
                                "Flickr8k_Dataset.zip"],
                "licences": {"dataset": "research use (Hodosh, Young and Hockenmaier, 2013)"},
                **options.pop("metadata", {})}
    return build_pack(loaded, paths, texts, text_image_index=text_image_index,
                      image_ids=np.asarray(test_images), references=references, metadata=metadata, **options)


def dataset_pack(loaded, name: str, **options) -> EmbeddingPack:
    """Encode one of :data:`LIVE_DATASETS` by name; ``options`` go to its builder."""
    builders = {"coco-val2017": coco_val2017_pack, "flickr8k-test": flickr8k_pack}
    if name not in builders:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(LIVE_DATASETS)}")
    return builders[name](loaded, **options)

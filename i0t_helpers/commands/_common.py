"""Argument helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from ..embeddings import EmbeddingPack


def parse_rows(text: str, n_rows: int | None = None, name: str = "--rows") -> slice | np.ndarray:
    """Parse ``START:STOP`` (Python slice syntax, either end optional) or ``I,J,K`` into row selectors."""
    text = text.strip()
    try:
        if ":" in text:
            parts = text.split(":")
            if len(parts) != 2:
                raise ValueError
            start, stop = (int(part) if part else None for part in parts)
            selector = slice(start, stop)
            if n_rows is not None and len(range(*selector.indices(n_rows))) == 0:
                raise argparse.ArgumentTypeError(f"{name} {text!r} selects no row out of {n_rows}")
            return selector
        rows = np.array([int(part) for part in text.split(",")], dtype=np.int64)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{name} must look like 0:400 or 1,5,9; got {text!r}"
        ) from None
    if n_rows is not None and (rows.min() < 0 or rows.max() >= n_rows):
        raise argparse.ArgumentTypeError(f"{name} {text!r} names rows outside 0..{n_rows - 1}")
    return rows


def load_npy_matrix(path: str, name: str) -> np.ndarray:
    """Load a 2-D embedding matrix from a ``.npy`` file without unpickling anything."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{name} file not found: {path}")
    with open(path, "rb") as stream:
        magic = stream.read(6)
    if magic != b"\x93NUMPY":
        kind = "an .npz archive; pass it with --pack" if magic[:2] == b"PK" else "not a .npy file (no NumPy header)"
        raise ValueError(f"{path} is {kind}; save embeddings with np.save(path, embeddings.astype(np.float32))")
    try:
        array = np.load(path, allow_pickle=False, mmap_mode="r")
    except ValueError as error:
        if "pickle" in str(error).lower() or "python objects" in str(error).lower():
            raise ValueError(
                f"{path} contains pickled Python objects, which are never loaded; save a plain float array with "
                f"np.save(path, embeddings.astype(np.float32))"
            ) from None
        raise ValueError(f"{path} is not a readable .npy file: {error}") from None
    except (OSError, EOFError) as error:
        raise ValueError(f"{path} is not a readable .npy file ({error}); save embeddings with np.save") from None
    if array.ndim != 2:
        raise ValueError(f"{path} contains a {array.ndim}-D array of shape {array.shape}; {name} must be 2-D (n, dim)")
    return np.asarray(array)


def add_embedding_arguments(parser: argparse.ArgumentParser):
    """Add ``IMAGES.npy TEXTS.npy`` positionals and ``--pack`` to a subcommand."""
    parser.add_argument("images", nargs="?", help="image embeddings, .npy of shape (n, dim)")
    parser.add_argument("texts", nargs="?", help="text embeddings, .npy of shape (n, dim); row i pairs with image i")
    parser.add_argument("--pack", help="a named pack (starter, starter-random, ...) or an embedding pack .npz")
    parser.add_argument("--data-dir", default=None, help="data folder for named packs (default: data/)")
    parser.add_argument("--mirror", default=None, help="mirror folder or URL used when a named pack must be fetched")


def load_embedding_input(arguments) -> EmbeddingPack:
    """Return the embeddings named on the command line as an :class:`EmbeddingPack`."""
    from ..packs import load_pack

    if arguments.pack is not None:
        if arguments.images or arguments.texts:
            raise ValueError("give either --pack or IMAGES.npy TEXTS.npy, not both")
        return load_pack(arguments.pack, data_dir=arguments.data_dir, mirror=arguments.mirror)
    if not (arguments.images and arguments.texts):
        raise ValueError("give IMAGES.npy and TEXTS.npy (row i of one pairs with row i of the other) or --pack NAME")
    images = load_npy_matrix(arguments.images, "IMAGES")
    texts = load_npy_matrix(arguments.texts, "TEXTS")
    if images.shape[0] != texts.shape[0]:
        raise ValueError(
            f"IMAGES has {images.shape[0]} rows but TEXTS has {texts.shape[0]}; row i of one must pair with row i "
            f"of the other"
        )
    return EmbeddingPack(images, texts, metadata={"model": "unknown", "source_files": [arguments.images,
                                                                                      arguments.texts]})


def print_json(payload: dict):
    """Print ``payload`` as one JSON object, with NaN written as null."""
    def clean(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {str(key): clean(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(item) for item in value]
        if isinstance(value, np.generic):
            return clean(value.item())
        return value

    print(json.dumps(clean(payload), sort_keys=True))

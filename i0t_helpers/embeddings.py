"""The embedding container every analysis of the course works on.

An :class:`EmbeddingPack` holds the image and text embeddings of one model on one
dataset, which text belongs to which image, the captions, the image ids, the
reference captions of each image and free-form metadata (model, source URLs,
licences). It is saved as a plain ``.npz`` file that loads with
``allow_pickle=False``: strings are stored as fixed-width unicode arrays and the
metadata as a JSON string, so loading a pack never runs code from the file.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._validation import check_embedding_pair, check_text_image_index
from ._files import replace_file

logger = logging.getLogger(__name__)

#: Version of the on-disk layout written by :meth:`EmbeddingPack.save`.
PACK_FORMAT_VERSION = 1


def _check_no_nul(texts: list[str] | None, name: str):
    """Reject NUL characters, which numpy's fixed-width string arrays drop from the end of a string."""
    for position, text in enumerate(texts or []):
        if "\x00" in text:
            raise ValueError(f"{name} entry {position} ({text!r}) contains a NUL character, which a pack cannot "
                             f"store; remove it")


@dataclass
class EmbeddingPack:
    """Image and text embeddings of one model on one dataset, with their captions.

    Parameters
    ----------
    image_embeds : ndarray of shape (n_images, dim)
        L2-normalised image (or other first-modality) embeddings.
    text_embeds : ndarray of shape (n_texts, dim)
        L2-normalised text embeddings.
    text_image_index : ndarray of shape (n_texts,), optional
        Row of ``image_embeds`` that each text describes. Defaults to
        ``arange(n_texts)``, which requires one text per image.
    captions : list of str, optional
        The text of each row of ``text_embeds``.
    image_ids : ndarray of shape (n_images,), optional
        Dataset identifiers of the images (COCO ids, Flickr file names).
    references : list of list of str, optional
        Reference captions of each image (all of its human captions).
    metadata : dict, optional
        JSON-serialisable provenance: ``model``, ``dataset``, ``source_urls``,
        ``licences`` and anything else worth keeping.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> pack = EmbeddingPack(rng.normal(size=(4, 8)), rng.normal(size=(4, 8)))
    >>> pack.n_images, pack.n_texts, pack.dim
    (4, 4, 8)
    """

    image_embeds: np.ndarray
    text_embeds: np.ndarray
    text_image_index: np.ndarray | None = None
    captions: list[str] | None = None
    image_ids: np.ndarray | None = None
    references: list[list[str]] | None = None
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        images, texts = check_embedding_pair(self.image_embeds, self.text_embeds)
        self.image_embeds = images.astype(np.float32, copy=False)
        self.text_embeds = texts.astype(np.float32, copy=False)
        self.text_image_index = check_text_image_index(self.text_image_index, len(texts), len(images))

        if self.captions is not None:
            self.captions = [str(caption) for caption in self.captions]
            if len(self.captions) != self.n_texts:
                raise ValueError(f"captions must have one entry per text ({self.n_texts}); got {len(self.captions)}")
        if self.image_ids is not None:
            self.image_ids = np.asarray(self.image_ids)
            if self.image_ids.shape != (self.n_images,):
                raise ValueError(
                    f"image_ids must have one entry per image ({self.n_images}); got shape {self.image_ids.shape}"
                )
        if self.references is not None:
            self.references = [[str(reference) for reference in refs] for refs in self.references]
            if len(self.references) != self.n_images:
                raise ValueError(
                    f"references must have one list per image ({self.n_images}); got {len(self.references)}"
                )
        _check_no_nul(self.captions, "captions")
        for image_row, references in enumerate(self.references or []):
            _check_no_nul(references, f"references[{image_row}]")
        if not isinstance(self.metadata, dict):
            raise TypeError(f"metadata must be a dict, got {type(self.metadata).__name__}")
        json.dumps(self.metadata)  # raises TypeError early for values that cannot be saved

    @property
    def n_images(self) -> int:
        """Number of image rows."""
        return int(self.image_embeds.shape[0])

    @property
    def n_texts(self) -> int:
        """Number of text rows."""
        return int(self.text_embeds.shape[0])

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        return int(self.image_embeds.shape[1])

    @property
    def model_name(self) -> str:
        """The model named in the metadata, or ``"unknown"``."""
        return str(self.metadata.get("model", "unknown"))

    def paired(self) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(images, texts)`` with row i of each forming a matched pair.

        Images are repeated once per caption, so an image with five captions
        appears five times.
        """
        return self.image_embeds[self.text_image_index], self.text_embeds

    def subset(self, image_rows) -> "EmbeddingPack":
        """Return a pack restricted to the given image rows and their texts.

        ``image_rows`` is a slice, an integer array or a boolean mask over images.
        Texts follow their images and ``text_image_index`` is renumbered.
        """
        rows = np.arange(self.n_images)[image_rows]
        if rows.size == 0:
            raise ValueError(f"image_rows {image_rows!r} selects no image out of {self.n_images}")
        new_position = np.full(self.n_images, -1, dtype=np.int64)
        new_position[rows] = np.arange(rows.size)
        text_rows = np.flatnonzero(new_position[self.text_image_index] >= 0)
        if text_rows.size == 0:
            raise ValueError(f"image_rows {image_rows!r} selects images without any text")
        return EmbeddingPack(
            image_embeds=self.image_embeds[rows],
            text_embeds=self.text_embeds[text_rows],
            text_image_index=new_position[self.text_image_index[text_rows]],
            captions=None if self.captions is None else [self.captions[i] for i in text_rows],
            image_ids=None if self.image_ids is None else self.image_ids[rows],
            references=None if self.references is None else [self.references[i] for i in rows],
            metadata={**self.metadata, "subset_of_images": f"{rows.size} of {self.n_images}"},
        )

    def with_embeddings(self, image_embeds, text_embeds, **metadata_updates) -> "EmbeddingPack":
        """Return a copy with new embeddings (for example after I0T_post) and the same captions."""
        return EmbeddingPack(
            image_embeds=image_embeds,
            text_embeds=text_embeds,
            text_image_index=self.text_image_index.copy(),
            captions=self.captions,
            image_ids=self.image_ids,
            references=self.references,
            metadata={**self.metadata, **metadata_updates},
        )

    def save(self, path) -> Path:
        """Write the pack to ``path`` (``.npz``) atomically and return the path."""
        path = Path(path)
        arrays = {
            "format_version": np.array(PACK_FORMAT_VERSION),
            "image_embeds": self.image_embeds,
            "text_embeds": self.text_embeds,
            "text_image_index": self.text_image_index,
            "metadata_json": np.array(json.dumps(self.metadata, sort_keys=True)),
        }
        if self.captions is not None:
            arrays["captions"] = np.array(self.captions, dtype=str)
        if self.image_ids is not None:
            arrays["image_ids"] = self.image_ids
        if self.references is not None:
            flat = [reference for refs in self.references for reference in refs]
            arrays["reference_texts"] = np.array(flat, dtype=str)
            arrays["reference_offsets"] = np.cumsum([0] + [len(refs) for refs in self.references])

        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".part")
        try:
            with os.fdopen(handle, "wb") as stream:
                np.savez(stream, **arrays)
            replace_file(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        logger.info("saved %d images / %d texts (dim %d) to %s", self.n_images, self.n_texts, self.dim, path)
        return path

    @classmethod
    def load(cls, path) -> "EmbeddingPack":
        """Read a pack written by :meth:`save`; never unpickles anything."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"embedding pack not found: {path}")
        try:
            loaded = np.load(path, allow_pickle=False)
            if isinstance(loaded, np.lib.npyio.NpzFile):
                with loaded as data:
                    contents = {key: data[key] for key in data.files}
        except ValueError as error:
            raise ValueError(f"{path} is not a valid embedding pack (it may hold pickled objects): {error}") from None
        except (OSError, EOFError, zipfile.BadZipFile) as error:
            raise ValueError(f"{path} is not a readable .npz embedding pack: {error}") from None
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError(f"{path} contains a single .npy array, not an .npz embedding pack; pass image and "
                             f"text arrays separately or build a pack with EmbeddingPack(...).save")

        missing = {"image_embeds", "text_embeds"} - contents.keys()
        if missing:
            raise ValueError(f"{path} is not an embedding pack: missing arrays {sorted(missing)}")
        version = int(contents.get("format_version", PACK_FORMAT_VERSION))
        if version > PACK_FORMAT_VERSION:
            raise ValueError(
                f"{path} uses pack format {version}, newer than this package supports "
                f"({PACK_FORMAT_VERSION}); upgrade i0t_helpers"
            )

        references = None
        if "reference_texts" in contents:
            flat = contents["reference_texts"].tolist()
            offsets = contents["reference_offsets"].tolist()
            references = [flat[start:stop] for start, stop in zip(offsets[:-1], offsets[1:])]
        metadata = json.loads(str(contents["metadata_json"])) if "metadata_json" in contents else {}
        return cls(
            image_embeds=contents["image_embeds"],
            text_embeds=contents["text_embeds"],
            text_image_index=contents.get("text_image_index"),
            captions=contents["captions"].tolist() if "captions" in contents else None,
            image_ids=contents.get("image_ids"),
            references=references,
            metadata=metadata,
        )

    def __repr__(self) -> str:
        return (
            f"EmbeddingPack(model={self.model_name!r}, n_images={self.n_images}, "
            f"n_texts={self.n_texts}, dim={self.dim})"
        )

"""I0T_post and the post-hoc baselines, as scikit-learn-style transformers.

All three transformers learn one mean vector per modality and move each
embedding relative to it:

========================== ===============================================
:class:`I0TPost`           ``normalize(x - mean_x)``  (An et al., 2025)
:class:`MindTheGapShift`   ``normalize(x - lambda/2 * (mean_x - mean_y))``
:class:`DistributionNormalization` ``normalize(x - lambda * mean_x)``
========================== ===============================================

Statistics are accumulated in float64 over chunks of rows, so ``partial_fit``
accepts memory-mapped arrays larger than memory and uses O(dim) extra memory.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from ._chunked import NormDeviation, column_statistics, open_embeddings, squared_row_norms, unit_rows
from ._validation import check_positive_int
from ._files import replace_file

logger = logging.getLogger(__name__)

#: Rows processed at once by ``partial_fit`` and ``transform_*``.
DEFAULT_CHUNK_ROWS = 65536

STATISTICS_FORMAT_VERSION = 1

#: A unit row whose distance to the fitted mean is below this is treated as lying on the mean.
AT_MEAN_TOLERANCE = 1e-6


class NotFittedError(ValueError, AttributeError):
    """Raised when a transformer is used before it has seen any embeddings."""


class _ModalityMeans:
    """Shared fitting, validation and persistence of per-modality means."""

    _method_name = "base"

    def __init__(self, chunk_rows: int = DEFAULT_CHUNK_ROWS):
        self.chunk_rows = chunk_rows

    # Fitting -----------------------------------------------------------------

    def _reset(self):
        for attribute in ("image_mean_", "text_mean_", "n_images_seen_", "n_texts_seen_", "n_features_in_",
                          "_image_sum", "_text_sum"):
            self.__dict__.pop(attribute, None)

    def fit(self, image_embeds, text_embeds):
        """Learn the image and text means from scratch and return ``self``."""
        self._reset()
        return self.partial_fit(image_embeds, text_embeds)

    def partial_fit(self, image_embeds=None, text_embeds=None):
        """Update the running means with more embeddings of either or both modalities.

        Either argument may be ``None`` (for example to stream images and texts
        from separate files) or a memory-mapped array, which is read in chunks
        of ``chunk_rows`` rows. Returns ``self``.
        """
        chunk_rows = check_positive_int(self.chunk_rows, "chunk_rows")
        if image_embeds is None and text_embeds is None:
            raise ValueError("partial_fit needs image_embeds, text_embeds or both; got neither")
        for embeds, modality in ((image_embeds, "image"), (text_embeds, "text")):
            if embeds is None:
                continue
            name = f"{modality}_embeds"
            array, dtype = open_embeddings(embeds, name)
            self._check_dimension(array.shape[1], name)
            column_sum, n_rows = column_statistics(array, name, dtype, chunk_rows).column_sum, len(array)
            self.n_features_in_ = len(column_sum)
            previous_sum = getattr(self, f"_{modality}_sum", np.zeros_like(column_sum))
            previous_count = getattr(self, f"n_{modality}s_seen_", 0)
            setattr(self, f"_{modality}_sum", previous_sum + column_sum)
            setattr(self, f"n_{modality}s_seen_", previous_count + n_rows)
            setattr(self, f"{modality}_mean_", getattr(self, f"_{modality}_sum") / (previous_count + n_rows))
        return self

    def _check_dimension(self, dim: int, name: str):
        expected = getattr(self, "n_features_in_", None)
        if expected is not None and dim != expected:
            raise ValueError(
                f"{name} has dimension {dim}, but this {type(self).__name__} was fitted on dimension {expected}; "
                f"use statistics of the same model"
            )

    def _check_is_fitted(self, modality: str):
        if not hasattr(self, f"{modality}_mean_"):
            raise NotFittedError(
                f"this {type(self).__name__} has no {modality} mean yet; call fit or partial_fit with "
                f"{modality}_embeds first, or load saved statistics"
            )

    # Transforming ------------------------------------------------------------

    def _shift(self, modality: str) -> np.ndarray:
        raise NotImplementedError

    def _transform(self, embeds, modality: str, out=None) -> np.ndarray:
        self._check_is_fitted(modality)
        name = f"{modality}_embeds"
        chunk_rows = check_positive_int(self.chunk_rows, "chunk_rows")
        array, dtype = open_embeddings(embeds, name)
        self._check_dimension(array.shape[1], name)
        shift = self._shift(modality).astype(dtype)
        if out is None:
            out = np.empty(array.shape, dtype=dtype)
        elif getattr(out, "shape", None) != array.shape:
            raise ValueError(f"out must have the shape of {name} {array.shape}; got {getattr(out, 'shape', out)}")

        # Each block is normalised, centred and normalised again while it is still in
        # cache, writing straight into ``out`` when ``out`` has the working dtype (this
        # is also what makes ``out=embeds`` work in place).
        deviation = NormDeviation(name)
        write_directly = out.dtype == dtype
        for start in range(0, len(array), chunk_rows):
            stop = min(start + chunk_rows, len(array))
            target = out[start:stop]
            block = unit_rows(array[start:stop], name, dtype, start, deviation, out=target if write_directly else None)
            block -= shift
            norms = np.sqrt(squared_row_norms(block, f"centred {name}", start))
            at_mean = np.flatnonzero(norms < AT_MEAN_TOLERANCE)
            if at_mean.size:
                raise ValueError(
                    f"{name} row {start + int(at_mean[0])} equals the fitted {modality} mean (centred norm "
                    f"{norms[at_mean[0]]:.1e}), so it has no direction after centring; fit the statistics on "
                    f"more than this one distinct embedding"
                )
            np.divide(block, norms[:, None], out=block)
            if not write_directly:
                target[...] = block
        deviation.log()
        return out

    def transform_images(self, image_embeds, out=None) -> np.ndarray:
        """Transform image embeddings; ``out`` may be a preallocated array or memmap of the same shape, or the input itself.

        Blocks of ``chunk_rows`` rows are normalised, centred and normalised again
        straight into ``out``, so ``out=embeds`` transforms a writable array or
        memmap in place without extra memory.
        """
        return self._transform(image_embeds, "image", out)

    def transform_texts(self, text_embeds, out=None) -> np.ndarray:
        """Transform text embeddings; ``out`` may be a preallocated array or memmap of the same shape, or the input itself.

        Blocks of ``chunk_rows`` rows are normalised, centred and normalised again
        straight into ``out``, so ``out=embeds`` transforms a writable array or
        memmap in place without extra memory.
        """
        return self._transform(text_embeds, "text", out)

    def transform(self, image_embeds, text_embeds):
        """Transform both modalities and return ``(images, texts)``."""
        return self.transform_images(image_embeds), self.transform_texts(text_embeds)

    def fit_transform(self, image_embeds, text_embeds):
        """Fit on both modalities, then transform them; returns ``(images, texts)``."""
        return self.fit(image_embeds, text_embeds).transform(image_embeds, text_embeds)

    # Persistence -------------------------------------------------------------

    def _parameters(self) -> dict:
        return {}

    def save(self, path, model_name: str) -> Path:
        """Save the fitted means with the model name, dimension and sample counts (``.npz``, no pickle)."""
        self._check_is_fitted("image")
        self._check_is_fitted("text")
        if not model_name or not isinstance(model_name, str):
            raise ValueError("model_name must be a non-empty string naming the encoder the means belong to")
        path = Path(path)
        header = {
            "format_version": STATISTICS_FORMAT_VERSION,
            "method": self._method_name,
            "model_name": model_name,
            "n_features": int(self.n_features_in_),
            "n_images_seen": int(self.n_images_seen_),
            "n_texts_seen": int(self.n_texts_seen_),
            "parameters": self._parameters(),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".part")
        try:
            with os.fdopen(handle, "wb") as stream:
                np.savez(stream, header_json=np.array(json.dumps(header)), image_sum=self._image_sum,
                         text_sum=self._text_sum)
            replace_file(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path, model_name: str | None = None, n_features: int | None = None):
        """Load statistics saved by :meth:`save`.

        When ``model_name`` or ``n_features`` is given, statistics of another
        model or dimension raise ``ValueError`` naming both.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"statistics file not found: {path}")
        try:
            with np.load(path, allow_pickle=False) as data:
                header = json.loads(str(data["header_json"]))
                image_sum = np.asarray(data["image_sum"], dtype=np.float64)
                text_sum = np.asarray(data["text_sum"], dtype=np.float64)
        except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
            raise ValueError(f"{path} is not a statistics file written by {cls.__name__}.save: {error}") from None

        if header.get("method") != cls._method_name:
            raise ValueError(f"{path} contains {header.get('method')!r} statistics, not {cls._method_name!r}")
        if model_name is not None and header["model_name"] != model_name:
            raise ValueError(
                f"{path} contains statistics of model {header['model_name']!r}, not {model_name!r}; "
                f"fit statistics for {model_name!r} instead"
            )
        if n_features is not None and header["n_features"] != n_features:
            raise ValueError(
                f"{path} contains statistics of dimension {header['n_features']}, but the embeddings have "
                f"dimension {n_features}"
            )
        if image_sum.shape != (header["n_features"],) or text_sum.shape != (header["n_features"],):
            raise ValueError(f"{path} is damaged: the stored sums do not have dimension {header['n_features']}")

        transformer = cls(**header.get("parameters", {}))
        transformer.n_features_in_ = header["n_features"]
        transformer.n_images_seen_ = header["n_images_seen"]
        transformer.n_texts_seen_ = header["n_texts_seen"]
        transformer._image_sum, transformer._text_sum = image_sum, text_sum
        transformer.image_mean_ = image_sum / transformer.n_images_seen_
        transformer.text_mean_ = text_sum / transformer.n_texts_seen_
        transformer.model_name_ = header["model_name"]
        return transformer

    def __repr__(self) -> str:
        parameters = ", ".join(f"{key}={value!r}" for key, value in self._parameters().items())
        return f"{type(self).__name__}({parameters})"


class I0TPost(_ModalityMeans):
    """Standardise each modality by removing its mean, then re-normalise (I0T_post).

    For L2-normalised image embeddings ``x`` and text embeddings ``y``::

        x' = normalize(x - mean(x))
        y' = normalize(y - mean(y))

    Each modality is centred with its own mean, so the modality-specific
    offsets that separate the two clouds (a few large "peak" dimensions in
    CLIP) vanish and the centroid distance drops to near zero. There is no
    division by a standard deviation, neither in the paper nor in its code.

    Where the means come from matters. An et al. (2025) compute them on the
    evaluation set itself, which uses test statistics and needs the whole test
    set at once. Fitting on training data (or any reference corpus) and
    transforming held-out data avoids both problems at a small cost; the
    course measures that cost.

    Parameters
    ----------
    chunk_rows : int, default 65536
        Rows processed at once, which bounds memory for large or memory-mapped input.

    Attributes
    ----------
    image_mean_, text_mean_ : ndarray of shape (dim,)
        Mean of the L2-normalised embeddings of each modality (float64).
    n_images_seen_, n_texts_seen_ : int
        Number of embeddings each mean was computed from.
    n_features_in_ : int
        Embedding dimension.

    See Also
    --------
    MindTheGapShift, DistributionNormalization

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> from i0t_helpers.metrics import centroid_distance
    >>> unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)
    >>> images = unit(rng.normal(size=(200, 8)) + 3.0)
    >>> texts = unit(rng.normal(size=(200, 8)) - 3.0)
    >>> post = I0TPost().fit(images, texts)
    >>> round(centroid_distance(images, texts), 3)
    1.909
    >>> round(centroid_distance(*post.transform(images, texts)), 3)
    0.056
    """

    _method_name = "i0t_post"

    def _shift(self, modality: str) -> np.ndarray:
        return getattr(self, f"{modality}_mean_")


class MindTheGapShift(_ModalityMeans):
    """Shift images and texts toward each other along the gap vector (Liang et al., 2022).

    With the gap vector ``g = mean(x) - mean(y)``::

        x' = normalize(x - lambda_ / 2 * g)
        y' = normalize(y + lambda_ / 2 * g)

    so ``lambda_ = 1`` makes the centroids meet before re-normalisation and
    ``lambda_ = 0`` changes nothing. Liang et al. show that such shifts change
    zero-shot accuracy and fairness; An et al. (2025) report that a shift of
    lambda 0.375 closes most of the gap but hurts retrieval.
    """

    _method_name = "mind_the_gap_shift"

    def __init__(self, lambda_: float = 1.0, chunk_rows: int = DEFAULT_CHUNK_ROWS):
        super().__init__(chunk_rows)
        self.lambda_ = lambda_

    def _parameters(self) -> dict:
        return {"lambda_": float(self.lambda_)}

    def _shift(self, modality: str) -> np.ndarray:
        if not np.isfinite(self.lambda_):
            raise ValueError(f"lambda_ must be finite, got {self.lambda_}")
        self._check_is_fitted("image")
        self._check_is_fitted("text")
        gap = self.image_mean_ - self.text_mean_
        return self.lambda_ / 2.0 * gap if modality == "image" else -self.lambda_ / 2.0 * gap


class DistributionNormalization(_ModalityMeans):
    """Subtract a fraction of each modality's mean (Zhou et al., NeurIPS 2023).

    ``x' = normalize(x - lambda_ * mean(x))`` and likewise for texts. With
    ``lambda_ = 1`` this is :class:`I0TPost`; Distribution Normalization's code
    uses about 0.25 with means estimated from a small sample.
    """

    _method_name = "distribution_normalization"

    def __init__(self, lambda_: float = 0.25, chunk_rows: int = DEFAULT_CHUNK_ROWS):
        super().__init__(chunk_rows)
        self.lambda_ = lambda_

    def _parameters(self) -> dict:
        return {"lambda_": float(self.lambda_)}

    def _shift(self, modality: str) -> np.ndarray:
        if not np.isfinite(self.lambda_):
            raise ValueError(f"lambda_ must be finite, got {self.lambda_}")
        return self.lambda_ * getattr(self, f"{modality}_mean_")

"""Chunked validation and reductions for embedding matrices that may be memory-mapped.

These helpers apply the rules of :mod:`i0t_helpers._validation` (2-D, non-empty,
real floating point, finite, no all-zero rows, rows L2-normalised with one
warning per call when they are not unit length) to one block of rows at a
time. A memory-mapped ``.npy`` file is therefore read once, in order, with
extra memory of a few ``chunk_rows x dim`` blocks however many rows it has.
Error messages give the row number in the whole array, not in the block.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ._validation import ALREADY_UNIT_TOLERANCE, NORM_TOLERANCE, _to_array, check_float_matrix, check_pair_shapes

logger = logging.getLogger(__name__)

#: Rows validated and reduced at once by the gap metrics and by recall@k's
#: normalised copies. A 8192 x 512 float32 block takes 16 MiB.
DEFAULT_CHUNK_ROWS = 8192


def open_embeddings(values, name: str) -> tuple[np.ndarray, np.dtype]:
    """Check the rank, size and dtype of an embedding matrix without reading its values.

    Returns the array itself (no copy for ndarrays, memmaps and CPU tensors) and
    the dtype in which it is processed: float32 for float16 and float32 input,
    float64 otherwise. float16 input is reported once with a logged warning.
    """
    array = _to_array(values, name)
    if array.ndim != 2 or 0 in array.shape or not np.issubdtype(array.dtype, np.floating):
        check_float_matrix(array, name)  # raises the standard error before any value is read
    if array.dtype == np.float16:
        logger.warning("%s is float16; upcasting to float32 (half precision loses about 3 decimal digits)", name)
        return array, np.dtype(np.float32)
    if array.dtype in (np.float32, np.float64):
        return array, array.dtype
    return array, np.dtype(np.float64)


def open_embedding_pair(image_embeds, text_embeds, paired: bool = False, names=("image_embeds", "text_embeds")):
    """Open two embedding matrices of one dimension; return both arrays and their common dtype.

    Applies the dimension and (with ``paired=True``) row-count checks of
    :func:`i0t_helpers._validation.check_embedding_pair` without reading values.
    ``names`` are the argument names used in error messages.
    """
    images, image_dtype = open_embeddings(image_embeds, names[0])
    texts, text_dtype = open_embeddings(text_embeds, names[1])
    check_pair_shapes(images.shape, texts.shape, paired, names)
    return images, texts, np.result_type(image_dtype, text_dtype)


def _row_number(rows, position: int) -> int:
    """Map a position inside a block to the row number in the whole array."""
    if isinstance(rows, (int, np.integer)):
        return int(rows) + position
    return int(rows[position])


def squared_row_norms(chunk: np.ndarray, name: str, rows=0) -> np.ndarray:
    """Return the squared L2 norm of every row, raising for non-finite values and rows without a norm.

    ``rows`` is the row number of the block's first row in the whole array, or
    an array with the row number of every row of the block, and is used only in
    error messages. The finiteness check costs nothing extra: a NaN or infinite
    value makes its row's squared norm non-finite, so the values themselves are
    scanned only when some squared norm is (or when it overflows).
    """
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        squared = np.einsum("ij,ij->i", chunk, chunk)
    if not np.isfinite(squared).all():
        bad_rows = np.flatnonzero(~np.isfinite(chunk).all(axis=1))
        if bad_rows.size:
            raise ValueError(
                f"{name} contains NaN or infinite values, first at row {_row_number(rows, bad_rows[0])}; "
                f"drop or recompute those rows"
            )
        raise ValueError(f"{name} has rows whose norm overflows {chunk.dtype}; rescale the input")
    no_norm = np.flatnonzero(squared == 0)
    if no_norm.size:
        first = int(no_norm[0])
        if not chunk[first].any():
            raise ValueError(
                f"{name} has an all-zero row at row {_row_number(rows, first)}; a zero vector has no "
                f"direction and cannot be L2-normalised, so remove such rows"
            )
        raise ValueError(
            f"{name} has a row whose values are too small to square in {chunk.dtype} (the norm underflows "
            f"to 0) at row {_row_number(rows, first)}; rescale the input"
        )
    return squared


class NormDeviation:
    """Largest ``| ||x|| - 1 |`` seen over the blocks of one call, logged once at the end."""

    def __init__(self, name: str):
        self.name = name
        self.largest = 0.0

    def update(self, squared_norms: np.ndarray) -> float:
        """Record one block's squared norms and return that block's largest deviation."""
        block_largest = float(np.max(np.abs(np.sqrt(squared_norms) - 1.0)))
        self.largest = max(self.largest, block_largest)
        return block_largest

    def log(self):
        if self.largest > NORM_TOLERANCE:
            logger.warning(
                "%s is not L2-normalised (largest |norm - 1| = %.3g); normalising each row", self.name, self.largest
            )


def unit_rows(chunk, name: str, dtype, rows=0, deviation: NormDeviation | None = None, out=None) -> np.ndarray:
    """Validate a block of rows and return it L2-normalised in ``dtype`` (into ``out`` when given).

    As in :func:`i0t_helpers._validation.l2_normalize`, a block whose rows are
    all within ``ALREADY_UNIT_TOLERANCE`` of unit length is kept as it is, so
    unit input round-trips bit for bit.
    """
    chunk = np.asarray(chunk, dtype=dtype)
    squared = squared_row_norms(chunk, name, rows)
    block_deviation = (deviation or NormDeviation(name)).update(squared)
    if block_deviation <= ALREADY_UNIT_TOLERANCE:
        if out is None:
            return chunk
        out[...] = chunk
        return out
    return np.divide(chunk, np.sqrt(squared)[:, None], out=out)


def normalized_copy(array, name: str, dtype, chunk_rows: int = DEFAULT_CHUNK_ROWS, warn: bool = True) -> np.ndarray:
    """Return a validated, row-normalised in-memory copy of ``array``, built block by block."""
    result = np.empty(array.shape, dtype=dtype)
    deviation = NormDeviation(name)
    for start in range(0, len(array), chunk_rows):
        stop = min(start + chunk_rows, len(array))
        unit_rows(array[start:stop], name, dtype, start, deviation, out=result[start:stop])
    if warn:
        deviation.log()
    return result


@dataclass
class ColumnStatistics:
    """Sums over the L2-normalised rows of one embedding matrix, in float64."""

    n_rows: int
    column_sum: np.ndarray
    squared_norm_sum: float

    @property
    def mean(self) -> np.ndarray:
        return self.column_sum / self.n_rows


def column_statistics(array, name: str, dtype, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                      warn: bool = True) -> ColumnStatistics:
    """Accumulate the column sum and the sum of squared norms of the normalised rows, block by block.

    The normalised rows are never materialised: for a block with rows ``x_i``
    and norms ``n_i`` the column sum is ``sum_i x_i / n_i``, one weighted
    reduction computed in float64. Extra memory is O(chunk_rows * dim) however
    many rows there are.
    """
    column_sum = np.zeros(array.shape[1], dtype=np.float64)
    squared_norm_sum = 0.0
    deviation = NormDeviation(name)
    for start in range(0, len(array), chunk_rows):
        chunk = np.asarray(array[start:start + chunk_rows], dtype=dtype)
        squared = squared_row_norms(chunk, name, start)
        if deviation.update(squared) <= ALREADY_UNIT_TOLERANCE:
            # Unit rows are used as they are, as l2_normalize does.
            column_sum += chunk.sum(axis=0, dtype=np.float64)
            squared_norm_sum += float(squared.sum(dtype=np.float64))
            continue
        norms = np.sqrt(squared.astype(np.float64))
        column_sum += np.einsum("i,ij->j", 1.0 / norms, chunk, dtype=np.float64)
        squared_norm_sum += float(np.sum(squared / norms**2))
    if warn:
        deviation.log()
    return ColumnStatistics(len(array), column_sum, squared_norm_sum)


@dataclass
class PairStatistics:
    """Sums over matched (image, text) pairs of normalised rows, in float64."""

    n_pairs: int
    cosine_sum: float
    l2_sum: float


def pair_statistics(images, texts, dtype, text_image_index=None, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                    warn: bool = True) -> PairStatistics:
    """Accumulate the cosine and Euclidean distance of every matched pair, block by block.

    Text ``t`` pairs with image ``text_image_index[t]`` (row ``t`` when the index
    is ``None``). Image rows are gathered per block, so extra memory stays
    O(chunk_rows * dim) for memory-mapped input as well.
    """
    image_deviation, text_deviation = NormDeviation("image_embeds"), NormDeviation("text_embeds")
    cosine_sum = l2_sum = 0.0
    for start in range(0, len(texts), chunk_rows):
        stop = min(start + chunk_rows, len(texts))
        if text_image_index is None:
            image_rows = start
            image_block = images[start:stop]
        else:
            image_rows = text_image_index[start:stop]
            image_block = images[image_rows]
        unit_images = unit_rows(image_block, "image_embeds", dtype, image_rows, image_deviation)
        unit_texts = unit_rows(texts[start:stop], "text_embeds", dtype, start, text_deviation)
        cosine_sum += float(np.einsum("ij,ij->i", unit_images, unit_texts).sum(dtype=np.float64))
        difference = unit_images - unit_texts
        l2_sum += float(np.sqrt(np.einsum("ij,ij->i", difference, difference)).sum(dtype=np.float64))
    if warn:
        image_deviation.log()
        text_deviation.log()
    return PairStatistics(len(texts), cosine_sum, l2_sum)

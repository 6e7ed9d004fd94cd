"""Cross-modal retrieval recall@k, computed in blocks so memory stays bounded.

For every query the rank of its best correct item is the number of wrong gallery items
that score strictly higher than that item. Recall@k is the fraction of queries
whose rank is below k. An image may have several captions: image-to-text counts
a hit when any of its captions is in the top k (as CLIP evaluations do), and
text-to-image has exactly one correct image per caption.

Why counting and not a running top-k merge: recall@k only depends on whether
the best correct item is among the k highest scores, which is the same as
fewer than k wrong items scoring above it. Once the score of
each query's correct item is known (one dot product per pair), every block of
the similarity matrix can be reduced to per-row and per-column counts with two
comparisons and two sums, in any order, with no sort, no buffer of k
candidates per query and no merge step. A top-k merge would cost a partial
sort of every block and would tie the answer to a chosen k; the counts give
the exact rank, so recall at every k comes from one pass. The ranks are exact
for the scores the blocks compute: a dense computation that uses the same
float32 or float64 products gives the same ranks.

:func:`retrieve_top_k` does keep a running top-k, because it returns the
retrieved items themselves (for example to show the captions an image finds).

The similarity matrix is never built whole: it is visited in blocks of at most
``chunk_size x chunk_size`` entries.
"""

from __future__ import annotations

import numpy as np

from ._chunked import normalized_copy, open_embedding_pair
from ._validation import check_positive_int, check_text_image_index

#: Default block edge: a 4096 x 4096 float32 block takes 64 MiB.
DEFAULT_CHUNK_SIZE = 4096


def _as_ks(ks) -> tuple[int, ...]:
    if isinstance(ks, (int, np.integer)):
        ks = (ks,)
    if isinstance(ks, (str, bytes)) or not hasattr(ks, "__iter__"):
        raise TypeError(f"ks must be an integer or a sequence of integers such as (1, 5, 10); got {ks!r}")
    ks = tuple(check_positive_int(k, "k") for k in ks)
    if not ks:
        raise ValueError("ks must name at least one k, for example (1, 5, 10)")
    return ks


def _score_block(query_block: np.ndarray, gallery_block: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Write the cosine similarities of two blocks of unit rows into ``out`` and return it.

    Every similarity the module computes goes through here, which is also what
    the tests use to check the block shapes.
    """
    return np.matmul(query_block, gallery_block.T, out=out)


class _BlockBuffers:
    """Two reusable buffers (scores and a boolean mask) for blocks of up to ``rows x columns``."""

    def __init__(self, rows: int, columns: int, dtype):
        self._scores = np.empty(rows * columns, dtype=dtype)
        self._mask = np.empty(rows * columns, dtype=bool)

    def scores(self, rows: int, columns: int) -> np.ndarray:
        return self._scores[:rows * columns].reshape(rows, columns)

    def mask(self, rows: int, columns: int) -> np.ndarray:
        return self._mask[:rows * columns].reshape(rows, columns)


def _positive_scores(images: np.ndarray, texts: np.ndarray, index: np.ndarray, chunk_size: int) -> np.ndarray:
    """Return the cosine of every text with its own image, gathering image rows block by block."""
    positive = np.empty(len(texts), dtype=texts.dtype)
    for start in range(0, len(texts), chunk_size):
        stop = min(start + chunk_size, len(texts))
        positive[start:stop] = np.einsum("ij,ij->i", images[index[start:stop]], texts[start:stop])
    return positive


def retrieval_ranks(image_embeds, text_embeds, text_image_index=None, chunk_size: int = DEFAULT_CHUNK_SIZE):
    """Return the 0-based rank of the best correct match for every query, both ways.

    Parameters
    ----------
    image_embeds : array of shape (n_images, dim)
        May be a memory-mapped array; it is validated and normalised block by block.
    text_embeds : array of shape (n_texts, dim)
    text_image_index : array of shape (n_texts,), optional
        Image row of each text; defaults to row i pairs with row i.
    chunk_size : int
        Edge of the similarity blocks. Extra memory is one normalised copy of
        each input plus a ``chunk_size x chunk_size`` block of scores and a
        boolean block of the same shape (for float32 input and the default
        4096: 64 MiB + 16 MiB). The full n_images x n_texts matrix is never built.

    Returns
    -------
    image_to_text_ranks : ndarray of shape (n_images,)
        Number of wrong texts scoring strictly higher than the image's best caption.
    text_to_image_ranks : ndarray of shape (n_texts,)
        Number of wrong images scoring strictly higher than the caption's own image.

    Notes
    -----
    For the block of image rows ``I`` and text columns ``T`` with scores ``S``::

        image_rank[i] += #{t in T : S[i, t] > best_positive[i]}
        text_rank[t]  += #{i in I : S[i, t] > positive[t]}

    Correct pairs inside the block are then taken out of both counts, using the
    block's own scores. A block's matrix product may round a pair's score
    differently from the row-wise dot product that gave ``positive``, and a
    correct item must never count against itself.
    """
    images, texts, dtype = open_embedding_pair(image_embeds, text_embeds)
    index = check_text_image_index(text_image_index, len(texts), len(images))
    return _ranks_of_opened(images, texts, dtype, index, chunk_size)


def _ranks_of_opened(images, texts, dtype, index: np.ndarray, chunk_size: int, warn: bool = True):
    """Compute both rank arrays for inputs that :func:`open_embedding_pair` has checked."""
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    images = normalized_copy(images, "image_embeds", dtype, warn=warn)
    texts = normalized_copy(texts, "text_embeds", dtype, warn=warn)

    positive = _positive_scores(images, texts, index, chunk_size)
    best_positive = np.full(len(images), -np.inf, dtype=positive.dtype)
    np.maximum.at(best_positive, index, positive)
    if np.isneginf(best_positive).any():
        missing = int(np.flatnonzero(np.isneginf(best_positive))[0])
        raise ValueError(f"image row {missing} has no caption in text_image_index; every image needs at least one")

    image_ranks = np.zeros(len(images), dtype=np.int64)
    text_ranks = np.zeros(len(texts), dtype=np.int64)
    buffers = _BlockBuffers(min(chunk_size, len(images)), min(chunk_size, len(texts)), dtype)
    for image_start in range(0, len(images), chunk_size):
        image_stop = min(image_start + chunk_size, len(images))
        image_threshold = best_positive[image_start:image_stop, None]
        for text_start in range(0, len(texts), chunk_size):
            text_stop = min(text_start + chunk_size, len(texts))
            shape = (image_stop - image_start, text_stop - text_start)
            scores = _score_block(images[image_start:image_stop], texts[text_start:text_stop], buffers.scores(*shape))
            mask = buffers.mask(*shape)

            row_counts, column_counts = _count_above(scores, mask, image_threshold,
                                                     positive[None, text_start:text_stop])
            image_ranks[image_start:image_stop] += row_counts
            text_ranks[text_start:text_stop] += column_counts

            _remove_correct_pairs(scores, index, image_start, image_stop, text_start, text_stop,
                                  image_threshold[:, 0], positive, image_ranks, text_ranks)
    return image_ranks, text_ranks


def _count_above(scores, mask, row_thresholds, column_thresholds) -> tuple[np.ndarray, np.ndarray]:
    """Count, per row and per column of a block, the scores strictly above that row's or column's threshold."""
    np.greater(scores, row_thresholds, out=mask)
    row_counts = _count_true_per_row(mask)
    np.greater(scores, column_thresholds, out=mask)
    return row_counts, _count_true_per_column(mask)


# Summing a boolean block with numpy converts every element to an integer first.
# Viewing eight booleans (bytes of 0 or 1) as one uint64 and adding words instead
# counts eight elements per addition. Each byte lane of a sum of at most 255 words
# is at most 255, so no lane carries into the next, and the lanes are added up at
# the end. The results equal mask.sum(axis=...) exactly.
_MAX_WORDS_PER_SUM = 255


def _count_true_per_row(mask: np.ndarray) -> np.ndarray:
    if mask.shape[1] % 8:
        return mask.sum(axis=1, dtype=np.int64)
    words = mask.view(np.uint64)
    counts = np.zeros(len(mask), dtype=np.int64)
    for start in range(0, words.shape[1], _MAX_WORDS_PER_SUM):
        lane_sums = words[:, start:start + _MAX_WORDS_PER_SUM].sum(axis=1, dtype=np.uint64)
        counts += lane_sums.view(np.uint8).reshape(len(mask), 8).sum(axis=1, dtype=np.int64)
    return counts


def _count_true_per_column(mask: np.ndarray) -> np.ndarray:
    if mask.shape[1] % 8:
        return mask.sum(axis=0, dtype=np.int64)
    words = mask.view(np.uint64)
    counts = np.zeros(mask.shape[1], dtype=np.int64)
    for start in range(0, len(mask), _MAX_WORDS_PER_SUM):
        counts += words[start:start + _MAX_WORDS_PER_SUM].sum(axis=0, dtype=np.uint64).view(np.uint8)
    return counts


def _remove_correct_pairs(scores, index, image_start, image_stop, text_start, text_stop, image_threshold, positive,
                          image_ranks, text_ranks):
    """Undo the counts that correct (image, caption) pairs inside one block added."""
    owners = index[text_start:text_stop]
    columns = np.flatnonzero((owners >= image_start) & (owners < image_stop))
    if not columns.size:
        return
    rows = owners[columns] - image_start
    pair_scores = scores[rows, columns]
    counted_for_image = rows[pair_scores > image_threshold[rows]]
    image_ranks[image_start:image_stop] -= np.bincount(counted_for_image, minlength=image_stop - image_start)
    text_ranks[text_start + columns] -= pair_scores > positive[text_start + columns]


def recall_at_k(image_embeds, text_embeds, text_image_index=None, ks=(1, 5, 10),
                chunk_size: int = DEFAULT_CHUNK_SIZE) -> dict:
    """Compute image-to-text and text-to-image recall@k.

    Returns a dict with keys ``"i2t"`` and ``"t2i"``, each mapping k to the
    fraction of queries (in [0, 1]) whose best correct match is among the top k.
    Ties with the correct item count in its favour. Memory stays bounded by
    ``chunk_size`` as described in :func:`retrieval_ranks`.

    Examples
    --------
    >>> import numpy as np
    >>> images = np.eye(3)
    >>> texts = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    >>> recall_at_k(images, texts, ks=(1, 2))["i2t"]
    {1: 0.3333333333333333, 2: 1.0}
    """
    ks = _as_ks(ks)
    image_ranks, text_ranks = retrieval_ranks(image_embeds, text_embeds, text_image_index, chunk_size)
    return _recall_from_ranks(image_ranks, text_ranks, ks)


def _recall_from_ranks(image_ranks: np.ndarray, text_ranks: np.ndarray, ks) -> dict:
    ks = _as_ks(ks)
    return {
        "i2t": {k: float(np.mean(image_ranks < k)) for k in ks},
        "t2i": {k: float(np.mean(text_ranks < k)) for k in ks},
    }


def retrieve_top_k(query_embeds, gallery_embeds, k: int = 10, chunk_size: int = DEFAULT_CHUNK_SIZE):
    """Return the k gallery items most similar to each query, found block by block.

    Cosine similarity on L2-normalised rows. For each block of queries the
    best ``k`` candidates seen so far are merged with the best ``k`` of every
    new gallery block (``numpy.argpartition``). Extra memory is one normalised
    copy of each input, one ``chunk_size x chunk_size`` block and ``k``
    candidates per query; the full similarity matrix is never built.

    Parameters
    ----------
    query_embeds : array of shape (n_queries, dim)
    gallery_embeds : array of shape (n_gallery, dim)
    k : int
        Items returned per query; at most ``n_gallery``.
    chunk_size : int
        Edge of the similarity blocks.

    Returns
    -------
    indices : ndarray of shape (n_queries, k), int64
        Gallery rows, best first; equal scores are ordered by gallery row.
    scores : ndarray of shape (n_queries, k)
        Their cosine similarities, in decreasing order.

    Notes
    -----
    The scores are those of a dense top-k. When several gallery items tie at
    the k-th highest score, which of them is returned is unspecified.

    Examples
    --------
    >>> import numpy as np
    >>> indices, scores = retrieve_top_k(np.eye(2), np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]), k=2)
    >>> indices.tolist()
    [[1, 2], [0, 2]]
    """
    queries, gallery, dtype = open_embedding_pair(query_embeds, gallery_embeds,
                                                  names=("query_embeds", "gallery_embeds"))
    k = check_positive_int(k, "k")
    if k > len(gallery):
        raise ValueError(f"k={k} exceeds the {len(gallery)} gallery items; pass k <= {len(gallery)}")
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    queries = normalized_copy(queries, "query_embeds", dtype)
    gallery = normalized_copy(gallery, "gallery_embeds", dtype)

    indices = np.empty((len(queries), k), dtype=np.int64)
    scores = np.empty((len(queries), k), dtype=dtype)
    buffers = _BlockBuffers(min(chunk_size, len(queries)), min(chunk_size, len(gallery)), dtype)
    for query_start in range(0, len(queries), chunk_size):
        query_stop = min(query_start + chunk_size, len(queries))
        best_scores = np.empty((query_stop - query_start, 0), dtype=dtype)
        best_indices = np.empty((query_stop - query_start, 0), dtype=np.int64)
        for gallery_start in range(0, len(gallery), chunk_size):
            gallery_stop = min(gallery_start + chunk_size, len(gallery))
            block = _score_block(queries[query_start:query_stop], gallery[gallery_start:gallery_stop],
                                 buffers.scores(query_stop - query_start, gallery_stop - gallery_start))
            block_scores, block_indices = _best_k(block, np.arange(gallery_start, gallery_stop), k)
            best_scores, best_indices = _best_k(np.concatenate([best_scores, block_scores], axis=1),
                                                np.concatenate([best_indices, block_indices], axis=1), k)
        order = np.lexsort((best_indices, -best_scores), axis=1)
        indices[query_start:query_stop] = np.take_along_axis(best_indices, order, axis=1)
        scores[query_start:query_stop] = np.take_along_axis(best_scores, order, axis=1)
    return indices, scores


def _best_k(scores: np.ndarray, columns: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep the k highest scores of every row (unordered) with their gallery indices."""
    if columns.ndim == 1:
        columns = np.broadcast_to(columns, scores.shape)
    if scores.shape[1] <= k:
        return scores.copy(), columns.copy()
    kept = np.argpartition(scores, scores.shape[1] - k, axis=1)[:, scores.shape[1] - k:]
    return np.take_along_axis(scores, kept, axis=1), np.take_along_axis(columns, kept, axis=1)

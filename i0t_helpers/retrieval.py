"""Cross-modal retrieval recall@k, computed in blocks so memory stays bounded.

For every query the rank of its best correct item is the number of wrong gallery items
that score strictly higher than that item. Recall@k is the fraction of queries
whose rank is below k. An image may have several captions: image-to-text counts
a hit when any of its captions is in the top k (as CLIP evaluations do), and
text-to-image has exactly one correct image per caption.

Counting higher scores needs no sort and no top-k buffer, so the similarity
matrix is never built whole: it is visited in blocks of at most
``chunk_size x chunk_size`` entries.
"""

from __future__ import annotations

import numpy as np

from ._validation import check_embedding_pair, check_positive_int, check_text_image_index

#: Default block edge: a 4096 x 4096 float32 block takes 64 MiB.
DEFAULT_CHUNK_SIZE = 4096


def _as_ks(ks) -> tuple[int, ...]:
    if isinstance(ks, (int, np.integer)):
        ks = (ks,)
    ks = tuple(check_positive_int(k, "k") for k in ks)
    if not ks:
        raise ValueError("ks must name at least one k, for example (1, 5, 10)")
    return ks


def retrieval_ranks(image_embeds, text_embeds, text_image_index=None, chunk_size: int = DEFAULT_CHUNK_SIZE):
    """Return the 0-based rank of the best correct match for every query, both ways.

    Parameters
    ----------
    image_embeds : array of shape (n_images, dim)
    text_embeds : array of shape (n_texts, dim)
    text_image_index : array of shape (n_texts,), optional
        Image row of each text; defaults to row i pairs with row i.
    chunk_size : int
        Edge of the similarity blocks; peak extra memory is about
        ``chunk_size**2`` floats plus two boolean blocks of the same size.

    Returns
    -------
    image_to_text_ranks : ndarray of shape (n_images,)
        Number of wrong texts scoring strictly higher than the image's best caption.
    text_to_image_ranks : ndarray of shape (n_texts,)
        Number of wrong images scoring strictly higher than the caption's own image.
    """
    images, texts = check_embedding_pair(image_embeds, text_embeds)
    index = check_text_image_index(text_image_index, len(texts), len(images))
    chunk_size = check_positive_int(chunk_size, "chunk_size")

    positive = np.einsum("ij,ij->i", images[index], texts)
    best_positive = np.full(len(images), -np.inf, dtype=positive.dtype)
    np.maximum.at(best_positive, index, positive)
    if np.isneginf(best_positive).any():
        missing = int(np.flatnonzero(np.isneginf(best_positive))[0])
        raise ValueError(f"image row {missing} has no caption in text_image_index; every image needs at least one")

    image_rows = np.arange(len(images))
    image_ranks = np.zeros(len(images), dtype=np.int64)
    text_ranks = np.zeros(len(texts), dtype=np.int64)
    for image_start in range(0, len(images), chunk_size):
        image_stop = min(image_start + chunk_size, len(images))
        image_block = images[image_start:image_stop]
        image_threshold = best_positive[image_start:image_stop, None]
        for text_start in range(0, len(texts), chunk_size):
            text_stop = min(text_start + chunk_size, len(texts))
            scores = image_block @ texts[text_start:text_stop].T
            # Correct pairs never count against themselves: the block's matmul may round
            # their score differently from the einsum above.
            correct = index[None, text_start:text_stop] == image_rows[image_start:image_stop, None]
            scores[correct] = -np.inf
            image_ranks[image_start:image_stop] += np.count_nonzero(scores > image_threshold, axis=1)
            text_ranks[text_start:text_stop] += np.count_nonzero(scores > positive[None, text_start:text_stop], axis=0)
    return image_ranks, text_ranks


def recall_at_k(image_embeds, text_embeds, text_image_index=None, ks=(1, 5, 10),
                chunk_size: int = DEFAULT_CHUNK_SIZE) -> dict:
    """Compute image-to-text and text-to-image recall@k.

    Returns a dict with keys ``"i2t"`` and ``"t2i"``, each mapping k to the
    fraction of queries (in [0, 1]) whose best correct match is among the top k.
    Ties with the correct item count in its favour.

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
    return {
        "i2t": {k: float(np.mean(image_ranks < k)) for k in ks},
        "t2i": {k: float(np.mean(text_ranks < k)) for k in ks},
    }

"""Measures of the modality gap between image and text embeddings.

Every function takes image and text embeddings as arrays of shape (n, dim),
validates them (see :mod:`i0t_helpers._validation`) and L2-normalises each row
before measuring, so the figures always refer to the unit sphere on which CLIP
compares embeddings.

The inputs may be memory-mapped ``.npy`` files (``np.load(path, mmap_mode="r")``)
larger than memory. Each measure is built from float64 sums accumulated over
blocks of ``chunk_rows`` rows (column sums, sums of matched-pair cosines and
distances), so a measure reads its input once per pass, never copies it whole
and needs O(chunk_rows * dim) extra memory. Only recall@k (one normalised copy
of each input) and the sample that linear separability fits on are held in memory.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from ._chunked import (
    DEFAULT_CHUNK_ROWS,
    ColumnStatistics,
    NormDeviation,
    column_statistics,
    open_embedding_pair,
    pair_statistics,
    squared_row_norms,
    unit_rows,
)
from ._validation import check_positive_int, check_text_image_index
from .retrieval import DEFAULT_CHUNK_SIZE, _ranks_of_opened, _recall_from_ranks

logger = logging.getLogger(__name__)

#: Centroid-distance thresholds of the severity bands used by An et al. (2025).
SEVERE_GAP_THRESHOLD = 0.63
MODERATE_GAP_THRESHOLD = 0.19
#: Below this sum of matched and intra-modal dissimilarity, RMG treats all embeddings as one point.
COLLAPSED_TOLERANCE = 1e-6


def _statistics_pair(images, texts, dtype) -> tuple[ColumnStatistics, ColumnStatistics]:
    return (column_statistics(images, "image_embeds", dtype, DEFAULT_CHUNK_ROWS),
            column_statistics(texts, "text_embeds", dtype, DEFAULT_CHUNK_ROWS))


def centroid_distance(image_embeds, text_embeds) -> float:
    """Compute the Euclidean distance between the image and text centroids.

    ``CD = || mean_i x_i - mean_j y_j ||_2`` over L2-normalised embeddings. This
    is the "modality gap" of Liang et al. (2022) and the headline number of
    An et al. (2025). The two sets need not have the same size. The centroids
    come from float64 column sums accumulated block by block, so memory-mapped
    input is read once and never copied whole.
    """
    images, texts, dtype = open_embedding_pair(image_embeds, text_embeds)
    image_statistics, text_statistics = _statistics_pair(images, texts, dtype)
    return float(np.linalg.norm(image_statistics.mean - text_statistics.mean))


def gap_severity(distance: float) -> str:
    """Return the severity band of a centroid distance: ``"severe"``, ``"moderate"`` or ``"low"``.

    Bands of An et al. (2025): severe for CD >= 0.63, moderate for
    0.19 <= CD < 0.63, low below 0.19.
    """
    if not np.isfinite(distance) or distance < 0:
        raise ValueError(f"distance must be a finite non-negative number, got {distance!r}")
    if distance >= SEVERE_GAP_THRESHOLD:
        return "severe"
    if distance >= MODERATE_GAP_THRESHOLD:
        return "moderate"
    return "low"


def linear_separability(image_embeds, text_embeds, test_size: float = 0.3, max_samples: int | None = 20000,
                        random_state: int = 0, return_n_samples: bool = False):
    """Compute the held-out accuracy of a logistic regression that tells images from texts.

    Embeddings of both modalities are pooled, labelled by modality, split
    70/30 (stratified, seeded) and a logistic regression is fitted on the
    training part. The returned accuracy on the held-out part is 1.0 when the
    modalities are perfectly separable and about 0.5 at chance (balanced sets).

    An et al. (2025) instead fit a linear *regression* on COCO and report
    ``1 - MSE`` of its predictions. Both read 1 for a perfect separation; near
    chance their variant gives about 0.75 for a constant prediction of 0.5 and
    lower values for noisy fits, so the two scales agree at the top and differ
    in the middle. Compare numbers only within one variant.

    Parameters
    ----------
    max_samples : int or None
        Largest number of embeddings drawn from each modality (without
        replacement, with ``random_state``) before splitting; ``None`` uses all.
        Large sets are subsampled because the fit costs O(n * dim) per iteration.
        Every row is still validated, block by block; only the sampled rows are
        loaded into memory, so memory-mapped input of any size works.
    random_state : int
        Seed of the subsample and of the train/test split.
    return_n_samples : bool
        Also return the number of embeddings actually used (both modalities).
    """
    images, texts, dtype = open_embedding_pair(image_embeds, text_embeds)
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must lie strictly between 0 and 1, got {test_size}")
    if max_samples is not None:
        max_samples = check_positive_int(max_samples, "max_samples")
    _validate_rows(images, "image_embeds", dtype)
    _validate_rows(texts, "text_embeds", dtype)
    accuracy, n_used = _separability_of_validated(images, texts, dtype, test_size, max_samples, random_state)
    if return_n_samples:
        return accuracy, n_used
    return accuracy


def _validate_rows(array, name: str, dtype, chunk_rows: int = DEFAULT_CHUNK_ROWS):
    """Check every row (finite, non-zero) block by block and log the not-normalised warning once."""
    deviation = NormDeviation(name)
    for start in range(0, len(array), chunk_rows):
        deviation.update(squared_row_norms(np.asarray(array[start:start + chunk_rows], dtype=dtype), name, start))
    deviation.log()


def _sample_unit_rows(array, name: str, dtype, rng, max_samples: int | None) -> np.ndarray:
    """Draw at most ``max_samples`` rows without replacement (sorted) and return them normalised."""
    if max_samples is None or len(array) <= max_samples:
        rows = np.arange(len(array))
    else:
        rows = np.sort(rng.choice(len(array), max_samples, replace=False))
    # Fancy indexing reads only the sampled rows, also from a memory-mapped file.
    return unit_rows(array[rows], name, dtype, rows)


def _separability_of_validated(images, texts, dtype, test_size: float, max_samples: int | None,
                               random_state: int) -> tuple[float, int]:
    """Fit and score the image-versus-text logistic regression on (a sample of) validated rows."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    rng = np.random.default_rng(random_state)
    images = _sample_unit_rows(images, "image_embeds", dtype, rng, max_samples)
    texts = _sample_unit_rows(texts, "text_embeds", dtype, rng, max_samples)
    if min(len(images), len(texts)) < 4:
        raise ValueError(
            f"linear_separability needs at least 4 embeddings of each modality for a held-out split; "
            f"got {len(images)} images and {len(texts)} texts"
        )

    features = np.concatenate([images, texts]).astype(np.float64)
    labels = np.concatenate([np.zeros(len(images)), np.ones(len(texts))])
    train_x, test_x, train_y, test_y = train_test_split(
        features, labels, test_size=test_size, stratify=labels, random_state=random_state
    )
    classifier = LogisticRegression(max_iter=1000)
    classifier.fit(train_x, train_y)
    return float(classifier.score(test_x, test_y)), len(features)


def matched_pair_cosine(image_embeds, text_embeds) -> float:
    """Compute the mean cosine similarity of matched pairs (row i with row i)."""
    images, texts, dtype = open_embedding_pair(image_embeds, text_embeds, paired=True)
    pairs = pair_statistics(images, texts, dtype, chunk_rows=DEFAULT_CHUNK_ROWS)
    return pairs.cosine_sum / pairs.n_pairs


def _mean_offdiagonal_cosine(statistics: ColumnStatistics) -> float:
    n = statistics.n_rows
    if n < 2:
        raise ValueError("the mean intra-modal cosine needs at least 2 embeddings of the modality")
    total = statistics.column_sum
    # Sum of all pairwise cosines = ||sum x||^2; remove the n self-similarities.
    return float((total @ total - statistics.squared_norm_sum) / (n * (n - 1)))


def mean_cosines(image_embeds, text_embeds) -> dict:
    """Compute the mean intra-modal and cross-modal cosine similarities.

    Returns a dict with ``image_image`` and ``text_text`` (over distinct pairs of
    the same modality) and ``image_text`` (over all image-text pairs, matched or
    not). Computed from the column sums in O(n * dim), without the n x n matrix::

        mean_{i != j} cos(x_i, x_j) = (||sum_i x_i||^2 - sum_i ||x_i||^2) / (n (n - 1))
        mean_{i, j} cos(x_i, y_j)   = mean(x) . mean(y)
    """
    images, texts, dtype = open_embedding_pair(image_embeds, text_embeds)
    image_statistics, text_statistics = _statistics_pair(images, texts, dtype)
    return _cosines_from_statistics(image_statistics, text_statistics)


def _cosines_from_statistics(image_statistics: ColumnStatistics, text_statistics: ColumnStatistics) -> dict:
    return {
        "image_image": _mean_offdiagonal_cosine(image_statistics),
        "text_text": _mean_offdiagonal_cosine(text_statistics),
        "image_text": float(image_statistics.mean @ text_statistics.mean),
    }


def matched_pair_l2(image_embeds, text_embeds) -> float:
    """Compute L2I: the mean Euclidean distance between matched image and text embeddings."""
    images, texts, dtype = open_embedding_pair(image_embeds, text_embeds, paired=True)
    pairs = pair_statistics(images, texts, dtype, chunk_rows=DEFAULT_CHUNK_ROWS)
    return pairs.l2_sum / pairs.n_pairs


def relative_modality_gap(image_embeds, text_embeds) -> float:
    """Compute the relative modality gap (RMG) of Schrodi et al. (ICLR 2025).

    With the cosine dissimilarity ``d(u, v) = (1 - cos(u, v)) / 2``::

        M   = mean_i d(x_i, y_i)                                  (matched pairs)
        I   = mean_{i != j} (d(x_i, x_j) + d(y_i, y_j)) / 2        (within each modality)
        RMG = M / (M + I)

    RMG compares the distance between partners with the spread inside each
    modality, so unlike the centroid distance it does not shrink when both
    modalities are merely compressed. It lies in [0, 1].

    NOTE: the normalisation follows our reading of the paper's definition; check
    it against the authors' code before comparing with their published values.
    """
    images, texts, dtype = open_embedding_pair(image_embeds, text_embeds, paired=True)
    image_statistics, text_statistics = _statistics_pair(images, texts, dtype)
    pairs = pair_statistics(images, texts, dtype, chunk_rows=DEFAULT_CHUNK_ROWS, warn=False)
    return _rmg_from_statistics(pairs.cosine_sum / pairs.n_pairs, image_statistics, text_statistics)


def _rmg_from_statistics(matched_cosine: float, image_statistics: ColumnStatistics,
                         text_statistics: ColumnStatistics) -> float:
    matched = (1.0 - matched_cosine) / 2.0
    intra = ((1.0 - _mean_offdiagonal_cosine(image_statistics)) / 2.0
             + (1.0 - _mean_offdiagonal_cosine(text_statistics)) / 2.0) / 2.0
    if matched + intra < COLLAPSED_TOLERANCE:
        # Every embedding is the same point: M and I are both rounding noise, and RMG is 0 by continuity.
        return 0.0
    return float(matched / (matched + intra))


def gap_report(image_embeds, text_embeds, text_image_index=None, ks=(1, 5, 10), random_state: int = 0,
               max_samples: int | None = 20000) -> pd.DataFrame:
    """Compute every gap measure and retrieval recall in one table.

    Rows are measures, with columns ``value`` and ``note``. The severity band of
    the centroid distance is included as a row of its own. Pair-based measures
    (matched cosine, L2I, RMG) use ``text_image_index`` to find each text's image.
    Column and pair sums are computed once and shared by the measures, so
    besides recall@k the report reads each input three times, block by block.
    """
    images, texts, dtype = open_embedding_pair(image_embeds, text_embeds)
    if text_image_index is None and len(images) != len(texts):
        raise ValueError(
            f"gap_report needs text_image_index when the row counts differ ({len(images)} images, {len(texts)} texts)"
        )
    index = check_text_image_index(text_image_index, len(texts), len(images))
    if max_samples is not None:
        max_samples = check_positive_int(max_samples, "max_samples")

    image_statistics, text_statistics = _statistics_pair(images, texts, dtype)
    pairs = pair_statistics(images, texts, dtype, None if text_image_index is None else index,
                            chunk_rows=DEFAULT_CHUNK_ROWS, warn=False)
    matched_cosine = pairs.cosine_sum / pairs.n_pairs
    distance = float(np.linalg.norm(image_statistics.mean - text_statistics.mean))
    separability, n_used = _separability_of_validated(images, texts, dtype, 0.3, max_samples, random_state)
    cosines = _cosines_from_statistics(image_statistics, text_statistics)
    image_ranks, text_ranks = _ranks_of_opened(images, texts, dtype, index, DEFAULT_CHUNK_SIZE, warn=False)
    recalls = _recall_from_ranks(image_ranks, text_ranks, ks)
    rows = [
        ("centroid_distance", distance, "||mean(image) - mean(text)||"),
        ("severity", gap_severity(distance), "An et al. bands: severe >= 0.63 > moderate >= 0.19 > low"),
        ("linear_separability", separability, f"held-out logistic-regression accuracy, {n_used} embeddings"),
        ("matched_pair_cosine", matched_cosine, "mean cos(image, its caption)"),
        ("mean_image_image_cosine", cosines["image_image"], "distinct image pairs"),
        ("mean_text_text_cosine", cosines["text_text"], "distinct text pairs"),
        ("mean_image_text_cosine", cosines["image_text"], "all image-text pairs"),
        ("l2i", pairs.l2_sum / pairs.n_pairs, "mean ||image - its caption||"),
        ("relative_modality_gap", _rmg_from_statistics(matched_cosine, image_statistics, text_statistics),
         "RMG, Schrodi et al. 2025"),
    ]
    for direction, name in (("i2t", "image_to_text"), ("t2i", "text_to_image")):
        for k, value in recalls[direction].items():
            rows.append((f"recall_at_{k}_{direction}", value, f"{name} recall@{k}"))
    return pd.DataFrame(rows, columns=["metric", "value", "note"]).set_index("metric")

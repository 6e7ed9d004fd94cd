"""Measures of the modality gap between image and text embeddings.

Every function takes image and text embeddings as arrays of shape (n, dim),
validates them (see :mod:`i0t_helpers._validation`) and L2-normalises each row
before measuring, so the figures always refer to the unit sphere on which CLIP
compares embeddings.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from ._validation import check_embedding_pair, check_positive_int
from .retrieval import recall_at_k

logger = logging.getLogger(__name__)

#: Centroid-distance thresholds of the severity bands used by An et al. (2025).
SEVERE_GAP_THRESHOLD = 0.63
MODERATE_GAP_THRESHOLD = 0.19


def _column_mean(array: np.ndarray) -> np.ndarray:
    return array.mean(axis=0, dtype=np.float64)


def centroid_distance(image_embeds, text_embeds) -> float:
    """Compute the Euclidean distance between the image and text centroids.

    ``CD = || mean_i x_i - mean_j y_j ||_2`` over L2-normalised embeddings. This
    is the "modality gap" of Liang et al. (2022) and the headline number of
    An et al. (2025). The two sets need not have the same size.
    """
    images, texts = check_embedding_pair(image_embeds, text_embeds)
    return float(np.linalg.norm(_column_mean(images) - _column_mean(texts)))


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
    return_n_samples : bool
        Also return the number of embeddings actually used (both modalities).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    images, texts = check_embedding_pair(image_embeds, text_embeds)
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must lie strictly between 0 and 1, got {test_size}")
    rng = np.random.default_rng(random_state)
    if max_samples is not None:
        max_samples = check_positive_int(max_samples, "max_samples")
        if len(images) > max_samples:
            images = images[np.sort(rng.choice(len(images), max_samples, replace=False))]
        if len(texts) > max_samples:
            texts = texts[np.sort(rng.choice(len(texts), max_samples, replace=False))]
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
    accuracy = float(classifier.score(test_x, test_y))
    if return_n_samples:
        return accuracy, len(features)
    return accuracy


def matched_pair_cosine(image_embeds, text_embeds) -> float:
    """Compute the mean cosine similarity of matched pairs (row i with row i)."""
    images, texts = check_embedding_pair(image_embeds, text_embeds, paired=True)
    return float(np.einsum("ij,ij->i", images, texts).mean())


def _mean_offdiagonal_cosine(embeds: np.ndarray) -> float:
    n = len(embeds)
    if n < 2:
        raise ValueError("the mean intra-modal cosine needs at least 2 embeddings of the modality")
    total = _column_mean(embeds) * n
    # Sum of all pairwise cosines = ||sum x||^2; remove the n self-similarities.
    return float((total @ total - np.einsum("ij,ij->", embeds, embeds, dtype=np.float64)) / (n * (n - 1)))


def mean_cosines(image_embeds, text_embeds) -> dict:
    """Compute the mean intra-modal and cross-modal cosine similarities.

    Returns a dict with ``image_image`` and ``text_text`` (over distinct pairs of
    the same modality) and ``image_text`` (over all image-text pairs, matched or
    not). Computed from the column sums in O(n * dim), without the n x n matrix.
    """
    images, texts = check_embedding_pair(image_embeds, text_embeds)
    return {
        "image_image": _mean_offdiagonal_cosine(images),
        "text_text": _mean_offdiagonal_cosine(texts),
        "image_text": float(_column_mean(images) @ _column_mean(texts)),
    }


def matched_pair_l2(image_embeds, text_embeds) -> float:
    """Compute L2I: the mean Euclidean distance between matched image and text embeddings."""
    images, texts = check_embedding_pair(image_embeds, text_embeds, paired=True)
    return float(np.linalg.norm(images - texts, axis=1).mean())


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
    images, texts = check_embedding_pair(image_embeds, text_embeds, paired=True)
    matched = float(np.mean((1.0 - np.einsum("ij,ij->i", images, texts)) / 2.0))
    intra = ((1.0 - _mean_offdiagonal_cosine(images)) / 2.0 + (1.0 - _mean_offdiagonal_cosine(texts)) / 2.0) / 2.0
    if matched + intra == 0:
        return 0.0
    return float(matched / (matched + intra))


def gap_report(image_embeds, text_embeds, text_image_index=None, ks=(1, 5, 10), random_state: int = 0,
               max_samples: int | None = 20000) -> pd.DataFrame:
    """Compute every gap measure and retrieval recall in one table.

    Rows are measures, with columns ``value`` and ``note``. The severity band of
    the centroid distance is included as a row of its own. Pair-based measures
    (matched cosine, L2I, RMG) use ``text_image_index`` to find each text's image.
    """
    images, texts = check_embedding_pair(image_embeds, text_embeds)
    index = np.arange(len(texts)) if text_image_index is None else np.asarray(text_image_index)
    paired_images = images[index] if text_image_index is not None else images
    if text_image_index is None and len(images) != len(texts):
        raise ValueError(
            f"gap_report needs text_image_index when the row counts differ ({len(images)} images, {len(texts)} texts)"
        )

    distance = centroid_distance(images, texts)
    separability, n_used = linear_separability(
        images, texts, random_state=random_state, max_samples=max_samples, return_n_samples=True
    )
    cosines = mean_cosines(images, texts)
    recalls = recall_at_k(images, texts, text_image_index=index, ks=ks)
    rows = [
        ("centroid_distance", distance, "||mean(image) - mean(text)||"),
        ("severity", gap_severity(distance), "An et al. bands: severe >= 0.63 > moderate >= 0.19 > low"),
        ("linear_separability", separability, f"held-out logistic-regression accuracy, {n_used} embeddings"),
        ("matched_pair_cosine", matched_pair_cosine(paired_images, texts), "mean cos(image, its caption)"),
        ("mean_image_image_cosine", cosines["image_image"], "distinct image pairs"),
        ("mean_text_text_cosine", cosines["text_text"], "distinct text pairs"),
        ("mean_image_text_cosine", cosines["image_text"], "all image-text pairs"),
        ("l2i", matched_pair_l2(paired_images, texts), "mean ||image - its caption||"),
        ("relative_modality_gap", relative_modality_gap(paired_images, texts), "RMG, Schrodi et al. 2025"),
    ]
    for direction, name in (("i2t", "image_to_text"), ("t2i", "text_to_image")):
        for k, value in recalls[direction].items():
            rows.append((f"recall_at_{k}_{direction}", value, f"{name} recall@{k}"))
    return pd.DataFrame(rows, columns=["metric", "value", "note"]).set_index("metric")

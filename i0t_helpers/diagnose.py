"""Diagnose the modality gap dimension by dimension: peaks, their share of the gap, and interventions.

An et al. (2025) trace the gap of CLIP-style models to a few "peak" dimensions:
coordinates on which every embedding of one modality has nearly the same large
value, whatever the input shows. This module measures that on any pair of
embedding sets:

* :func:`dimension_statistics`: per-dimension mean and standard deviation of each
  modality, each dimension's contribution to the squared centroid distance, how
  content-independent it is and how much of the retrieval signal it carries;
* :func:`peak_dimensions`, :func:`rank_dimensions`, :func:`top_gap_share`;
* the interventions :func:`clip_activations` and :func:`remove_dimensions`, and
  the experiments :func:`clipping_experiment` and :func:`removal_experiment`;
* :func:`peak_cosine_bound`: the bound of An et al. on the cross-modal cosine;
* :func:`diagnosis_summary` and :func:`compare_models` for several models at once;
* :func:`peak_examples`: the peak values of very different inputs side by side;
* figures (:func:`plot_dimension_means`, :func:`plot_content_independence`,
  :func:`plot_intervention_curves`) and an ipywidgets explorer (:func:`diagnosis_explorer`).

Every analysis function takes either an :class:`~i0t_helpers.EmbeddingPack` or
``image_embeds, text_embeds`` arrays (plus an optional ``text_image_index``), and
L2-normalises the rows first. "Image" stands for the first modality of a pack,
which may be video, a medical image or a protein sequence.
"""

from __future__ import annotations

import logging
import numbers

import numpy as np
import pandas as pd

from ._validation import (
    check_embedding_pair,
    check_embeddings,
    check_positive_int,
    check_text_image_index,
    l2_normalize,
)
from .embeddings import EmbeddingPack
from .retrieval import recall_at_k

logger = logging.getLogger(__name__)

#: Ranking rules of :func:`rank_dimensions`.
RANKINGS = ("gap", "peak")

#: Clip levels of :func:`clipping_experiment` when none are given; ``None`` means no clipping.
DEFAULT_CLIP_LEVELS = (None, 0.3, 0.2, 0.1, 0.05)

#: Numbers of removed dimensions of :func:`removal_experiment` when none are given.
DEFAULT_REMOVAL_COUNTS = (0, 1, 2, 5, 10, 20)


# Input -----------------------------------------------------------------------------------------


def _resolve_input(image_embeds, text_embeds, text_image_index):
    """Return validated, L2-normalised ``(images, texts, text_image_index)`` from a pack or two arrays."""
    if isinstance(image_embeds, EmbeddingPack):
        if text_embeds is not None:
            raise TypeError("pass either an EmbeddingPack or image_embeds and text_embeds, not both")
        pack = image_embeds
        index = pack.text_image_index if text_image_index is None else text_image_index
        image_embeds, text_embeds, text_image_index = pack.image_embeds, pack.text_embeds, index
    elif text_embeds is None:
        raise TypeError("text_embeds is missing. Pass it, or pass an EmbeddingPack as the first argument")

    images, texts = check_embedding_pair(image_embeds, text_embeds)
    index = check_text_image_index(text_image_index, len(texts), len(images))
    return images.astype(np.float64), texts.astype(np.float64), index


def _check_count(value, name: str, maximum: int, minimum: int = 1) -> int:
    """Return ``value`` as an int in ``[minimum, maximum]``, with an error that names both ends."""
    value = check_positive_int(value, name, minimum=minimum)
    if value > maximum:
        raise ValueError(f"{name}={value} exceeds the embedding dimension {maximum}; choose {minimum}..{maximum}")
    return value


def _check_clip_level(c) -> float:
    if isinstance(c, bool) or not isinstance(c, numbers.Real):
        raise TypeError(f"the clip level c must be a real number, got {c!r}")
    c = float(c)
    if not np.isfinite(c) or c <= 0:
        raise ValueError(
            f"the clip level c must be a finite positive number (activations are clipped to [-c, c]), got {c}; "
            f"use None for no clipping"
        )
    return c


# Per-dimension statistics ----------------------------------------------------------------------


def modality_statistics(embeds, name: str = "embeddings") -> tuple[np.ndarray, np.ndarray]:
    """Compute the per-dimension mean and standard deviation of one modality's L2-normalised embeddings.

    The standard deviation is the population one (``ddof=0``). Both are float64
    arrays of shape (dim,).
    """
    array = check_embeddings(embeds, name).astype(np.float64)
    return array.mean(axis=0), array.std(axis=0)


def gap_contributions(image_embeds, text_embeds=None) -> np.ndarray:
    """Compute each dimension's contribution to the squared centroid distance.

    The squared centroid distance is a sum over dimensions::

        CD^2 = ||mean(x) - mean(y)||^2 = sum_j (mean(x)_j - mean(y)_j)^2

    so term j, ``(mean(x)_j - mean(y)_j)^2``, is the part of the gap that
    dimension j carries. The returned array of shape (dim,) sums to ``CD^2``.
    """
    images, texts, _ = _resolve_input(image_embeds, text_embeds, None)
    return (images.mean(axis=0) - texts.mean(axis=0)) ** 2


def dimension_statistics(image_embeds, text_embeds=None, text_image_index=None) -> pd.DataFrame:
    """Compute a per-dimension table of both modalities' statistics, their gap and their retrieval signal.

    With L2-normalised images x, texts y and matched pairs (x~_i, y_i) (the
    image of each text, repeated once per caption), the columns of the table,
    one row per dimension j (index ``dim``), are:

    ``image_mean``, ``image_std``, ``text_mean``, ``text_std``
        Mean and population standard deviation of coordinate j in each modality.
    ``image_relative_std``, ``text_relative_std``
        ``std_j / |mean_j|``: small values mean a content-independent coordinate,
        nearly the same for every input (infinite where the mean is exactly 0).
    ``gap_contribution``
        ``(mean(x)_j - mean(y)_j)^2``; the column sums to the squared centroid distance.
    ``gap_share``
        ``gap_contribution / CD^2``: the fraction of the squared gap that j
        carries; the column sums to 1 (NaN when the centroids coincide).
    ``cosine_offset``
        ``mean(x~)_j * mean(y)_j``: what coordinate j adds, on average, to every
        image-text cosine, matched or not.
    ``retrieval_signal``
        ``mean_i(x~_ij * y_ij) - mean(x~)_j * mean(y)_j``, the covariance of
        coordinate j across matched pairs. Its sum over j is the mean cosine of
        matched pairs minus the mean cosine of all image-text combinations of
        those pairs, so it is what coordinate j adds to a correct match beyond
        the average pair. A constant coordinate carries none.
    ``retrieval_share``
        ``retrieval_signal / sum(retrieval_signal)``; NaN when the total is not
        positive (no retrieval signal to share).
    """
    images, texts, index = _resolve_input(image_embeds, text_embeds, text_image_index)

    image_mean, image_std = images.mean(axis=0), images.std(axis=0)
    text_mean, text_std = texts.mean(axis=0), texts.std(axis=0)
    contribution = (image_mean - text_mean) ** 2
    squared_gap = contribution.sum()

    paired_images = images[index]
    paired_image_mean = paired_images.mean(axis=0)
    offset = paired_image_mean * text_mean
    signal = (paired_images * texts).mean(axis=0) - offset
    total_signal = signal.sum()

    with np.errstate(divide="ignore", invalid="ignore"):
        table = pd.DataFrame({
            "image_mean": image_mean,
            "image_std": image_std,
            "text_mean": text_mean,
            "text_std": text_std,
            "image_relative_std": image_std / np.abs(image_mean),
            "text_relative_std": text_std / np.abs(text_mean),
            "gap_contribution": contribution,
            "gap_share": contribution / squared_gap if squared_gap > 0 else np.full_like(contribution, np.nan),
            "cosine_offset": offset,
            "retrieval_signal": signal,
            "retrieval_share": signal / total_signal if total_signal > 0 else np.full_like(signal, np.nan),
        })
    table.index.name = "dim"
    return table


def peak_dimensions(image_embeds, text_embeds=None, top: int = 5, text_image_index=None) -> dict[str, pd.DataFrame]:
    """Find the ``top`` dimensions with the largest absolute mean in each modality.

    Returns ``{"image": table, "text": table}``. Each table has one row per peak,
    largest ``|mean|`` first (ties broken by the lower dimension), with columns
    ``dim``, ``mean``, ``std``, ``relative_std`` (of that modality), and
    ``gap_share``, ``gap_contribution`` and ``retrieval_share`` from
    :func:`dimension_statistics`.

    Raises ``ValueError`` when ``top`` is not in ``1..dim``.
    """
    stats = dimension_statistics(image_embeds, text_embeds, text_image_index)
    top = _check_count(top, "top", len(stats))

    peaks = {}
    for modality in ("image", "text"):
        order = np.argsort(-np.abs(stats[f"{modality}_mean"].to_numpy()), kind="stable")[:top]
        rows = stats.iloc[order]
        peaks[modality] = pd.DataFrame({
            "dim": rows.index.to_numpy(),
            "mean": rows[f"{modality}_mean"].to_numpy(),
            "std": rows[f"{modality}_std"].to_numpy(),
            "relative_std": rows[f"{modality}_relative_std"].to_numpy(),
            "gap_share": rows["gap_share"].to_numpy(),
            "gap_contribution": rows["gap_contribution"].to_numpy(),
            "retrieval_share": rows["retrieval_share"].to_numpy(),
        }, index=pd.RangeIndex(1, top + 1, name="rank"))
    return peaks


def rank_dimensions(image_embeds, text_embeds=None, by: str = "gap") -> np.ndarray:
    """Return every dimension, most important first.

    ``by="gap"`` ranks by the contribution to the squared centroid distance,
    ``(mean(x)_j - mean(y)_j)^2``. ``by="peak"`` ranks by the larger of the two
    absolute means, ``max(|mean(x)_j|, |mean(y)_j|)``, which finds the peaks of
    either modality even where both modalities share them. Ties go to the lower
    dimension.
    """
    if by not in RANKINGS:
        raise ValueError(f"by must be one of {', '.join(RANKINGS)}, got {by!r}")
    images, texts, _ = _resolve_input(image_embeds, text_embeds, None)
    image_mean, text_mean = images.mean(axis=0), texts.mean(axis=0)
    if by == "gap":
        score = (image_mean - text_mean) ** 2
    else:
        score = np.maximum(np.abs(image_mean), np.abs(text_mean))
    return np.argsort(-score, kind="stable")


def top_gap_share(image_embeds, text_embeds=None, ks=(1, 5, 20)) -> dict[int, float]:
    """Compute the fraction of the squared centroid distance carried by the k largest contributors.

    For each k, ``sum of the k largest (mean(x)_j - mean(y)_j)^2 / CD^2``. Returns
    ``{k: fraction}``; k must lie in ``1..dim``.
    """
    contribution = np.sort(gap_contributions(image_embeds, text_embeds))[::-1]
    if isinstance(ks, (int, np.integer)):
        ks = (ks,)
    ks = [_check_count(k, "k", len(contribution)) for k in ks]
    total = contribution.sum()
    if total == 0:
        raise ValueError("the two centroids coincide (centroid distance 0), so there is no gap to share out")
    cumulative = np.cumsum(contribution) / total
    return {k: float(cumulative[k - 1]) for k in ks}


# Interventions ----------------------------------------------------------------------------------


def clip_activations(embeds, c: float, name: str = "embeddings") -> np.ndarray:
    """Clip every coordinate of the L2-normalised embeddings to ``[-c, c]`` and L2-normalise again.

    An et al. (2025) clip at ``c = 0.1`` to show that flattening the peaks does
    not close the gap. ``c`` must be positive; ``c >= 1`` changes nothing.
    """
    c = _check_clip_level(c)
    array = check_embeddings(embeds, name).astype(np.float64)
    return l2_normalize(np.clip(array, -c, c), name, warn=False)


def remove_dimensions(embeds, dims, name: str = "embeddings") -> np.ndarray:
    """Set the given coordinates of the L2-normalised embeddings to zero and L2-normalise again.

    ``dims`` is a sequence of distinct dimension numbers (0-based). Removing
    every dimension, or all non-zero coordinates of a row, raises ``ValueError``.
    """
    array = check_embeddings(embeds, name).astype(np.float64)
    dims = np.asarray(dims)
    if dims.size == 0:
        return array
    if dims.ndim != 1 or not np.issubdtype(dims.dtype, np.integer):
        raise TypeError(f"dims must be a 1-D sequence of integer dimension numbers, got {dims!r}")
    if dims.min() < 0 or dims.max() >= array.shape[1]:
        raise ValueError(f"dims must lie in 0..{array.shape[1] - 1}; got values from {dims.min()} to {dims.max()}")
    if np.unique(dims).size >= array.shape[1]:
        raise ValueError(f"removing all {array.shape[1]} dimensions leaves nothing to normalise; remove fewer")
    array = array.copy()
    array[:, dims] = 0.0
    return l2_normalize(array, name, warn=False)


def gap_and_recall(image_embeds, text_embeds=None, text_image_index=None, ks=(1,)) -> dict[str, float]:
    """Compute the centroid distance and recall@k in both directions.

    Returns ``{"centroid_distance": ..., "recall_at_1_i2t": ..., "recall_at_1_t2i": ..., ...}``.
    """
    images, texts, index = _resolve_input(image_embeds, text_embeds, text_image_index)
    result = {"centroid_distance": float(np.linalg.norm(images.mean(axis=0) - texts.mean(axis=0)))}
    recalls = recall_at_k(images, texts, text_image_index=index, ks=ks)
    for direction in ("i2t", "t2i"):
        for k, value in recalls[direction].items():
            result[f"recall_at_{k}_{direction}"] = value
    return result


def clipping_experiment(image_embeds, text_embeds=None, levels=DEFAULT_CLIP_LEVELS, text_image_index=None,
                        ks=(1,)) -> pd.DataFrame:
    """Measure the gap and retrieval after clipping activations at each level c.

    Each level clips both modalities with :func:`clip_activations`; ``None``
    (no clipping) gives the reference row. Returns one row per level, indexed by
    ``clip_level`` (``inf`` for no clipping), with the columns of
    :func:`gap_and_recall`.
    """
    images, texts, index = _resolve_input(image_embeds, text_embeds, text_image_index)
    levels = list(levels)
    if not levels:
        raise ValueError("levels must name at least one clip level, for example (None, 0.1)")

    rows = []
    for level in levels:
        if level is None:
            clipped_images, clipped_texts, label = images, texts, np.inf
        else:
            label = _check_clip_level(level)
            clipped_images = clip_activations(images, label, "image_embeds")
            clipped_texts = clip_activations(texts, label, "text_embeds")
        rows.append({"clip_level": label, **gap_and_recall(clipped_images, clipped_texts, index, ks=ks)})
    return pd.DataFrame(rows).set_index("clip_level")


def removal_experiment(image_embeds, text_embeds=None, counts=DEFAULT_REMOVAL_COUNTS, by: str = "gap",
                       text_image_index=None, ks=(1,)) -> pd.DataFrame:
    """Measure the gap and retrieval after removing the top-k dimensions, for each k in ``counts``.

    Dimensions are ranked once on the original embeddings with
    :func:`rank_dimensions` (``by``), and the first k are zeroed in both
    modalities with :func:`remove_dimensions`. Returns one row per k, indexed
    by ``n_removed``, with the columns of :func:`gap_and_recall` and
    ``last_removed_dim`` (the k-th dimension removed, -1 for k = 0).
    Each k must lie in ``0..dim - 1``.
    """
    images, texts, index = _resolve_input(image_embeds, text_embeds, text_image_index)
    order = rank_dimensions(images, texts, by=by)
    counts = list(counts)
    if not counts:
        raise ValueError("counts must name at least one number of dimensions to remove, for example (0, 1, 5)")

    rows = []
    for count in counts:
        count = _check_count(count, "the number of removed dimensions", images.shape[1] - 1, minimum=0)
        removed = order[:count]
        measures = gap_and_recall(remove_dimensions(images, removed, "image_embeds"),
                                  remove_dimensions(texts, removed, "text_embeds"), index, ks=ks)
        rows.append({"n_removed": count, **measures, "last_removed_dim": int(removed[-1]) if count else -1})
    return pd.DataFrame(rows).set_index("n_removed")


# The bound of An et al. ---------------------------------------------------------------------------


def peak_cosine_bound(p, q, n_image_peaks: int = 1, n_text_peaks: int = 2):
    """Compute the bound of An et al. (2025) on the image-text cosine when peak dimensions dominate.

    Suppose every unit image embedding has ``n_image_peaks`` coordinates equal
    to ``p`` and every unit text embedding has ``n_text_peaks`` other
    coordinates equal to ``q`` (the paper's case: one image peak, two text
    peaks). Then::

        |cos(x, y)| <= sqrt((1 - n_image_peaks * p^2) * (1 - n_text_peaks * q^2))

    which for ``p = -1/2``, ``q = 1/3`` gives about 0.76: no image-text pair can
    be more similar than that, however well they match.

    Derivation. Split ``x = x_peak + x_rest`` and ``y = y_peak + y_rest``, where
    the peak parts live on the peak coordinates. Because the peaks sit on
    different coordinates, ``x_peak . y_peak = 0``. The content parts spread over
    about d coordinates, so the image's value on a text peak coordinate and the
    text's value on an image peak coordinate are of order ``1/sqrt(d)`` and the
    cross terms ``x_peak . y_rest`` and ``x_rest . y_peak`` vanish as d grows.
    What remains is ``x_rest . y_rest``, and Cauchy-Schwarz bounds it by
    ``||x_rest|| ||y_rest|| = sqrt(1 - n_image_peaks p^2) sqrt(1 - n_text_peaks q^2)``
    since each vector has unit norm. The bound is reached when the two rests
    point the same way. In finite dimension the vanishing cross terms make it
    an approximation, not a strict bound.

    Parameters
    ----------
    p, q : float or array-like
        Peak values (the sign does not matter); arrays broadcast, so the bound
        can be drawn as a function of p and q.
    n_image_peaks, n_text_peaks : int
        Number of peak coordinates of each modality.

    Returns
    -------
    float or ndarray
        A float for scalar input, else an array of the broadcast shape.

    Examples
    --------
    >>> round(peak_cosine_bound(-0.5, 1 / 3), 4)
    0.7638
    """
    n_image_peaks = check_positive_int(n_image_peaks, "n_image_peaks", minimum=0)
    n_text_peaks = check_positive_int(n_text_peaks, "n_text_peaks", minimum=0)
    values = {}
    for name, value in (("p", p), ("q", q)):
        array = np.asarray(value, dtype=np.float64) if not isinstance(value, bool) else None
        if array is None or array.dtype == object:
            raise TypeError(f"{name} must be a real number or an array of them, got {value!r}")
        if not np.isfinite(array).all():
            raise ValueError(f"{name} must be finite, got {value!r}")
        values[name] = array
    image_rest = 1.0 - n_image_peaks * values["p"] ** 2
    text_rest = 1.0 - n_text_peaks * values["q"] ** 2
    for name, rest, count in (("p", image_rest, n_image_peaks), ("q", text_rest, n_text_peaks)):
        if np.any(rest < 0):
            raise ValueError(
                f"{count} peak(s) of value {name} do not fit in a unit vector: {count} * {name}^2 must be at most 1, "
                f"so |{name}| <= {1 / np.sqrt(count):.4f}"
            )
    bound = np.sqrt(image_rest * text_rest)
    return float(bound) if bound.ndim == 0 else bound


# Choosing examples ------------------------------------------------------------------------------


def most_different_rows(embeds, n: int = 5) -> np.ndarray:
    """Pick ``n`` rows that are as different from each other as possible (greedy farthest-point).

    Starts from the row least similar on average to all others, then repeatedly
    adds the row whose highest cosine to the rows already chosen is lowest.
    Deterministic: ties go to the lower row.
    """
    array = check_embeddings(embeds, "embeds").astype(np.float64)
    n = check_positive_int(n, "n")
    if n > len(array):
        raise ValueError(f"n={n} exceeds the number of rows {len(array)}")
    similarity = array @ array.T
    chosen = [int(np.argmin(similarity.mean(axis=1)))]
    closest = similarity[chosen[0]].copy()
    for _ in range(n - 1):
        closest[chosen] = np.inf
        chosen.append(int(np.argmin(closest)))
        closest = np.maximum(closest, similarity[chosen[-1]])
    return np.asarray(chosen)


def peak_examples(pack: EmbeddingPack, n: int = 5, image_dim: int | None = None,
                  text_dim: int | None = None) -> pd.DataFrame:
    """Show that a peak takes the same value for very different inputs.

    Picks ``n`` images that differ as much as possible (:func:`most_different_rows`).
    The table has one row per image with its first caption (empty when the pack
    has no captions), the image's value on ``image_dim``, that caption's value
    on ``text_dim``, and the image's highest cosine to the other examples. The
    dimensions default to the top peak of each modality.
    """
    if not isinstance(pack, EmbeddingPack):
        raise TypeError(f"pack must be an EmbeddingPack, got {type(pack).__name__}")
    peaks = peak_dimensions(pack, top=1)
    image_dim = int(peaks["image"]["dim"].iloc[0]) if image_dim is None else image_dim
    text_dim = int(peaks["text"]["dim"].iloc[0]) if text_dim is None else text_dim
    for name, dim in (("image_dim", image_dim), ("text_dim", text_dim)):
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or not 0 <= dim < pack.dim:
            raise ValueError(f"{name} must be a dimension number in 0..{pack.dim - 1}, got {dim!r}")

    rows = most_different_rows(pack.image_embeds, n)
    first_text = np.array([np.flatnonzero(pack.text_image_index == row)[0] for row in rows])
    images = pack.image_embeds[rows].astype(np.float64)
    similarity = images @ images.T
    np.fill_diagonal(similarity, -np.inf)
    table = pd.DataFrame({
        "caption": [pack.captions[text] if pack.captions is not None else "" for text in first_text],
        f"image[{image_dim}]": images[:, image_dim],
        f"text[{text_dim}]": pack.text_embeds[first_text, text_dim].astype(np.float64),
        "max cosine to other examples": similarity.max(axis=1) if n > 1 else np.nan,
    }, index=pd.Index(rows, name="image row"))
    return table


# Several models -----------------------------------------------------------------------------------


def diagnosis_summary(pack: EmbeddingPack, ks=(1, 5)) -> dict:
    """Summarise the diagnosis of one pack: its gap, top peaks, and the effect of I0T_post.

    Returns a flat dict with the model name, the sizes, the centroid distance
    and the top image and text peak (dimension, mean, std). It adds the share of
    the squared gap carried by the top-k contributors for each k in ``ks`` and
    recall@1 in both directions. The ``post_`` entries give the centroid distance
    and recall@1 after I0T_post, with the means fitted on the pack itself.
    """
    from .post import I0TPost

    if not isinstance(pack, EmbeddingPack):
        raise TypeError(f"pack must be an EmbeddingPack, got {type(pack).__name__}")
    peaks = peak_dimensions(pack, top=1)
    raw = gap_and_recall(pack)
    post = I0TPost().fit(pack.image_embeds, pack.text_embeds)
    after = gap_and_recall(*post.transform(pack.image_embeds, pack.text_embeds), pack.text_image_index)

    summary = {"model": pack.model_name, "n_images": pack.n_images, "n_texts": pack.n_texts, "dim": pack.dim,
               "centroid_distance": raw["centroid_distance"]}
    for modality in ("image", "text"):
        peak = peaks[modality].iloc[0]
        summary[f"{modality}_peak_dim"] = int(peak["dim"])
        summary[f"{modality}_peak_mean"] = float(peak["mean"])
        summary[f"{modality}_peak_std"] = float(peak["std"])
    for k, share in top_gap_share(pack, ks=[min(k, pack.dim) for k in ks]).items():
        summary[f"top{k}_gap_share"] = share
    summary["recall_at_1_i2t"] = raw["recall_at_1_i2t"]
    summary["recall_at_1_t2i"] = raw["recall_at_1_t2i"]
    summary["post_centroid_distance"] = after["centroid_distance"]
    summary["post_recall_at_1_i2t"] = after["recall_at_1_i2t"]
    summary["post_recall_at_1_t2i"] = after["recall_at_1_t2i"]
    return summary


def compare_models(packs: dict, ks=(1, 5)) -> pd.DataFrame:
    """Run :func:`diagnosis_summary` on each pack of ``{label: pack}`` and return one row per label."""
    if not packs:
        raise ValueError("packs is empty; pass a dict {label: EmbeddingPack}")
    rows = {label: diagnosis_summary(pack, ks=ks) for label, pack in packs.items()}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "pack"
    return table


# Figures -----------------------------------------------------------------------------------------


def plot_dimension_means(image_embeds, text_embeds=None, text_image_index=None, top: int = 2, axes=None,
                         labels=("image", "text"), title: str | None = None):
    """Draw the per-dimension mean of each modality as vertical lines, with +-1 std as a band; returns the axes.

    Two panels, one per modality, share the y axis. The ``top`` peaks of each
    modality (largest ``|mean|``) are labelled with their dimension number.
    """
    import matplotlib.pyplot as plt

    from .plotting import IMAGE_COLOR, TEXT_COLOR

    stats = dimension_statistics(image_embeds, text_embeds, text_image_index)
    top = _check_count(top, "top", len(stats), minimum=0)
    if axes is None:
        _, axes = plt.subplots(2, 1, figsize=(10, 5), sharex=True, sharey=True)
    dims = stats.index.to_numpy()
    for ax, modality, label, color in zip(axes, ("image", "text"), labels, (IMAGE_COLOR, TEXT_COLOR)):
        mean, std = stats[f"{modality}_mean"].to_numpy(), stats[f"{modality}_std"].to_numpy()
        ax.fill_between(dims, mean - std, mean + std, color="0.85", step="mid", label="mean +- 1 std", zorder=1)
        # One vertical line per dimension stays visible at any figure width, unlike 1-pixel bars.
        ax.vlines(dims, 0.0, mean, color=color, linewidth=1.0, label=f"{label} mean", zorder=2)
        for dim in np.argsort(-np.abs(mean), kind="stable")[:top]:
            ax.annotate(str(dim), (dim, mean[dim]), textcoords="offset points",
                        xytext=(4, 4 if mean[dim] >= 0 else -12), fontsize="small")
        ax.axhline(0.0, color="0.3", linewidth=0.5)
        ax.set_ylabel("mean value")
        ax.legend(loc="upper left", fontsize="small")
    axes[-1].set_xlabel("dimension")
    if title:
        axes[0].set_title(title)
    return axes


def plot_content_independence(image_embeds, text_embeds=None, text_image_index=None, top: int = 2, ax=None,
                               labels=("image", "text")):
    """Draw each dimension's standard deviation against its absolute mean, per modality; returns the axes.

    Content-independent peaks sit far right and low: a large mean that barely
    varies from one input to the next. The ``top`` peaks of each modality are
    labelled with their dimension number.
    """
    from .plotting import IMAGE_COLOR, TEXT_COLOR, _axes

    stats = dimension_statistics(image_embeds, text_embeds, text_image_index)
    top = _check_count(top, "top", len(stats), minimum=0)
    ax = _axes(ax)
    for modality, label, color in zip(("image", "text"), labels, (IMAGE_COLOR, TEXT_COLOR)):
        absolute_mean = np.abs(stats[f"{modality}_mean"].to_numpy())
        std = stats[f"{modality}_std"].to_numpy()
        ax.scatter(absolute_mean, std, s=8, alpha=0.6, color=color, label=label)
        for dim in np.argsort(-absolute_mean, kind="stable")[:top]:
            ax.annotate(str(dim), (absolute_mean[dim], std[dim]), textcoords="offset points", xytext=(4, 4),
                        fontsize="small", color=color)
    ax.set_xlabel("|mean| across samples")
    ax.set_ylabel("std across samples")
    ax.set_title("Peaks: large mean, small spread")
    ax.legend(loc="best")
    return ax


def plot_intervention_curves(packs: dict, counts=tuple(range(0, 21)), levels=(None, 0.5, 0.3, 0.2, 0.15, 0.1,
                                                                               0.07, 0.05, 0.03), by: str = "gap"):
    """Draw the centroid distance and recall@1 against removed dimensions and clip level; returns the figure.

    One line per pack of ``{label: pack}`` in a 2 x 2 grid: top row the centroid
    distance, bottom row the mean of image-to-text and text-to-image recall@1;
    left column after removing the top-k dimensions (:func:`removal_experiment`),
    right column after clipping at c (:func:`clipping_experiment`, no clipping
    drawn at c = 1). A dotted line of each colour marks the pack after I0T_post.
    """
    import matplotlib.pyplot as plt

    from .post import I0TPost

    if not packs:
        raise ValueError("packs is empty; pass a dict {label: EmbeddingPack}")
    figure, axes = plt.subplots(2, 2, figsize=(11, 6.5), sharey="row")
    for number, (label, pack) in enumerate(packs.items()):
        color = f"C{number % 10}"
        pack_counts = [k for k in counts if k < pack.dim]
        removal = removal_experiment(pack, counts=pack_counts, by=by)
        clipping = clipping_experiment(pack, levels=levels)
        post = gap_and_recall(*I0TPost().fit(pack.image_embeds, pack.text_embeds)
                              .transform(pack.image_embeds, pack.text_embeds), pack.text_image_index)
        clip_levels = np.minimum(clipping.index.to_numpy(), 1.0)
        for column, (x_values, table) in enumerate(((removal.index.to_numpy(), removal), (clip_levels, clipping))):
            recall = (table["recall_at_1_i2t"] + table["recall_at_1_t2i"]) / 2
            axes[0, column].plot(x_values, table["centroid_distance"], marker=".", color=color, label=label)
            axes[1, column].plot(x_values, recall, marker=".", color=color, label=label)
            axes[0, column].axhline(post["centroid_distance"], color=color, linestyle=":", linewidth=1)
            axes[1, column].axhline((post["recall_at_1_i2t"] + post["recall_at_1_t2i"]) / 2, color=color,
                                    linestyle=":", linewidth=1)
    axes[0, 0].set_ylabel("centroid distance")
    axes[1, 0].set_ylabel("recall@1 (mean of both directions)")
    axes[1, 0].set_xlabel(f"top-k dimensions removed (ranked by {by})")
    axes[1, 1].set_xlabel("clip level c (1 = no clipping)")
    for ax in axes[:, 1]:
        ax.set_xscale("log")
        ax.invert_xaxis()
    axes[0, 0].set_title("removing peak dimensions")
    axes[0, 1].set_title("clipping activations to [-c, c]")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize="small",
                  title="dotted lines: after I0T_post")
    figure.tight_layout(rect=(0, 0.1, 1, 1))
    return figure


# Interactive explorer ---------------------------------------------------------------------------


INTERVENTIONS = ("remove top-k dimensions", "clip at c", "I0T_post")


def apply_intervention(pack: EmbeddingPack, intervention: str, k: int = 0, c: float | None = None,
                       by: str = "gap") -> tuple[np.ndarray, np.ndarray]:
    """Return ``(images, texts)`` of ``pack`` after one of :data:`INTERVENTIONS`.

    ``"remove top-k dimensions"`` zeroes the k highest-ranked dimensions
    (:func:`rank_dimensions` with ``by``); ``"clip at c"`` clips at c (``None``:
    unchanged); ``"I0T_post"`` subtracts each modality's mean and re-normalises.
    """
    from .post import I0TPost

    if intervention not in INTERVENTIONS:
        raise ValueError(f"intervention must be one of {INTERVENTIONS}, got {intervention!r}")
    images, texts = pack.image_embeds, pack.text_embeds
    if intervention == INTERVENTIONS[0]:
        k = _check_count(k, "k", pack.dim - 1, minimum=0)
        removed = rank_dimensions(pack, by=by)[:k]
        return remove_dimensions(images, removed, "image_embeds"), remove_dimensions(texts, removed, "text_embeds")
    if intervention == INTERVENTIONS[1]:
        if c is None:
            return images.astype(np.float64), texts.astype(np.float64)
        return clip_activations(images, c, "image_embeds"), clip_activations(texts, c, "text_embeds")
    return I0TPost().fit(images, texts).transform(images, texts)


def diagnosis_explorer(packs: dict, max_removed: int = 50, by: str = "gap"):
    """Build an ipywidgets explorer of the interventions on several packs; returns the widget.

    Controls: the pack, the intervention (:data:`INTERVENTIONS`), the number k
    of removed dimensions and the clip level c. Each change redraws the
    per-dimension means (:func:`plot_dimension_means`) and prints the centroid
    distance and recall@1 before and after. The widget needs a live kernel;
    :func:`plot_intervention_curves` draws the same information statically.
    """
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    if not packs:
        raise ValueError("packs is empty; pass a dict {label: EmbeddingPack}")
    max_removed = check_positive_int(max_removed, "max_removed")
    model = widgets.Dropdown(options=list(packs), description="model")
    intervention = widgets.ToggleButtons(options=INTERVENTIONS, description="intervention")
    removed = widgets.IntSlider(value=2, min=0, max=max_removed, description="k removed")
    level = widgets.FloatLogSlider(value=0.1, base=10, min=-2, max=0, step=0.05, description="clip c")
    output = widgets.Output()

    def update(*_):
        pack = packs[model.value]
        k = min(removed.value, pack.dim - 1)
        images, texts = apply_intervention(pack, intervention.value, k=k, c=level.value, by=by)
        before = gap_and_recall(pack)
        after = gap_and_recall(images, texts, pack.text_image_index)
        output.clear_output(wait=True)
        with output:
            print(f"{'':<20}{'raw':>10}{'after':>10}")
            for key, name in (("centroid_distance", "centroid distance"), ("recall_at_1_i2t", "recall@1 i2t"),
                              ("recall_at_1_t2i", "recall@1 t2i")):
                print(f"{name:<20}{before[key]:>10.4f}{after[key]:>10.4f}")
            plot_dimension_means(images, texts, pack.text_image_index,
                                 title=f"{model.value}: {intervention.value}")
            plt.show()

    for control in (model, intervention, removed, level):
        control.observe(update, names="value")
    update()
    return widgets.VBox([model, intervention, removed, level, output])

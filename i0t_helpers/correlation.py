"""Correlation of caption metrics with human judgments: Kendall tau-b and tau-c, Pearson, bootstrap intervals.

Caption-metric papers (Hessel et al., 2021, for CLIPScore; Sarto et al., 2023, for
PAC-S) correlate over individual judgments: a pair rated by three experts
contributes its metric score three times, once next to each rating. Two Kendall
variants are in use and differ on the same data, so every result here names its
variant:

* tau-b corrects for ties on both sides (scipy's default) and is the convention
  for Flickr8k-CF;
* tau-c (Stuart's tau-c) adjusts for the number of distinct values of the
  coarser variable, and is the convention for Flickr8k-Expert (ratings 1-4).

Both come from ``scipy.stats.kendalltau(x, y, variant=...)``. Confidence
intervals resample whole images (all judgments of an image together), because
the judgments of one image are not independent of each other.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import numpy as np

from ._validation import check_positive_int

logger = logging.getLogger(__name__)

#: Kendall tau variants scipy implements and this module reports.
TAU_VARIANTS = ("b", "c")
#: Statistics reported by :func:`human_correlation`, in order.
STATISTICS = ("kendall_tau_b", "kendall_tau_c", "pearson")


def _check_vector(values, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise TypeError(f"{name} must be numeric, got dtype {array.dtype}")
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    array = array.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise ValueError(
            f"{name} has {bad.size} NaN or infinite value(s), first at position {int(bad[0])}; drop or rescore "
            f"those pairs"
        )
    return array


def _check_same_length(x: np.ndarray, y: np.ndarray, x_name: str, y_name: str):
    if len(x) != len(y):
        raise ValueError(f"{x_name} and {y_name} must have the same length; got {len(x)} and {len(y)}")
    if len(x) < 2:
        raise ValueError(f"a correlation needs at least 2 values; got {len(x)}")


def kendall_tau(metric_scores, human_scores, variant: str) -> float:
    """Return Kendall's tau-b or tau-c between metric and human scores, as ``scipy.stats.kendalltau``.

    ::

        tau-b = (P - Q) / sqrt((P + Q + T_x) (P + Q + T_y))
        tau-c = 2 (P - Q) / (n^2 (m - 1) / m)

    P and Q count concordant and discordant pairs, T_x and T_y pairs tied only
    in x or only in y, n is the number of values and m the smaller number of
    distinct values of the two variables. Returns NaN, with a logged warning,
    when either side is constant.

    Parameters
    ----------
    metric_scores, human_scores : array-like of shape (n,)
    variant : {"b", "c"}
        Required, because the two differ and papers use both.
    """
    from scipy.stats import kendalltau

    if variant not in TAU_VARIANTS:
        raise ValueError(f"variant must be 'b' or 'c' (Kendall tau-b or tau-c), got {variant!r}")
    x = _check_vector(metric_scores, "metric_scores")
    y = _check_vector(human_scores, "human_scores")
    _check_same_length(x, y, "metric_scores", "human_scores")
    if _is_constant(x, "metric_scores") or _is_constant(y, "human_scores"):
        return float("nan")
    return float(kendalltau(x, y, variant=variant).statistic)


def pearson(metric_scores, human_scores) -> float:
    """Return Pearson's r between metric and human scores (``scipy.stats.pearsonr``); NaN when either is constant."""
    from scipy.stats import pearsonr

    x = _check_vector(metric_scores, "metric_scores")
    y = _check_vector(human_scores, "human_scores")
    _check_same_length(x, y, "metric_scores", "human_scores")
    if _is_constant(x, "metric_scores") or _is_constant(y, "human_scores"):
        return float("nan")
    return float(pearsonr(x, y).statistic)


def _is_constant(values: np.ndarray, name: str) -> bool:
    if np.all(values == values[0]):
        logger.warning("%s is constant (every value is %g); the correlation is undefined and reported as NaN",
                       name, values[0])
        return True
    return False


def _tied_pairs(values: np.ndarray) -> float:
    counts = np.unique(values, return_counts=True)[1].astype(np.float64)
    return float((counts * (counts - 1.0) / 2.0).sum())


def _statistics(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Compute tau-b, tau-c and Pearson quietly (NaN for constant input), for the bootstrap.

    scipy computes tau-b. tau-c follows from the same concordance count,
    ``P - Q = tau_b * sqrt((n0 - n1)(n0 - n2))``, where ``n0 = n(n-1)/2`` and n1,
    n2 count the pairs tied in x and in y. This halves the cost. The result agrees
    with scipy's tau-c to rounding (about 1e-15).
    """
    from scipy.stats import kendalltau

    if np.all(x == x[0]) or np.all(y == y[0]):
        return {name: float("nan") for name in STATISTICS}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tau_b = float(kendalltau(x, y, variant="b").statistic)
    x_centred, y_centred = x - x.mean(), y - y.mean()
    correlation = float((x_centred @ y_centred) / np.sqrt((x_centred @ x_centred) * (y_centred @ y_centred)))
    n = float(len(x))
    all_pairs = n * (n - 1.0) / 2.0
    concordance = tau_b * np.sqrt((all_pairs - _tied_pairs(x)) * (all_pairs - _tied_pairs(y)))
    m = float(min(len(np.unique(x)), len(np.unique(y))))
    tau_c = 2.0 * concordance / (n * n * (m - 1.0) / m)
    return {"kendall_tau_b": tau_b, "kendall_tau_c": float(tau_c), "pearson": correlation}


def expand_to_judgments(pair_scores, judgment_pair_index) -> np.ndarray:
    """Repeat each pair's metric score once per human judgment of that pair.

    Parameters
    ----------
    pair_scores : array-like of shape (n_pairs,)
    judgment_pair_index : array-like of int, shape (n_judgments,)
        The pair that each judgment rates.

    Returns
    -------
    ndarray of shape (n_judgments,)
    """
    scores = _check_vector(pair_scores, "pair_scores")
    index = np.asarray(judgment_pair_index)
    if index.ndim != 1 or not np.issubdtype(index.dtype, np.integer):
        raise TypeError(f"judgment_pair_index must be a 1-D integer array, got dtype {index.dtype}, shape {index.shape}")
    if index.size and (index.min() < 0 or index.max() >= len(scores)):
        raise ValueError(
            f"judgment_pair_index must lie in [0, {len(scores) - 1}] (one entry per pair score); got values from "
            f"{index.min()} to {index.max()}"
        )
    unrated = np.setdiff1d(np.arange(len(scores)), index)
    if unrated.size:
        logger.warning("%d of %d pairs have no judgment and do not enter the correlation, first pair %d",
                       unrated.size, len(scores), unrated[0])
    return scores[index]


@dataclass(frozen=True)
class HumanCorrelation:
    """Correlation of one metric with human judgments, with the Kendall variant named.

    Attributes
    ----------
    kendall_tau_b, kendall_tau_c, pearson : float
        Point estimates over all judgments.
    n_pairs : int
        Judged pairs (distinct image-caption pairs).
    n_judgments : int
        Individual ratings, each paired with its pair's metric score.
    n_images : int
        Distinct images, the resampling unit of the bootstrap.
    conventional_variant : str or None
        The tau variant customarily reported for this benchmark ("c" for
        Flickr8k-Expert, "b" for Flickr8k-CF), if known.
    dataset : str
        Benchmark name, for display.
    n_bootstrap : int
        Bootstrap resamples behind ``intervals`` (0: no intervals).
    confidence : float
        Level of the percentile intervals.
    intervals : dict
        ``{statistic: (low, high)}`` for each of :data:`STATISTICS`.
    """

    kendall_tau_b: float
    kendall_tau_c: float
    pearson: float
    n_pairs: int
    n_judgments: int
    n_images: int
    conventional_variant: str | None = None
    dataset: str = ""
    n_bootstrap: int = 0
    confidence: float = 0.95
    intervals: dict = field(default_factory=dict)

    def tau(self, variant: str) -> float:
        """Return Kendall's tau of the named variant ("b" or "c")."""
        if variant not in TAU_VARIANTS:
            raise ValueError(f"variant must be 'b' or 'c', got {variant!r}")
        return self.kendall_tau_b if variant == "b" else self.kendall_tau_c

    @property
    def conventional_tau(self) -> float:
        """Kendall's tau in the benchmark's customary variant; NaN when none is set."""
        return float("nan") if self.conventional_variant is None else self.tau(self.conventional_variant)

    def as_dict(self) -> dict:
        """Return the result as plain Python values (interval bounds as ``<statistic>_low/_high``)."""
        result = {
            "dataset": self.dataset,
            "kendall_tau_b": self.kendall_tau_b,
            "kendall_tau_c": self.kendall_tau_c,
            "pearson": self.pearson,
            "conventional_tau_variant": self.conventional_variant,
            "n_pairs": self.n_pairs,
            "n_judgments": self.n_judgments,
            "n_images": self.n_images,
            "n_bootstrap": self.n_bootstrap,
        }
        if self.intervals:
            result["confidence"] = self.confidence
            for name, (low, high) in self.intervals.items():
                result[f"{name}_low"] = low
                result[f"{name}_high"] = high
        return result

    def summary(self, digits: int = 4) -> str:
        """Return a short multi-line text: each statistic named, with its interval when one was computed."""
        labels = {"kendall_tau_b": "Kendall tau-b", "kendall_tau_c": "Kendall tau-c", "pearson": "Pearson r"}
        lines = [f"{self.dataset or 'judgments'}: {self.n_pairs} pairs, {self.n_judgments} judgments, "
                 f"{self.n_images} images"]
        for name in STATISTICS:
            label = labels[name]
            if self.conventional_variant and name == f"kendall_tau_{self.conventional_variant}":
                label += " (convention)"
            line = f"  {label:<27}{getattr(self, name):.{digits}f}"
            if name in self.intervals:
                low, high = self.intervals[name]
                line += f"   {self.confidence:.0%} CI [{low:.{digits}f}, {high:.{digits}f}]"
            lines.append(line)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def bootstrap_intervals(metric_per_judgment, human_ratings, judgment_groups, n_bootstrap: int = 1000,
                        confidence: float = 0.95, seed: int = 0, progress: bool = False) -> dict:
    """Percentile bootstrap intervals of tau-b, tau-c and Pearson, resampling whole groups (images).

    Each resample draws as many groups as there are, with replacement, and
    keeps every judgment of each drawn group (a group drawn twice enters
    twice). Resamples in which a side is constant are dropped; their number is
    logged.

    Parameters
    ----------
    metric_per_judgment, human_ratings : array-like of shape (n_judgments,)
    judgment_groups : array-like of shape (n_judgments,)
        Group label (for example the image name) of each judgment.
    n_bootstrap : int
    confidence : float
        In (0, 1).
    seed : int
    progress : bool

    Returns
    -------
    dict
        ``{statistic: (low, high)}`` for each of :data:`STATISTICS`.
    """
    from tqdm.auto import tqdm

    x = _check_vector(metric_per_judgment, "metric_per_judgment")
    y = _check_vector(human_ratings, "human_ratings")
    _check_same_length(x, y, "metric_per_judgment", "human_ratings")
    groups = np.asarray(judgment_groups)
    if groups.shape != x.shape:
        raise ValueError(f"judgment_groups must have one label per judgment ({len(x)}); got shape {groups.shape}")
    n_bootstrap = check_positive_int(n_bootstrap, "n_bootstrap")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")

    _, group_codes = np.unique(groups, return_inverse=True)
    order = np.argsort(group_codes, kind="stable")
    sizes = np.bincount(group_codes)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    n_groups = len(sizes)

    rng = np.random.default_rng(seed)
    samples = {name: [] for name in STATISTICS}
    for _ in tqdm(range(n_bootstrap), disable=not progress, desc="bootstrap"):
        drawn = rng.integers(0, n_groups, size=n_groups)
        drawn_sizes = sizes[drawn]
        offsets_in_sample = np.concatenate([[0], np.cumsum(drawn_sizes)[:-1]])
        positions = np.arange(drawn_sizes.sum()) - np.repeat(offsets_in_sample, drawn_sizes)
        rows = order[np.repeat(starts[drawn], drawn_sizes) + positions]
        for name, value in _statistics(x[rows], y[rows]).items():
            samples[name].append(value)

    tail = (1.0 - confidence) / 2.0
    intervals = {}
    for name, values in samples.items():
        values = np.asarray(values)
        finite = values[np.isfinite(values)]
        if finite.size < len(values):
            logger.warning("%d of %d bootstrap resamples gave an undefined %s and were dropped",
                           len(values) - finite.size, len(values), name)
        if finite.size == 0:
            intervals[name] = (float("nan"), float("nan"))
            continue
        low, high = np.quantile(finite, [tail, 1.0 - tail])
        intervals[name] = (float(low), float(high))
    return intervals


def human_correlation(pair_scores, judgment_pair_index, human_ratings, pair_groups=None, n_bootstrap: int = 0,
                      confidence: float = 0.95, seed: int = 0, conventional_variant: str | None = None,
                      dataset: str = "", progress: bool = False) -> HumanCorrelation:
    """Correlate per-pair metric scores with individual human judgments.

    Each judgment is paired with the metric score of the pair it rates, so a
    pair with three ratings counts three times, as in Hessel et al. (2021).
    Kendall tau-b and tau-c are exactly ``scipy.stats.kendalltau(metric,
    ratings, variant=...)`` on those repeated scores.

    Parameters
    ----------
    pair_scores : array-like of shape (n_pairs,)
        Metric score of each judged pair; NaN raises ``ValueError``.
    judgment_pair_index : array-like of int, shape (n_judgments,)
        The pair each rating belongs to.
    human_ratings : array-like of shape (n_judgments,)
    pair_groups : array-like of shape (n_pairs,), optional
        Image (or other resampling unit) of each pair. Intervals and
        ``n_images`` use it; without it every pair is its own group.
    n_bootstrap : int
        Resamples for percentile intervals; 0 computes none.
    confidence : float
    seed : int
    conventional_variant : {"b", "c"} or None
        The variant customarily reported on this benchmark, recorded in the result.
    dataset : str
    progress : bool

    Returns
    -------
    HumanCorrelation
    """
    if conventional_variant is not None and conventional_variant not in TAU_VARIANTS:
        raise ValueError(f"conventional_variant must be 'b', 'c' or None, got {conventional_variant!r}")
    metric = expand_to_judgments(pair_scores, judgment_pair_index)
    ratings = _check_vector(human_ratings, "human_ratings")
    _check_same_length(metric, ratings, "judgment_pair_index", "human_ratings")

    n_pairs = len(np.unique(np.asarray(judgment_pair_index)))
    if pair_groups is None:
        groups = np.asarray(judgment_pair_index)
    else:
        pair_groups = np.asarray(pair_groups)
        if len(pair_groups) != len(np.asarray(pair_scores)):
            raise ValueError(
                f"pair_groups must have one entry per pair score ({len(np.asarray(pair_scores))}); got "
                f"{len(pair_groups)}"
            )
        groups = pair_groups[np.asarray(judgment_pair_index)]

    point = {
        "kendall_tau_b": kendall_tau(metric, ratings, "b"),
        "kendall_tau_c": kendall_tau(metric, ratings, "c"),
        "pearson": pearson(metric, ratings),
    }
    intervals = {}
    if n_bootstrap:
        intervals = bootstrap_intervals(metric, ratings, groups, n_bootstrap=n_bootstrap, confidence=confidence,
                                        seed=seed, progress=progress)
    return HumanCorrelation(
        **point,
        n_pairs=n_pairs,
        n_judgments=len(ratings),
        n_images=len(np.unique(groups)),
        conventional_variant=conventional_variant,
        dataset=dataset,
        n_bootstrap=int(n_bootstrap),
        confidence=confidence,
        intervals=intervals,
    )


def rowwise_kendall_tau(scores_a, scores_b, variant: str = "b") -> np.ndarray:
    """Return Kendall's tau between the rows of two score matrices, one value per row.

    Use it to ask whether two metrics rank the candidate captions of each image
    in the same order: 1 means the same ranking (only the scale differs).
    """
    from scipy.stats import kendalltau

    if variant not in TAU_VARIANTS:
        raise ValueError(f"variant must be 'b' or 'c', got {variant!r}")
    a = np.asarray(scores_a, dtype=np.float64)
    b = np.asarray(scores_b, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"scores_a and scores_b must be 2-D of the same shape; got {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("scores_a and scores_b must be finite")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.array([kendalltau(row_a, row_b, variant=variant).statistic for row_a, row_b in zip(a, b)])

"""Kendall tau-b and tau-c, Pearson and the image-level bootstrap against scipy and hand-worked examples."""

import numpy as np
import pytest
from scipy.stats import kendalltau, pearsonr

from i0t_helpers.correlation import (
    STATISTICS,
    HumanCorrelation,
    _statistics,
    bootstrap_intervals,
    expand_to_judgments,
    human_correlation,
    kendall_tau,
    pearson,
    rowwise_kendall_tau,
)


@pytest.fixture
def tied_data():
    """400 metric scores with many ties and 1-4 ratings correlated with them."""
    rng = np.random.default_rng(11)
    ratings = rng.integers(1, 5, size=400).astype(float)
    scores = np.round(ratings + rng.normal(scale=1.5, size=400), 1)
    return scores, ratings


def test_tau_hand_worked_without_ties():
    # Pairs: 5 concordant, 1 discordant, no ties; n = 4, m = 4.
    x, y = [1, 2, 3, 4], [1, 3, 2, 4]
    assert kendall_tau(x, y, "b") == pytest.approx(4 / 6)
    assert kendall_tau(x, y, "c") == pytest.approx(2 * 4 / (16 * 3 / 4))


def test_tau_hand_worked_with_ties():
    # Pairs: 3 concordant, 0 discordant, 1 tied in x only, 2 tied in y only; n = 4, m = min(3, 2) = 2.
    x, y = [1, 2, 2, 3], [1, 1, 2, 2]
    assert kendall_tau(x, y, "b") == pytest.approx(3 / np.sqrt((6 - 1) * (6 - 2)))
    assert kendall_tau(x, y, "c") == pytest.approx(2 * 3 / (16 * 1 / 2))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tau_equals_scipy_on_ties(seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 6, size=300).astype(float)
    y = rng.integers(1, 5, size=300) + 0.5 * (x > 2)
    for variant in ("b", "c"):
        assert kendall_tau(x, y, variant) == kendalltau(x, y, variant=variant).statistic
    assert kendall_tau(x, y, "b") != kendall_tau(x, y, "c")


def test_tau_variant_required_and_checked():
    with pytest.raises(TypeError):
        kendall_tau([1, 2], [1, 2])
    with pytest.raises(ValueError, match="tau-b or tau-c"):
        kendall_tau([1, 2], [1, 2], "a")


def test_pearson_equals_scipy(tied_data):
    scores, ratings = tied_data
    assert pearson(scores, ratings) == pytest.approx(pearsonr(scores, ratings).statistic, abs=1e-14)


def test_inputs_checked():
    with pytest.raises(ValueError, match="NaN"):
        kendall_tau([1.0, np.nan, 2.0], [1, 2, 3], "b")
    with pytest.raises(ValueError, match="same length"):
        pearson([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="at least 2"):
        kendall_tau([1.0], [1.0], "c")
    with pytest.raises(TypeError, match="numeric"):
        kendall_tau(["a", "b"], [1, 2], "b")


def test_constant_side_gives_nan_with_warning(caplog):
    assert np.isnan(kendall_tau([1, 1, 1], [1, 2, 3], "b"))
    assert np.isnan(pearson([1, 2, 3], [2, 2, 2]))
    assert "constant" in caplog.text


def test_expand_to_judgments_repeats_scores():
    np.testing.assert_array_equal(expand_to_judgments([0.5, 0.7], [0, 0, 0, 1]), [0.5, 0.5, 0.5, 0.7])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        expand_to_judgments([0.5, 0.7], [0, 2])
    with pytest.raises(ValueError, match="NaN"):
        expand_to_judgments([0.5, np.nan], [0, 1])


def test_human_correlation_repeats_pair_scores(tied_data):
    scores, ratings = tied_data
    pair_scores = scores[::3]  # 134 pairs, up to three ratings each
    pair_index = np.arange(400) // 3
    result = human_correlation(pair_scores, pair_index, ratings, conventional_variant="c", dataset="toy")
    repeated = pair_scores[pair_index]
    assert result.kendall_tau_b == kendalltau(repeated, ratings, variant="b").statistic
    assert result.kendall_tau_c == kendalltau(repeated, ratings, variant="c").statistic
    assert (result.n_pairs, result.n_judgments) == (134, 400)
    assert result.conventional_tau == result.kendall_tau_c
    assert result.tau("b") == result.kendall_tau_b


def test_result_names_its_tau_variant(tied_data):
    scores, ratings = tied_data
    result = human_correlation(scores, np.arange(400), ratings, conventional_variant="b", dataset="toy",
                               n_bootstrap=20)
    text = result.summary()
    assert "Kendall tau-b (convention)" in text
    assert "Kendall tau-c" in text
    assert "95% CI" in text
    data = result.as_dict()
    for key in ("kendall_tau_b", "kendall_tau_c", "pearson", "n_pairs", "n_judgments", "conventional_tau_variant",
                "kendall_tau_c_low", "pearson_high"):
        assert key in data
    assert data["conventional_tau_variant"] == "b"


def test_bootstrap_statistics_match_scipy(tied_data):
    scores, ratings = tied_data
    values = _statistics(scores, ratings)
    assert values["kendall_tau_b"] == pytest.approx(kendalltau(scores, ratings).statistic, abs=1e-14)
    assert values["kendall_tau_c"] == pytest.approx(kendalltau(scores, ratings, variant="c").statistic, abs=1e-14)
    assert values["pearson"] == pytest.approx(pearsonr(scores, ratings).statistic, abs=1e-14)


def test_bootstrap_resamples_whole_groups(tied_data):
    scores, ratings = tied_data
    # One group: every resample draws it whole, so the interval collapses to the point estimate.
    one_group = bootstrap_intervals(scores, ratings, np.zeros(400), n_bootstrap=15)
    for name in STATISTICS:
        low, high = one_group[name]
        assert low == pytest.approx(high, abs=1e-12)
    assert one_group["kendall_tau_b"][0] == pytest.approx(kendalltau(scores, ratings).statistic, abs=1e-12)


def test_bootstrap_interval_brackets_estimate_and_is_seeded(tied_data):
    scores, ratings = tied_data
    groups = np.arange(400) // 4
    first = bootstrap_intervals(scores, ratings, groups, n_bootstrap=100, seed=5)
    again = bootstrap_intervals(scores, ratings, groups, n_bootstrap=100, seed=5)
    assert first == again
    point = kendalltau(scores, ratings, variant="c").statistic
    low, high = first["kendall_tau_c"]
    assert low < point < high
    assert high - low < 0.3


def test_bootstrap_rejects_bad_options(tied_data):
    scores, ratings = tied_data
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_intervals(scores, ratings, np.arange(400), n_bootstrap=5, confidence=1.5)
    with pytest.raises(ValueError, match="one label per judgment"):
        bootstrap_intervals(scores, ratings, np.arange(10), n_bootstrap=5)


def test_human_correlation_result_is_frozen(tied_data):
    scores, ratings = tied_data
    result = human_correlation(scores, np.arange(400), ratings)
    assert isinstance(result, HumanCorrelation)
    with pytest.raises(AttributeError):
        result.kendall_tau_b = 1.0


def test_rowwise_kendall_tau():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 30))
    b = a.copy()
    b[2] = rng.normal(size=30)
    taus = rowwise_kendall_tau(a, 3 * b + 1)
    assert taus[0] == pytest.approx(1.0)
    assert taus[2] == pytest.approx(kendalltau(a[2], b[2]).statistic)
    with pytest.raises(ValueError, match="same shape"):
        rowwise_kendall_tau(a, b[:3])

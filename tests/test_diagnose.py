import json

import matplotlib
import numpy as np
import pytest

from i0t_helpers import EmbeddingPack, centroid_distance, recall_at_k
from i0t_helpers.cli import main as cli_main
from i0t_helpers.diagnose import (
    INTERVENTIONS,
    apply_intervention,
    clip_activations,
    clipping_experiment,
    compare_models,
    diagnosis_explorer,
    diagnosis_summary,
    dimension_statistics,
    gap_and_recall,
    gap_contributions,
    modality_statistics,
    most_different_rows,
    peak_cosine_bound,
    peak_dimensions,
    peak_examples,
    plot_content_independence,
    plot_dimension_means,
    plot_intervention_curves,
    rank_dimensions,
    remove_dimensions,
    removal_experiment,
    top_gap_share,
)
from i0t_helpers.exercises import nb02
from i0t_helpers.post import I0TPost

from .conftest import unit_rows

matplotlib.use("Agg")

IMAGE_PEAK, TEXT_PEAK = 3, 7


@pytest.fixture
def planted_peaks():
    """200 pairs in 32-d: shared content plus one constant peak per modality (image dim 3, text dim 7)."""
    rng = np.random.default_rng(7)
    content = rng.normal(scale=0.15, size=(200, 32))
    images = content + rng.normal(scale=0.03, size=(200, 32))
    texts = content + rng.normal(scale=0.03, size=(200, 32))
    images[:, IMAGE_PEAK] = 0.8
    texts[:, TEXT_PEAK] = -0.7
    return unit_rows(images), unit_rows(texts)


@pytest.fixture(autouse=True)
def close_figures():
    import matplotlib.pyplot as plt

    yield
    plt.close("all")


# Per-dimension statistics ---------------------------------------------------------------------


def test_statistics_hand_case():
    images = np.array([[0.6, 0.8], [0.6, -0.8]])
    texts = np.array([[1.0, 0.0], [-1.0, 0.0]])
    stats = dimension_statistics(images, texts)

    np.testing.assert_allclose(stats["image_mean"], [0.6, 0.0], atol=1e-12)
    np.testing.assert_allclose(stats["image_std"], [0.0, 0.8], atol=1e-12)
    np.testing.assert_allclose(stats["text_mean"], [0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(stats["text_std"], [1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(stats["gap_contribution"], [0.36, 0.0], atol=1e-12)
    np.testing.assert_allclose(stats["gap_share"], [1.0, 0.0], atol=1e-12)
    # Matched products: dim 0 gives 0.6 and -0.6 (mean 0), dim 1 gives 0; no retrieval signal anywhere.
    np.testing.assert_allclose(stats["retrieval_signal"], [0.0, 0.0], atol=1e-12)
    assert stats["retrieval_share"].isna().all()


def test_statistics_match_numpy(gapped_embeddings):
    images, texts = gapped_embeddings
    stats = dimension_statistics(images, texts)

    np.testing.assert_allclose(stats["image_mean"], images.mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(stats["text_std"], np.std(texts, axis=0, ddof=0), atol=1e-12)
    np.testing.assert_allclose(stats["image_relative_std"], images.std(axis=0) / np.abs(images.mean(axis=0)),
                               rtol=1e-10)
    np.testing.assert_allclose(stats["cosine_offset"], images.mean(axis=0) * texts.mean(axis=0), atol=1e-12)
    covariance = [np.cov(images[:, j], texts[:, j], ddof=0)[0, 1] for j in range(images.shape[1])]
    np.testing.assert_allclose(stats["retrieval_signal"], covariance, atol=1e-12)


def test_modality_statistics_match_numpy(gapped_embeddings):
    images, _ = gapped_embeddings
    mean, std = modality_statistics(images)
    np.testing.assert_allclose(mean, images.mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(std, images.std(axis=0), atol=1e-12)


def test_gap_contributions_sum_to_squared_distance(gapped_embeddings):
    images, texts = gapped_embeddings
    stats = dimension_statistics(images, texts)
    squared = centroid_distance(images, texts) ** 2

    assert gap_contributions(images, texts).sum() == pytest.approx(squared, rel=1e-10)
    assert stats["gap_contribution"].sum() == pytest.approx(squared, rel=1e-10)
    assert stats["gap_share"].sum() == pytest.approx(1.0, rel=1e-10)


def test_gap_contributions_sum_on_starter(starter_pack):
    squared = centroid_distance(starter_pack.image_embeds, starter_pack.text_embeds) ** 2
    assert gap_contributions(starter_pack).sum() == pytest.approx(squared, rel=1e-6)


def test_retrieval_signal_sums_to_cosine_excess(gapped_embeddings):
    images, texts = gapped_embeddings
    signal = dimension_statistics(images, texts)["retrieval_signal"].sum()
    cross = images @ texts.T
    expected = np.diag(cross).mean() - cross.mean()
    assert signal == pytest.approx(expected, rel=1e-10)


def test_retrieval_signal_with_several_captions():
    rng = np.random.default_rng(3)
    images = unit_rows(rng.normal(size=(5, 6)))
    index = np.array([0, 0, 1, 2, 2, 2, 3, 4])
    texts = unit_rows(images[index] + rng.normal(scale=0.5, size=(8, 6)))
    stats = dimension_statistics(images, texts, text_image_index=index)

    paired = images[index]
    cross = paired @ texts.T
    assert stats["retrieval_signal"].sum() == pytest.approx(np.diag(cross).mean() - cross.mean(), rel=1e-10)
    np.testing.assert_allclose(stats["image_mean"], images.mean(axis=0), atol=1e-12)


def test_pack_and_arrays_agree(gapped_embeddings):
    images, texts = gapped_embeddings
    pack = EmbeddingPack(images, texts)
    np.testing.assert_allclose(dimension_statistics(pack).to_numpy(),
                               dimension_statistics(pack.image_embeds, pack.text_embeds).to_numpy(), equal_nan=True)


# Peaks -----------------------------------------------------------------------------------------


def test_planted_peaks_found(planted_peaks):
    images, texts = planted_peaks
    peaks = peak_dimensions(images, texts, top=3)

    assert peaks["image"]["dim"].iloc[0] == IMAGE_PEAK
    assert peaks["text"]["dim"].iloc[0] == TEXT_PEAK
    assert peaks["image"]["mean"].iloc[0] == pytest.approx(images[:, IMAGE_PEAK].mean(), rel=1e-12)
    assert peaks["text"]["mean"].iloc[0] < 0
    assert peaks["image"]["std"].iloc[0] == pytest.approx(images[:, IMAGE_PEAK].std(), rel=1e-12)
    assert peaks["image"]["relative_std"].iloc[0] < 0.1
    assert list(peaks["image"].index) == [1, 2, 3]


def test_planted_peaks_carry_the_gap(planted_peaks):
    images, texts = planted_peaks
    shares = top_gap_share(images, texts, ks=(1, 2))
    assert shares[2] > 0.9
    assert set(rank_dimensions(images, texts, by="gap")[:2]) == {IMAGE_PEAK, TEXT_PEAK}
    assert set(rank_dimensions(images, texts, by="peak")[:2]) == {IMAGE_PEAK, TEXT_PEAK}


def test_planted_peaks_carry_no_retrieval_signal(planted_peaks):
    stats = dimension_statistics(*planted_peaks)
    assert abs(stats.loc[IMAGE_PEAK, "retrieval_share"]) < 0.01
    assert abs(stats.loc[TEXT_PEAK, "retrieval_share"]) < 0.01


def test_top_gap_share_matches_numpy(gapped_embeddings):
    images, texts = gapped_embeddings
    contribution = (images.mean(axis=0) - texts.mean(axis=0)) ** 2
    expected = np.sort(contribution)[::-1][:3].sum() / contribution.sum()
    assert top_gap_share(images, texts, ks=3)[3] == pytest.approx(expected, rel=1e-10)
    assert top_gap_share(images, texts, ks=16)[16] == pytest.approx(1.0)


def test_rank_dimensions_by_peak_hand_case():
    images = np.array([[0.0, 0.6, 0.8], [0.0, 0.6, 0.8]])
    texts = np.array([[0.0, 0.6, -0.8], [0.0, 0.6, -0.8]])
    np.testing.assert_array_equal(rank_dimensions(images, texts, by="peak"), [2, 1, 0])
    np.testing.assert_array_equal(rank_dimensions(images, texts, by="gap"), [2, 0, 1])


def test_starter_top_peaks(starter_pack):
    peaks = peak_dimensions(starter_pack, top=3)
    image_peak, text_peak = peaks["image"].iloc[0], peaks["text"].iloc[0]

    assert image_peak["dim"] == 442
    assert text_peak["dim"] == 362
    # Measured on these features the peaks are positive; An et al. describe a negative image peak.
    assert abs(image_peak["mean"]) == pytest.approx(0.628, abs=2e-3)
    assert abs(text_peak["mean"]) == pytest.approx(0.592, abs=2e-3)
    assert image_peak["std"] < 0.1 * abs(image_peak["mean"])
    assert abs(peaks["image"]["mean"].iloc[1]) < 0.2


def test_starter_two_peaks_carry_most_of_the_gap(starter_pack):
    shares = top_gap_share(starter_pack, ks=(1, 2))
    assert shares[1] == pytest.approx(0.346, abs=2e-3)
    assert shares[2] == pytest.approx(0.686, abs=2e-3)
    np.testing.assert_array_equal(rank_dimensions(starter_pack)[:2], [442, 362])


# Interventions ---------------------------------------------------------------------------------


def test_clip_activations_match_numpy(gapped_embeddings):
    images, _ = gapped_embeddings
    expected = unit_rows(np.clip(images, -0.2, 0.2))
    np.testing.assert_allclose(clip_activations(images, 0.2), expected, atol=1e-12)
    np.testing.assert_allclose(clip_activations(images, 1.0), images, atol=1e-12)


def test_clip_activations_flatten_planted_peak(planted_peaks):
    images, _ = planted_peaks
    clipped = clip_activations(images, 0.1)
    assert np.abs(clipped).max() <= 0.1 / np.linalg.norm(np.clip(images, -0.1, 0.1), axis=1).min() + 1e-12
    assert clipped[:, IMAGE_PEAK].mean() < images[:, IMAGE_PEAK].mean()


@pytest.mark.parametrize("level", [-0.1, 0.0, float("nan"), float("inf")])
def test_clip_level_rejected(gapped_embeddings, level):
    with pytest.raises(ValueError, match="clip level c must be a finite positive number"):
        clip_activations(gapped_embeddings[0], level)


def test_clip_level_type_rejected(gapped_embeddings):
    with pytest.raises(TypeError, match="clip level c must be a real number"):
        clip_activations(gapped_embeddings[0], "0.1")


def test_remove_dimensions_match_numpy(gapped_embeddings):
    images, _ = gapped_embeddings
    expected = images.copy()
    expected[:, [0, 5]] = 0.0
    np.testing.assert_allclose(remove_dimensions(images, [0, 5]), unit_rows(expected), atol=1e-12)
    np.testing.assert_allclose(remove_dimensions(images, []), images, atol=1e-12)


def test_remove_dimensions_bad_input(gapped_embeddings):
    images, _ = gapped_embeddings
    with pytest.raises(ValueError, match="must lie in 0..15"):
        remove_dimensions(images, [16])
    with pytest.raises(ValueError, match="removing all 16 dimensions"):
        remove_dimensions(images, range(16))
    with pytest.raises(TypeError, match="integer dimension numbers"):
        remove_dimensions(images, [0.5])
    with pytest.raises(ValueError, match="all-zero row"):
        remove_dimensions(np.eye(3), [0])


def test_removing_planted_peaks_closes_gap(planted_peaks):
    images, texts = planted_peaks
    table = removal_experiment(images, texts, counts=(0, 2))
    assert table.loc[0, "centroid_distance"] == pytest.approx(centroid_distance(images, texts))
    assert table.loc[2, "centroid_distance"] < 0.1 * table.loc[0, "centroid_distance"]
    assert table.loc[2, "last_removed_dim"] in {IMAGE_PEAK, TEXT_PEAK}
    assert table.loc[0, "last_removed_dim"] == -1


def test_removal_experiment_matches_direct_computation(gapped_embeddings):
    images, texts = gapped_embeddings
    table = removal_experiment(images, texts, counts=(3,), ks=(1, 5))
    removed = np.argsort(-(images.mean(axis=0) - texts.mean(axis=0)) ** 2, kind="stable")[:3]
    kept_images, kept_texts = images.copy(), texts.copy()
    kept_images[:, removed] = 0
    kept_texts[:, removed] = 0
    kept_images, kept_texts = unit_rows(kept_images), unit_rows(kept_texts)
    recalls = recall_at_k(kept_images, kept_texts, ks=(1, 5))

    assert table.loc[3, "centroid_distance"] == pytest.approx(centroid_distance(kept_images, kept_texts))
    assert table.loc[3, "recall_at_5_i2t"] == recalls["i2t"][5]
    assert table.loc[3, "recall_at_1_t2i"] == recalls["t2i"][1]


def test_removal_count_too_large(gapped_embeddings):
    with pytest.raises(ValueError, match="exceeds the embedding dimension 15"):
        removal_experiment(*gapped_embeddings, counts=(16,))
    with pytest.raises(ValueError, match="at least 0"):
        removal_experiment(*gapped_embeddings, counts=(-1,))


def test_clipping_experiment_rows(gapped_embeddings):
    images, texts = gapped_embeddings
    table = clipping_experiment(images, texts, levels=(None, 0.1))
    clipped = gap_and_recall(unit_rows(np.clip(images, -0.1, 0.1)), unit_rows(np.clip(texts, -0.1, 0.1)))

    assert list(table.index) == [np.inf, 0.1]
    assert table.loc[np.inf, "centroid_distance"] == pytest.approx(centroid_distance(images, texts))
    assert table.loc[0.1, "centroid_distance"] == pytest.approx(clipped["centroid_distance"])
    assert table.loc[0.1, "recall_at_1_i2t"] == clipped["recall_at_1_i2t"]
    with pytest.raises(ValueError, match="finite positive"):
        clipping_experiment(images, texts, levels=(-0.5,))


def test_starter_clipping_leaves_gap_and_post_closes_it(starter_pack):
    clipped = clipping_experiment(starter_pack, levels=(None, 0.1))
    after_post = gap_and_recall(*I0TPost().fit_transform(starter_pack.image_embeds, starter_pack.text_embeds))

    assert clipped.loc[np.inf, "centroid_distance"] == pytest.approx(0.8514, abs=1e-3)
    assert clipped.loc[0.1, "centroid_distance"] > 0.5
    assert after_post["centroid_distance"] < 0.05


def test_gap_and_recall_matches_metrics(gapped_embeddings):
    images, texts = gapped_embeddings
    result = gap_and_recall(images, texts, ks=(1, 10))
    recalls = recall_at_k(images, texts, ks=(1, 10))
    assert result["centroid_distance"] == pytest.approx(centroid_distance(images, texts))
    assert result["recall_at_10_t2i"] == recalls["t2i"][10]


# Bad input -------------------------------------------------------------------------------------


def test_top_larger_than_dimension(gapped_embeddings):
    with pytest.raises(ValueError, match="top=17 exceeds the embedding dimension 16"):
        peak_dimensions(*gapped_embeddings, top=17)
    with pytest.raises(ValueError, match="exceeds the embedding dimension 16"):
        top_gap_share(*gapped_embeddings, ks=(1, 20))


def test_empty_input_rejected():
    with pytest.raises(ValueError, match="empty"):
        dimension_statistics(np.zeros((0, 4)), np.zeros((0, 4)))
    with pytest.raises(ValueError, match="empty"):
        modality_statistics(np.zeros((0, 4)))


def test_nan_input_rejected(gapped_embeddings):
    images, texts = gapped_embeddings
    images = images.copy()
    images[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        peak_dimensions(images, texts)


def test_missing_texts_rejected(gapped_embeddings):
    with pytest.raises(TypeError, match="text_embeds is missing"):
        dimension_statistics(gapped_embeddings[0])
    pack = EmbeddingPack(*gapped_embeddings)
    with pytest.raises(TypeError, match="not both"):
        dimension_statistics(pack, gapped_embeddings[1])


def test_coinciding_centroids_have_no_share():
    embeds = unit_rows(np.random.default_rng(0).normal(size=(10, 4)))
    assert dimension_statistics(embeds, embeds)["gap_share"].isna().all()
    with pytest.raises(ValueError, match="centroids coincide"):
        top_gap_share(embeds, embeds, ks=1)


# The bound -------------------------------------------------------------------------------------


def test_bound_paper_value():
    assert peak_cosine_bound(-0.5, 1 / 3) == pytest.approx(np.sqrt(0.75 * (1 - 2 / 9)))
    assert round(peak_cosine_bound(-0.5, 1 / 3), 2) == 0.76


def test_bound_numerical_check():
    rng = np.random.default_rng(0)
    p, q, dim = -0.5, 1 / 3, 64
    bound = peak_cosine_bound(p, q)

    def with_peaks(rest, peaks):
        vector = np.zeros(dim)
        free = np.arange(3, dim)
        vector[free] = rest / np.linalg.norm(rest) * np.sqrt(1 - sum(v ** 2 for v in peaks.values()))
        for position, value in peaks.items():
            vector[position] = value
        return vector

    cosines = []
    for _ in range(2000):
        image = with_peaks(rng.normal(size=dim - 3), {0: p})
        text = with_peaks(rng.normal(size=dim - 3), {1: q, 2: q})
        assert np.linalg.norm(image) == pytest.approx(1.0)
        assert np.linalg.norm(text) == pytest.approx(1.0)
        cosines.append(image @ text)
    assert max(np.abs(cosines)) <= bound

    shared_rest = rng.normal(size=dim - 3)
    aligned = with_peaks(shared_rest, {0: p}) @ with_peaks(shared_rest, {1: q, 2: q})
    assert aligned == pytest.approx(bound, rel=1e-12)


def test_bound_broadcasts_and_counts_peaks():
    values = peak_cosine_bound(np.array([0.0, 0.5]), np.array([[0.0], [0.5]]), n_text_peaks=1)
    np.testing.assert_allclose(values, [[1.0, np.sqrt(0.75)], [np.sqrt(0.75), 0.75]])
    assert peak_cosine_bound(0.3, 0.2, n_image_peaks=0, n_text_peaks=0) == 1.0


def test_bound_rejects_impossible_peaks():
    with pytest.raises(ValueError, match=r"2 \* q\^2 must be at most 1"):
        peak_cosine_bound(0.1, 0.8)
    with pytest.raises(ValueError, match="finite"):
        peak_cosine_bound(np.nan, 0.1)
    with pytest.raises(TypeError, match="real number"):
        peak_cosine_bound(True, 0.1)


# Examples, summaries, figures and the explorer ---------------------------------------------------


def test_most_different_rows_hand_case():
    embeds = np.array([[1.0, 0.0, 0.0], [0.99, 0.1, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    chosen = most_different_rows(embeds, 3)
    assert len(set(chosen)) == 3
    assert not {0, 1} <= set(chosen)
    with pytest.raises(ValueError, match="exceeds the number of rows 4"):
        most_different_rows(embeds, 5)


def test_peak_examples_on_starter(starter_pack):
    table = peak_examples(starter_pack, n=4)
    rows = table.index.to_numpy()

    np.testing.assert_array_equal(rows, most_different_rows(starter_pack.image_embeds, 4))
    np.testing.assert_allclose(table["image[442]"], starter_pack.image_embeds[rows, 442], rtol=1e-6)
    np.testing.assert_allclose(table["text[362]"], starter_pack.text_embeds[rows, 362], rtol=1e-6)
    assert (table["image[442]"] > 0.3).all()
    assert table["caption"].iloc[0] == starter_pack.captions[rows[0]]
    images = starter_pack.image_embeds[rows].astype(np.float64)
    similarity = images @ images.T
    np.fill_diagonal(similarity, -np.inf)
    np.testing.assert_allclose(table["max cosine to other examples"], similarity.max(axis=1), rtol=1e-6)


def test_peak_examples_bad_dimension(planted_peaks):
    with pytest.raises(ValueError, match="image_dim must be a dimension number in 0..31"):
        peak_examples(EmbeddingPack(*planted_peaks), image_dim=32)


def test_diagnosis_summary_on_starter(starter_pack):
    summary = diagnosis_summary(starter_pack)
    assert summary["image_peak_dim"] == 442
    assert summary["text_peak_dim"] == 362
    assert summary["image_peak_mean"] == pytest.approx(0.628, abs=2e-3)
    assert summary["text_peak_mean"] == pytest.approx(0.592, abs=2e-3)
    assert summary["centroid_distance"] == pytest.approx(0.8514, abs=1e-3)
    assert summary["post_centroid_distance"] < 0.05
    assert summary["top1_gap_share"] <= summary["top5_gap_share"] <= 1.0


def test_compare_models_rows(planted_peaks, gapped_embeddings):
    table = compare_models({"planted": EmbeddingPack(*planted_peaks), "gapped": EmbeddingPack(*gapped_embeddings)})
    assert list(table.index) == ["planted", "gapped"]
    assert table.loc["planted", "image_peak_dim"] == IMAGE_PEAK
    assert table.loc["gapped", "dim"] == 16
    with pytest.raises(ValueError, match="packs is empty"):
        compare_models({})


def test_apply_intervention_variants(planted_peaks):
    pack = EmbeddingPack(*planted_peaks)
    removed_images, _ = apply_intervention(pack, INTERVENTIONS[0], k=2)
    assert np.all(removed_images[:, [IMAGE_PEAK, TEXT_PEAK]] == 0)
    clipped_images, _ = apply_intervention(pack, INTERVENTIONS[1], c=0.1)
    np.testing.assert_allclose(clipped_images, clip_activations(pack.image_embeds, 0.1))
    centred_images, centred_texts = apply_intervention(pack, INTERVENTIONS[2])
    assert centroid_distance(centred_images, centred_texts) < 0.05
    with pytest.raises(ValueError, match="intervention must be one of"):
        apply_intervention(pack, "shuffle")


def test_plot_dimension_means_axes(planted_peaks):
    axes = plot_dimension_means(*planted_peaks, top=1, title="planted")
    assert len(axes) == 2
    labels = [text.get_text() for text in axes[0].texts]
    assert labels == [str(IMAGE_PEAK)]


def test_plot_intervention_curves_lines(planted_peaks, gapped_embeddings):
    packs = {"planted": EmbeddingPack(*planted_peaks), "gapped": EmbeddingPack(*gapped_embeddings)}
    figure = plot_intervention_curves(packs, counts=range(0, 4), levels=(None, 0.1))
    assert len(figure.axes) == 4
    assert len(figure.axes[0].lines) == 4  # two packs: one curve and one I0T_post line each


def test_plot_content_independence_labels(planted_peaks):
    ax = plot_content_independence(*planted_peaks, top=1)
    assert sorted(text.get_text() for text in ax.texts) == sorted([str(IMAGE_PEAK), str(TEXT_PEAK)])
    assert len(ax.collections) == 2


def test_explorer_updates(planted_peaks, capsys):
    packs = {"planted": EmbeddingPack(*planted_peaks)}
    explorer = diagnosis_explorer(packs, max_removed=5)
    model, intervention, removed, level, _ = explorer.children
    intervention.value = INTERVENTIONS[2]
    removed.value = 3
    level.value = 0.2
    printed = capsys.readouterr().out
    assert printed.count("centroid distance") >= 4


# Command line ----------------------------------------------------------------------------------


def test_cli_prints_starter_peaks(capsys):
    assert cli_main(["diagnose", "--pack", "starter", "--top", "3"]) == 0
    printed = capsys.readouterr().out
    assert "   1   442    0.6283" in printed
    assert "   1   362    0.5925" in printed
    assert "centroid distance: 0.8514" in printed


def test_cli_json(capsys):
    assert cli_main(["diagnose", "--pack", "starter", "--top", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [peak["dim"] for peak in result["image_peaks"]] == [442, 244]
    assert result["text_peaks"][0]["dim"] == 362
    assert set(result["image_peaks"][0]) == {"dim", "mean", "std", "gap_share"}
    assert result["image_peaks"][0]["gap_share"] == pytest.approx(0.346, abs=2e-3)


def test_cli_npy_files(tmp_path, planted_peaks, capsys):
    images, texts = planted_peaks
    np.save(tmp_path / "images.npy", images.astype(np.float32))
    np.save(tmp_path / "texts.npy", texts.astype(np.float32))
    assert cli_main(["diagnose", str(tmp_path / "images.npy"), str(tmp_path / "texts.npy"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["image_peaks"][0]["dim"] == IMAGE_PEAK
    assert result["text_peaks"][0]["dim"] == TEXT_PEAK
    assert len(result["image_peaks"]) == 5


def test_cli_bad_top(tmp_path, planted_peaks, capsys):
    images, texts = planted_peaks
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "texts.npy", texts)
    assert cli_main(["diagnose", str(tmp_path / "images.npy"), str(tmp_path / "texts.npy"), "--top", "40"]) == 2
    assert "error: top=40 exceeds the embedding dimension 32" in capsys.readouterr().err


# Exercise checkers -----------------------------------------------------------------------------


def test_exercise_checkers_accept_right_answers(planted_peaks, capsys):
    pack = EmbeddingPack(*planted_peaks)
    contribution = np.sort((planted_peaks[0].mean(axis=0) - planted_peaks[1].mean(axis=0)) ** 2)[::-1]

    assert nb02.check_peak_dimension(IMAGE_PEAK, pack, modality="image")
    assert nb02.check_peak_dimension(TEXT_PEAK, pack)
    assert nb02.check_top_share(contribution[:3].sum() / contribution.sum(), pack, k=3)
    assert nb02.check_cosine_bound(np.sqrt((1 - 0.36) * (1 - 2 * 0.09)), p=-0.6, q=0.3)
    assert capsys.readouterr().out.count("Correct!") == 4


def test_exercise_checkers_reject_wrong_answers(planted_peaks, capsys):
    pack = EmbeddingPack(*planted_peaks)
    assert not nb02.check_peak_dimension(TEXT_PEAK, pack, modality="image")
    assert not nb02.check_top_share(None, pack)
    assert not nb02.check_cosine_bound(0.76)
    assert not nb02.check_removals_to_reach("two", pack, target=0.5)
    assert capsys.readouterr().out.count("Not quite. Hint:") == 4
    with pytest.raises(ValueError, match="modality must be 'image' or 'text'"):
        nb02.check_peak_dimension(0, pack, modality="audio")


def test_exercise_removals_on_starter(starter_pack):
    table = removal_experiment(starter_pack, counts=range(0, 30))
    expected = int(table.index[table["centroid_distance"] < 0.5][0])
    assert nb02.check_removals_to_reach(expected, starter_pack, target=0.5)
    assert not nb02.check_removals_to_reach(expected - 1, starter_pack, target=0.5)

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from i0t_helpers.metrics import (
    centroid_distance,
    gap_report,
    gap_severity,
    linear_separability,
    matched_pair_cosine,
    matched_pair_l2,
    mean_cosines,
    relative_modality_gap,
)

from .conftest import unit_rows


def test_centroid_distance_hand_case():
    images = np.array([[1.0, 0.0], [1.0, 0.0]])
    texts = np.array([[0.0, 1.0]])
    assert centroid_distance(images, texts) == pytest.approx(np.sqrt(2.0))


def test_centroid_distance_matches_numpy(gapped_embeddings):
    images, texts = gapped_embeddings
    expected = np.linalg.norm(images.mean(axis=0) - texts.mean(axis=0))
    assert centroid_distance(images, texts) == pytest.approx(expected, rel=1e-12)


def test_centroid_distance_on_starter_pack(starter_pack):
    assert centroid_distance(starter_pack.image_embeds, starter_pack.text_embeds) == pytest.approx(0.8514, abs=5e-4)


def test_random_twin_gap_is_larger(starter_pack, starter_random_pack):
    trained = centroid_distance(starter_pack.image_embeds, starter_pack.text_embeds)
    random_init = centroid_distance(starter_random_pack.image_embeds, starter_random_pack.text_embeds)
    assert random_init > trained
    assert random_init == pytest.approx(1.1361, abs=5e-4)


@pytest.mark.parametrize("distance, band", [(0.0, "low"), (0.189, "low"), (0.19, "moderate"),
                                            (0.6299, "moderate"), (0.63, "severe"), (1.5, "severe")])
def test_gap_severity_bands(distance, band):
    assert gap_severity(distance) == band


def test_gap_severity_rejects_negative():
    with pytest.raises(ValueError, match="non-negative"):
        gap_severity(-0.1)


def test_linear_separability_separated_clouds(gapped_embeddings):
    assert linear_separability(*gapped_embeddings) == 1.0


def test_linear_separability_same_distribution_is_near_chance():
    rng = np.random.default_rng(0)
    images = unit_rows(rng.normal(size=(400, 8)))
    texts = unit_rows(rng.normal(size=(400, 8)))
    assert 0.4 < linear_separability(images, texts) < 0.6


def test_linear_separability_subsamples_and_reports_size():
    rng = np.random.default_rng(1)
    images = unit_rows(rng.normal(size=(300, 8)) + 2)
    texts = unit_rows(rng.normal(size=(200, 8)) - 2)
    accuracy, used = linear_separability(images, texts, max_samples=100, return_n_samples=True)
    assert used == 200
    assert accuracy == 1.0


def test_linear_separability_too_few_rows():
    with pytest.raises(ValueError, match="at least 4"):
        linear_separability(np.eye(3), np.eye(3))


def test_mean_cosines_match_brute_force(gapped_embeddings):
    images, texts = gapped_embeddings
    result = mean_cosines(images, texts)
    image_similarity = images @ images.T
    text_similarity = texts @ texts.T
    off_diagonal = ~np.eye(len(images), dtype=bool)
    assert result["image_image"] == pytest.approx(image_similarity[off_diagonal].mean(), rel=1e-10)
    assert result["text_text"] == pytest.approx(text_similarity[off_diagonal].mean(), rel=1e-10)
    assert result["image_text"] == pytest.approx((images @ texts.T).mean(), rel=1e-10)


def test_matched_pair_cosine_and_l2(gapped_embeddings):
    images, texts = gapped_embeddings
    assert matched_pair_cosine(images, texts) == pytest.approx(np.sum(images * texts, axis=1).mean())
    assert matched_pair_l2(images, texts) == pytest.approx(np.diag(cdist(images, texts)).mean())


def test_relative_modality_gap_brute_force(gapped_embeddings):
    images, texts = gapped_embeddings
    n = len(images)
    dissimilarity = lambda a, b: (1 - a @ b.T) / 2  # noqa: E731
    matched = np.diag(dissimilarity(images, texts)).mean()
    off_diagonal = ~np.eye(n, dtype=bool)
    intra = (dissimilarity(images, images)[off_diagonal].mean() + dissimilarity(texts, texts)[off_diagonal].mean()) / 2
    assert relative_modality_gap(images, texts) == pytest.approx(matched / (matched + intra), rel=1e-10)


def test_relative_modality_gap_identical_modalities_is_zero():
    embeds = unit_rows(np.random.default_rng(3).normal(size=(10, 4)))
    assert relative_modality_gap(embeds, embeds) == pytest.approx(0.0, abs=1e-12)


def test_gap_report_on_starter_pack(starter_pack):
    report = gap_report(starter_pack.image_embeds, starter_pack.text_embeds)
    values = report["value"]
    assert values["centroid_distance"] == pytest.approx(0.8514, abs=5e-4)
    assert values["severity"] == "severe"
    assert values["recall_at_1_i2t"] == pytest.approx(0.552)
    assert values["recall_at_1_t2i"] == pytest.approx(0.506)
    assert values["linear_separability"] == 1.0


def test_gap_report_needs_index_for_unequal_counts():
    with pytest.raises(ValueError, match="text_image_index"):
        gap_report(np.eye(4), np.eye(4)[[0, 1, 2, 3, 0]])

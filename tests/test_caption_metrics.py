"""CLIP-S, RefCLIP-S and I0T-S against hand computations, the prefix, encoding and the comparison helpers."""

import logging

import numpy as np
import pytest

from i0t_helpers import caption_metrics
from i0t_helpers.caption_metrics import (
    CAPTION_PREFIX,
    add_caption_prefix,
    caption_token_counts,
    clip_score,
    encode_captions,
    encode_images,
    hard_negative_indices,
    harmonic_mean,
    i0t_score,
    modality_paradox,
    pair_cosines,
    pairwise_accuracy,
    random_negative_indices,
    ref_clip_score,
    reference_similarity,
    score_matrix,
    separation_auc,
    tfidf_reference_similarity,
)
from i0t_helpers.post import I0TPost


def unit(rows):
    rows = np.asarray(rows, dtype=np.float64)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.fixture
def random_setup():
    """8 images, 20 captions (several per image), 30 references with 1 to 6 per image, in 12-d."""
    rng = np.random.default_rng(7)
    images = unit(rng.normal(size=(8, 12)))
    captions = unit(rng.normal(size=(20, 12)))
    caption_image_index = rng.integers(0, 8, size=20)
    counts = np.array([1, 6, 2, 5, 3, 4, 5, 4])
    reference_image_index = rng.permutation(np.repeat(np.arange(8), counts))
    references = unit(rng.normal(size=(len(reference_image_index), 12)))
    return images, captions, caption_image_index, references, reference_image_index


# Prefix and tokens ---------------------------------------------------------------------------


def test_prefix_added_and_whitespace_collapsed():
    assert add_caption_prefix(["  a dog\t runs .  "]) == ["A photo depicts a dog runs ."]
    assert add_caption_prefix("a cat") == ["A photo depicts a cat"]
    assert add_caption_prefix(["a cat"], prefix="A photo depicts ") == ["A photo depicts a cat"]


def test_prefix_none_only_collapses_whitespace():
    assert add_caption_prefix(["a  cat"], prefix=None) == ["a cat"]
    assert add_caption_prefix(["a  cat"], prefix="") == ["a cat"]


def test_prefix_rejects_non_strings():
    with pytest.raises(TypeError, match=r"captions\[1\]"):
        add_caption_prefix(["a cat", 3])
    with pytest.raises(TypeError, match="prefix"):
        add_caption_prefix(["a cat"], prefix=5)


@pytest.fixture(scope="module")
def tiny_model():
    from i0t_helpers.models import create_tiny_model

    return create_tiny_model(seed=0)


def test_token_counts_include_start_and_end(tiny_model):
    _, _, tokenizer = tiny_model
    counts = caption_token_counts(tokenizer, ["a dog", CAPTION_PREFIX])
    assert counts[0] == len(tokenizer.encode("a dog")) + 2
    assert counts[1] == 3 + 2  # "a photo depicts" is three BPE tokens


def test_token_counts_need_encode():
    with pytest.raises(TypeError, match="encode"):
        caption_token_counts(object(), ["a dog"])


def test_truncation_drops_words_past_context(tiny_model, caplog):
    model, _, tokenizer = tiny_model
    long_caption = " ".join(["dog"] * 100)
    embeds = encode_captions(model, tokenizer, [long_caption, long_caption + " on a red skateboard"],
                             progress=False)
    np.testing.assert_array_equal(embeds[0], embeds[1])
    assert "exceed 77 tokens" in caplog.text


def test_encoded_captions_unit_float32_and_prefix_matters(tiny_model):
    model, _, tokenizer = tiny_model
    with_prefix = encode_captions(model, tokenizer, ["a dog on a beach", "two cats"], progress=False, batch_size=1)
    without = encode_captions(model, tokenizer, ["a dog on a beach", "two cats"], prefix=None, progress=False)
    assert with_prefix.dtype == np.float32
    assert with_prefix.shape == (2, 64)
    np.testing.assert_allclose(np.linalg.norm(with_prefix, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(with_prefix, without)
    explicit = encode_captions(model, tokenizer, ["A photo depicts a dog on a beach"], prefix=None, progress=False)
    np.testing.assert_allclose(explicit[0], with_prefix[0], atol=1e-6)


def test_encode_images_paths_and_pil_agree(tiny_model, tmp_path):
    from PIL import Image

    model, preprocess, _ = tiny_model
    pictures = [Image.fromarray(np.full((40, 50, 3), value, dtype=np.uint8)) for value in (0, 120, 250)]
    paths = []
    for number, picture in enumerate(pictures):
        paths.append(tmp_path / f"{number}.png")
        picture.save(paths[-1])
    from_pil = encode_images(model, preprocess, pictures, batch_size=2, progress=False)
    from_paths = encode_images(model, preprocess, paths, progress=False)
    assert from_pil.shape == (3, 64)
    np.testing.assert_allclose(from_pil, from_paths, atol=1e-6)


# CLIP-S ---------------------------------------------------------------------------------------


def test_clip_score_hand_computed():
    images = np.array([[1.0, 0.0], [0.0, 1.0]])
    captions = np.array([[0.6, 0.8], [0.6, -0.8]])
    np.testing.assert_allclose(clip_score(images, captions), [2.5 * 0.6, 0.0])
    np.testing.assert_allclose(clip_score(images, captions, w=100), [60.0, 0.0])


def test_clip_score_clips_each_pair_not_the_mean():
    images = np.array([[1.0, 0.0]] * 3)
    captions = unit([[0.8, 0.6], [-0.6, 0.8], [-0.8, 0.6]])  # cosines 0.8, -0.6, -0.8
    scores = clip_score(images, captions)
    np.testing.assert_allclose(scores, [2.0, 0.0, 0.0])
    assert scores.mean() == pytest.approx(2.0 / 3.0)
    clipped_mean = 2.5 * max(pair_cosines(images, captions).mean(), 0.0)
    assert clipped_mean == 0.0


def test_clip_score_normalises_rows_with_warning(caplog):
    images = np.array([[3.0, 0.0]])
    captions = np.array([[0.0, 2.0]])
    captions_tilted = np.array([[6.0, 8.0]])
    assert clip_score(images, captions_tilted)[0] == pytest.approx(1.5)
    assert "not L2-normalised" in caplog.text
    assert clip_score(images, captions)[0] == 0.0


def test_clip_score_caption_image_index():
    images = unit([[1.0, 0.0], [0.0, 1.0]])
    captions = unit([[1.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    scores = clip_score(images, captions, caption_image_index=[0, 1, 1])
    np.testing.assert_allclose(scores, [2.5 / np.sqrt(2), 2.5, 0.0])


@pytest.mark.parametrize("w", [0, -1, float("nan"), float("inf"), True, "2.5"])
def test_clip_score_rejects_bad_weight(w):
    with pytest.raises(ValueError, match="w must be"):
        clip_score(np.eye(2), np.eye(2), w=w)


def test_clip_score_rejects_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        clip_score(np.array([[np.nan, 1.0]]), np.array([[1.0, 0.0]]))
    with pytest.raises(TypeError, match="floating-point"):
        clip_score(np.array([[1, 0]]), np.array([[1.0, 0.0]]))
    with pytest.raises(ValueError, match="same dimension"):
        clip_score(np.ones((2, 3)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="text_image_index is required"):
        clip_score(np.ones((2, 3)), np.ones((3, 3)))


def test_clip_score_float16_upcast_with_warning(caplog):
    images = np.array([[1.0, 0.0]], dtype=np.float16)
    captions = np.array([[0.6, 0.8]], dtype=np.float16)
    with caplog.at_level(logging.WARNING):
        scores = clip_score(images, captions)
    assert "float16" in caplog.text
    assert scores[0] == pytest.approx(1.5, abs=2e-3)


# RefCLIP-S ------------------------------------------------------------------------------------


def test_ref_clip_score_hand_computed():
    images = np.array([[1.0, 0.0, 0.0]])
    captions = np.array([[0.6, 0.8, 0.0]])
    references = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # cosines with the caption 0.8 and 0.6
    score = ref_clip_score(images, captions, references, reference_image_index=[0, 0])
    expected = 2 * 1.5 * 0.8 / (1.5 + 0.8)
    assert score[0] == pytest.approx(expected)


def test_reference_side_clipped_at_zero():
    captions = np.array([[1.0, 0.0]])
    references = np.array([[-1.0, 0.0], [-0.6, -0.8]])
    assert reference_similarity(captions, references, [0, 0])[0] == 0.0
    images = np.array([[-1.0, 0.0]])
    assert ref_clip_score(images, captions, references, [0, 0])[0] == 0.0
    np.testing.assert_allclose(harmonic_mean([0.0, 1.0, 2.0], [0.0, 0.0, 2.0]), [0.0, 0.0, 2.0])


def test_reference_similarity_matches_brute_force(random_setup, monkeypatch):
    images, captions, caption_index, references, reference_index = random_setup
    monkeypatch.setattr(caption_metrics, "REFERENCE_CHUNK_ROWS", 3)
    result = reference_similarity(captions, references, reference_index, caption_index, n_images=8)
    expected = [max(max(float(captions[c] @ references[r]) for r in np.flatnonzero(reference_index == caption_index[c])),
                    0.0) for c in range(len(captions))]
    np.testing.assert_allclose(result, expected, atol=1e-12)

    full = ref_clip_score(images, captions, references, reference_index, caption_index)
    image_side = 2.5 * np.maximum(np.einsum("ij,ij->i", images[caption_index], captions), 0)
    np.testing.assert_allclose(full, harmonic_mean(image_side, expected), atol=1e-12)


def test_reference_similarity_requires_references():
    with pytest.raises(ValueError, match="no reference"):
        reference_similarity(np.eye(2), np.eye(2)[:1], [0], [0, 1])


# I0T-S ----------------------------------------------------------------------------------------


def test_i0t_score_is_cosine_after_mean_removal(random_setup):
    images, captions, caption_index, _, _ = random_setup
    centred_images = unit(images - images.mean(axis=0))
    centred_captions = unit(captions - captions.mean(axis=0))
    expected = np.einsum("ij,ij->i", centred_images[caption_index], centred_captions)
    np.testing.assert_allclose(i0t_score(images, captions, caption_index), expected, atol=1e-6)
    assert expected.min() < 0  # An et al. (2025) define I0T-S without clipping


def test_i0t_score_equals_i0tpost_transform(random_setup):
    images, captions, caption_index, _, _ = random_setup
    post = I0TPost().fit(images, captions)
    transformed_images, transformed_captions = post.transform(images, captions)
    expected = np.einsum("ij,ij->i", transformed_images[caption_index], transformed_captions)
    np.testing.assert_allclose(i0t_score(images, captions, caption_index), expected, atol=1e-6)


def test_i0t_score_uses_given_statistics(random_setup, tmp_path):
    images, captions, caption_index, _, _ = random_setup
    rng = np.random.default_rng(3)
    corpus_images, corpus_texts = unit(rng.normal(size=(50, 12)) + 1), unit(rng.normal(size=(50, 12)) - 1)
    post = I0TPost().fit(corpus_images, corpus_texts)
    post.save(tmp_path / "stats.npz", model_name="toy")
    loaded = I0TPost.load(tmp_path / "stats.npz", model_name="toy")

    expected = np.einsum("ij,ij->i", unit(images - corpus_images.mean(axis=0))[caption_index],
                         unit(captions - corpus_texts.mean(axis=0)))
    np.testing.assert_allclose(i0t_score(images, captions, caption_index, post=loaded), expected, atol=1e-6)
    assert not np.allclose(i0t_score(images, captions, caption_index), expected, atol=1e-3)


def test_i0t_score_official_code_variant(random_setup):
    images, captions, caption_index, _, _ = random_setup
    paper = i0t_score(images, captions, caption_index)
    official = i0t_score(images, captions, caption_index, variant="official-code")
    np.testing.assert_allclose(official, 2.0 * np.maximum(paper, 0.0))


def test_i0t_score_rejects_bad_options():
    with pytest.raises(ValueError, match="variant"):
        i0t_score(np.eye(3), np.eye(3), variant="clipped")
    with pytest.raises(TypeError, match="I0TPost"):
        i0t_score(np.eye(3), np.eye(3), post="means.npz")


def test_score_matrix_diagonals_match_pair_scores(random_setup):
    images, captions, _, _, _ = random_setup
    square = captions[:8]
    np.testing.assert_allclose(np.diag(score_matrix(images, square, "clip")), clip_score(images, square))
    np.testing.assert_allclose(np.diag(score_matrix(images, square, "i0t")), i0t_score(images, square), atol=1e-6)
    np.testing.assert_allclose(score_matrix(images, square, "cosine"), images @ square.T, atol=1e-12)
    with pytest.raises(ValueError, match="score must be"):
        score_matrix(images, square, "bleu")


# Text-only baseline ---------------------------------------------------------------------------


def test_tfidf_baseline_extremes_and_sklearn():
    from sklearn.feature_extraction.text import TfidfVectorizer

    references = [["a dog runs on the grass", "a brown dog"], ["two people ski down a slope"]]
    candidates = ["a dog runs on the grass", "a red car", "people ski"]
    scores = tfidf_reference_similarity(candidates, references, [0, 0, 1])
    assert scores[0] == pytest.approx(1.0)
    assert scores[1] == 0.0

    vectorizer = TfidfVectorizer().fit(sorted({text for group in references for text in group}))
    candidate = vectorizer.transform(["people ski"]).toarray()[0]
    reference = vectorizer.transform(["two people ski down a slope"]).toarray()[0]
    assert scores[2] == pytest.approx(candidate @ reference)


def test_tfidf_baseline_rejects_empty_reference_group():
    with pytest.raises(ValueError, match="empty"):
        tfidf_reference_similarity(["a dog"], [[]])


# Comparing scores -----------------------------------------------------------------------------


def test_separation_auc_matches_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    positive = np.array([0.9, 0.5, 0.5, 0.3])
    negative = np.array([0.5, 0.2, 0.1])
    expected = roc_auc_score(np.r_[np.ones(4), np.zeros(3)], np.r_[positive, negative])
    assert separation_auc(positive, negative) == pytest.approx(expected)
    assert separation_auc(positive * 100, negative * 100) == pytest.approx(expected)


def test_pairwise_accuracy_hand_example():
    scores_a = [0.9, 0.2, 0.5, 0.4, 0.7]
    scores_b = [0.1, 0.8, 0.5, 0.6, 0.3]
    preference = [1.0, 0.2, 1.0, 0.5, 0.0]  # pair 3 is a human tie, pair 2 a metric tie
    result = pairwise_accuracy(scores_a, scores_b, preference)
    assert (result.n_pairs, result.n_human_ties, result.n_metric_ties) == (4, 1, 1)
    assert result.accuracy == pytest.approx((1 + 1 + 0.5 + 0) / 4)
    assert pairwise_accuracy(scores_a, scores_b, preference, tie_credit=0).accuracy == pytest.approx(0.5)


def test_pairwise_accuracy_rejects_bad_input():
    with pytest.raises(ValueError, match="same length"):
        pairwise_accuracy([1, 2], [1], [1, 0])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        pairwise_accuracy([1], [2], [3])
    with pytest.raises(ValueError, match="NaN"):
        pairwise_accuracy([np.nan], [2], [1])
    with pytest.raises(ValueError, match="human tie"):
        pairwise_accuracy([1], [2], [0.5])


def test_modality_paradox_hand_example():
    images = unit([[1.0, 0.0, 1.0], [1.0, 0.1, 1.0], [0.0, 1.0, 1.0]])
    captions = unit([[1.0, 0.0, -1.0], [1.0, 0.1, 1.0], [0.0, 1.0, -1.0]])
    result = modality_paradox(images, captions)
    image_image = images @ images.T
    matched = np.einsum("ij,ij->i", images, captions)
    nearest = np.array([max(image_image[i, j] for j in range(3) if j != i) for i in range(3)])
    assert result.image_closer_fraction == pytest.approx(np.mean(nearest > matched))
    assert result.image_closer_fraction == pytest.approx(2 / 3)
    shares = [np.mean([image_image[i, j] > matched[i] for j in range(3) if j != i]) for i in range(3)]
    assert result.closer_image_share == pytest.approx(np.mean(shares))
    assert result.mean_matched_cosine == pytest.approx(matched.mean())
    assert result.mean_image_image_cosine == pytest.approx(image_image[~np.eye(3, dtype=bool)].mean())


def test_negative_indices():
    negatives = random_negative_indices(50, seed=1)
    assert not np.any(negatives == np.arange(50))
    np.testing.assert_array_equal(negatives, random_negative_indices(50, seed=1))
    captions = ["a dog runs on grass", "a red car parked", "a dog runs on sand", "a parked red bus"]
    np.testing.assert_array_equal(hard_negative_indices(captions), [2, 3, 0, 1])



# Notebook exercises ---------------------------------------------------------------------------


def test_exercise_checkers_accept_computed_answers(starter_pack, capsys):
    from i0t_helpers.exercises import nb05

    mean_torchmetrics = clip_score(starter_pack.image_embeds, starter_pack.text_embeds, w=100).mean()
    assert nb05.check_torchmetrics_scale(round(mean_torchmetrics, 2), starter_pack)
    assert not nb05.check_torchmetrics_scale(round(mean_torchmetrics / 40, 2), starter_pack)
    scores = score_matrix(starter_pack.image_embeds, starter_pack.text_embeds, "i0t")
    share = np.mean(scores[np.arange(500), (np.arange(500) + 1) % 500] < 0)
    assert nb05.check_negative_share_after_i0t(round(share, 3), starter_pack)
    assert not nb05.check_hard_negative_accuracy(0.5, starter_pack)
    assert nb05.check_conventional_variant("tau-b")
    assert not nb05.check_conventional_variant("c")
    assert "Hint" in capsys.readouterr().out

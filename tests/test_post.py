import numpy as np
import pytest

from i0t_helpers.metrics import centroid_distance
from i0t_helpers.post import DistributionNormalization, I0TPost, MindTheGapShift, NotFittedError
from i0t_helpers.retrieval import recall_at_k

from .conftest import unit_rows


def numpy_i0t_post(images, texts, fit_images=None, fit_texts=None):
    fit_images = images if fit_images is None else fit_images
    fit_texts = texts if fit_texts is None else fit_texts
    return unit_rows(images - fit_images.mean(axis=0)), unit_rows(texts - fit_texts.mean(axis=0))


def test_transform_matches_numpy(gapped_embeddings):
    images, texts = gapped_embeddings
    expected_images, expected_texts = numpy_i0t_post(images, texts)
    result_images, result_texts = I0TPost().fit_transform(images, texts)
    np.testing.assert_allclose(result_images, expected_images, atol=1e-12)
    np.testing.assert_allclose(result_texts, expected_texts, atol=1e-12)


def test_fitted_attributes(gapped_embeddings):
    images, texts = gapped_embeddings
    post = I0TPost().fit(images, texts[:50])
    np.testing.assert_allclose(post.image_mean_, images.mean(axis=0))
    np.testing.assert_allclose(post.text_mean_, texts[:50].mean(axis=0))
    assert (post.n_images_seen_, post.n_texts_seen_, post.n_features_in_) == (60, 50, 16)


def test_partial_fit_equals_fit(gapped_embeddings):
    images, texts = gapped_embeddings
    streamed = I0TPost(chunk_rows=7)
    streamed.partial_fit(images[:25], None).partial_fit(images[25:], texts[:10]).partial_fit(None, texts[10:])
    full = I0TPost().fit(images, texts)
    np.testing.assert_allclose(streamed.image_mean_, full.image_mean_, atol=1e-15)
    np.testing.assert_allclose(streamed.text_mean_, full.text_mean_, atol=1e-15)
    assert streamed.n_texts_seen_ == 60


def test_fit_resets_previous_statistics(gapped_embeddings):
    images, texts = gapped_embeddings
    post = I0TPost().fit(images[:10], texts[:10]).fit(images, texts)
    assert post.n_images_seen_ == 60


def test_transform_into_memmap(tmp_path, gapped_embeddings):
    images, texts = gapped_embeddings
    post = I0TPost(chunk_rows=8).fit(images, texts)
    out = np.lib.format.open_memmap(tmp_path / "out.npy", mode="w+", dtype=np.float64, shape=images.shape)
    post.transform_images(images, out=out)
    out.flush()
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), post.transform_images(images), atol=1e-12)


def test_starter_pack_all_rows(starter_pack):
    images, texts = I0TPost().fit_transform(starter_pack.image_embeds, starter_pack.text_embeds)
    assert centroid_distance(images, texts) == pytest.approx(0.0279, abs=5e-4)
    recall = recall_at_k(images, texts, ks=(1,))
    assert recall["i2t"][1] == pytest.approx(0.542)
    assert recall["t2i"][1] == pytest.approx(0.500)


def test_starter_pack_fit_on_training_rows(starter_pack):
    images, texts = starter_pack.image_embeds, starter_pack.text_embeds
    post = I0TPost().fit(images[:400], texts[:400])
    assert centroid_distance(images[400:], texts[400:]) == pytest.approx(0.869, abs=5e-4)
    assert centroid_distance(*post.transform(images[400:], texts[400:])) == pytest.approx(0.158, abs=5e-4)


def test_transform_before_fit_raises():
    with pytest.raises(NotFittedError, match="call fit or partial_fit"):
        I0TPost().transform_images(np.eye(3))


def test_transform_wrong_dimension_raises(gapped_embeddings):
    post = I0TPost().fit(*gapped_embeddings)
    with pytest.raises(ValueError, match="dimension 8.*fitted on dimension 16"):
        post.transform_texts(np.ones((2, 8)))


def test_partial_fit_with_nothing_raises():
    with pytest.raises(ValueError, match="neither"):
        I0TPost().partial_fit()


def test_save_load_round_trip(tmp_path, gapped_embeddings):
    images, texts = gapped_embeddings
    post = I0TPost().fit(images, texts)
    path = post.save(tmp_path / "stats.npz", model_name="toy-16d")
    loaded = I0TPost.load(path, model_name="toy-16d", n_features=16)
    np.testing.assert_array_equal(loaded.image_mean_, post.image_mean_)
    np.testing.assert_array_equal(loaded.transform_texts(texts), post.transform_texts(texts))
    assert loaded.n_images_seen_ == 60


def test_load_rejects_other_model_and_dimension(tmp_path, gapped_embeddings):
    path = I0TPost().fit(*gapped_embeddings).save(tmp_path / "stats.npz", model_name="toy-16d")
    with pytest.raises(ValueError, match="model 'toy-16d', not 'ViT-B-32'"):
        I0TPost.load(path, model_name="ViT-B-32")
    with pytest.raises(ValueError, match="dimension 16.*dimension 512"):
        I0TPost.load(path, n_features=512)


def test_load_rejects_other_method(tmp_path, gapped_embeddings):
    path = MindTheGapShift().fit(*gapped_embeddings).save(tmp_path / "shift.npz", model_name="toy")
    with pytest.raises(ValueError, match="mind_the_gap_shift"):
        I0TPost.load(path)


def test_load_rejects_pickled_file(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, header_json=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="not a statistics file"):
        I0TPost.load(path)


def test_mind_the_gap_shift_full_lambda_meets_centroids(gapped_embeddings):
    images, texts = gapped_embeddings
    shift = MindTheGapShift(lambda_=1.0).fit(images, texts)
    gap = images.mean(axis=0) - texts.mean(axis=0)
    np.testing.assert_allclose(shift.transform_images(images), unit_rows(images - gap / 2), atol=1e-12)
    np.testing.assert_allclose(shift.transform_texts(texts), unit_rows(texts + gap / 2), atol=1e-12)


def test_mind_the_gap_shift_zero_lambda_is_identity(gapped_embeddings):
    images, texts = gapped_embeddings
    shifted = MindTheGapShift(lambda_=0.0).fit(images, texts).transform(images, texts)
    np.testing.assert_allclose(shifted[0], images, atol=1e-12)


def test_distribution_normalization(gapped_embeddings):
    images, texts = gapped_embeddings
    normalized = DistributionNormalization(lambda_=0.25).fit(images, texts)
    np.testing.assert_allclose(normalized.transform_images(images), unit_rows(images - 0.25 * images.mean(0)),
                               atol=1e-12)
    full = DistributionNormalization(lambda_=1.0).fit(images, texts).transform_texts(texts)
    np.testing.assert_allclose(full, I0TPost().fit(images, texts).transform_texts(texts), atol=1e-12)


def test_baseline_parameters_survive_save_load(tmp_path, gapped_embeddings):
    path = DistributionNormalization(lambda_=0.4).fit(*gapped_embeddings).save(tmp_path / "dn.npz", "toy")
    assert DistributionNormalization.load(path).lambda_ == 0.4

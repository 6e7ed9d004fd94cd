"""Chunked and memory-mapped paths give the dense results, and never build whole-size arrays.

Every expected value here is computed independently with whole-array numpy on
small data; the functions under test run with small, odd block sizes so that
every code path crosses several block boundaries.
"""

import tracemalloc

import numpy as np
import pytest

from i0t_helpers import _chunked, metrics, retrieval
from i0t_helpers.metrics import (
    centroid_distance,
    gap_report,
    linear_separability,
    matched_pair_cosine,
    matched_pair_l2,
    mean_cosines,
    relative_modality_gap,
)
from i0t_helpers.post import DistributionNormalization, I0TPost, MindTheGapShift
from i0t_helpers.retrieval import recall_at_k, retrieval_ranks, retrieve_top_k

from .conftest import unit_rows

ODD_CHUNKS = [1, 3, 7, 13, 64, 1000]


def several_captions(n_images=30, dim=12, seed=0, dtype=np.float64):
    """Images with one to four captions each, shuffled, captions near their image."""
    rng = np.random.default_rng(seed)
    images = unit_rows(rng.normal(size=(n_images, dim)))
    counts = rng.integers(1, 5, size=n_images)
    index = rng.permutation(np.repeat(np.arange(n_images), counts))
    texts = unit_rows(images[index] + rng.normal(scale=0.8, size=(len(index), dim)))
    return images.astype(dtype), texts.astype(dtype), index


def dense_ranks(images, texts, index):
    """Ranks from the whole similarity matrix: wrong items scoring strictly above the best correct one."""
    similarity = images @ texts.T
    correct = index[None, :] == np.arange(len(images))[:, None]
    best_caption = np.where(correct, similarity, -np.inf).max(axis=1)
    image_ranks = (np.where(correct, -np.inf, similarity) > best_caption[:, None]).sum(axis=1)
    own_image = similarity[index, np.arange(len(texts))]
    text_ranks = (np.where(correct, -np.inf, similarity) > own_image[None, :]).sum(axis=0)
    return image_ranks, text_ranks


@pytest.fixture(autouse=True)
def small_metric_chunks(monkeypatch):
    """Make the gap metrics cross block boundaries on small data."""
    monkeypatch.setattr(metrics, "DEFAULT_CHUNK_ROWS", 7)


# recall@k ------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", ODD_CHUNKS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ranks_match_dense_several_captions(chunk_size, dtype):
    images, texts, index = several_captions(dtype=dtype)

    image_ranks, text_ranks = retrieval_ranks(images, texts, index, chunk_size=chunk_size)
    expected_image_ranks, expected_text_ranks = dense_ranks(images, texts, index)

    np.testing.assert_array_equal(image_ranks, expected_image_ranks)
    np.testing.assert_array_equal(text_ranks, expected_text_ranks)


@pytest.mark.parametrize("chunk_size", [1, 4, 5, 100])
def test_ranks_match_dense_with_exact_ties(chunk_size):
    # One-hot rows score exactly 0 or 1, so most scores tie; ties count for the correct item.
    rng = np.random.default_rng(1)
    images = np.eye(6)[rng.integers(0, 6, size=17)]
    index = rng.permutation(np.repeat(np.arange(17), 2))
    texts = np.eye(6)[rng.integers(0, 6, size=34)]

    image_ranks, text_ranks = retrieval_ranks(images, texts, index, chunk_size=chunk_size)
    expected_image_ranks, expected_text_ranks = dense_ranks(images, texts, index)

    np.testing.assert_array_equal(image_ranks, expected_image_ranks)
    np.testing.assert_array_equal(text_ranks, expected_text_ranks)


def test_recall_same_for_every_chunk_size():
    images, texts, index = several_captions(n_images=50, seed=3)

    results = [recall_at_k(images, texts, index, ks=(1, 5, 10), chunk_size=size) for size in ODD_CHUNKS]

    for result in results[1:]:
        assert result == results[0]


@pytest.mark.parametrize("shape", [(600, 4096), (256, 2048), (3, 8), (255, 4080), (700, 13)])
def test_block_counts_match_numpy_sum(shape):
    # Blocks wider than 255 words or taller than 255 rows need several word sums.
    mask = np.random.default_rng(2).random(shape) < 0.97

    np.testing.assert_array_equal(retrieval._count_true_per_row(mask), mask.sum(axis=1))
    np.testing.assert_array_equal(retrieval._count_true_per_column(mask), mask.sum(axis=0))


def test_ranks_never_build_full_matrix(monkeypatch):
    images, texts, index = several_captions(n_images=40, seed=4)
    shapes = []
    original = retrieval._score_block

    def recording_score_block(query_block, gallery_block, out):
        shapes.append(out.shape)
        return original(query_block, gallery_block, out)

    monkeypatch.setattr(retrieval, "_score_block", recording_score_block)
    retrieval_ranks(images, texts, index, chunk_size=16)

    assert max(rows for rows, _ in shapes) <= 16
    assert max(columns for _, columns in shapes) <= 16
    assert sum(rows * columns for rows, columns in shapes) == len(images) * len(texts)


def test_ranks_memory_bounded_by_chunk():
    rng = np.random.default_rng(5)
    images = unit_rows(rng.normal(size=(3000, 8))).astype(np.float32)
    texts = unit_rows(images + rng.normal(scale=0.5, size=images.shape)).astype(np.float32)
    full_matrix_bytes = len(images) * len(texts) * 4

    tracemalloc.start()
    retrieval_ranks(images, texts, chunk_size=256)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    # Two normalised copies (96 KB each), a 256 x 256 score block and mask, and small vectors.
    assert peak < full_matrix_bytes / 50
    assert peak < 2_000_000


# top-k retrieval -----------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", ODD_CHUNKS)
@pytest.mark.parametrize("k", [1, 5, 17])
def test_top_k_matches_dense_sort(chunk_size, k):
    rng = np.random.default_rng(6)
    queries = rng.normal(size=(23, 10))
    gallery = rng.normal(size=(41, 10))
    similarity = unit_rows(queries) @ unit_rows(gallery).T
    expected_indices = np.argsort(-similarity, axis=1, kind="stable")[:, :k]

    indices, scores = retrieve_top_k(queries, gallery, k=k, chunk_size=chunk_size)

    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_allclose(scores, np.take_along_axis(similarity, expected_indices, axis=1), atol=1e-12)


def test_top_k_scores_exact_with_ties():
    queries = np.eye(4)
    gallery = np.eye(4)[[0, 1, 1, 2, 3, 3, 3]]

    indices, scores = retrieve_top_k(queries, gallery, k=3, chunk_size=2)

    np.testing.assert_array_equal(scores, [[1, 0, 0], [1, 1, 0], [1, 0, 0], [1, 1, 1]])
    assert indices[1, :2].tolist() == [1, 2]  # equal scores come in gallery order
    assert indices[3].tolist() == [4, 5, 6]


def test_top_k_whole_gallery_and_too_large_k():
    gallery = np.eye(3)

    indices, _ = retrieve_top_k(np.eye(3), gallery, k=3, chunk_size=2)

    assert indices[:, 0].tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="k=4 exceeds the 3 gallery items"):
        retrieve_top_k(np.eye(3), gallery, k=4)


# gap metrics ---------------------------------------------------------------------------------


def dense_offdiagonal_mean(embeds):
    similarity = embeds @ embeds.T
    return similarity[~np.eye(len(embeds), dtype=bool)].mean()


@pytest.mark.parametrize("chunk_rows", [1, 7, 64])
def test_metrics_match_dense(monkeypatch, chunk_rows, gapped_embeddings):
    monkeypatch.setattr(metrics, "DEFAULT_CHUNK_ROWS", chunk_rows)
    raw_images, raw_texts = gapped_embeddings
    # Scale every row differently so normalisation has work to do; the measures must not change.
    scales = np.random.default_rng(11).uniform(0.2, 5.0, size=(len(raw_images), 1))
    images, texts = raw_images * scales, raw_texts * scales[::-1]

    assert centroid_distance(images, texts[:50]) == pytest.approx(
        np.linalg.norm(raw_images.mean(0) - raw_texts[:50].mean(0)), rel=1e-12)
    cosines = mean_cosines(images, texts)
    assert cosines["image_image"] == pytest.approx(dense_offdiagonal_mean(raw_images), rel=1e-10)
    assert cosines["text_text"] == pytest.approx(dense_offdiagonal_mean(raw_texts), rel=1e-10)
    assert cosines["image_text"] == pytest.approx((raw_images @ raw_texts.T).mean(), rel=1e-10)
    assert matched_pair_cosine(images, texts) == pytest.approx(np.sum(raw_images * raw_texts, axis=1).mean(),
                                                               rel=1e-12)
    assert matched_pair_l2(images, texts) == pytest.approx(np.linalg.norm(raw_images - raw_texts, axis=1).mean(),
                                                           rel=1e-12)
    matched = np.mean((1 - np.sum(raw_images * raw_texts, axis=1)) / 2)
    intra = ((1 - dense_offdiagonal_mean(raw_images)) / 2 + (1 - dense_offdiagonal_mean(raw_texts)) / 2) / 2
    assert relative_modality_gap(images, texts) == pytest.approx(matched / (matched + intra), rel=1e-10)


def test_gap_report_matches_dense_several_captions():
    images, texts, index = several_captions(n_images=25, seed=7)

    report = gap_report(images, texts, text_image_index=index, ks=(1, 5))["value"]

    paired = images[index]
    assert report["centroid_distance"] == pytest.approx(np.linalg.norm(images.mean(0) - texts.mean(0)), rel=1e-12)
    assert report["matched_pair_cosine"] == pytest.approx(np.sum(paired * texts, axis=1).mean(), rel=1e-12)
    assert report["l2i"] == pytest.approx(np.linalg.norm(paired - texts, axis=1).mean(), rel=1e-12)
    assert report["mean_image_image_cosine"] == pytest.approx(dense_offdiagonal_mean(images), rel=1e-10)
    image_ranks, text_ranks = dense_ranks(images, texts, index)
    assert report["recall_at_1_i2t"] == np.mean(image_ranks < 1)
    assert report["recall_at_5_t2i"] == np.mean(text_ranks < 5)


def test_metric_errors_name_row_in_whole_array():
    images = np.ones((30, 4))
    images[17, 2] = np.nan
    zero_row = np.ones((30, 4))
    zero_row[22] = 0.0

    with pytest.raises(ValueError, match="image_embeds contains NaN or infinite values, first at row 17"):
        centroid_distance(images, np.ones((30, 4)))
    with pytest.raises(ValueError, match="text_embeds has an all-zero row at row 22"):
        mean_cosines(np.ones((30, 4)), zero_row)


def test_metric_warning_logged_once_per_call(caplog):
    images, texts, _ = several_captions(n_images=40)

    centroid_distance(images * 2.0, texts)

    warnings = [record for record in caplog.records if "not L2-normalised" in record.getMessage()]
    assert len(warnings) == 1


def traced_peak(function, *args, **kwargs):
    tracemalloc.start()
    try:
        function(*args, **kwargs)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_metrics_never_copy_input_whole(monkeypatch):
    monkeypatch.setattr(metrics, "DEFAULT_CHUNK_ROWS", 512)
    rng = np.random.default_rng(8)
    images = rng.normal(size=(20_000, 32)).astype(np.float32)
    texts = rng.normal(size=(20_000, 32)).astype(np.float32)
    input_bytes = images.nbytes

    for function in (centroid_distance, mean_cosines, matched_pair_cosine, matched_pair_l2, relative_modality_gap):
        assert traced_peak(function, images, texts) < input_bytes / 4, function.__name__
    # The 2 x 500 sampled rows in float64, the train/test split and scikit-learn's own arrays.
    assert traced_peak(linear_separability, images, texts, max_samples=500) < input_bytes / 2


# memory-mapped input -------------------------------------------------------------------------


@pytest.fixture
def mapped_pair(tmp_path):
    """Float32 image and text embeddings (not unit length) as in-memory arrays and read-only memmaps."""
    images, texts, index = several_captions(n_images=60, dim=16, seed=9, dtype=np.float32)
    images = images * 2.5
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "texts.npy", texts)
    mapped_images = np.load(tmp_path / "images.npy", mmap_mode="r")
    mapped_texts = np.load(tmp_path / "texts.npy", mmap_mode="r")
    return (images, texts), (mapped_images, mapped_texts), index


def test_memmap_metrics_equal_in_memory(tmp_path, mapped_pair):
    (images, texts), (mapped_images, mapped_texts), index = mapped_pair
    paired_images = images[index]
    np.save(tmp_path / "paired_images.npy", paired_images)
    mapped_paired = np.load(tmp_path / "paired_images.npy", mmap_mode="r")

    assert centroid_distance(mapped_images, mapped_texts) == centroid_distance(images, texts)
    assert mean_cosines(mapped_images, mapped_texts) == mean_cosines(images, texts)
    assert matched_pair_cosine(mapped_paired, mapped_texts) == matched_pair_cosine(paired_images, texts)
    assert relative_modality_gap(mapped_paired, mapped_texts) == relative_modality_gap(paired_images, texts)
    assert linear_separability(mapped_images, mapped_texts, max_samples=50, return_n_samples=True) == \
        linear_separability(images, texts, max_samples=50, return_n_samples=True)
    assert recall_at_k(mapped_images, mapped_texts, index, chunk_size=7) == recall_at_k(images, texts, index)
    mapped_report = gap_report(mapped_images, mapped_texts, text_image_index=index)
    assert mapped_report.equals(gap_report(images, texts, text_image_index=index))


@pytest.mark.parametrize("transformer", [I0TPost, MindTheGapShift, DistributionNormalization])
def test_memmap_statistics_equal_in_memory(transformer, mapped_pair):
    (images, texts), (mapped_images, mapped_texts), _ = mapped_pair

    in_memory = transformer(chunk_rows=11).fit(images, texts)
    mapped = transformer(chunk_rows=11).fit(mapped_images, mapped_texts)

    np.testing.assert_array_equal(mapped.image_mean_, in_memory.image_mean_)
    np.testing.assert_array_equal(mapped.text_mean_, in_memory.text_mean_)
    np.testing.assert_array_equal(mapped.transform_texts(mapped_texts), in_memory.transform_texts(texts))


def test_post_statistics_match_dense_float64(gapped_embeddings):
    images, texts = gapped_embeddings

    scales = np.random.default_rng(12).uniform(0.2, 5.0, size=(len(images), 1))

    post = I0TPost(chunk_rows=7).fit(images * scales, texts)

    np.testing.assert_allclose(post.image_mean_, images.mean(axis=0), rtol=0, atol=1e-15)
    np.testing.assert_allclose(post.transform_images(images * scales), unit_rows(images - images.mean(axis=0)),
                               rtol=0, atol=1e-14)


def test_transform_in_place_memmap(tmp_path, mapped_pair):
    (images, texts), _, _ = mapped_pair
    post = I0TPost(chunk_rows=9).fit(images, texts)
    expected = post.transform_images(images)
    np.save(tmp_path / "writable.npy", images)
    writable = np.load(tmp_path / "writable.npy", mmap_mode="r+")

    result = post.transform_images(writable, out=writable)
    writable.flush()

    assert result is writable
    np.testing.assert_array_equal(np.load(tmp_path / "writable.npy"), expected)


def test_post_memory_independent_of_rows(tmp_path):
    rng = np.random.default_rng(10)
    peaks = []
    for rows in (5_000, 50_000):
        images = rng.normal(size=(rows, 32)).astype(np.float32) + 1.0
        np.save(tmp_path / "images.npy", images)
        mapped = np.load(tmp_path / "images.npy", mmap_mode="r")
        post = I0TPost(chunk_rows=1000)
        peaks.append(traced_peak(post.partial_fit, image_embeds=mapped))
        out = np.lib.format.open_memmap(tmp_path / "out.npy", mode="w+", dtype=np.float32, shape=mapped.shape)
        peaks.append(traced_peak(post.transform_images, mapped, out=out))
        del mapped, out

    # Each call allocates a few 1000 x 32 blocks at most, however many rows there are.
    assert max(peaks) < 1000 * 32 * 4 * 4
    assert max(peaks) < 50_000 * 32 * 4 / 10


def test_chunked_error_names_row_in_whole_array():
    images = np.ones((50, 3))
    images[41] = np.inf

    with pytest.raises(ValueError, match="first at row 41"):
        I0TPost(chunk_rows=8).fit(images, np.ones((5, 3)))
    with pytest.raises(ValueError, match="embeds has an all-zero row at row 3"):
        _chunked.normalized_copy(np.vstack([np.eye(4)[:3], np.zeros(4)]), "embeds", np.float64, chunk_rows=2)

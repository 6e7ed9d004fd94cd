"""Property tests of the public API on random, extreme and malformed embeddings.

The promise checked here: every public function that takes embeddings returns
finite results inside their documented range, or raises ``ValueError`` /
``TypeError`` whose one-line message names the argument at fault. Results are
compared with numpy references and with the same input rescaled, permuted or
given as float16, lists or torch tensors, so a wrong number fails as surely as a
traceback.

The hypothesis profile registered below is used only by this file: examples are
derandomised (the same in every run), nothing is stored in a database, and the
example counts keep the file well under a minute on two CPU cores.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import pytest
import sklearn.linear_model  # noqa: F401  (imported before the timed examples, which use it)
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import stats

from i0t_helpers import (
    DistributionNormalization,
    EmbeddingPack,
    I0TPost,
    MindTheGapShift,
    centroid_distance,
    gap_report,
    gap_severity,
    linear_separability,
    matched_pair_cosine,
    matched_pair_l2,
    mean_cosines,
    recall_at_k,
    relative_modality_gap,
    retrieval_ranks,
)
from i0t_helpers import caption_metrics, correlation, diagnose, experiments, training
from i0t_helpers.async_heads import I0TAsyncHeads
from i0t_helpers._validation import (
    check_embedding_pair,
    check_embeddings,
    check_float_matrix,
    check_positive_int,
    check_text_image_index,
    l2_normalize,
)

settings.register_profile(
    "i0t-robustness",
    max_examples=25,
    deadline=5000,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
PROFILE = settings.get_profile("i0t-robustness")
# Complex scores are a known gap (see SCORE_GAPS): numpy warns while casting them, which is expected here.
pytestmark = pytest.mark.filterwarnings("ignore:Casting complex values to real discards the imaginary part")
#: Fewer examples for functions that fit a classifier (about 20 ms per call).
SLOW_PROFILE = settings(PROFILE, max_examples=8)

#: Slack for comparisons of float32 results with float64 references.
TOLERANCE = 1e-4
EMBEDDING_ARGUMENTS = ("image_embeds", "text_embeds")
#: linear_separability reports too few rows per modality with the counts of images and texts.
SEPARABILITY_ERRORS = EMBEDDING_ARGUMENTS + ("embeddings of each modality",)


@pytest.fixture(autouse=True)
def quiet_validation_warnings():
    """Silence the expected not-normalised and float16 warnings, which would flood the output."""
    logging.disable(logging.WARNING)
    yield
    logging.disable(logging.NOTSET)


# Strategies ----------------------------------------------------------------------------------


DTYPES = (np.float16, np.float32, np.float64)


def element_strategy(dtype):
    """Ordinary values most of the time, plus zeros, the smallest normal value and huge values."""
    finfo = np.finfo(dtype)
    ordinary = st.floats(-100, 100, allow_nan=False, allow_infinity=False, width=finfo.bits)
    extreme = st.sampled_from([0.0, -0.0, float(finfo.tiny), float(finfo.max) / 4, -float(finfo.max) / 4])
    return st.one_of(ordinary, ordinary, ordinary, extreme)


@st.composite
def embedding_matrices(draw, n_rows: int, dim: int, dtype=None):
    """A float matrix of ``n_rows x dim``, sometimes with every row a copy of the first."""
    dtype = dtype or draw(st.sampled_from(DTYPES))
    matrix = draw(hnp.arrays(dtype, (n_rows, dim), elements=element_strategy(dtype)))
    if draw(st.integers(0, 5)) == 0:
        matrix[:] = matrix[0]
    return matrix


@st.composite
def embedding_pairs(draw, paired: bool = True, min_rows: int = 1, max_rows: int = 9, max_dim: int = 6):
    """``(image_embeds, text_embeds)`` with one dimension; equal row counts when ``paired``."""
    dim = draw(st.integers(1, max_dim))
    n_images = draw(st.integers(min_rows, max_rows))
    n_texts = n_images if paired else draw(st.integers(min_rows, max_rows))
    return draw(embedding_matrices(n_images, dim)), draw(embedding_matrices(n_texts, dim))


@st.composite
def clean_pairs(draw, paired: bool = True, min_rows: int = 1, max_rows: int = 9, max_dim: int = 6):
    """Pairs of well-scaled float64 embeddings without zero rows: every function must accept them."""
    dim = draw(st.integers(2, max_dim))
    n_images = draw(st.integers(min_rows, max_rows))
    n_texts = n_images if paired else draw(st.integers(min_rows, max_rows))
    values = st.floats(-10, 10, allow_nan=False, allow_infinity=False)
    images = draw(hnp.arrays(np.float64, (n_images, dim), elements=values))
    texts = draw(hnp.arrays(np.float64, (n_texts, dim), elements=values))
    assume(np.linalg.norm(images, axis=1).min() > 1e-3 and np.linalg.norm(texts, axis=1).min() > 1e-3)
    return images, texts


def unit(array) -> np.ndarray:
    array = np.asarray(array, dtype=np.float64)
    return array / np.linalg.norm(array, axis=1, keepdims=True)


# Assertions ----------------------------------------------------------------------------------


def assert_documented_error(error: BaseException, names=EMBEDDING_ARGUMENTS):
    """The error is a ValueError or TypeError whose single-line message names one of ``names``."""
    assert isinstance(error, (ValueError, TypeError)), f"undocumented exception {type(error).__name__}: {error}"
    message = str(error)
    assert "\n" not in message, f"the message is not one line: {message!r}"
    assert any(name in message for name in names), f"the message names none of {names}: {message}"


def call_or_documented_error(function, *args, names=EMBEDDING_ARGUMENTS, **kwargs):
    """Return ``function(*args, **kwargs)``, or ``None`` after checking that its error is documented."""
    try:
        return function(*args, **kwargs)
    except Exception as error:  # noqa: BLE001 -- the assertion reports any other type
        assert_documented_error(error, names)
        return None


def assert_finite_in(value, low: float, high: float):
    assert isinstance(value, float), f"expected a Python float, got {type(value).__name__}"
    assert math.isfinite(value), value
    assert low - TOLERANCE <= value <= high + TOLERANCE, f"{value} outside [{low}, {high}]"


def assert_unit_rows(array: np.ndarray, shape):
    assert array.shape == shape
    assert np.isfinite(array).all()
    np.testing.assert_allclose(np.linalg.norm(array.astype(np.float64), axis=1), 1.0, atol=1e-4)


# Validation helpers --------------------------------------------------------------------------


@PROFILE
@given(st.data())
def test_check_embeddings_unit_rows_or_error(data):
    matrix = data.draw(embedding_matrices(data.draw(st.integers(1, 8)), data.draw(st.integers(1, 6))))

    result = call_or_documented_error(check_embeddings, matrix, "image_embeds", names=("image_embeds",))

    if result is not None:
        assert result.dtype in (np.float32, np.float64)
        assert_unit_rows(result, matrix.shape)
        reference = unit(matrix.astype(np.float64))
        np.testing.assert_allclose(result, reference, atol=1e-3)


@PROFILE
@given(hnp.arrays(np.float64, st.tuples(st.integers(1, 6), st.integers(1, 5)),
                  elements=st.floats(-5, 5, allow_nan=False)),
       st.integers(0, 5))
def test_zero_row_rejected_by_position(matrix, zero_row):
    zero_row = zero_row % len(matrix)
    assume(np.all(np.any(np.delete(matrix, zero_row, axis=0) != 0, axis=1)))
    matrix[zero_row] = 0.0

    with pytest.raises(ValueError, match=rf"image_embeds has 1 all-zero row\(s\), first at row {zero_row}"):
        check_embeddings(matrix, "image_embeds")


@pytest.mark.parametrize("scale, message", [(1e-200, "too small to square"), (1e200, "norm overflows")])
def test_rows_beyond_float_range_rejected(scale, message):
    """Rows whose squared norm leaves the float range are reported as such, never as zero rows."""
    with pytest.raises(ValueError, match=message):
        l2_normalize(np.full((2, 3), scale), "text_embeds")


@PROFILE
@given(st.one_of(st.none(), st.text(max_size=5), st.integers(), st.floats(),
                 st.lists(st.floats(allow_nan=False), max_size=4),
                 st.lists(st.lists(st.integers(-3, 3), min_size=1, max_size=3), min_size=1, max_size=3),
                 hnp.arrays(hnp.scalar_dtypes(), hnp.array_shapes(min_dims=0, max_dims=3, max_side=3))))
def test_check_float_matrix_arbitrary_input(values):
    result = call_or_documented_error(check_float_matrix, values, "image_embeds", names=("image_embeds",))

    if result is not None:
        assert result.ndim == 2
        assert result.dtype in (np.float32, np.float64)
        assert np.isfinite(result).all()


@PROFILE
@given(st.integers(1, 6), st.integers(1, 6),
       st.one_of(st.none(),
                 st.builds(lambda index, dtype: index.astype(dtype),
                           hnp.arrays(np.int64, hnp.array_shapes(min_dims=1, max_dims=2, max_side=7),
                                      elements=st.integers(-2, 8)),
                           st.sampled_from([np.int64, np.int32, np.float64, np.bool_]))))
def test_text_image_index_valid_or_error(n_images, n_texts, index):
    result = call_or_documented_error(check_text_image_index, index, n_texts, n_images, names=("text_image_index",))

    if result is not None:
        assert result.shape == (n_texts,)
        assert result.dtype == np.int64
        assert result.min() >= 0
        assert result.max() < n_images


@PROFILE
@given(st.one_of(st.integers(-3, 3), st.booleans(), st.floats(), st.text(max_size=2), st.none()))
def test_check_positive_int_value(value):
    result = call_or_documented_error(check_positive_int, value, "chunk_size", names=("chunk_size",))

    if result is not None:
        assert type(result) is int
        assert result >= 1


def test_float16_coercion_documented(caplog):
    images = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float16)

    with caplog.at_level(logging.WARNING):
        logging.disable(logging.NOTSET)
        result = check_embeddings(images, "image_embeds")

    assert result.dtype == np.float32
    assert "image_embeds is float16; upcasting to float32" in caplog.text
    np.testing.assert_allclose(result, unit(images), atol=1e-6)


# Gap metrics ---------------------------------------------------------------------------------


@PROFILE
@given(embedding_pairs(paired=False))
def test_centroid_distance_range(pair):
    images, texts = pair

    value = call_or_documented_error(centroid_distance, images, texts)

    if value is not None:
        assert_finite_in(value, 0.0, 2.0)
        reference = np.linalg.norm(unit(images).mean(axis=0) - unit(texts).mean(axis=0))
        assert value == pytest.approx(reference, abs=1e-3)
        assert gap_severity(value) in ("severe", "moderate", "low")


@PROFILE
@given(embedding_pairs())
def test_matched_pair_measures_range(pair):
    images, texts = pair

    cosine = call_or_documented_error(matched_pair_cosine, images, texts)
    distance = call_or_documented_error(matched_pair_l2, images, texts)

    assert (cosine is None) == (distance is None)
    if cosine is not None:
        assert_finite_in(cosine, -1.0, 1.0)
        assert_finite_in(distance, 0.0, 2.0)
        reference = np.mean(np.sum(unit(images) * unit(texts), axis=1))
        assert cosine == pytest.approx(reference, abs=1e-3)


@PROFILE
@given(embedding_pairs(paired=False, min_rows=2))
def test_mean_cosines_range(pair):
    images, texts = pair

    cosines = call_or_documented_error(mean_cosines, images, texts)

    if cosines is not None:
        assert set(cosines) == {"image_image", "text_text", "image_text"}
        for value in cosines.values():
            assert_finite_in(value, -1.0, 1.0)
        unit_images = unit(images)
        pairwise = unit_images @ unit_images.T
        reference = (pairwise.sum() - np.trace(pairwise)) / (len(images) * (len(images) - 1))
        assert cosines["image_image"] == pytest.approx(reference, abs=1e-3)


@PROFILE
@given(embedding_pairs(min_rows=2))
def test_relative_modality_gap_range(pair):
    value = call_or_documented_error(relative_modality_gap, *pair)

    if value is not None:
        assert_finite_in(value, 0.0, 1.0)


@SLOW_PROFILE
@given(embedding_pairs(paired=False, min_rows=1, max_rows=12))
def test_linear_separability_range(pair):
    value = call_or_documented_error(linear_separability, *pair, names=SEPARABILITY_ERRORS)

    if value is not None:
        assert_finite_in(value, 0.0, 1.0)


@SLOW_PROFILE
@given(embedding_pairs(min_rows=1, max_rows=10))
def test_gap_report_finite(pair):
    report = call_or_documented_error(gap_report, *pair, names=SEPARABILITY_ERRORS)

    if report is not None:
        assert isinstance(report, pd.DataFrame)
        numeric = [value for value in report["value"] if not isinstance(value, str)]
        assert numeric, "the report has no numeric row"
        assert all(math.isfinite(float(value)) for value in numeric), report


@PROFILE
@given(clean_pairs(paired=False, min_rows=4, max_rows=8), st.floats(0.01, 100), st.randoms(use_true_random=False))
def test_metrics_ignore_row_scale_and_order(pair, scale, random):
    """Rows are normalised first, so rescaling or reordering them changes no unpaired measure."""
    images, texts = pair
    order = list(range(len(images)))
    random.shuffle(order)
    scales = np.array([scale ** random.uniform(-1, 1) for _ in range(len(images))])[:, None]
    moved = images[order] * scales

    # Rows already within 1e-6 of unit length are used as they are, so results may move by about 1e-6.
    assert centroid_distance(moved, texts) == pytest.approx(centroid_distance(images, texts), abs=1e-5)
    for key, value in mean_cosines(moved, texts).items():
        assert value == pytest.approx(mean_cosines(images, texts)[key], abs=1e-5)


@PROFILE
@given(clean_pairs(min_rows=2))
def test_input_forms_give_same_numbers(pair):
    """Lists, float32 arrays and torch tensors give the numbers of the float64 array (float32 precision)."""
    images, texts = pair
    assume(_rmg_denominator(images, texts) > 1e-3)
    expected = relative_modality_gap(images, texts)

    assert relative_modality_gap(images.tolist(), texts.tolist()) == pytest.approx(expected, abs=1e-12)
    assert relative_modality_gap(images.astype(np.float32), texts.astype(np.float32)) == pytest.approx(
        expected, abs=1e-4)
    assert relative_modality_gap(torch.from_numpy(images), torch.from_numpy(texts)) == pytest.approx(
        expected, abs=1e-12)


def _rmg_denominator(images, texts) -> float:
    """Return M + I of the relative modality gap, computed in float64."""
    images, texts = unit(images), unit(texts)
    matched = np.mean((1 - np.sum(images * texts, axis=1)) / 2)
    spreads = []
    for embeds in (images, texts):
        pairwise = embeds @ embeds.T
        mean_cosine = (pairwise.sum() - np.trace(pairwise)) / (len(embeds) * (len(embeds) - 1))
        spreads.append((1 - mean_cosine) / 2)
    return float(matched + np.mean(spreads))


def test_relative_modality_gap_collapsed_input():
    """With all embeddings at one point, M = I = 0, so RMG is 0/0: it must be 0 or an error, never noise."""
    collapsed = np.ones((2, 2))

    value = call_or_documented_error(relative_modality_gap, collapsed, collapsed)

    assert value in (None, 0.0)
    assert relative_modality_gap(collapsed.astype(np.float32), collapsed.astype(np.float32)) in (None, 0.0)


@PROFILE
@given(clean_pairs(min_rows=2))
def test_float16_same_as_float32(pair):
    images, texts = (array.astype(np.float16) for array in pair)

    half = matched_pair_cosine(images, texts)
    single = matched_pair_cosine(images.astype(np.float32), texts.astype(np.float32))

    assert half == single


# Retrieval -----------------------------------------------------------------------------------


@PROFILE
@given(embedding_pairs(max_rows=8), st.lists(st.integers(1, 12), min_size=1, max_size=3, unique=True),
       st.integers(1, 5))
def test_recall_at_k_range(pair, ks, chunk_size):
    images, texts = pair

    recalls = call_or_documented_error(recall_at_k, images, texts, ks=tuple(ks), chunk_size=chunk_size)

    if recalls is not None:
        for direction in ("i2t", "t2i"):
            values = [recalls[direction][k] for k in sorted(ks)]
            for value in values:
                assert_finite_in(value, 0.0, 1.0)
            assert values == sorted(values), "recall@k must not decrease with k"
            for k in ks:
                if k >= len(images):
                    assert recalls[direction][k] == 1.0


@PROFILE
@given(clean_pairs(min_rows=1, max_rows=8), st.integers(1, 4), st.randoms(use_true_random=False))
def test_retrieval_ranks_match_dense_reference(pair, chunk_size, random):
    images, texts = pair
    n = len(images)
    index = np.array(random.sample(range(n), n))

    image_ranks, text_ranks = retrieval_ranks(images, texts, text_image_index=index, chunk_size=chunk_size)

    scores = unit(images) @ unit(texts).T
    correct = index[None, :] == np.arange(n)[:, None]
    positive = scores[correct.argmax(axis=0), np.arange(n)]
    image_threshold = np.where(correct, scores, -np.inf).max(axis=1)
    expected_images = np.array([(scores[i][~correct[i]] > image_threshold[i]).sum() for i in range(n)])
    expected_texts = np.array([(scores[:, j][~correct[:, j]] > positive[j]).sum() for j in range(n)])
    # Wrong items within 1e-9 of the correct score may round to either side of it.
    assert np.all(np.abs(image_ranks - expected_images) <= _near_ties(scores, image_threshold[:, None], correct, 1))
    assert np.all(np.abs(text_ranks - expected_texts) <= _near_ties(scores, positive[None, :], correct, 0))


def _near_ties(scores, thresholds, correct, axis: int) -> np.ndarray:
    """Count, per query, the wrong items whose score is within 1e-9 of the query's correct score."""
    return ((np.abs(scores - thresholds) < 1e-9) & ~correct).sum(axis=axis)


@pytest.mark.parametrize("ks", [0, -1, (), (1, 0), 1.5, True, "5"])
def test_recall_bad_k_rejected(ks):
    images = np.eye(3)

    with pytest.raises((ValueError, TypeError), match=r"\bk"):
        recall_at_k(images, images, ks=ks)


@pytest.mark.parametrize("chunk_size", [0, -4, 2.5, None])
def test_retrieval_bad_chunk_size_rejected(chunk_size):
    with pytest.raises((ValueError, TypeError), match="chunk_size"):
        retrieval_ranks(np.eye(3), np.eye(3), chunk_size=chunk_size)


@pytest.mark.parametrize("index, message", [
    (np.array([0, 1, 3]), r"text_image_index must lie in \[0, 2\]"),
    (np.array([0, 1, -1]), r"text_image_index must lie in \[0, 2\]"),
    (np.array([0.0, 1.0, 2.0]), "integer row numbers"),
    (np.array([0, 1]), "one entry per text"),
    (np.array([[0, 1, 2]]), "one entry per text"),
    (np.array([0, 0, 1]), "image row 2 has no caption"),
])
def test_retrieval_bad_text_image_index_rejected(index, message):
    with pytest.raises((ValueError, TypeError), match=message):
        retrieval_ranks(np.eye(3), np.eye(3), text_image_index=index)


# Post-hoc transformers -----------------------------------------------------------------------


TRANSFORMERS = [I0TPost, MindTheGapShift, DistributionNormalization]


@pytest.mark.parametrize("transformer_class", TRANSFORMERS, ids=lambda cls: cls.__name__)
@PROFILE
@given(pair=embedding_pairs(paired=False))
def test_transformer_unit_output_or_error(transformer_class, pair):
    images, texts = pair

    result = call_or_documented_error(transformer_class().fit_transform, images, texts)

    if result is not None:
        assert_unit_rows(result[0], images.shape)
        assert_unit_rows(result[1], texts.shape)


@pytest.mark.parametrize("transformer_class", TRANSFORMERS, ids=lambda cls: cls.__name__)
@PROFILE
@given(pair=clean_pairs(paired=False, min_rows=2), chunk_rows=st.integers(1, 4))
def test_transformer_chunks_and_streaming_agree(transformer_class, pair, chunk_rows):
    """Chunked fitting and partial_fit over two halves give the means and outputs of one fit."""
    images, texts = pair
    whole = transformer_class().fit(images, texts)
    streamed = transformer_class(chunk_rows=chunk_rows)
    half = len(images) // 2
    streamed.partial_fit(images[:half], texts)
    streamed.partial_fit(images[half:], None)

    np.testing.assert_allclose(streamed.image_mean_, whole.image_mean_, atol=1e-12)
    np.testing.assert_allclose(streamed.text_mean_, whole.text_mean_, atol=1e-12)
    shift = unit(images) - whole.transform_images.__self__._shift("image")
    assume(np.linalg.norm(shift, axis=1).min() > 1e-3)  # a row at the mean has no direction after centring
    np.testing.assert_allclose(streamed.transform_images(images), whole.transform_images(images), atol=1e-9)


def test_row_at_modality_mean_rejected():
    """I0T_post of a row that equals the mean (one image, or identical images) has no direction: it must raise."""
    texts = np.random.default_rng(0).normal(size=(3, 4))
    image = np.random.default_rng(1).normal(size=(1, 4))

    with pytest.raises(ValueError, match="image_embeds"):
        I0TPost().fit_transform(image, texts)


@pytest.mark.parametrize("transformer_class", TRANSFORMERS, ids=lambda cls: cls.__name__)
def test_transformer_statistics_round_trip(transformer_class, tmp_path, gapped_embeddings):
    images, texts = gapped_embeddings
    fitted = transformer_class().fit(images, texts)
    path = fitted.save(tmp_path / "statistics.npz", model_name="test-model")

    loaded = transformer_class.load(path, model_name="test-model", n_features=images.shape[1])

    np.testing.assert_array_equal(loaded.transform_texts(texts), fitted.transform_texts(texts))
    with pytest.raises(ValueError, match="statistics of model 'test-model', not 'other-model'"):
        transformer_class.load(path, model_name="other-model")
    with pytest.raises(ValueError, match="dimension 16, but the embeddings have dimension 8"):
        transformer_class.load(path, n_features=8)
    with pytest.raises(ValueError, match="fitted on dimension 16"):
        loaded.transform_images(images[:, :8])


@pytest.mark.parametrize("data", [b"", b"not a zip file", b"PK\x03\x04 cut short"])
def test_statistics_file_damaged_rejected(data, tmp_path):
    path = tmp_path / "statistics.npz"
    path.write_bytes(data)

    with pytest.raises(ValueError, match="not a statistics file"):
        I0TPost.load(path)


def test_transformer_statistics_of_other_method_rejected(tmp_path, gapped_embeddings):
    path = I0TPost().fit(*gapped_embeddings).save(tmp_path / "statistics.npz", model_name="test-model")

    with pytest.raises(ValueError, match="'i0t_post' statistics, not 'mind_the_gap_shift'"):
        MindTheGapShift.load(path)


@pytest.mark.parametrize("payload, message", [
    ({"header_json": np.array(["x"], dtype=object)}, "not a statistics file"),
    ({"image_sum": np.zeros(3)}, "not a statistics file"),
])
def test_statistics_file_with_pickle_or_missing_keys_rejected(payload, message, tmp_path):
    path = tmp_path / "statistics.npz"
    np.savez(path, **payload)

    with pytest.raises(ValueError, match=message):
        I0TPost.load(path)


@pytest.mark.parametrize("lambda_", [float("nan"), float("inf")])
@pytest.mark.parametrize("transformer_class", [MindTheGapShift, DistributionNormalization], ids=lambda cls: cls.__name__)
def test_transformer_non_finite_lambda_rejected(transformer_class, lambda_, gapped_embeddings):
    transformer = transformer_class(lambda_=lambda_).fit(*gapped_embeddings)

    with pytest.raises(ValueError, match="lambda_ must be finite"):
        transformer.transform(*gapped_embeddings)


# Embedding packs -----------------------------------------------------------------------------


captions_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                        max_size=12)


@PROFILE
@given(pair=clean_pairs(min_rows=1, max_rows=6), data=st.data())
def test_pack_save_load_round_trip(tmp_path_factory, pair, data):
    images, texts = pair
    captions = data.draw(st.lists(captions_text, min_size=len(texts), max_size=len(texts)))
    references = data.draw(st.lists(st.lists(captions_text, max_size=3), min_size=len(images),
                                    max_size=len(images)))
    metadata = data.draw(st.dictionaries(captions_text, st.one_of(captions_text, st.integers(-5, 5)), max_size=3))
    pack = EmbeddingPack(images, texts, captions=captions, references=references, metadata=metadata)
    path = tmp_path_factory.mktemp("pack") / "pack.npz"

    loaded = EmbeddingPack.load(pack.save(path))

    np.testing.assert_array_equal(loaded.image_embeds, pack.image_embeds)
    np.testing.assert_array_equal(loaded.text_embeds, pack.text_embeds)
    assert loaded.captions == captions
    assert loaded.references == references
    assert loaded.metadata == metadata
    np.testing.assert_allclose(np.linalg.norm(loaded.image_embeds, axis=1), 1.0, atol=1e-5)


@PROFILE
@given(embedding_pairs(paired=False))
def test_pack_accepts_or_names_argument(pair):
    images, texts = pair

    pack = call_or_documented_error(EmbeddingPack, images, texts, names=EMBEDDING_ARGUMENTS + ("text_image_index",))

    if pack is not None:
        assert pack.image_embeds.dtype == np.float32
        assert_unit_rows(pack.image_embeds, images.shape)


@pytest.mark.parametrize("field, value, message", [
    ("captions", ["a", "b"], "captions must have one entry per text"),
    ("captions", ["a\x00", "b", "c"], "captions entry 0 .* NUL"),
    ("references", [["a"], ["b"]], "references must have one list per image"),
    ("references", [["a"], ["b\x00"], []], r"references\[1\] entry 0 .* NUL"),
    ("image_ids", np.arange(2), "image_ids must have one entry per image"),
    ("metadata", ["not", "a", "dict"], "metadata must be a dict"),
    ("metadata", {"model": object()}, "not JSON serializable"),
])
def test_pack_bad_fields_rejected(field, value, message):
    with pytest.raises((ValueError, TypeError), match=message):
        EmbeddingPack(np.eye(3), np.eye(3), **{field: value})


@pytest.mark.parametrize("contents, message", [
    ({"image_embeds": np.array([np.eye(2)], dtype=object), "text_embeds": np.eye(2)}, "pickled objects"),
    ({"text_embeds": np.eye(2)}, r"missing arrays \['image_embeds'\]"),
    ({"image_embeds": np.eye(2), "text_embeds": np.eye(2), "format_version": np.array(99)}, "pack format 99"),
])
def test_pack_file_bad_contents_rejected(contents, message, tmp_path):
    path = tmp_path / "pack.npz"
    np.savez(path, **contents)

    with pytest.raises(ValueError, match=message):
        EmbeddingPack.load(path)


@pytest.mark.parametrize("data", [b"", b"not a zip file", b"PK\x03\x04 cut short"])
def test_pack_file_damaged_rejected(data, tmp_path):
    path = tmp_path / "pack.npz"
    path.write_bytes(data)

    with pytest.raises(ValueError, match="not a readable .npz embedding pack|not a valid embedding pack"):
        EmbeddingPack.load(path)


# Every bad-input kind on every embedding function ------------------------------------------


def _planted(kind: str):
    """Return an image matrix with one bad-input ``kind``, to be paired with ``np.eye(6, 4)`` texts."""
    rng = np.random.default_rng(0)
    good = rng.normal(size=(6, 4))
    kinds = {
        "NaN": np.where(np.eye(6, 4) > 0, np.nan, good),
        "+inf": np.where(np.eye(6, 4) > 0, np.inf, good),
        "-inf": np.where(np.eye(6, 4) > 0, -np.inf, good),
        "zero row": np.vstack([good[:2], np.zeros((1, 4)), good[3:]]),
        "underflow": np.full((6, 4), 1e-200),
        "overflow": np.full((6, 4), 1e200),
        "int dtype": np.ones((6, 4), dtype=np.int64),
        "bool dtype": np.ones((6, 4), dtype=bool),
        "complex dtype": good.astype(np.complex128),
        "strings": np.full((6, 4), "0.5"),
        "object array": np.array([[object()] * 4] * 6),
        "None": None,
        "ragged list": [[1.0, 2.0, 3.0, 4.0], [1.0]] * 3,
        "1-D": good[0],
        "3-D": good[None],
        "no rows": good[:0],
        "no columns": good[:, :0],
        "other dimension": good[:, :3],
    }
    return kinds[kind]


BAD_KINDS = ["NaN", "+inf", "-inf", "zero row", "underflow", "overflow", "int dtype", "bool dtype", "complex dtype",
             "strings", "object array", "None", "ragged list", "1-D", "3-D", "no rows", "no columns",
             "other dimension"]

def _pair(function, names=EMBEDDING_ARGUMENTS):
    return function, names


_CAPTIONS = ("image_embeds", "caption_embeds")
_ROWS = np.arange(6)
#: Good caption embeddings for ref_clip_score, whose image and reference arguments get the planted input.
_GOOD_CAPTIONS = np.random.default_rng(2).normal(size=(6, 4))

#: Function -> (callable taking the two planted arguments, the user's names of those two arguments).
EMBEDDING_FUNCTIONS = {
    "centroid_distance": _pair(centroid_distance),
    "matched_pair_cosine": _pair(matched_pair_cosine),
    "matched_pair_l2": _pair(matched_pair_l2),
    "mean_cosines": _pair(mean_cosines),
    "relative_modality_gap": _pair(relative_modality_gap),
    "linear_separability": _pair(linear_separability),
    "recall_at_k": _pair(recall_at_k),
    "retrieval_ranks": _pair(retrieval_ranks),
    "gap_report": _pair(gap_report),
    "EmbeddingPack": _pair(EmbeddingPack),
    "check_embedding_pair": _pair(check_embedding_pair),
    "I0TPost.fit_transform": _pair(lambda images, texts: I0TPost().fit_transform(images, texts)),
    "MindTheGapShift.fit_transform": _pair(lambda images, texts: MindTheGapShift().fit_transform(images, texts)),
    "DistributionNormalization.fit_transform":
        _pair(lambda images, texts: DistributionNormalization().fit_transform(images, texts)),
    "caption_metrics.pair_cosines": _pair(caption_metrics.pair_cosines, _CAPTIONS),
    "caption_metrics.clip_score": _pair(caption_metrics.clip_score, _CAPTIONS),
    "caption_metrics.i0t_score": _pair(caption_metrics.i0t_score, _CAPTIONS),
    "caption_metrics.modality_paradox": _pair(caption_metrics.modality_paradox, _CAPTIONS),
    "caption_metrics.score_matrix": _pair(caption_metrics.score_matrix, _CAPTIONS),
    "caption_metrics.reference_similarity": _pair(
        lambda captions, references: caption_metrics.reference_similarity(captions, references, _ROWS),
        ("caption_embeds", "reference_embeds")),
    "caption_metrics.ref_clip_score": _pair(
        lambda images, references: caption_metrics.ref_clip_score(images, _GOOD_CAPTIONS, references, _ROWS),
        ("image_embeds", "reference_embeds")),
    "diagnose.gap_contributions": _pair(diagnose.gap_contributions),
    "diagnose.dimension_statistics": _pair(diagnose.dimension_statistics),
    "diagnose.peak_dimensions": _pair(lambda images, texts: diagnose.peak_dimensions(images, texts, top=2)),
    "diagnose.rank_dimensions": _pair(diagnose.rank_dimensions),
    "diagnose.top_gap_share": _pair(lambda images, texts: diagnose.top_gap_share(images, texts, ks=(1,))),
    "diagnose.gap_and_recall": _pair(diagnose.gap_and_recall),
    "diagnose.clipping_experiment": _pair(diagnose.clipping_experiment),
    "diagnose.removal_experiment": _pair(
        lambda images, texts: diagnose.removal_experiment(images, texts, counts=(0, 1))),
    "experiments.evaluate_embeddings": _pair(experiments.evaluate_embeddings),
    "training.evaluate_embeddings": _pair(training.evaluate_embeddings),
    "I0TAsyncHeads.from_statistics": _pair(I0TAsyncHeads.from_statistics),
    "I0TAsyncHeads.transform_numpy": _pair(
        lambda images, texts: I0TAsyncHeads.from_statistics(np.eye(4), np.eye(4)).transform_numpy(images, texts)),
}


def _known_gap(kind: str, function_name: str, side: str) -> str | None:
    """Return why ``function_name`` does not name the argument yet for this case, or None."""
    if kind == "None" and function_name.endswith("fit_transform"):
        # NOTE: fit(None, texts) is a legal partial fit, so transform then raises NotFittedError about a
        # missing image mean instead of naming image_embeds=None.
        return "fit_transform accepts None as a partial fit"
    caption_side = side == "text" or function_name == "caption_metrics.reference_similarity"
    if function_name.startswith("caption_metrics.") and caption_side and kind != "other dimension":
        return "caption metrics report caption and reference embeddings as image_embeds or text_embeds"
    if function_name == "caption_metrics.reference_similarity" and kind == "other dimension":
        return "caption metrics report caption and reference embeddings as image_embeds or text_embeds"
    if function_name == "I0TAsyncHeads.transform_numpy" and kind == "other dimension":
        return "the heads report a dimension mismatch as image_features or text_features"
    return None


def _naming_problem(function, arguments, expected_names) -> str | None:
    """Return what is wrong with the error of ``function(*arguments)``, or None when it names the argument."""
    try:
        function(*arguments)
    except (ValueError, TypeError) as error:
        message = str(error)
        if type(error).__name__ == "NotFittedError":
            return f"NotFittedError: {message}"
        if "\n" in message:
            return f"message of several lines: {message!r}"
        if not any(name in message for name in expected_names):
            return f"message names none of {expected_names}: {message}"
        return None
    except Exception as error:  # noqa: BLE001 -- any other type is the problem being reported
        return f"undocumented {type(error).__name__}: {error}"
    return "no error"


@pytest.mark.parametrize("function_name", sorted(EMBEDDING_FUNCTIONS))
def test_bad_input_named_in_error(function_name):
    """Every bad-input kind, planted in either argument, raises an error naming that argument.

    Cases listed by :func:`_known_gap` must still fail, so that a fix shows up here
    and its entry can be removed.
    """
    function, names = EMBEDDING_FUNCTIONS[function_name]
    good = np.random.default_rng(1).normal(size=(6, 4))
    unexpected, fixed = [], []
    for side, bad_name in zip(("image", "text"), names):
        for kind in BAD_KINDS:
            bad = _planted(kind)
            arguments = (bad, good) if side == "image" else (good, bad)
            # A dimension mismatch is between the two arguments, so either name will do.
            expected = names if kind == "other dimension" else (bad_name,)
            problem = _naming_problem(function, arguments, expected)
            gap = _known_gap(kind, function_name, side)
            if problem is not None and gap is None:
                unexpected.append(f"{kind} in {bad_name}: {problem}")
            elif problem is None and gap is not None:
                fixed.append(f"{kind} in {bad_name} (known gap: {gap})")

    assert not unexpected, "\n".join(unexpected)
    assert not fixed, "fixed, so remove from _known_gap: " + "; ".join(fixed)


SINGLE_FUNCTIONS = {
    "check_embeddings": lambda embeds: check_embeddings(embeds, "embeds"),
    "diagnose.modality_statistics": lambda embeds: diagnose.modality_statistics(embeds, "embeds"),
    "diagnose.clip_activations": lambda embeds: diagnose.clip_activations(embeds, 0.5, "embeds"),
    "diagnose.remove_dimensions": lambda embeds: diagnose.remove_dimensions(embeds, [0], "embeds"),
}


@pytest.mark.parametrize("function_name", sorted(SINGLE_FUNCTIONS))
def test_bad_single_input_named_in_error(function_name):
    problems = []
    for kind in BAD_KINDS:
        if kind != "other dimension":
            problem = _naming_problem(SINGLE_FUNCTIONS[function_name], (_planted(kind),), ("embeds",))
            if problem is not None:
                problems.append(f"{kind}: {problem}")

    assert not problems, "\n".join(problems)


def test_bad_input_kind_count():
    """The number of bad-input kinds quoted in the README's guarantees."""
    assert len(BAD_KINDS) == 18


# Scores and human judgments ----------------------------------------------------------------


SCORES = np.array([0.1, 0.5, 0.3, 0.9, 0.7, 0.2])
_PREFERENCES = np.array([1.0, 0.0, 1.0, 0.0, 1.0, 0.0])

#: Function -> (callable taking two planted score vectors, the user's names of the two arguments).
SCORE_FUNCTIONS = {
    "correlation.kendall_tau": (lambda x, y: correlation.kendall_tau(x, y, "b"), ("metric_scores", "human_scores")),
    "correlation.pearson": (correlation.pearson, ("metric_scores", "human_scores")),
    "correlation.human_correlation": (lambda x, y: correlation.human_correlation(x, np.arange(6), y),
                                      ("pair_scores", "human_ratings")),
    "caption_metrics.separation_auc": (caption_metrics.separation_auc, ("positive_scores", "negative_scores")),
    "caption_metrics.pairwise_accuracy": (lambda x, y: caption_metrics.pairwise_accuracy(x, y, _PREFERENCES),
                                          ("scores_a", "scores_b")),
}

BAD_SCORES = {
    "NaN": np.where(np.arange(6) == 2, np.nan, SCORES),
    "+inf": np.where(np.arange(6) == 2, np.inf, SCORES),
    "empty": np.array([]),
    "2-D": SCORES[None],
    "strings": np.array(["high"] * 6),
    "None": None,
    "object array": np.array([object()] * 6),
    "ragged list": [[0.1], [0.2, 0.3]],
    "complex dtype": SCORES.astype(np.complex128),
    "other length": SCORES[:5],
}

#: (function, kind) -> why the function does not reject that input by name yet.
SCORE_GAPS = {
    **{(name, "ragged list"): "a ragged list fails inside numpy with a message that names no argument"
       for name in SCORE_FUNCTIONS},
    **{(name, "complex dtype"): "complex scores are cast to real with only a numpy ComplexWarning"
       for name in ("correlation.kendall_tau", "correlation.pearson", "correlation.human_correlation")},
    ("caption_metrics.separation_auc", "2-D"): "separation_auc flattens a 2-D score array",
    ("caption_metrics.pairwise_accuracy", "2-D"): "pairwise_accuracy broadcasts a (1, n) score array",
}


@pytest.mark.parametrize("function_name", sorted(SCORE_FUNCTIONS))
def test_bad_scores_named_in_error(function_name):
    """Every bad score kind in either argument raises an error naming it, except the gaps in SCORE_GAPS."""
    function, names = SCORE_FUNCTIONS[function_name]
    unexpected, fixed = [], []
    for side, bad_name in enumerate(names):
        for kind, bad in BAD_SCORES.items():
            if kind == "other length" and function_name == "caption_metrics.separation_auc":
                continue  # positive and negative scores are independent samples of any sizes
            arguments = [SCORES, SCORES]
            arguments[side] = bad
            expected = (bad_name,)
            if kind in ("other length", "empty"):
                # The lengths disagree between arguments; human_correlation reports it on judgment_pair_index.
                expected = names + ("judgment_pair_index",)
            problem = _naming_problem(function, arguments, expected)
            gap = SCORE_GAPS.get((function_name, kind))
            if problem is not None and gap is None:
                unexpected.append(f"{kind} in {bad_name}: {problem}")
            elif problem is None and gap is not None and side == 0:
                fixed.append(f"{kind} (known gap: {gap})")

    assert not unexpected, "\n".join(unexpected)
    assert not fixed, "fixed, so remove from SCORE_GAPS: " + "; ".join(fixed)


finite_scores = st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=2, max_size=30)


@PROFILE
@given(st.data())
def test_kendall_tau_and_pearson_match_scipy(data):
    x = np.array(data.draw(finite_scores))
    y = np.array(data.draw(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=len(x), max_size=len(x))))

    for variant in ("b", "c"):
        value = correlation.kendall_tau(x, y, variant)
        if np.all(x == x[0]) or np.all(y == y[0]):
            assert math.isnan(value)
        else:
            assert_finite_in(value, -1.0, 1.0)
            assert value == pytest.approx(stats.kendalltau(x, y, variant=variant).statistic, abs=1e-12)
    r = correlation.pearson(x, y)
    if not (np.all(x == x[0]) or np.all(y == y[0])):
        assert -1.0 - 1e-9 <= r <= 1.0 + 1e-9


@PROFILE
@given(finite_scores, finite_scores)
def test_separation_auc_complement(positive, negative):
    forward = caption_metrics.separation_auc(positive, negative)
    backward = caption_metrics.separation_auc(negative, positive)

    assert_finite_in(forward, 0.0, 1.0)
    assert forward + backward == pytest.approx(1.0, abs=1e-12)


#: Scores of realistic size: products of values below about 1e-154 underflow (a separate, reported gap).
metric_values = st.one_of(st.just(0.0), st.floats(1e-100, 1e3))


@PROFILE
@given(st.lists(st.tuples(metric_values, metric_values), min_size=1, max_size=20))
def test_harmonic_mean_between_min_and_max(pairs):
    a, b = np.array(pairs).T

    result = caption_metrics.harmonic_mean(a, b)

    assert np.isfinite(result).all()
    assert np.all(result >= np.minimum(a, b) * (1 - 1e-12))
    assert np.all(result <= np.maximum(a, b) * (1 + 1e-12))
    np.testing.assert_allclose(result, caption_metrics.harmonic_mean(b, a))


@pytest.mark.parametrize("bad", [np.array([np.nan]), None], ids=["NaN", "None"])
def test_harmonic_mean_invalid_not_zero(bad):
    """A NaN or missing score must not become a valid-looking 0."""
    try:
        result = caption_metrics.harmonic_mean(bad, np.array([1.0]))
    except (ValueError, TypeError):
        return

    assert np.isnan(result).all()


def test_harmonic_mean_tiny_values():
    assert caption_metrics.harmonic_mean([1e-200], [1e-200])[0] == pytest.approx(1e-200, rel=1e-9, abs=0)


# Caption metrics, diagnosis and heads on random embeddings ---------------------------------


@PROFILE
@given(embedding_pairs(max_rows=7))
def test_caption_scores_range(pair):
    images, captions = pair

    cosines = call_or_documented_error(caption_metrics.pair_cosines, images, captions, names=_CAPTIONS + (
        "text_embeds",))

    if cosines is not None:
        reference = np.sum(unit(images) * unit(captions), axis=1)
        np.testing.assert_allclose(cosines, reference, atol=1e-3)
        clip = caption_metrics.clip_score(images, captions)
        assert np.all((clip >= 0) & (clip <= 2.5 + 1e-9))
        np.testing.assert_allclose(clip, 2.5 * np.maximum(cosines, 0))
        paper = call_or_documented_error(caption_metrics.i0t_score, images, captions,
                                         names=_CAPTIONS + ("text_embeds", "centred"))
        if paper is not None:
            assert np.isfinite(paper).all()
            assert np.all(np.abs(paper) <= 1 + 1e-6)


@PROFILE
@given(clean_pairs(min_rows=2, max_rows=7), st.integers(1, 3))
def test_ref_clip_score_finite(pair, references_per_image):
    images, captions = pair
    references = np.repeat(captions[::-1], references_per_image, axis=0)
    reference_index = np.repeat(np.arange(len(images))[::-1], references_per_image)

    scores = caption_metrics.ref_clip_score(images, captions, references, reference_index)

    assert scores.shape == (len(captions),)
    assert np.isfinite(scores).all()
    assert np.all(scores >= 0)
    assert np.all(scores <= 2 * 2.5 * 1.0 / (2.5 + 1.0) + 1e-9)


@PROFILE
@given(embedding_pairs())
def test_gap_contributions_sum_to_squared_distance(pair):
    images, texts = pair

    contributions = call_or_documented_error(diagnose.gap_contributions, images, texts)

    if contributions is not None:
        assert np.isfinite(contributions).all()
        assert np.all(contributions >= 0)
        assert contributions.sum() == pytest.approx(centroid_distance(images, texts) ** 2, abs=1e-5)


@PROFILE
@given(clean_pairs(min_rows=1, max_rows=8))
def test_top_gap_share_monotone(pair):
    images, texts = pair
    dim = images.shape[1]

    shares = call_or_documented_error(diagnose.top_gap_share, images, texts, ks=tuple(range(1, dim + 1)),
                                      names=("centroids coincide",))

    if shares is not None:
        values = [shares[k] for k in range(1, dim + 1)]
        for value in values:
            assert_finite_in(value, 0.0, 1.0)
        assert values == sorted(values)
        assert values[-1] == pytest.approx(1.0)


@PROFILE
@given(clean_pairs(paired=False, min_rows=2, max_rows=8))
def test_async_heads_from_statistics_finite(pair):
    images, texts = pair

    heads = I0TAsyncHeads.from_statistics(images, texts)
    new_images, new_texts = heads.transform_numpy(images, texts)

    assert new_images.shape == images.shape
    assert new_texts.shape == texts.shape
    assert np.isfinite(new_images).all()
    assert np.isfinite(new_texts).all()

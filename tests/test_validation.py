import logging

import numpy as np
import pytest

from i0t_helpers._validation import (
    check_embedding_pair,
    check_embeddings,
    check_text_image_index,
)


def test_float16_is_upcast_with_warning(caplog):
    values = np.array([[3.0, 4.0]], dtype=np.float16)
    with caplog.at_level(logging.WARNING):
        result = check_embeddings(values, "image_embeds")
    assert result.dtype == np.float32
    assert "float16" in caplog.text
    np.testing.assert_allclose(result, [[0.6, 0.8]], rtol=1e-6)


def test_unnormalised_rows_are_normalised_with_warning(caplog):
    with caplog.at_level(logging.WARNING):
        result = check_embeddings(np.array([[3.0, 4.0], [0.0, 2.0]]), "text_embeds")
    np.testing.assert_allclose(result, [[0.6, 0.8], [0.0, 1.0]])
    assert "not L2-normalised" in caplog.text


def test_normalised_rows_give_no_warning(caplog):
    with caplog.at_level(logging.WARNING):
        check_embeddings(np.array([[0.6, 0.8]]), "text_embeds")
    assert caplog.text == ""


@pytest.mark.parametrize(
    "values, error, fragment",
    [
        (np.array([[np.nan, 1.0]]), ValueError, "NaN or infinite"),
        (np.array([[np.inf, 1.0]]), ValueError, "NaN or infinite"),
        (np.ones(3), ValueError, "2-D"),
        (np.ones((2, 2, 2)), ValueError, "2-D"),
        (np.empty((0, 4)), ValueError, "empty"),
        (np.ones((2, 3), dtype=np.int64), TypeError, "floating-point"),
        (np.array([[0.0, 0.0], [1.0, 0.0]]), ValueError, "all-zero row"),
        (np.array([["a", "b"]]), TypeError, "floating-point"),
    ],
)
def test_bad_embeddings_raise(values, error, fragment):
    with pytest.raises(error, match=fragment) as raised:
        check_embeddings(values, "image_embeds")
    assert "image_embeds" in str(raised.value)


def test_zero_row_error_names_the_row():
    with pytest.raises(ValueError, match="first at row 2"):
        check_embeddings(np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]), "text_embeds")


def test_dimension_mismatch_raises():
    with pytest.raises(ValueError, match="same dimension; got 3 and 4"):
        check_embedding_pair(np.ones((2, 3)), np.ones((2, 4)))


def test_paired_row_count_mismatch_raises():
    with pytest.raises(ValueError, match="2 images and 3 texts"):
        check_embedding_pair(np.ones((2, 3)), np.ones((3, 3)), paired=True)


def test_torch_tensor_is_accepted():
    torch = pytest.importorskip("torch")
    result = check_embeddings(torch.tensor([[3.0, 4.0]]), "image_embeds")
    np.testing.assert_allclose(result, [[0.6, 0.8]], rtol=1e-6)


def test_text_image_index_out_of_range_raises():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        check_text_image_index(np.array([0, 2]), n_texts=2, n_images=2)


def test_text_image_index_required_for_unequal_counts():
    with pytest.raises(ValueError, match="text_image_index is required"):
        check_text_image_index(None, n_texts=3, n_images=2)

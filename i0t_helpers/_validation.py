"""Input checks and documented coercions shared by every public function.

The rules, applied at the boundary of each public function:

* input must be a 2-D array-like of real floating-point numbers, non-empty;
* NaN or infinite values raise ``ValueError`` naming the argument and a row;
* integer or boolean arrays raise ``TypeError`` (embeddings are never integers);
* float16 and bfloat16-like inputs are upcast to float32 with a logged warning;
* rows are L2-normalised; when a row's norm is further than ``NORM_TOLERANCE``
  from 1 a warning is logged once per call, because CLIP-style analyses assume
  unit vectors;
* an all-zero row cannot be normalised and raises ``ValueError``, and so does a
  row whose norm overflows or underflows the dtype (values whose squares exceed
  its range or round to 0), with a request to rescale the input.
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)

#: Largest deviation of a row norm from 1 that is accepted without a warning.
NORM_TOLERANCE = 1e-3
#: Rows whose norms are this close to 1 are returned as they are, so unit input round-trips bit for bit.
ALREADY_UNIT_TOLERANCE = 1e-6


def _to_array(values, name: str) -> np.ndarray:
    """Return ``values`` as a numpy array, converting torch tensors without copying."""
    if hasattr(values, "detach") and hasattr(values, "cpu"):
        values = values.detach().cpu()
        if str(values.dtype) == "torch.bfloat16":
            values = values.float()
        values = values.numpy()
    try:
        array = np.asarray(values)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must be a numeric array; conversion failed: {error}") from None
    if array.dtype == object:
        raise TypeError(f"{name} must be a numeric array, got an array of Python objects")
    return array


def check_float_matrix(values, name: str) -> np.ndarray:
    """Validate a 2-D finite floating-point matrix and return it as float32 or float64.

    float16 input is upcast to float32 with a logged warning. Integer, boolean,
    complex and object input raise ``TypeError``. Wrong rank, empty input and
    non-finite values raise ``ValueError``.
    """
    array = _to_array(values, name)

    if array.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D array of shape (n_samples, dim); got {array.ndim}-D shape "
            f"{array.shape}. Reshape a single vector with x[None, :]."
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {array.shape}); at least one row and one column are required")
    if not np.issubdtype(array.dtype, np.floating):
        raise TypeError(
            f"{name} must contain floating-point embeddings, got dtype {array.dtype}; "
            f"convert with .astype(np.float32) if the values are really embeddings"
        )
    if array.dtype == np.float16:
        logger.warning("%s is float16; upcasting to float32 (half precision loses about 3 decimal digits)", name)
        array = array.astype(np.float32)
    elif array.dtype not in (np.float32, np.float64):
        array = array.astype(np.float64)

    finite = np.isfinite(array)
    if not finite.all():
        bad_row = int(np.argwhere(~finite.all(axis=1))[0, 0])
        n_bad = int((~finite.all(axis=1)).sum())
        raise ValueError(
            f"{name} contains NaN or infinite values in {n_bad} row(s), first at row {bad_row}; "
            f"drop or recompute those rows"
        )
    return array


def l2_normalize(array: np.ndarray, name: str = "embeddings", warn: bool = True) -> np.ndarray:
    """Return ``array`` with unit rows; all-zero rows raise ``ValueError``.

    Input whose row norms are all within ``ALREADY_UNIT_TOLERANCE`` of 1 is
    returned unchanged (not copied); anything else is divided by its norms.
    """
    zero_rows = np.flatnonzero(~array.any(axis=1))
    if zero_rows.size:
        raise ValueError(
            f"{name} has {zero_rows.size} all-zero row(s), first at row {int(zero_rows[0])}; "
            f"a zero vector has no direction and cannot be L2-normalised, so remove those rows"
        )
    with np.errstate(over="ignore", under="ignore"):
        norms = np.linalg.norm(array, axis=1, keepdims=True)
    if not np.isfinite(norms).all():
        raise ValueError(f"{name} has rows whose norm overflows {array.dtype}; rescale the input")
    underflow_rows = np.flatnonzero(norms[:, 0] == 0)
    if underflow_rows.size:
        raise ValueError(
            f"{name} has {underflow_rows.size} row(s) whose values are too small to square in {array.dtype} "
            f"(the norm underflows to 0), first at row {int(underflow_rows[0])}; rescale the input"
        )
    deviation = float(np.max(np.abs(norms - 1.0)))
    if deviation <= ALREADY_UNIT_TOLERANCE:
        return array
    if warn and deviation > NORM_TOLERANCE:
        logger.warning(
            "%s is not L2-normalised (largest |norm - 1| = %.3g); normalising each row", name, deviation
        )
    return array / norms


def check_embeddings(values, name: str, normalize: bool = True) -> np.ndarray:
    """Validate an embedding matrix and return it L2-normalised (float32 or float64)."""
    array = check_float_matrix(values, name)
    if normalize:
        array = l2_normalize(array, name)
    return array


def check_pair_shapes(image_shape, text_shape, paired: bool, names: tuple[str, str]):
    """Raise ``ValueError`` unless two 2-D shapes share a dimension (and, when ``paired``, a row count)."""
    image_name, text_name = names
    if image_shape[1] != text_shape[1]:
        raise ValueError(
            f"{image_name} and {text_name} must have the same dimension; got {image_shape[1]} "
            f"and {text_shape[1]} (were they produced by the same model?)"
        )
    if paired and image_shape[0] != text_shape[0]:
        raise ValueError(
            f"paired input needs as many rows in {image_name} as in {text_name} (row i of one pairs with row i "
            f"of the other); got {image_shape[0]} images and {text_shape[0]} texts"
        )


def check_embedding_pair(image_embeds, text_embeds, paired: bool = False, normalize: bool = True,
                         names: tuple[str, str] = ("image_embeds", "text_embeds")):
    """Validate image and text embeddings of the same dimension.

    With ``paired=True`` the row counts must match too, because row i of one is
    the partner of row i of the other. ``names`` are the caller's argument
    names, used in error messages (for example ``("caption_embeds",
    "reference_embeds")``).
    """
    image_name, text_name = names
    images = check_embeddings(image_embeds, image_name, normalize=normalize)
    texts = check_embeddings(text_embeds, text_name, normalize=normalize)
    check_pair_shapes(images.shape, texts.shape, paired, names)
    dtype = np.result_type(images.dtype, texts.dtype)
    return images.astype(dtype, copy=False), texts.astype(dtype, copy=False)


def check_text_image_index(text_image_index, n_texts: int, n_images: int) -> np.ndarray:
    """Validate the array mapping each text row to the row of its image."""
    if text_image_index is None:
        if n_texts != n_images:
            raise ValueError(
                f"text_image_index is required when the row counts differ ({n_images} images, "
                f"{n_texts} texts); pass the image row of each text"
            )
        return np.arange(n_texts)
    index = np.asarray(text_image_index)
    if index.ndim != 1 or index.shape[0] != n_texts:
        raise ValueError(f"text_image_index must have one entry per text ({n_texts}); got shape {index.shape}")
    if not np.issubdtype(index.dtype, np.integer):
        raise TypeError(f"text_image_index must hold integer row numbers, got dtype {index.dtype}")
    if n_texts and (index.min() < 0 or index.max() >= n_images):
        raise ValueError(
            f"text_image_index must lie in [0, {n_images - 1}]; got values from {index.min()} to {index.max()}"
        )
    return index.astype(np.int64, copy=False)


def check_positive_int(value, name: str, minimum: int = 1) -> int:
    """Return ``value`` as an int, raising ``ValueError`` when it is below ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return int(value)

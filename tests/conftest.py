"""Shared fixtures: the starter pack (fetched once per session) and small synthetic embeddings."""

import numpy as np
import pytest

from i0t_helpers.packs import load_pack


@pytest.fixture(scope="session")
def starter_pack():
    """The 500 real CLIP ViT-B/16 COCO pairs; fetched from I0T_DATA_MIRROR or the internet when missing."""
    return load_pack("starter")


@pytest.fixture(scope="session")
def starter_random_pack():
    """The same 500 pairs embedded by the randomly initialised CLIP twin."""
    return load_pack("starter-random")


def unit_rows(array):
    """Return ``array`` with each row scaled to unit length (float64)."""
    array = np.asarray(array, dtype=np.float64)
    return array / np.linalg.norm(array, axis=1, keepdims=True)


@pytest.fixture
def gapped_embeddings():
    """60 image and 60 text embeddings in 16-d with a planted offset between the modalities."""
    rng = np.random.default_rng(42)
    shared = rng.normal(size=(60, 16))
    images = unit_rows(shared + rng.normal(scale=0.3, size=(60, 16)) + np.eye(16)[0] * 3)
    texts = unit_rows(shared + rng.normal(scale=0.3, size=(60, 16)) - np.eye(16)[1] * 3)
    return images, texts

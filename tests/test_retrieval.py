import numpy as np
import pytest

from i0t_helpers.retrieval import recall_at_k, retrieval_ranks

from .conftest import unit_rows


def dense_recall(images, texts, index, ks):
    """Reference recall@k from the full similarity matrix and a stable sort."""
    similarity = images @ texts.T
    image_to_text = {}
    order = np.argsort(-similarity, axis=1, kind="stable")
    for k in ks:
        hits = [np.isin(np.flatnonzero(index == row), order[row, :k]).any() for row in range(len(images))]
        image_to_text[k] = float(np.mean(hits))
    order_t = np.argsort(-similarity.T, axis=1, kind="stable")
    text_to_image = {k: float(np.mean([index[j] in order_t[j, :k] for j in range(len(texts))])) for k in ks}
    return {"i2t": image_to_text, "t2i": text_to_image}


def test_hand_example():
    images = np.eye(3)
    texts = np.array([[1.0, 0.1, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    result = recall_at_k(unit_rows(images), unit_rows(texts), ks=(1, 2))
    # Image 0 ranks its caption first. Image 1 (e2) scores its caption (e3) 0 and text 2 (e2) 1:
    # rank 2, because text 0 scores 0.0995 > 0. Image 2 (e3) scores text 1 higher: rank 1.
    assert result["i2t"] == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3)}
    # Text 0 finds image 0 first; texts 1 and 2 each have one image scoring 1 above their own (0).
    assert result["t2i"] == {1: pytest.approx(1 / 3), 2: pytest.approx(1.0)}


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 4096])
def test_matches_dense_with_several_captions_per_image(chunk_size):
    rng = np.random.default_rng(5)
    images = unit_rows(rng.normal(size=(40, 12)))
    index = np.repeat(np.arange(40), 3)[rng.permutation(120)]
    texts = unit_rows(images[index] + rng.normal(scale=0.9, size=(120, 12)))
    ks = (1, 5, 10)
    assert recall_at_k(images, texts, index, ks=ks, chunk_size=chunk_size) == dense_recall(images, texts, index, ks)


def test_ranks_are_zero_when_every_pair_is_identical():
    embeds = unit_rows(np.random.default_rng(0).normal(size=(20, 6)))
    image_ranks, text_ranks = retrieval_ranks(embeds, embeds)
    assert not image_ranks.any()
    assert not text_ranks.any()


def test_starter_pack_recall_at_1(starter_pack):
    result = recall_at_k(starter_pack.image_embeds, starter_pack.text_embeds, ks=(1,))
    assert result["i2t"][1] == pytest.approx(0.552)
    assert result["t2i"][1] == pytest.approx(0.506)


def test_image_without_caption_raises():
    with pytest.raises(ValueError, match="image row 1 has no caption"):
        recall_at_k(np.eye(3), np.eye(3)[[0, 2]], text_image_index=np.array([0, 2]))


@pytest.mark.parametrize("ks", [(0,), (), (-1, 5)])
def test_invalid_k_raises(ks):
    with pytest.raises(ValueError):
        recall_at_k(np.eye(3), np.eye(3), ks=ks)

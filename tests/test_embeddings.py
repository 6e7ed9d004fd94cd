import numpy as np
import pytest

from i0t_helpers.embeddings import EmbeddingPack

from .conftest import unit_rows


@pytest.fixture
def small_pack():
    rng = np.random.default_rng(0)
    return EmbeddingPack(
        image_embeds=unit_rows(rng.normal(size=(3, 4))),
        text_embeds=unit_rows(rng.normal(size=(5, 4))),
        text_image_index=np.array([0, 0, 1, 2, 2]),
        captions=["a cat", "a small cat", "a dog", "a car", "a red car"],
        image_ids=np.array([10, 11, 12]),
        references=[["a cat", "a small cat"], ["a dog"], ["a car", "a red car", "café ünïcode"]],
        metadata={"model": "toy", "licences": {"captions": "CC BY 4.0"}},
    )


def test_save_load_round_trip(tmp_path, small_pack):
    loaded = EmbeddingPack.load(small_pack.save(tmp_path / "pack.npz"))
    np.testing.assert_array_equal(loaded.image_embeds, small_pack.image_embeds)
    np.testing.assert_array_equal(loaded.text_embeds, small_pack.text_embeds)
    np.testing.assert_array_equal(loaded.text_image_index, small_pack.text_image_index)
    assert loaded.captions == small_pack.captions
    assert loaded.references == small_pack.references
    assert loaded.metadata == small_pack.metadata
    np.testing.assert_array_equal(loaded.image_ids, [10, 11, 12])


def test_saved_file_loads_without_pickle(tmp_path, small_pack):
    path = small_pack.save(tmp_path / "pack.npz")
    with np.load(path, allow_pickle=False) as data:
        assert all(data[key].dtype != object for key in data.files)


def test_paired_repeats_images_per_caption(small_pack):
    images, texts = small_pack.paired()
    np.testing.assert_array_equal(images[1], small_pack.image_embeds[0])
    assert images.shape == texts.shape == (5, 4)


def test_subset_renumbers_texts(small_pack):
    subset = small_pack.subset(np.array([2, 0]))
    assert subset.n_images == 2
    assert subset.captions == ["a cat", "a small cat", "a car", "a red car"]
    np.testing.assert_array_equal(subset.text_image_index, [1, 1, 0, 0])
    np.testing.assert_array_equal(subset.image_ids, [12, 10])


def test_subset_selecting_nothing_raises(small_pack):
    with pytest.raises(ValueError, match="selects no image"):
        small_pack.subset(slice(5, 9))


def test_caption_count_mismatch_raises():
    with pytest.raises(ValueError, match="one entry per text"):
        EmbeddingPack(np.eye(2), np.eye(2), captions=["only one"])


def test_metadata_must_be_json_serialisable():
    with pytest.raises(TypeError):
        EmbeddingPack(np.eye(2), np.eye(2), metadata={"bad": object()})


def test_load_rejects_pickled_arrays(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, image_embeds=np.array([{"x": 1}], dtype=object), text_embeds=np.eye(2))
    with pytest.raises(ValueError, match="pickled"):
        EmbeddingPack.load(path)


def test_load_rejects_missing_arrays(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, something=np.eye(2))
    with pytest.raises(ValueError, match="missing arrays"):
        EmbeddingPack.load(path)


def test_load_rejects_non_npz(tmp_path):
    path = tmp_path / "text.npz"
    path.write_text("not an archive")
    with pytest.raises(ValueError, match="not"):
        EmbeddingPack.load(path)


def test_load_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        EmbeddingPack.load(tmp_path / "absent.npz")


def test_saved_file_has_default_mode(tmp_path, small_pack):
    import os

    umask = os.umask(0)
    os.umask(umask)
    path = small_pack.save(tmp_path / "pack.npz")
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask

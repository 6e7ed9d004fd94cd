"""Retrieval protocols and zero-shot classification, raw and after I0T_post, against hand computations."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from i0t_helpers.cli import main as cli_main
from i0t_helpers.download import DownloadError
from i0t_helpers.embeddings import EmbeddingPack
from i0t_helpers.encoding import encode_images, encode_texts
from i0t_helpers.evaluation import (
    ALL_CAPTIONS,
    CIFAR_TEMPLATES,
    FIRST_CAPTION,
    cifar100_classnames,
    class_prototypes,
    evaluate_cifar100,
    first_caption_pack,
    load_cifar100_test,
    retrieval_recalls,
    retrieval_table,
    zero_shot_accuracy,
    zero_shot_table,
    zero_shot_templates,
)
from i0t_helpers.models import TINY_MODEL_NAME, load_model

from .test_encoding import PHOTO_FOLDER, SAMPLE_PHOTOS


def unit(rows) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float64)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def centred(rows) -> np.ndarray:
    rows = unit(rows)
    return unit(rows - rows.mean(axis=0))


def brute_force_recalls(images, texts, index, ks):
    """Recall@k in percent by sorting every similarity row; ties are broken in favour of the correct item."""
    scores = unit(images) @ unit(texts).T
    index = np.asarray(index)
    i2t = {k: 0 for k in ks}
    for row in range(len(images)):
        correct = index == row
        best = scores[row][correct].max()
        rank = np.count_nonzero(scores[row][~correct] > best)
        for k in ks:
            i2t[k] += rank < k
    t2i = {k: 0 for k in ks}
    for column in range(len(texts)):
        own = scores[index[column], column]
        rank = np.count_nonzero(np.delete(scores[:, column], index[column]) > own)
        for k in ks:
            t2i[k] += rank < k
    return ({k: 100 * value / len(images) for k, value in i2t.items()},
            {k: 100 * value / len(texts) for k, value in t2i.items()})


@pytest.fixture
def three_pairs():
    """3 images and 3 captions in 3-d; worked by hand: image 0 ranks its caption second."""
    images = unit([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    texts = unit([[0.6, 0.8, 0.0], [0.1, 1.0, 0.0], [0.0, 0.2, 1.0]])
    return images, texts


# Retrieval ---------------------------------------------------------------------------------


def test_recalls_worked_by_hand(three_pairs):
    images, texts = three_pairs
    # Image 0 scores 0.6 with its caption and 0.0995 with caption 1: rank 0. Image 1 prefers caption 1
    # (0.995) to caption 0 (0.8): rank 0. Image 2: rank 0. Caption 0 scores 0.8 with image 1 > 0.6: rank 1.
    recalls = retrieval_recalls(images, texts, ks=(1, 2))
    assert recalls["i2t"] == {1: 100.0, 2: 100.0}
    assert recalls["t2i"][1] == pytest.approx(200 / 3)
    assert recalls["t2i"][2] == 100.0


def test_recalls_match_brute_force_with_several_captions():
    rng = np.random.default_rng(0)
    images = unit(rng.normal(size=(12, 6)))
    index = np.repeat(np.arange(12), [1, 2, 3] * 4)
    texts = unit(images[index] + rng.normal(scale=1.5, size=(len(index), 6)))

    recalls = retrieval_recalls(images, texts, index, ks=(1, 3, 5))

    expected_i2t, expected_t2i = brute_force_recalls(images, texts, index, (1, 3, 5))
    assert recalls["i2t"] == pytest.approx(expected_i2t)
    assert recalls["t2i"] == pytest.approx(expected_t2i)


def test_recalls_after_post_use_centred_embeddings():
    rng = np.random.default_rng(1)
    images = unit(rng.normal(size=(20, 8)) + 3 * np.eye(8)[0])
    texts = unit(images + rng.normal(scale=0.3, size=(20, 8)) - 3 * np.eye(8)[1])

    recalls = retrieval_recalls(images, texts, ks=(1, 5), post=True)

    expected_i2t, expected_t2i = brute_force_recalls(centred(images), centred(texts), np.arange(20), (1, 5))
    assert recalls["i2t"] == pytest.approx(expected_i2t)
    assert recalls["t2i"] == pytest.approx(expected_t2i)


def test_first_caption_pack():
    rng = np.random.default_rng(2)
    pack = EmbeddingPack(unit(rng.normal(size=(3, 4))), unit(rng.normal(size=(5, 4))), text_image_index=[1, 0, 1, 2, 0],
                         captions=["b1", "a1", "b2", "c1", "a2"])
    first = first_caption_pack(pack)
    assert first.captions == ["a1", "b1", "c1"]
    assert np.array_equal(first.text_embeds, pack.text_embeds[[1, 0, 3]])
    assert first.text_image_index.tolist() == [0, 1, 2]


def test_first_caption_pack_needs_a_caption_per_image():
    rng = np.random.default_rng(3)
    pack = EmbeddingPack(unit(rng.normal(size=(3, 4))), unit(rng.normal(size=(2, 4))), text_image_index=[0, 2])
    with pytest.raises(ValueError, match="image row 1 has no caption"):
        first_caption_pack(pack)


def test_retrieval_table_reports_both_protocols():
    rng = np.random.default_rng(4)
    images = unit(rng.normal(size=(10, 6)))
    index = np.repeat(np.arange(10), 2)
    texts = unit(images[index] + rng.normal(scale=1.2, size=(20, 6)))
    pack = EmbeddingPack(images, texts, text_image_index=index)

    table = retrieval_table(pack, ks=(1, 5))

    assert list(table.index) == [(ALL_CAPTIONS, "CLIP"), (ALL_CAPTIONS, "I0T_post"),
                                 (FIRST_CAPTION, "CLIP"), (FIRST_CAPTION, "I0T_post")]
    assert list(table.columns) == ["I2T R@1", "I2T R@5", "T2I R@1", "T2I R@5"]
    all_i2t, all_t2i = brute_force_recalls(images, texts, index, (1, 5))
    assert table.loc[(ALL_CAPTIONS, "CLIP"), "I2T R@1"] == pytest.approx(all_i2t[1])
    assert table.loc[(ALL_CAPTIONS, "CLIP"), "T2I R@5"] == pytest.approx(all_t2i[5])
    first_i2t, _ = brute_force_recalls(images, texts[::2], np.arange(10), (1, 5))
    assert table.loc[(FIRST_CAPTION, "CLIP"), "I2T R@5"] == pytest.approx(first_i2t[5])
    post_i2t, _ = brute_force_recalls(centred(images), centred(texts[::2]), np.arange(10), (1,))
    assert table.loc[(FIRST_CAPTION, "I0T_post"), "I2T R@1"] == pytest.approx(post_i2t[1])


def test_retrieval_table_of_the_starter_pack(starter_pack):
    table = retrieval_table(starter_pack, post=False)
    assert list(table.index) == [(FIRST_CAPTION, "CLIP")]
    i2t, t2i = brute_force_recalls(starter_pack.image_embeds, starter_pack.text_embeds, np.arange(500), (1, 10))
    assert table.loc[(FIRST_CAPTION, "CLIP"), "I2T R@1"] == pytest.approx(i2t[1])
    assert table.loc[(FIRST_CAPTION, "CLIP"), "T2I R@10"] == pytest.approx(t2i[10])


# Zero-shot classification ------------------------------------------------------------------


@pytest.fixture
def four_images():
    """4 images, 3 classes in 3-d, worked by hand."""
    prototypes = unit(np.eye(3))
    images = unit([[0.9, 0.1, 0.0],    # label 0, best class 0: correct
                   [0.2, 0.5, 0.6],    # label 1, ranking 2 > 1 > 0: second
                   [0.0, 0.0, 1.0],    # label 2: correct
                   [0.5, 0.3, 0.4]])   # label 1, ranking 0 > 2 > 1: third
    return images, np.array([0, 1, 2, 1]), prototypes


def test_zero_shot_accuracy_worked_by_hand(four_images):
    images, labels, prototypes = four_images
    assert zero_shot_accuracy(images, labels, prototypes, ks=(1, 2, 3)) == {1: 50.0, 2: 75.0, 3: 100.0}


def test_zero_shot_ties_count_against_the_image():
    prototypes = unit([[1.0, 0.0], [1.0, 0.0]])
    assert zero_shot_accuracy(unit([[1.0, 0.0]]), np.array([1]), prototypes, ks=(1, 2)) == {1: 0.0, 2: 100.0}


def test_zero_shot_after_post_centres_both_sides():
    rng = np.random.default_rng(5)
    prototypes = unit(rng.normal(size=(5, 6)) + 2 * np.eye(6)[0])
    labels = rng.integers(0, 5, size=40)
    images = unit(prototypes[labels] + rng.normal(scale=0.5, size=(40, 6)) - 2 * np.eye(6)[1])

    accuracy = zero_shot_accuracy(images, labels, prototypes, ks=(1,), post=True)

    predictions = np.argmax(centred(images) @ centred(prototypes).T, axis=1)
    assert accuracy[1] == pytest.approx(100 * np.mean(predictions == labels))


def test_zero_shot_table(four_images):
    images, labels, prototypes = four_images
    table = zero_shot_table(images, labels, prototypes, ks=(1, 2))
    assert list(table.index) == ["CLIP", "I0T_post"]
    assert list(table.columns) == ["top-1", "top-2"]
    assert table.loc["CLIP", "top-1"] == 50.0


@pytest.mark.parametrize("labels, error, message", [
    (np.array([0, 1, 2]), ValueError, "one entry per image"),
    (np.array([0, 1, 3, 0]), ValueError, r"must lie in \[0, 2\]"),
    (np.array([0.0, 1.0, 2.0, 1.0]), TypeError, "integer class indices"),
])
def test_zero_shot_label_errors(four_images, labels, error, message):
    images, _, prototypes = four_images
    with pytest.raises(error, match=message):
        zero_shot_accuracy(images, labels, prototypes)


def test_cifar_templates():
    assert len(CIFAR_TEMPLATES) == len(set(CIFAR_TEMPLATES)) == 18
    assert all(template.count("{}") == 1 for template in CIFAR_TEMPLATES)
    for template in ("a photo of a {}.", "a blurry photo of the {}.", "a black and white photo of a {}.",
                     "a photo of the small {}.", "a photo of a big {}.", "a good photo of the {}."):
        assert template in CIFAR_TEMPLATES
    assert len(zero_shot_templates("openai-imagenet")) == 80
    with pytest.raises(ValueError, match="unknown template set"):
        zero_shot_templates("cifar-1000")


@pytest.fixture(scope="module")
def tiny():
    return load_model(TINY_MODEL_NAME, device="cpu")


def test_class_prototypes_match_encoded_templates(tiny):
    classnames = ["cat", "rocket", "cup of coffee"]
    templates = CIFAR_TEMPLATES[:4]

    prototypes = class_prototypes(tiny, classnames, templates, classes_per_batch=2)

    expected = []
    for name in classnames:
        embeddings, _ = encode_texts(tiny, [template.format(name) for template in templates], cache=False,
                                     progress=False)
        expected.append(embeddings.mean(axis=0))
    np.testing.assert_allclose(prototypes, unit(expected), atol=1e-5)
    assert prototypes.dtype == np.float32


def test_class_prototype_errors(tiny):
    with pytest.raises(ValueError, match="classnames is empty"):
        class_prototypes(tiny, [])
    with pytest.raises(ValueError, match="needs a '{}'"):
        class_prototypes(tiny, ["cat"], ["a photo"])


class PhotoClassification:
    """A torchvision-style dataset of scikit-image photos: items (PIL image, label) and ``classes``."""

    classes = ["tabby_cat", "space_rocket", "coffee_cup"]
    photos = [("chelsea.png", 0), ("rocket.jpg", 1), ("coffee.png", 2), ("astronaut.png", 1)]

    def __len__(self):
        return len(self.photos)

    def __getitem__(self, index):
        name, label = self.photos[index]
        return Image.open(PHOTO_FOLDER / name).convert("RGB"), label


def test_evaluate_cifar100_on_a_stand_in_dataset(tiny, tmp_path):
    dataset = PhotoClassification()

    table = evaluate_cifar100(tiny, dataset=dataset, ks=(1, 2), cache_dir=tmp_path, progress=False)

    assert cifar100_classnames(dataset) == ["tabby cat", "space rocket", "coffee cup"]
    images = encode_images(tiny, [dataset[i][0] for i in range(4)], cache=False, progress=False)
    prototypes = class_prototypes(tiny, cifar100_classnames(dataset))
    labels = np.array([label for _, label in dataset.photos])
    expected = zero_shot_table(images, labels, prototypes, ks=(1, 2))
    pd.testing.assert_frame_equal(table, expected)


def test_cifar100_missing_offline(tmp_path):
    with pytest.raises(DownloadError, match="CIFAR-100 is not in"):
        load_cifar100_test(tmp_path, download=False)


# encode then evaluate, end to end ------------------------------------------------------------


def test_encode_then_evaluate_offline(tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    lines = []
    for name, caption in SAMPLE_PHOTOS.items():
        shutil.copy(PHOTO_FOLDER / name, folder / name)
        lines += [f"{name}\t{caption}\n", f"{name}\ta picture: {caption}\n"]
    (tmp_path / "captions.tsv").write_text("".join(lines), encoding="utf-8")
    pack_path = tmp_path / "photos.npz"

    assert cli_main(["encode", "--model", TINY_MODEL_NAME, "--images", str(folder), "--captions",
                     str(tmp_path / "captions.tsv"), "--out", str(pack_path), "--device", "cpu", "--quiet",
                     "--cache-dir", str(tmp_path / "cache")]) == 0
    capsys.readouterr()
    assert cli_main(["evaluate", "--pack", str(pack_path), "--post", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)

    pack = EmbeddingPack.load(pack_path)
    assert (result["n_images"], result["n_texts"]) == (len(SAMPLE_PHOTOS), 2 * len(SAMPLE_PHOTOS))
    assert set(result["recall"]) == {"all_captions", "first_caption"}
    assert set(result["recall"]["all_captions"]) == {"CLIP", "I0T_post"}
    expected_i2t, expected_t2i = brute_force_recalls(pack.image_embeds, pack.text_embeds, pack.text_image_index,
                                                     (1, 10))
    assert result["recall"]["all_captions"]["CLIP"]["I2T_R_at_1"] == pytest.approx(expected_i2t[1], abs=1e-4)
    assert result["recall"]["all_captions"]["CLIP"]["T2I_R_at_10"] == pytest.approx(expected_t2i[10], abs=1e-4)


def test_evaluate_command_table(tmp_path, capsys):
    rng = np.random.default_rng(6)
    images = unit(rng.normal(size=(8, 4)))
    EmbeddingPack(images, unit(images + rng.normal(scale=0.5, size=(8, 4))),
                  metadata={"model": "stand-in"}).save(tmp_path / "pack.npz")

    assert cli_main(["evaluate", "--pack", str(tmp_path / "pack.npz"), "--ks", "1,3"]) == 0
    printed = capsys.readouterr().out
    assert "model: stand-in   images: 8   texts: 8   dim: 4" in printed
    assert "I2T R@3" in printed and "I0T_post" not in printed


@pytest.mark.parametrize("arguments, message", [
    (["--ks", "1,x"], "--ks must be comma-separated positive integers"),
    (["--ks", "0"], "--ks must be comma-separated positive integers"),
])
def test_evaluate_command_errors(tmp_path, capsys, arguments, message):
    assert cli_main(["evaluate", "--pack", str(tmp_path / "absent.npz"), *arguments]) == 2
    assert message in capsys.readouterr().err


def test_evaluate_command_missing_pack(tmp_path, capsys):
    assert cli_main(["evaluate", "--pack", str(tmp_path / "absent.npz")]) == 2
    assert "embedding pack not found" in capsys.readouterr().err

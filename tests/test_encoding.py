"""Encoding real photos and captions with the tiny open_clip model; caches, packs, datasets, archive folders."""

import hashlib
import http.server
import json
import logging
import shutil
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from i0t_helpers import download
from i0t_helpers.cli import main as cli_main
from i0t_helpers.course import load_source, parse_live_source
from i0t_helpers.embeddings import EmbeddingPack
from i0t_helpers.encoding import (
    build_pack,
    coco_val2017_pack,
    count_truncated,
    encode_images,
    encode_texts,
    flickr8k_pack,
    pack_from_folder,
    read_captions_file,
    token_lengths,
)
from i0t_helpers.models import TINY_MODEL_NAME, load_model

skimage_data = pytest.importorskip("skimage.data")
PHOTO_FOLDER = Path(skimage_data.__file__).parent

#: Sample photos shipped by scikit-image, each with a caption written for it.
SAMPLE_PHOTOS = {
    "astronaut.png": "an astronaut in a white spacesuit in front of a flag",
    "coffee.png": "a cup of coffee on a saucer",
    "chelsea.png": "a tabby cat looking to the side",
    "rocket.jpg": "a rocket on a launch pad under a blue sky",
    "hubble_deep_field.jpg": "distant galaxies in a telescope image of deep space",
    "ihc.png": "a microscope image of stained tissue",
    "retina.jpg": "a photograph of the retina of a human eye",
    "motorcycle_left.png": "a red motorcycle parked in a workshop",
    "color.png": "a colour wheel with every hue on a black background",
    "logo.png": "an orange and green logo with a snake",
    "horse.png": "a black silhouette of a horse",
    "camera.png": "a black and white photo of a man with a camera on a tripod",
    "coins.png": "old coins on a dark background",
    "moon.png": "the grey surface of the moon",
    "text.png": "handwritten text on a board",
    "page.png": "a scanned page of printed text",
    "clock_motion.png": "a clock blurred by motion",
    "cell.png": "a bright round cell under a microscope",
    "brick.png": "a brick wall",
    "grass.png": "a close-up of grass",
    "gravel.png": "gravel seen from above",
}


def photo_paths(names=None) -> list[Path]:
    """Return the paths of scikit-image's sample photos (all of :data:`SAMPLE_PHOTOS` by default)."""
    return [PHOTO_FOLDER / name for name in (names or SAMPLE_PHOTOS)]


@pytest.fixture(scope="module")
def tiny():
    return load_model(TINY_MODEL_NAME, device="cpu")


@pytest.fixture(scope="module")
def photos():
    return photo_paths(["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "camera.png", "logo.png",
                        "horse.png"])


def _encode_by_hand(loaded, paths) -> np.ndarray:
    """Independent reference: preprocess each photo and run the image tower one image at a time."""
    rows = []
    with torch.no_grad():
        for path in paths:
            pixels = loaded.preprocess(Image.open(path).convert("RGB"))[None]
            features = loaded.model.encode_image(pixels)[0].double().numpy()
            rows.append(features / np.linalg.norm(features))
    return np.array(rows)


# Images ------------------------------------------------------------------------------------


def test_images_shape_dtype_and_unit_norm(tiny, photos):
    embeddings = encode_images(tiny, photos, batch_size=3, cache=False, progress=False)
    assert embeddings.shape == (len(photos), 64)
    assert embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-6)


def test_images_match_a_forward_pass_by_hand(tiny, photos):
    embeddings = encode_images(tiny, photos, batch_size=4, cache=False, progress=False)
    np.testing.assert_allclose(embeddings, _encode_by_hand(tiny, photos), atol=1e-5)


def test_images_are_deterministic(tiny, photos):
    first = encode_images(tiny, photos, cache=False, progress=False)
    second = encode_images(tiny, photos, cache=False, progress=False)
    assert np.array_equal(first, second)


@pytest.mark.parametrize("batch_size", [1, 5, 64])
def test_images_independent_of_batch_size(tiny, photos, batch_size):
    reference = encode_images(tiny, photos, batch_size=3, num_workers=0, cache=False, progress=False)
    embeddings = encode_images(tiny, photos, batch_size=batch_size, num_workers=0, cache=False, progress=False)
    np.testing.assert_allclose(embeddings, reference, atol=1e-6)


def test_images_through_dataloader_workers(tiny, photos):
    reference = encode_images(tiny, photos, batch_size=2, num_workers=0, cache=False, progress=False)
    with_workers = encode_images(tiny, photos, batch_size=2, num_workers=2, cache=False, progress=False)
    np.testing.assert_allclose(with_workers, reference, atol=1e-6)


def test_images_as_pil_and_arrays(tiny, photos):
    reference = encode_images(tiny, photos[:3], cache=False, progress=False)
    pil_images = [Image.open(path) for path in photos[:3]]
    arrays = [np.asarray(Image.open(path).convert("RGB")) for path in photos[:3]]
    np.testing.assert_allclose(encode_images(tiny, pil_images, cache=False, progress=False), reference, atol=1e-6)
    np.testing.assert_allclose(encode_images(tiny, arrays, cache=False, progress=False), reference, atol=1e-6)


def test_grayscale_and_rgba_photos_are_converted(tiny):
    gray = skimage_data.camera()
    assert gray.ndim == 2
    embeddings = encode_images(tiny, [gray, np.stack([gray] * 3, axis=-1)], cache=False, progress=False)
    np.testing.assert_allclose(embeddings[0], embeddings[1], atol=1e-6)


def test_image_input_errors(tiny, tmp_path):
    with pytest.raises(ValueError, match="images is empty"):
        encode_images(tiny, [], cache=False)
    with pytest.raises(FileNotFoundError, match="absent.jpg"):
        encode_images(tiny, [tmp_path / "absent.jpg"], cache=False)
    with pytest.raises(TypeError, match="single path"):
        encode_images(tiny, str(tmp_path), cache=False)
    with pytest.raises(TypeError, match="uint8"):
        encode_images(tiny, [np.zeros((8, 8, 3), dtype=np.float32)], cache=False)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read image file"):
        encode_images(tiny, [broken], cache=False, progress=False)


# Captions ----------------------------------------------------------------------------------


def test_texts_shape_dtype_unit_norm(tiny):
    captions = list(SAMPLE_PHOTOS.values())
    embeddings, n_truncated = encode_texts(tiny, captions, cache=False, progress=False)
    assert embeddings.shape == (len(captions), 64)
    assert embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-6)
    assert n_truncated == 0


def test_texts_match_a_forward_pass_by_hand(tiny):
    captions = list(SAMPLE_PHOTOS.values())[:4]
    with torch.no_grad():
        features = tiny.model.encode_text(tiny.tokenizer(captions)).double().numpy()
    expected = features / np.linalg.norm(features, axis=1, keepdims=True)
    embeddings, _ = encode_texts(tiny, captions, cache=False, progress=False)
    np.testing.assert_allclose(embeddings, expected, atol=1e-5)


@pytest.mark.parametrize("batch_size", [1, 3, 256])
def test_texts_independent_of_batch_size(tiny, batch_size):
    captions = list(SAMPLE_PHOTOS.values())
    reference, _ = encode_texts(tiny, captions, batch_size=7, cache=False, progress=False)
    embeddings, _ = encode_texts(tiny, captions, batch_size=batch_size, cache=False, progress=False)
    np.testing.assert_allclose(embeddings, reference, atol=1e-6)


def test_truncation_count_on_a_200_word_caption(tiny, caplog):
    long_caption = " ".join(["a dog runs across the green field"] * 29)[:1200]
    assert len(long_caption.split()) >= 200
    captions = ["a cat", long_caption, "a cup of coffee"]

    with caplog.at_level(logging.WARNING, logger="i0t_helpers.encoding"):
        embeddings, n_truncated = encode_texts(tiny, captions, cache=False, progress=False)

    assert n_truncated == 1
    assert embeddings.shape == (3, 64)
    assert np.isfinite(embeddings).all()
    assert "1 of 3 captions are longer than 77 tokens" in caplog.text


def test_truncation_boundary_is_the_context_length(tiny):
    """'cat' is one BPE token, so n words plus start and end tokens make n + 2 tokens."""
    assert len(tiny.tokenizer.encode("cat")) == 1
    fits = " ".join(["cat"] * 75)
    too_long = " ".join(["cat"] * 76)
    assert token_lengths(tiny.tokenizer, [fits, too_long]).tolist() == [77, 78]
    assert count_truncated(tiny.tokenizer, [fits, too_long], 77) == 1


def test_text_input_errors(tiny):
    with pytest.raises(ValueError, match="texts is empty"):
        encode_texts(tiny, [], cache=False)
    with pytest.raises(TypeError, match="single string"):
        encode_texts(tiny, "a cat", cache=False)
    with pytest.raises(TypeError, match=r"texts\[1\] is a int"):
        encode_texts(tiny, ["a cat", 3], cache=False)


# Cache -------------------------------------------------------------------------------------


def test_image_cache_miss_then_hit(tiny, photos, tmp_path, monkeypatch):
    first = encode_images(tiny, photos, cache_dir=tmp_path, progress=False)
    cache_files = list(tmp_path.glob("*.npz"))
    assert len(cache_files) == 1

    def fail(*arguments, **options):
        raise AssertionError("the model ran although the cache holds these embeddings")

    monkeypatch.setattr(tiny.model, "encode_image", fail)
    second = encode_images(tiny, photos, cache_dir=tmp_path, progress=False)
    assert np.array_equal(first, second)
    assert list(tmp_path.glob("*.npz")) == cache_files


def test_image_cache_misses_on_other_inputs_or_weights(tiny, photos, tmp_path):
    encode_images(tiny, photos, cache_dir=tmp_path, progress=False)
    encode_images(tiny, photos[:-1], cache_dir=tmp_path, progress=False)
    other_weights = load_model(TINY_MODEL_NAME, device="cpu", seed=3)
    encode_images(other_weights, photos, cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.glob("*.npz"))) == 3


def test_image_cache_misses_when_a_file_changes(tiny, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    path = folder / "photo.png"
    shutil.copy(PHOTO_FOLDER / "coffee.png", path)
    cache = tmp_path / "cache"
    before = encode_images(tiny, [path], cache_dir=cache, progress=False)
    shutil.copy(PHOTO_FOLDER / "chelsea.png", path)
    after = encode_images(tiny, [path], cache_dir=cache, progress=False)
    assert len(list(cache.glob("*.npz"))) == 2
    assert not np.allclose(before, after)


def test_text_cache_keeps_the_truncation_count(tiny, tmp_path, monkeypatch):
    captions = ["a cat", " ".join(["cat"] * 90)]
    first = encode_texts(tiny, captions, cache_dir=tmp_path, progress=False)
    monkeypatch.setattr(tiny.model, "encode_text", lambda *arguments, **options: 1 / 0)
    second = encode_texts(tiny, captions, cache_dir=tmp_path, progress=False)
    assert second.n_truncated == first.n_truncated == 1
    assert np.array_equal(first.embeddings, second.embeddings)


def test_damaged_cache_file_is_recomputed(tiny, photos, tmp_path, caplog):
    expected = encode_images(tiny, photos, cache_dir=tmp_path, progress=False)
    (cache_file,) = tmp_path.glob("*.npz")
    cache_file.write_bytes(b"damaged")
    with caplog.at_level(logging.WARNING, logger="i0t_helpers.encoding"):
        again = encode_images(tiny, photos, cache_dir=tmp_path, progress=False)
    assert np.array_equal(again, expected)
    assert "ignoring unreadable embedding cache file" in caplog.text


# Packs -------------------------------------------------------------------------------------


def test_build_pack_with_several_captions_per_image(tiny, photos, tmp_path):
    captions = ["an astronaut", "a person in a spacesuit", "a cup of coffee", "a cat", "a rocket",
                " ".join(["cat"] * 90), "a logo", "a horse"]
    index = [0, 0, 1, 2, 3, 4, 5, 6]

    pack = build_pack(tiny, photos, captions, text_image_index=index, dataset="scikit-image photos",
                      cache=False, progress=False)

    assert (pack.n_images, pack.n_texts, pack.dim) == (7, 8, 64)
    assert pack.text_image_index.tolist() == index
    assert pack.references[0] == ["an astronaut", "a person in a spacesuit"]
    assert pack.metadata["n_truncated_captions"] == 1
    assert pack.metadata["model"] == f"{TINY_MODEL_NAME} (random initialisation)"
    assert pack.metadata["dataset"] == "scikit-image photos"
    reloaded = EmbeddingPack.load(pack.save(tmp_path / "pack.npz"))
    assert np.array_equal(reloaded.text_embeds, pack.text_embeds)
    assert reloaded.metadata == pack.metadata


def test_build_pack_needs_an_index_for_unequal_counts(tiny, photos):
    with pytest.raises(ValueError, match="text_image_index"):
        build_pack(tiny, photos[:2], ["a", "b", "c"], cache=False)


def _photo_folder(tmp_path, names) -> Path:
    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    for number, name in enumerate(names):
        target = folder / ("nested" if number == 0 else "") / name
        shutil.copy(PHOTO_FOLDER / name, target)
    return folder


@pytest.mark.parametrize("layout", ["tsv", "csv", "json-dict", "json-list", "coco"])
def test_pack_from_folder_reads_every_captions_format(tiny, tmp_path, layout):
    names = ["astronaut.png", "coffee.png", "chelsea.png"]
    folder = _photo_folder(tmp_path, names)
    pairs = [("coffee.png", "a cup of coffee"), ("astronaut.png", "an astronaut"),
             ("coffee.png", "coffee on a saucer"), ("chelsea.png", "a cat")]
    captions_file = tmp_path / {"tsv": "captions.txt", "csv": "captions.csv"}.get(layout, "captions.json")
    if layout == "tsv":
        captions_file.write_text("".join(f"{image}#{k}\t{text}\n" for k, (image, text) in enumerate(pairs)),
                                 encoding="utf-8")
    elif layout == "csv":
        captions_file.write_text("image,caption\n" + "".join(f"{image},{text}\n" for image, text in pairs),
                                 encoding="utf-8")
    elif layout == "json-dict":
        grouped = {}
        for image, text in pairs:
            grouped.setdefault(image, []).append(text)
        captions_file.write_text(json.dumps(grouped), encoding="utf-8")
        pairs = [(image, text) for image, texts in grouped.items() for text in texts]
    elif layout == "json-list":
        captions_file.write_text(json.dumps([{"image": image, "caption": text} for image, text in pairs]),
                                 encoding="utf-8")
    else:
        ids = {name: number for number, name in enumerate(names, start=10)}
        coco = {"images": [{"id": ids[name], "file_name": name} for name in names],
                "annotations": [{"image_id": ids[image], "caption": text} for image, text in pairs]}
        captions_file.write_text(json.dumps(coco), encoding="utf-8")

    pack = pack_from_folder(tiny, folder, captions_file, cache=False, progress=False)

    order = list(dict.fromkeys(image for image, _ in pairs))
    assert [Path(image_id).name for image_id in pack.image_ids] == order
    assert pack.captions == [text for _, text in pairs]
    assert pack.text_image_index.tolist() == [order.index(image) for image, _ in pairs]
    expected_images = encode_images(tiny, [next(folder.rglob(name)) for name in order], cache=False,
                                    progress=False)
    np.testing.assert_allclose(pack.image_embeds, expected_images, atol=1e-6)


def test_pack_from_folder_missing_images(tiny, tmp_path):
    folder = _photo_folder(tmp_path, ["coffee.png", "chelsea.png"])
    captions_file = tmp_path / "captions.tsv"
    captions_file.write_text("coffee.png\tcoffee\nabsent.png\tnothing\nchelsea.png\ta cat\n", encoding="utf-8")

    with pytest.raises(FileNotFoundError, match="'absent.png'"):
        pack_from_folder(tiny, folder, captions_file, cache=False)
    pack = pack_from_folder(tiny, folder, captions_file, skip_missing=True, cache=False, progress=False)
    assert pack.captions == ["coffee", "a cat"]


def test_pack_from_an_image_list_file(tiny, tmp_path):
    listing = tmp_path / "images.txt"
    listing.write_text(f"{PHOTO_FOLDER / 'rocket.jpg'}\n# a comment\n{PHOTO_FOLDER / 'moon.png'}\n", encoding="utf-8")
    captions_file = tmp_path / "captions.tsv"
    captions_file.write_text("moon.png\tthe moon\nrocket.jpg\ta rocket\n", encoding="utf-8")
    pack = pack_from_folder(tiny, listing, captions_file, cache=False, progress=False)
    assert [Path(image_id).name for image_id in pack.image_ids] == ["moon.png", "rocket.jpg"]


def test_captions_file_errors(tmp_path):
    bad_lines = tmp_path / "captions.txt"
    bad_lines.write_text("photo.png a caption without a tab\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 1: expected 'image<TAB>caption'"):
        read_captions_file(bad_lines)
    bad_csv = tmp_path / "captions.csv"
    bad_csv.write_text("picture,text\nx.png,y\n", encoding="utf-8")
    with pytest.raises(ValueError, match="'caption' column"):
        read_captions_file(bad_csv)
    with pytest.raises(FileNotFoundError, match="captions file not found"):
        read_captions_file(tmp_path / "absent.tsv")


# Datasets laid out as after a download -------------------------------------------------------


def _mark_extracted(folder: Path):
    """Write the manifest that the downloader writes after extracting an archive folder."""
    n_files = sum(1 for path in folder.rglob("*") if path.is_file())
    manifest = {"archive": "test", "known_hash": "test", "prefix": "", "n_files": n_files}
    (folder / download.FOLDER_MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")


@pytest.fixture
def fake_coco(tmp_path):
    """A data folder with three photos laid out like COCO val2017 and a captions file in COCO's format."""
    data_dir = tmp_path / "data"
    images = data_dir / "coco" / "val2017"
    images.mkdir(parents=True)
    names = {7: "coffee.png", 3: "chelsea.png", 5: "rocket.jpg"}
    for image_id, name in names.items():
        shutil.copy(PHOTO_FOLDER / name, images / f"{image_id:012d}.jpg")
    _mark_extracted(images)
    annotations = [(3, "a cat"), (7, "coffee"), (3, "a tabby cat"), (5, "a rocket"), (7, "a cup of coffee"),
                   (3, "a cat looking left")]
    coco = {"images": [{"id": image_id, "file_name": f"{image_id:012d}.jpg"} for image_id in sorted(names)],
            "annotations": [{"image_id": image_id, "caption": text} for image_id, text in annotations]}
    (data_dir / "coco" / "captions_val2017.json").write_text(json.dumps(coco), encoding="utf-8")
    return data_dir


def test_coco_pack_orders_images_by_first_caption(tiny, fake_coco):
    pack = coco_val2017_pack(tiny, data_dir=fake_coco, download=False, cache=False, progress=False)
    assert pack.image_ids.tolist() == [3, 7, 5]
    assert pack.captions == ["a cat", "a tabby cat", "a cat looking left", "coffee", "a cup of coffee", "a rocket"]
    assert pack.text_image_index.tolist() == [0, 0, 0, 1, 1, 2]

    first = coco_val2017_pack(tiny, data_dir=fake_coco, captions="first", download=False, cache=False,
                              progress=False)
    last = coco_val2017_pack(tiny, data_dir=fake_coco, n_images=2, captions="last", download=False, cache=False,
                             progress=False)
    assert first.captions == ["a cat", "coffee", "a rocket"]
    assert last.captions == ["a cat looking left", "a cup of coffee"]
    assert last.references[0] == ["a cat", "a tabby cat", "a cat looking left"]
    np.testing.assert_allclose(first.image_embeds, pack.image_embeds, atol=1e-6)


def test_coco_pack_without_the_download(tiny, tmp_path):
    with pytest.raises(FileNotFoundError, match="python data_download.py get coco-val2017"):
        coco_val2017_pack(tiny, data_dir=tmp_path, download=False)


def test_flickr8k_pack_follows_the_test_split(tiny, tmp_path):
    data_dir = tmp_path / "data"
    images = data_dir / "flickr8k" / "images"
    images.mkdir(parents=True)
    for name in ("coffee.png", "chelsea.png", "rocket.jpg"):
        shutil.copy(PHOTO_FOLDER / name, images / name.replace(".png", ".jpg"))
    _mark_extracted(images)
    text = data_dir / "flickr8k"
    (text / "Flickr_8k.testImages.txt").write_text("rocket.jpg\ncoffee.jpg\n", encoding="utf-8")
    (text / "Flickr8k.token.txt").write_text(
        "coffee.jpg#0\tcoffee\ncoffee.jpg#1\ta cup\nchelsea.jpg#0\ta cat\nrocket.jpg#0\ta rocket\n"
        "rocket.jpg#1\ta launch pad\n", encoding="utf-8")
    for data_file in download.get_dataset("flickr8k-text").files:
        (data_dir / data_file.target).touch(exist_ok=True)

    pack = flickr8k_pack(tiny, data_dir=data_dir, download=False, cache=False, progress=False)

    assert pack.image_ids.tolist() == ["rocket.jpg", "coffee.jpg"]
    assert pack.captions == ["a rocket", "a launch pad", "coffee", "a cup"]
    assert pack.text_image_index.tolist() == [0, 0, 1, 1]


def test_live_source_encodes_a_dataset(fake_coco, tmp_path):
    pack = load_source(f"live:{TINY_MODEL_NAME}/none/coco-val2017:2", data_dir=fake_coco,
                       cache_dir=tmp_path / "cache", progress=False, device="cpu")
    assert pack.n_images == pack.n_texts == 2
    assert pack.captions == ["a cat", "coffee"]
    assert pack.metadata["open_clip_model"] == TINY_MODEL_NAME


@pytest.mark.parametrize("source, expected", [
    ("live:ViT-B-32/openai/coco-val2017", ("ViT-B-32", "openai", "coco-val2017", None)),
    ("live:ViT-B-16/laion2b_s34b_b88k/flickr8k-test:100", ("ViT-B-16", "laion2b_s34b_b88k", "flickr8k-test", 100)),
    ("live:ViT-B-32//models/my checkpoint.pt/coco-val2017", ("ViT-B-32", "/models/my checkpoint.pt",
                                                             "coco-val2017", None)),
])
def test_parse_live_source(source, expected):
    parts = parse_live_source(source)
    assert (parts["model"], parts["pretrained"], parts["dataset"], parts["n_images"]) == expected


@pytest.mark.parametrize("source, message", [
    ("live:ViT-B-32/openai", "looks like"),
    ("live:ViT-B-32/openai/imagenet", "unknown live dataset 'imagenet'"),
    ("live:ViT-B-32/openai/coco-val2017:many", "positive integer"),
])
def test_parse_live_source_errors(source, message):
    with pytest.raises(ValueError, match=message):
        parse_live_source(source)


def test_starter_source_is_unchanged(starter_pack):
    pack = load_source("starter")
    assert np.array_equal(pack.image_embeds, starter_pack.image_embeds)
    assert pack.n_images == 500


# The encode command ------------------------------------------------------------------------


def test_encode_command_writes_a_pack(tmp_path, capsys):
    folder = _photo_folder(tmp_path, ["astronaut.png", "coffee.png", "chelsea.png"])
    captions_file = tmp_path / "captions.tsv"
    captions_file.write_text("astronaut.png\tan astronaut\ncoffee.png\tcoffee\nchelsea.png\ta cat\n"
                             f"chelsea.png\t{' '.join(['cat'] * 100)}\n", encoding="utf-8")
    out = tmp_path / "pack.npz"

    status = cli_main(["encode", "--model", TINY_MODEL_NAME, "--pretrained", "none", "--images", str(folder),
                       "--captions", str(captions_file), "--out", str(out), "--device", "cpu",
                       "--cache-dir", str(tmp_path / "cache"), "--quiet"])

    printed = capsys.readouterr().out
    assert status == 0
    assert "encoded 3 images and 4 captions, dim 64; 1 caption(s) truncated to 77 tokens" in printed
    pack = EmbeddingPack.load(out)
    assert (pack.n_images, pack.n_texts) == (3, 4)


@pytest.mark.parametrize("arguments, message", [
    (["--images", "x"], "give --images DIR_OR_LIST and --captions FILE, or --dataset NAME"),
    (["--dataset", "coco-val2017", "--images", "x", "--captions", "y"], "not both"),
    (["--images", "x", "--captions", "y", "--n-images", "5"], "only apply with --dataset"),
])
def test_encode_command_argument_errors(tmp_path, capsys, arguments, message):
    status = cli_main(["encode", "--model", TINY_MODEL_NAME, "--out", str(tmp_path / "p.npz"), *arguments])
    assert status == 2
    assert message in capsys.readouterr().err


# Archive folders (the COCO and Flickr8k image downloads), served from loopback ----------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *arguments):
        pass


@pytest.fixture
def file_server(tmp_path):
    """An HTTP server on 127.0.0.1 serving the folder ``served/``; yields (folder, base URL)."""
    served = tmp_path / "served"
    served.mkdir()

    def handler(*arguments, **options):
        return _QuietHandler(*arguments, directory=str(served), **options)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _image_zip(path: Path, extra: dict | None = None) -> str:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("val2017/", b"")
        archive.write(PHOTO_FOLDER / "coffee.png", "val2017/000000000007.jpg")
        archive.write(PHOTO_FOLDER / "chelsea.png", "val2017/000000000003.jpg")
        archive.writestr("__MACOSX/val2017/._000000000007.jpg", b"resource fork")
        for name, content in (extra or {}).items():
            archive.writestr(name, content)
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def _register_image_dataset(monkeypatch, url: str, known_hash: str) -> download.Dataset:
    dataset = download.Dataset(
        name="test-images", description="test", licence="test", citation="test", files=(),
        archives=(download.Archive("images.zip", url, known_hash, size=0),),
        folders=(download.ArchiveFolder("images.zip", "val2017/", "test/val2017", n_files=2, suffixes=(".jpg",)),),
    )
    monkeypatch.setitem(download.DATASETS, dataset.name, dataset)
    return dataset


def test_archive_folder_download_and_extraction(file_server, tmp_path, monkeypatch):
    served, base = file_server
    known_hash = _image_zip(served / "images.zip")
    _register_image_dataset(monkeypatch, f"{base}/images.zip", known_hash)
    data_dir = tmp_path / "data"

    paths = download.fetch("test-images", data_dir=data_dir, mirror=None, progressbar=False)

    folder = data_dir / "test" / "val2017"
    assert paths == [folder]
    assert sorted(path.name for path in folder.iterdir()) == [download.FOLDER_MANIFEST, "000000000003.jpg",
                                                              "000000000007.jpg"]
    assert (folder / "000000000007.jpg").read_bytes() == (PHOTO_FOLDER / "coffee.png").read_bytes()
    assert download.verify("test-images", data_dir) == {"test/val2017/": "ok"}
    assert download.is_present("test-images", data_dir)

    (folder / "000000000003.jpg").unlink()
    assert download.verify("test-images", data_dir) == {"test/val2017/": "incomplete"}
    (served / "images.zip").unlink()  # the kept, verified archive is extracted again without a download
    download.fetch("test-images", data_dir=data_dir, mirror=None, progressbar=False)
    assert (folder / "000000000003.jpg").is_file()


def test_archive_folder_wrong_checksum_keeps_nothing(file_server, tmp_path, monkeypatch):
    served, base = file_server
    _image_zip(served / "images.zip")
    _register_image_dataset(monkeypatch, f"{base}/images.zip", "sha256:" + "0" * 64)
    monkeypatch.setattr(download, "RETRY_WAIT_SECONDS", 0.0)
    data_dir = tmp_path / "data"

    with pytest.raises(download.DownloadError, match="failed verification"):
        download.fetch("test-images", data_dir=data_dir, mirror=None, progressbar=False)
    assert not (data_dir / "test").exists()
    assert not (data_dir / "archives" / "images.zip").exists()


def test_archive_folder_missing_on_the_server(file_server, tmp_path, monkeypatch):
    _, base = file_server
    _register_image_dataset(monkeypatch, f"{base}/absent.zip", "sha256:" + "0" * 64)
    with pytest.raises(download.DownloadError, match="404"):
        download.fetch("test-images", data_dir=tmp_path / "data", mirror=None, progressbar=False)


def test_archive_folder_rejects_unsafe_members(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    (mirror / "archives").mkdir(parents=True)
    known_hash = _image_zip(mirror / "archives" / "images.zip", {"val2017/../../escape.jpg": b"x"})
    _register_image_dataset(monkeypatch, "http://127.0.0.1:9/unused.zip", known_hash)
    data_dir = tmp_path / "data"

    with pytest.raises(download.DownloadError, match="unsafe member"):
        download.fetch("test-images", data_dir=data_dir, mirror=str(mirror), progressbar=False)
    assert not (data_dir / "test").exists()
    assert not (tmp_path / "escape.jpg").exists()


def test_archive_folder_with_the_wrong_prefix(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    (mirror / "archives").mkdir(parents=True)
    archive = mirror / "archives" / "images.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("train2017/1.jpg", b"x")
    known_hash = "sha256:" + hashlib.sha256(archive.read_bytes()).hexdigest()
    _register_image_dataset(monkeypatch, "http://127.0.0.1:9/unused.zip", known_hash)

    with pytest.raises(download.DownloadError, match=r"no member below 'val2017/'.*train2017"):
        download.fetch("test-images", data_dir=tmp_path / "data", mirror=str(mirror), progressbar=False)


def test_encode_command_on_a_dataset(fake_coco, tmp_path, capsys):
    out = tmp_path / "coco.npz"
    status = cli_main(["encode", "--model", TINY_MODEL_NAME, "--dataset", "coco-val2017", "--data-dir",
                       str(fake_coco), "--n-images", "2", "--caption-choice", "first", "--out", str(out),
                       "--device", "cpu", "--no-cache", "--quiet"])
    assert status == 0, capsys.readouterr().err
    pack = EmbeddingPack.load(out)
    assert pack.captions == ["a cat", "coffee"]
    assert pack.image_ids.tolist() == [3, 7]


def test_gpu_check_script_smoke_run_on_cpu(tmp_path):
    import importlib.util

    script = Path(__file__).resolve().parent.parent / "scripts" / "gpu_check_encode.py"
    spec = importlib.util.spec_from_file_location("gpu_check_encode", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    status = module.main(["--device", "cpu", "--model", TINY_MODEL_NAME, "--batch-size", "4", "--steps", "2",
                          "--image-size", "64x48", "--json-out", str(tmp_path / "result.json")])

    result = json.loads((tmp_path / "result.json").read_text(encoding="utf-8"))
    assert status == 0
    assert result["passed"] is True
    assert result["images"] == 8
    assert set(result["measurements"]["fp32"]) == {"raw_forward_images_per_s", "pipeline_images_per_s",
                                                    "pipeline_over_raw"}

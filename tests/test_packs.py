import json
import shutil

import numpy as np
import pytest

from i0t_helpers import download
from i0t_helpers.packs import alignment_correlation, check_alignment, coco_row_order, load_pack


def test_starter_pack_shape_and_provenance(starter_pack):
    assert (starter_pack.n_images, starter_pack.n_texts, starter_pack.dim) == (500, 500, 512)
    assert "ViT-B/16" in starter_pack.model_name
    assert any("Modality-Gap" in url for url in starter_pack.metadata["source_urls"])
    assert starter_pack.metadata["licences"]["captions"] == "CC BY 4.0 (COCO)"
    assert all(len(references) >= 5 for references in starter_pack.references)


def test_starter_pack_row_captions_are_last_caption_of_each_image(starter_pack):
    assert starter_pack.image_ids[0] == 179765
    assert starter_pack.captions[0] == "A motorcycle with its brake extended standing outside"
    assert starter_pack.references[0][-1] == starter_pack.captions[0]


def test_starter_pack_peak_dimensions(starter_pack):
    image_mean = starter_pack.image_embeds.mean(axis=0)
    text_mean = starter_pack.text_embeds.mean(axis=0)
    assert int(np.argmax(np.abs(image_mean))) == 442
    assert int(np.argmax(np.abs(text_mean))) == 362
    assert image_mean[442] == pytest.approx(0.628, abs=0.005)
    assert text_mean[362] == pytest.approx(0.592, abs=0.005)


def test_alignment_check_accepts_correct_and_rejects_shifted(starter_pack):
    aligned, shifted = check_alignment(starter_pack.captions, starter_pack.text_embeds)
    assert aligned == pytest.approx(0.32, abs=0.02)
    assert abs(shifted) < 0.05
    with pytest.raises(ValueError, match="misaligned"):
        check_alignment(list(np.roll(starter_pack.captions, 1)), starter_pack.text_embeds)


def test_alignment_correlation_is_symmetric_in_shift(starter_pack):
    forward = alignment_correlation(starter_pack.captions, starter_pack.text_embeds, shift=1)
    assert forward == pytest.approx(alignment_correlation(starter_pack.captions, starter_pack.text_embeds, shift=1))


def test_coco_row_order_keeps_last_caption_in_first_appearance_order():
    annotations = [
        {"image_id": 7, "caption": "first of 7"},
        {"image_id": 3, "caption": "only of 3"},
        {"image_id": 7, "caption": "last of 7"},
        {"image_id": 9, "caption": "of 9"},
    ]
    assert coco_row_order(annotations, 2) == ([7, 3], ["last of 7", "only of 3"])
    with pytest.raises(ValueError, match="fewer than"):
        coco_row_order(annotations, 4)


def test_load_pack_unknown_name():
    with pytest.raises(ValueError, match="unknown pack 'nope'"):
        load_pack("nope")


def test_load_pack_without_download_names_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="data_download.py get starter"):
        load_pack("starter", data_dir=tmp_path, download=False)


@pytest.fixture
def local_mirror(tmp_path):
    """A copy of the starter files laid out like the mirror, built from the session's data folder."""
    mirror = tmp_path / "mirror"
    data_dir = download.default_data_dir()
    load_pack("starter")
    for data_file in download.get_dataset("starter").files:
        (mirror / data_file.target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(data_dir / data_file.target, mirror / data_file.target)
    return mirror


def test_fetch_from_mirror_builds_packs_and_verifies(tmp_path, local_mirror):
    data_dir = tmp_path / "data"
    paths = download.fetch("starter", data_dir=data_dir, mirror=local_mirror, progressbar=False)
    assert (data_dir / "packs/coco500_clip.npz") in paths
    assert set(download.verify("starter", data_dir).values()) == {"ok"}


def test_damaged_mirror_file_is_not_kept(tmp_path, local_mirror):
    data_dir = tmp_path / "data"
    target = local_mirror / "liang2022/features_clip.npy"
    target.write_bytes(target.read_bytes()[:-10])
    with pytest.raises(download.DownloadError, match="SHA-256"):
        download.fetch("starter", data_dir=data_dir, mirror=local_mirror, progressbar=False)
    assert not (data_dir / "liang2022/features_clip.npy").exists()
    assert not list((data_dir / "liang2022").glob("*.part"))


def test_good_file_survives_a_damaged_mirror(tmp_path, local_mirror):
    data_dir = tmp_path / "data"
    download.fetch("starter", data_dir=data_dir, mirror=local_mirror, progressbar=False, build=False)
    good = (data_dir / "coco/captions_val2017.json").read_bytes()
    (data_dir / "coco/captions_val2017.json").write_bytes(b"{}")  # damaged on disk
    (local_mirror / "coco/captions_val2017.json").write_bytes(b"[]")  # and damaged in the mirror
    with pytest.raises(download.DownloadError):
        download.fetch("starter", data_dir=data_dir, mirror=local_mirror, progressbar=False, build=False)
    assert download.verify("starter", data_dir)["coco/captions_val2017.json"] == "hash mismatch"
    (local_mirror / "coco/captions_val2017.json").write_bytes(good)
    download.fetch("starter", data_dir=data_dir, mirror=local_mirror, progressbar=False, build=False)
    assert json.loads((data_dir / "coco/captions_val2017.json").read_text())["annotations"]


def test_missing_mirror_file_names_the_layout(tmp_path):
    with pytest.raises(download.DownloadError, match="liang2022/features_clip.npy"):
        download.fetch("starter", data_dir=tmp_path / "data", mirror=tmp_path / "empty", progressbar=False)


def test_offline_download_names_the_mirror_option(tmp_path, monkeypatch):
    monkeypatch.setattr(download, "DOWNLOAD_RETRIES", 0)
    bad_file = download.DataFile("x/file.bin", "0" * 64, 1, url="http://127.0.0.1:9/file.bin")
    with pytest.raises(download.DownloadError, match="--mirror"):
        download._fetch_file(bad_file, tmp_path, None, progressbar=False)
    assert not (tmp_path / "x/file.bin").exists()


def test_unknown_dataset_lists_choices():
    with pytest.raises(ValueError, match="unknown dataset 'nope'; choose one of .*starter"):
        download.fetch("nope")


def test_verify_command_skips_datasets_not_downloaded(tmp_path, local_mirror, capsys):
    data_dir = tmp_path / "data"
    download.fetch("starter", data_dir=data_dir, mirror=local_mirror, progressbar=False)
    assert download.main(["--data-dir", str(data_dir), "verify"]) == 0
    output = capsys.readouterr().out
    assert "flickr8k-text: not downloaded" in output
    assert "starter: liang2022/features_clip.npy: ok" in output
    assert download.main(["--data-dir", str(data_dir), "verify", "flickr8k-text"]) == 1

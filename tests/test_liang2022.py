import numpy as np
import pytest

from i0t_helpers import EmbeddingPack
from i0t_helpers.diagnose import peak_dimensions
from i0t_helpers.download import DownloadError, get_dataset
from i0t_helpers.liang2022 import (
    MODELS,
    PACK_TARGETS,
    SOURCE_COMMIT,
    TRAINED_PACKS,
    build_liang2022_packs,
    build_pack,
    load_features,
    random_twin_name,
)
from i0t_helpers.packs import PACKS, load_pack

from .conftest import unit_rows

LICENCE_TEXT = "MIT License\n\nCopyright (c) 2022\n"


@pytest.fixture
def raw_folder(tmp_path):
    """A data folder holding small synthetic stand-ins for every feature file, and a licence file."""
    rng = np.random.default_rng(0)
    raw = tmp_path / "liang2022"
    raw.mkdir()
    for number, model in enumerate(MODELS.values()):
        features = rng.normal(size=(2, 6 + number, 8)).astype(np.float32)
        np.save(raw / model.file_name, features)
    (raw / "LICENSE").write_text(LICENCE_TEXT, encoding="utf-8")
    return tmp_path


def _liang_pack(name):
    try:
        return load_pack(name)
    except DownloadError as error:
        pytest.skip(f"{name} is not available ({error}); run: python data_download.py get liang2022-all")


# Registry --------------------------------------------------------------------------------------


def test_models_and_names():
    assert list(MODELS) == ["clip", "clip_random", "convirt", "convirt_random", "videoclip", "videoclip_random",
                            "clasp", "clasp_random"]
    assert MODELS["videoclip_random"].pack_name == "liang2022-videoclip-random"
    assert MODELS["clasp"].pack_target == "packs/liang2022_clasp.npz"
    assert TRAINED_PACKS == ("liang2022-clip", "liang2022-convirt", "liang2022-videoclip", "liang2022-clasp")
    assert all(MODELS[key].random_init == key.endswith("_random") for key in MODELS)


def test_random_twin_names():
    assert random_twin_name("starter") == "starter-random"
    assert random_twin_name("liang2022-convirt") == "liang2022-convirt-random"
    assert random_twin_name("liang2022-convirt-random") is None
    assert random_twin_name("starter-random") is None
    assert random_twin_name("my_pack.npz") is None


def test_dataset_registered_with_every_file():
    dataset = get_dataset("liang2022-all")
    targets = [data_file.target for data_file in dataset.files]

    assert len(targets) == 9
    assert "liang2022/LICENSE" in targets
    assert {f"liang2022/{model.file_name}" for model in MODELS.values()} <= set(targets)
    assert all(SOURCE_COMMIT in data_file.url for data_file in dataset.files)
    assert sorted(dataset.derived) == sorted(PACK_TARGETS.values())
    assert "MIT" in dataset.licence


def test_pack_registry_names_every_model():
    for name, target in PACK_TARGETS.items():
        assert PACKS[name] == ("liang2022-all", target)
    assert PACKS["starter"][0] == "starter"


# Building --------------------------------------------------------------------------------------


def test_build_writes_every_pack(raw_folder):
    paths = build_liang2022_packs(raw_folder)
    assert [path.relative_to(raw_folder).as_posix() for path in paths] == list(PACK_TARGETS.values())

    features = np.load(raw_folder / "liang2022" / MODELS["convirt"].file_name)
    pack = EmbeddingPack.load(raw_folder / MODELS["convirt"].pack_target)
    np.testing.assert_allclose(pack.image_embeds, unit_rows(features[0]), atol=1e-6)
    np.testing.assert_allclose(pack.text_embeds, unit_rows(features[1]), atol=1e-6)
    np.testing.assert_array_equal(pack.text_image_index, np.arange(len(features[1])))


def test_build_records_provenance(raw_folder):
    pack = build_pack(MODELS["videoclip_random"], raw_folder)
    metadata = pack.metadata

    assert metadata["random_init"] is True
    assert metadata["modalities"] == ["video", "text"]
    assert metadata["licences"] == {"embeddings": "MIT (Liang et al.)"}
    assert metadata["licence_text"] == LICENCE_TEXT
    assert metadata["source_urls"][0].endswith(f"{SOURCE_COMMIT}/Figure_1_Modality_Gap/features_videoclip_random.npy")
    assert "NeurIPS 2022" in metadata["citation"]
    assert pack.model_name.startswith("VideoCLIP")


def test_build_needs_licence(raw_folder):
    (raw_folder / "liang2022" / "LICENSE").unlink()
    with pytest.raises(FileNotFoundError, match="MIT licence must travel with the embeddings"):
        build_pack(MODELS["clip"], raw_folder)


def test_load_features_rejects_bad_files(tmp_path):
    np.save(tmp_path / "flat.npy", np.zeros((4, 8), dtype=np.float32))
    with pytest.raises(ValueError, match=r"shape \(2, n, dim\)"):
        load_features(tmp_path / "flat.npy")

    np.save(tmp_path / "ints.npy", np.zeros((2, 4, 8), dtype=np.int64))
    with pytest.raises(ValueError, match="floating-point"):
        load_features(tmp_path / "ints.npy")

    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="pickled"):
        load_features(tmp_path / "objects.npy")

    with pytest.raises(FileNotFoundError, match="get liang2022-all"):
        load_features(tmp_path / "missing.npy")


# The real files --------------------------------------------------------------------------------


@pytest.mark.parametrize("name, n_pairs, dim", [
    ("liang2022-clip", 500, 512),
    ("liang2022-convirt", 500, 512),
    ("liang2022-videoclip", 100, 768),
    ("liang2022-clasp", 99, 768),
    ("liang2022-clasp-random", 99, 768),
])
def test_real_pack_shapes(name, n_pairs, dim):
    pack = _liang_pack(name)
    assert (pack.n_images, pack.n_texts, pack.dim) == (n_pairs, n_pairs, dim)
    assert pack.metadata["licences"]["embeddings"].startswith("MIT")
    assert "Permission is hereby granted" in pack.metadata["licence_text"]


def test_real_clip_pack_equals_starter(starter_pack):
    pack = _liang_pack("liang2022-clip")
    np.testing.assert_array_equal(pack.image_embeds, starter_pack.image_embeds)
    np.testing.assert_array_equal(pack.text_embeds, starter_pack.text_embeds)


def test_real_videoclip_peaks():
    peaks = peak_dimensions(_liang_pack("liang2022-videoclip"), top=2)["image"]
    assert list(peaks["dim"]) == [308, 381]
    assert peaks["mean"].iloc[0] == pytest.approx(-0.495, abs=2e-3)

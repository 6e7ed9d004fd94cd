"""Embedding packs of the four contrastive models of Liang et al. (2022) and their random-initialisation twins.

Liang, Zhang, Kwon, Yeung and Zou ("Mind the Gap", NeurIPS 2022) published the
embeddings behind their first figure as ``features_<model>.npy`` files. Each is
a float32 array of shape (2, n, dim). Index 0 is the first modality (image,
video, medical image or protein sequence) and index 1 the paired text, so row i
of one is the partner of row i of the other. Each trained model comes with a twin of
the same architecture at random initialisation, which shows what the encoders
produce before contrastive training.

:func:`build_liang2022_packs` turns each file into an :class:`EmbeddingPack`
named ``liang2022-<model>`` (for example ``liang2022-videoclip-random``) whose
metadata records the model, the data, the source URL at a pinned commit, the
citation and the MIT licence text of the files. The files carry no captions or
ids; the ``starter`` pack holds the same CLIP embeddings with their COCO captions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .embeddings import EmbeddingPack

logger = logging.getLogger(__name__)

#: Commit of the Weixin-Liang/Modality-Gap repository that the files are pinned to.
SOURCE_COMMIT = "8e20cb24efa4c5f89aad694f2f65eb43ffc46d10"
SOURCE_URL = (
    f"https://raw.githubusercontent.com/Weixin-Liang/Modality-Gap/{SOURCE_COMMIT}/Figure_1_Modality_Gap/"
)
CITATION = (
    "Liang, Zhang, Kwon, Yeung and Zou. Mind the Gap: Understanding the Modality Gap in Multi-modal "
    "Contrastive Representation Learning. NeurIPS 2022."
)
#: Folder of the raw files below the data folder, and of the licence file beside them.
RAW_FOLDER = "liang2022"
LICENCE_FILE = "LICENSE"


@dataclass(frozen=True)
class LiangModel:
    """One model file of Liang et al. (2022): what produced it and on which data."""

    key: str
    model: str
    data: str
    modalities: tuple[str, str]
    random_init: bool

    @property
    def file_name(self) -> str:
        """Name of the raw feature file, ``features_<key>.npy``."""
        return f"features_{self.key}.npy"

    @property
    def pack_name(self) -> str:
        """Name under which :func:`i0t_helpers.load_pack` finds the pack, e.g. ``liang2022-clip-random``."""
        return "liang2022-" + self.key.replace("_", "-")

    @property
    def pack_target(self) -> str:
        """Path of the built pack below the data folder."""
        return f"packs/liang2022_{self.key}.npz"


def _model_pair(key: str, model: str, data: str, modalities: tuple[str, str]) -> tuple[LiangModel, LiangModel]:
    trained = LiangModel(key, model, data, modalities, random_init=False)
    twin = LiangModel(f"{key}_random", f"{model}, random initialisation", data, modalities, random_init=True)
    return trained, twin


#: Every model file, trained model first, then its random twin.
# NOTE: recall@1 on the ConVIRT and CLASP files is near chance (at most 0.03 with 500 and 99
# candidates), so the row pairing of those two files rests on the publishers' description alone.
MODELS: dict[str, LiangModel] = {
    model.key: model
    for pair in (
        _model_pair("clip", "CLIP ViT-B/16 (OpenAI weights)", "COCO val2017, 500 image-caption pairs",
                    ("image", "text")),
        _model_pair("convirt", "ConVIRT (Zhang et al., 2020)", "medical images and their reports, 500 pairs",
                    ("medical image", "report text")),
        _model_pair("videoclip", "VideoCLIP (Xu et al., 2021)", "video clips and their text, 100 pairs",
                    ("video", "text")),
        _model_pair("clasp", "CLASP (contrastive language and amino-acid sequence pre-training)",
                    "protein sequences and their text descriptions, 99 pairs", ("protein sequence", "text")),
    )
    for model in pair
}

#: Pack name -> path of the built pack below the data folder, for the pack registry.
PACK_TARGETS: dict[str, str] = {model.pack_name: model.pack_target for model in MODELS.values()}

#: Names of the packs of trained models, in the order CLIP, ConVIRT, VideoCLIP, CLASP.
TRAINED_PACKS: tuple[str, ...] = tuple(model.pack_name for model in MODELS.values() if not model.random_init)


def random_twin_name(pack_name: str) -> str | None:
    """Return the name of the random-initialisation twin of a named pack, or ``None`` when it has none.

    ``"starter"`` has the twin ``"starter-random"`` and ``"liang2022-<model>"``
    has ``"liang2022-<model>-random"``. Twins, unknown names and file paths
    return ``None``.
    """
    if pack_name == "starter":
        return "starter-random"
    twin = f"{pack_name}-random"
    return twin if pack_name in TRAINED_PACKS and twin in PACK_TARGETS else None


def load_features(path) -> tuple[np.ndarray, np.ndarray]:
    """Read one ``features_<model>.npy`` file and return its ``(first_modality, text)`` arrays.

    Raises ``ValueError`` unless the file contains a float array of shape (2, n, dim).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"feature file not found: {path}; run: python data_download.py get liang2022-all")
    try:
        features = np.load(path, allow_pickle=False)
    except ValueError as error:
        raise ValueError(f"{path} is not a plain .npy array (it may hold pickled objects): {error}") from None
    if features.ndim != 3 or features.shape[0] != 2:
        raise ValueError(f"{path} should hold an array of shape (2, n, dim); got shape {features.shape}")
    if not np.issubdtype(features.dtype, np.floating):
        raise ValueError(f"{path} should hold floating-point embeddings; got dtype {features.dtype}")
    return features[0], features[1]


def build_pack(model: LiangModel, data_dir) -> EmbeddingPack:
    """Build the :class:`EmbeddingPack` of one model from the raw files under ``data_dir``."""
    raw = Path(data_dir) / RAW_FOLDER
    first, texts = load_features(raw / model.file_name)
    licence_path = raw / LICENCE_FILE
    if not licence_path.is_file():
        raise FileNotFoundError(
            f"{licence_path} is missing; the MIT licence must travel with the embeddings. "
            f"Run: python data_download.py get liang2022-all"
        )
    return EmbeddingPack(
        image_embeds=first,
        text_embeds=texts,
        metadata={
            "model": model.model,
            "dataset": model.data,
            "modalities": list(model.modalities),
            "random_init": model.random_init,
            "source": f"Liang et al. (2022), Weixin-Liang/Modality-Gap at commit {SOURCE_COMMIT}",
            "source_urls": [SOURCE_URL + model.file_name],
            "citation": CITATION,
            "licences": {"embeddings": "MIT (Liang et al.)"},
            "licence_text": licence_path.read_text(encoding="utf-8"),
        },
    )


def build_liang2022_packs(data_dir) -> list[Path]:
    """Build ``packs/liang2022_<model>.npz`` for every model file under ``data_dir/liang2022``; returns the paths."""
    data_dir = Path(data_dir)
    outputs = []
    for model in MODELS.values():
        pack = build_pack(model, data_dir)
        outputs.append(pack.save(data_dir / model.pack_target))
        logger.info("built %s: %d pairs of dimension %d", model.pack_name, pack.n_texts, pack.dim)
    return outputs

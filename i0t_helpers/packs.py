"""Named embedding packs: the starter pack built from Liang et al.'s CLIP features, and pack lookup.

The starter pack pairs the 500 rows of ``features_clip.npy`` (CLIP ViT-B/16
image and text embeddings of COCO val2017, committed by Liang et al.) with their
COCO image ids and captions. The feature files carry no ids, so the row order
is reconstructed from ``captions_val2017.json``:

1. walk ``annotations`` in file order and keep a dict ``image_id -> caption``,
   where a later caption of the same image overwrites an earlier one (each image
   keeps its last caption);
2. the dict's keys, in order of first appearance, give the image of each row;
   the first 500 are the 500 rows.

The build then checks the alignment independently of CLIP: caption similarity
from TF-IDF must correlate with CLIP's text-text similarity on the aligned rows
(Pearson about 0.32) and clearly more than on rows shifted by one (about 0.02).
A misaligned result is refused.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path

import numpy as np

from .download import fetch, resolve_data_dir
from .embeddings import EmbeddingPack
from .liang2022 import PACK_TARGETS as LIANG2022_PACK_TARGETS

logger = logging.getLogger(__name__)

#: Pack name -> (dataset that builds it, path below the data folder).
PACKS: dict[str, tuple[str, str]] = {
    "starter": ("starter", "packs/coco500_clip.npz"),
    "starter-random": ("starter", "packs/coco500_clip_random.npz"),
}
PACKS.update({name: ("liang2022-all", target) for name, target in LIANG2022_PACK_TARGETS.items()})

#: Smallest TF-IDF / CLIP correlation accepted as a correct alignment.
MIN_ALIGNMENT_CORRELATION = 0.15

_LIANG_SOURCE = (
    "https://raw.githubusercontent.com/Weixin-Liang/Modality-Gap/8e20cb24efa4c5f89aad694f2f65eb43ffc46d10/"
    "Figure_1_Modality_Gap/"
)


def coco_row_order(annotations: list[dict], n_rows: int) -> tuple[list[int], list[str]]:
    """Return the image ids and captions of the first ``n_rows`` images in the Liang et al. order."""
    last_caption: dict[int, str] = {}
    for annotation in annotations:
        last_caption[annotation["image_id"]] = annotation["caption"]
    image_ids = list(last_caption)[:n_rows]
    if len(image_ids) < n_rows:
        raise ValueError(f"the captions file describes {len(image_ids)} images, fewer than the {n_rows} rows needed")
    return image_ids, [last_caption[image_id].strip() for image_id in image_ids]


def alignment_correlation(captions: list[str], text_embeds: np.ndarray, shift: int = 0) -> float:
    """Return the Pearson correlation between TF-IDF caption similarity and embedding similarity.

    With ``shift=k`` the captions are rolled by k rows first, which breaks a
    correct alignment; comparing both values tells whether rows and captions match.
    """
    from scipy.stats import pearsonr
    from sklearn.feature_extraction.text import TfidfVectorizer

    tfidf = TfidfVectorizer().fit_transform(np.roll(np.asarray(captions, dtype=object), shift))
    caption_similarity = (tfidf @ tfidf.T).toarray()
    embeds = text_embeds / np.linalg.norm(text_embeds, axis=1, keepdims=True)
    embedding_similarity = embeds @ embeds.T
    upper = np.triu_indices(len(captions), k=1)
    return float(pearsonr(caption_similarity[upper], embedding_similarity[upper])[0])


def check_alignment(captions: list[str], text_embeds: np.ndarray) -> tuple[float, float]:
    """Raise ``ValueError`` unless captions and text embeddings are aligned row by row.

    Returns the correlation on the given alignment and on the rows shifted by one.
    """
    aligned = alignment_correlation(captions, text_embeds)
    shifted = alignment_correlation(captions, text_embeds, shift=1)
    if aligned < MIN_ALIGNMENT_CORRELATION or aligned < 3 * abs(shifted):
        raise ValueError(
            f"captions and embeddings look misaligned: TF-IDF/embedding correlation {aligned:.3f} on the given rows "
            f"versus {shifted:.3f} when shifted by one row; check the row order of the captions"
        )
    return aligned, shifted


def _load_liang_features(path: Path) -> tuple[np.ndarray, np.ndarray]:
    features = np.load(path, allow_pickle=False)
    if features.ndim != 3 or features.shape[0] != 2:
        raise ValueError(f"{path} should hold an array of shape (2, n, dim); got {features.shape}")
    return features[0], features[1]


def build_coco500_packs(data_dir) -> list[Path]:
    """Build ``packs/coco500_clip.npz`` and ``packs/coco500_clip_random.npz`` from the raw starter files."""
    data_dir = resolve_data_dir(data_dir)
    with open(data_dir / "coco/captions_val2017.json", encoding="utf-8") as stream:
        coco = json.load(stream)
    n_images, n_captions = len(coco["images"]), len(coco["annotations"])
    if (n_images, n_captions) != (5000, 25014):
        raise ValueError(
            f"captions_val2017.json should describe 5,000 images and 25,014 captions; got {n_images} and {n_captions}"
        )
    all_captions: dict[int, list[str]] = defaultdict(list)
    for annotation in coco["annotations"]:
        all_captions[annotation["image_id"]].append(annotation["caption"].strip())

    outputs = []
    for model_file, pack_name, model in (
        ("features_clip.npy", "coco500_clip.npz", "CLIP ViT-B/16 (OpenAI weights)"),
        ("features_clip_random.npy", "coco500_clip_random.npz", "CLIP ViT-B/16, random initialisation"),
    ):
        images, texts = _load_liang_features(data_dir / "liang2022" / model_file)
        image_ids, captions = coco_row_order(coco["annotations"], len(images))
        if model_file == "features_clip.npy":
            aligned, shifted = check_alignment(captions, texts)
            logger.info("row alignment checked: TF-IDF correlation %.3f aligned, %.3f shifted", aligned, shifted)
        pack = EmbeddingPack(
            image_embeds=images,
            text_embeds=texts,
            captions=captions,
            image_ids=np.asarray(image_ids, dtype=np.int64),
            references=[all_captions[image_id] for image_id in image_ids],
            metadata={
                "model": model,
                "dataset": "COCO val2017, first 500 images in the order of Liang et al. (2022)",
                "modalities": ["image", "text"],
                "source_urls": [_LIANG_SOURCE + model_file, "https://cocodataset.org/#download"],
                "licences": {"embeddings": "MIT (Liang et al.)", "captions": "CC BY 4.0 (COCO)"},
            },
        )
        outputs.append(pack.save(data_dir / "packs" / pack_name))
    return outputs


def pack_path(name: str, data_dir=None) -> Path:
    """Return where the named pack lives under the data folder."""
    if name not in PACKS:
        raise ValueError(f"unknown pack {name!r}; choose one of {', '.join(sorted(PACKS))} or give a .npz path")
    return resolve_data_dir(data_dir) / PACKS[name][1]


def load_pack(name_or_path, data_dir=None, download: bool = True, mirror=None) -> EmbeddingPack:
    """Load an embedding pack by name (``"starter"``, ...) or from a ``.npz`` path.

    A named pack that is not on disk yet is fetched first with
    :func:`i0t_helpers.download.fetch` (from ``mirror`` or ``I0T_DATA_MIRROR``
    when set) unless ``download=False``.
    """
    name_or_path = str(name_or_path)
    if name_or_path in PACKS:
        path = pack_path(name_or_path, data_dir)
        if not path.is_file():
            if not download:
                raise FileNotFoundError(
                    f"pack {name_or_path!r} is not in {path.parent}; run: python data_download.py get "
                    f"{PACKS[name_or_path][0]}"
                )
            fetch(PACKS[name_or_path][0], data_dir=data_dir, mirror=mirror)
        return EmbeddingPack.load(path)
    path = Path(name_or_path).expanduser()
    if path.suffix != ".npz" and not path.exists():
        raise ValueError(f"unknown pack {name_or_path!r}; choose one of {', '.join(sorted(PACKS))} or give a .npz path")
    return EmbeddingPack.load(path)

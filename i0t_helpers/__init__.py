"""Helpers for the I0T course: measure the modality gap of CLIP-style embeddings and close it.

The main entry points:

* :class:`EmbeddingPack` and :func:`load_pack`: embeddings with their captions;
* :mod:`i0t_helpers.metrics`: centroid distance, linear separability and friends;
* :func:`recall_at_k`: cross-modal retrieval, computed in bounded memory;
* :class:`I0TPost`, :class:`MindTheGapShift`, :class:`DistributionNormalization`;
* :mod:`i0t_helpers.diagnose`: the per-dimension statistics behind the gap;
* :class:`I0TAsyncHeads` and :func:`train_cached`: I0T_async;
* :func:`clip_score`, :func:`ref_clip_score`, :func:`i0t_score`, :func:`human_correlation`: caption metrics;
* :func:`load_model`: any open_clip model, for live mode.

Names that need PyTorch or open_clip are imported on first use, so
``import i0t_helpers`` stays fast.
"""

import importlib

from .embeddings import EmbeddingPack
from .metrics import (
    centroid_distance,
    gap_report,
    gap_severity,
    linear_separability,
    matched_pair_cosine,
    matched_pair_l2,
    mean_cosines,
    relative_modality_gap,
)
from .packs import load_pack
from .post import DistributionNormalization, I0TPost, MindTheGapShift, NotFittedError
from .retrieval import recall_at_k, retrieval_ranks, retrieve_top_k

__version__ = "0.1.0"

#: Public name -> module that defines it, imported when the name is first used.
_LAZY_EXPORTS = {
    "dimension_statistics": "diagnose",
    "peak_dimensions": "diagnose",
    "peak_cosine_bound": "diagnose",
    "I0TAsyncHeads": "async_heads",
    "I0TAsyncModel": "async_heads",
    "CyCLIPLoss": "losses",
    "AsyncTrainingConfig": "training",
    "train_cached": "training",
    "train_live": "training",
    "clip_score": "caption_metrics",
    "ref_clip_score": "caption_metrics",
    "i0t_score": "caption_metrics",
    "human_correlation": "correlation",
    "load_flickr8k": "flickr8k",
    "load_model": "models",
    "encode_images": "encoding",
    "encode_texts": "encoding",
    "build_pack": "encoding",
    "pack_from_folder": "encoding",
    "dataset_pack": "encoding",
    "retrieval_table": "evaluation",
    "evaluate_cifar100": "evaluation",
}


def __getattr__(name):
    if name in _LAZY_EXPORTS:
        module = importlib.import_module(f".{_LAZY_EXPORTS[name]}", __name__)
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DistributionNormalization",
    "EmbeddingPack",
    "I0TPost",
    "MindTheGapShift",
    "NotFittedError",
    "centroid_distance",
    "gap_report",
    "gap_severity",
    "linear_separability",
    "load_pack",
    "matched_pair_cosine",
    "matched_pair_l2",
    "mean_cosines",
    "recall_at_k",
    "relative_modality_gap",
    "retrieval_ranks",
    "retrieve_top_k",
    *_LAZY_EXPORTS,
]

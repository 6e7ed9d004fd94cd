"""Helpers for the I0T course: measure the modality gap of CLIP-style embeddings and close it.

The main entry points:

* :class:`EmbeddingPack` and :func:`load_pack`: embeddings with their captions;
* :mod:`i0t_helpers.metrics`: centroid distance, linear separability and friends;
* :func:`recall_at_k`: cross-modal retrieval, computed in bounded memory;
* :class:`I0TPost`, :class:`MindTheGapShift`, :class:`DistributionNormalization`.
"""

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
from .retrieval import recall_at_k, retrieval_ranks

__version__ = "0.1.0"

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
]

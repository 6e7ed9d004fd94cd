"""Checkers for the exercises of notebook 05 (I0T-Score as a caption metric)."""

from __future__ import annotations

import numpy as np

from ..caption_metrics import (
    TORCHMETRICS_CLIP_SCORE_WEIGHT,
    clip_score,
    hard_negative_indices,
    i0t_score,
    pairwise_accuracy,
    score_matrix,
)
from ..correlation import kendall_tau
from ..embeddings import EmbeddingPack
from ..flickr8k import BENCHMARKS, HumanJudgments
from ._check import close_to, report


def check_torchmetrics_scale(answer, pack: EmbeddingPack) -> bool:
    """Exercise 1: the mean CLIP-S of the matched pairs of ``pack`` on torchmetrics' 0-100 scale, 2 decimals."""
    expected = float(clip_score(pack.image_embeds, pack.text_embeds, pack.text_image_index,
                                w=TORCHMETRICS_CLIP_SCORE_WEIGHT).mean())
    return report(close_to(answer, expected, 5e-3),
                  "torchmetrics uses w = 100 instead of 2.5; pass w=100 to clip_score and average")


def check_negative_share_after_i0t(answer, pack: EmbeddingPack) -> bool:
    """Exercise 2: the share of mismatched pairs (image i, caption i + 1) with a negative I0T-S, 3 decimals.

    Means of I0T_post come from the whole pack (all images and captions).
    """
    scores = score_matrix(pack.image_embeds, pack.text_embeds, "i0t")
    shifted = (np.arange(pack.n_images) + 1) % pack.n_texts
    expected = float(np.mean(scores[np.arange(pack.n_images), shifted] < 0))
    return report(close_to(answer, expected, 5e-4),
                  "score_matrix(images, texts, 'i0t')[i, (i + 1) % n], then the share below zero")


def check_hard_negative_accuracy(answer, pack: EmbeddingPack) -> bool:
    """Exercise 3: pairwise accuracy of the official-code I0T-S, correct caption against the hard negative, 3 decimals."""
    n = pack.n_images
    hard = hard_negative_indices(pack.captions)
    correct = i0t_score(pack.image_embeds, pack.text_embeds, variant="official-code")
    negative = i0t_score(pack.image_embeds, pack.text_embeds[hard], np.arange(n), variant="official-code",
                         post=_post_of(pack))
    expected = pairwise_accuracy(correct, negative, np.ones(n)).accuracy
    return report(close_to(answer, expected, 5e-4),
                  "score both candidates with variant='official-code' and the same I0T_post means (fitted on the "
                  "whole pack), then call pairwise_accuracy with ties counting half")


def _post_of(pack: EmbeddingPack):
    from ..post import I0TPost

    return I0TPost().fit(pack.image_embeds, pack.text_embeds)


def check_length_baseline_tau(answer, judgments: HumanJudgments) -> bool:
    """Exercise 4: Kendall tau in the benchmark's usual variant for a "number of words" baseline, 3 decimals."""
    lengths = judgments.pairs["candidate"].str.split().str.len().to_numpy(dtype=float)
    variant = BENCHMARKS.get(judgments.name, judgments.tau_variant) or "b"
    expected = kendall_tau(lengths[judgments.judgment_pair_index], judgments.ratings, variant)
    return report(close_to(answer, expected, 5e-4),
                  f"score each pair by len(candidate.split()) and call judgments.correlate; read Kendall "
                  f"tau-{variant}")


def check_conventional_variant(answer, benchmark: str = "flickr8k-cf") -> bool:
    """Exercise 5: which Kendall variant ("b" or "c") is customarily reported on ``benchmark``."""
    expected = BENCHMARKS[benchmark]
    normalised_answer = str(answer).lower().replace("tau", "").replace("-", "").replace("_", "").strip()
    return report(normalised_answer == expected,
                  "Hessel et al. (2021) report Flickr8k-Expert with tau-c and CF with tau-b")

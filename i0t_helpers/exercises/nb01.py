"""Checkers for the exercises of notebook 01 (measure the gap)."""

from __future__ import annotations

import numpy as np

from ..embeddings import EmbeddingPack
from ..experiments import shift_sweep
from ..metrics import centroid_distance, linear_separability
from ._check import close_to, report


def check_matched_cosine(answer, pack: EmbeddingPack) -> bool:
    """Exercise 1: the mean cosine of matched image-caption pairs, to 3 decimals."""
    images, texts = pack.paired()
    expected = float(np.mean(np.sum(images.astype(np.float64) * texts, axis=1)))
    return report(close_to(answer, expected, 5e-4),
                  "take the row-wise dot product of pack.paired() images and texts, then the mean")


def check_half_gap(answer, pack: EmbeddingPack) -> bool:
    """Exercise 2: the centroid distance on the first half of the images only, to 3 decimals."""
    half = pack.subset(slice(0, pack.n_images // 2))
    expected = centroid_distance(half.image_embeds, half.text_embeds)
    return report(close_to(answer, expected, 5e-4), "use pack.subset(slice(0, pack.n_images // 2))")


def check_best_shift_lambda(answer, pack: EmbeddingPack, lambdas=(0.0, 0.25, 0.5, 0.75, 1.0)) -> bool:
    """Exercise 3: which lambda of the Mind-the-Gap shift gives the highest image-to-text recall@1."""
    sweep = shift_sweep(pack, lambdas)
    expected = float(sweep.loc[sweep["recall_at_1_i2t"].idxmax(), "lambda"])
    return report(close_to(answer, expected, 1e-9),
                  "run shift_sweep(pack, lambdas) and read the lambda of the largest recall_at_1_i2t")


def check_separability_after_shift(answer, pack: EmbeddingPack) -> bool:
    """Exercise 4: linear separability after a full shift (lambda 1), to 2 decimals."""
    from ..post import MindTheGapShift

    images, texts = MindTheGapShift(lambda_=1.0).fit_transform(pack.image_embeds, pack.text_embeds)
    expected = linear_separability(images, texts)
    return report(close_to(answer, expected, 5e-3),
                  "transform with MindTheGapShift(lambda_=1.0), then call linear_separability")

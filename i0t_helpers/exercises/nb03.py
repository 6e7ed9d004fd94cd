"""Checkers for the exercises of notebook 03 (I0T_post)."""

from __future__ import annotations

from ..embeddings import EmbeddingPack
from ..experiments import compare_fit_sources, sample_size_curve
from ..metrics import centroid_distance
from ..post import I0TPost
from ._check import close_to, report


def check_gap_after_post_on_texts_only(answer, pack: EmbeddingPack) -> bool:
    """Exercise 1: the centroid distance when only the texts are centred (images left raw), 3 decimals."""
    post = I0TPost().fit(pack.image_embeds, pack.text_embeds)
    expected = centroid_distance(pack.image_embeds, post.transform_texts(pack.text_embeds))
    return report(close_to(answer, expected, 5e-4),
                  "compare pack.image_embeds with post.transform_texts(pack.text_embeds)")


def check_smallest_good_sample(answer, pack: EmbeddingPack, sizes=(8, 16, 32, 64, 128, 256), target: float = 0.1):
    """Exercise 2: the smallest number of fitting images among ``sizes`` that brings the gap under ``target``."""
    curve = sample_size_curve(pack, sizes)
    below = curve[(curve["method"] == "I0T_post") & (curve["centroid_distance"] < target)]
    expected = int(below["fit_images"].min()) if len(below) else None
    correct = expected is not None and close_to(answer, expected, 0)
    return report(correct, "run sample_size_curve(pack, sizes) and find the first size below the target")


def check_reversed_split(answer, pack: EmbeddingPack) -> bool:
    """Exercise 3: fit on the last 100 images, evaluate on the first 400: the centroid distance, 3 decimals."""
    n = pack.n_images
    table = compare_fit_sources(pack, slice(n - 100, n), slice(0, n - 100))
    expected = float(table.loc["I0T_post, means from fitting rows", "centroid_distance"])
    return report(close_to(answer, expected, 5e-4),
                  "compare_fit_sources(pack, slice(n - 100, n), slice(0, n - 100)), the fitting-rows line")

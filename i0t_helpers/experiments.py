"""Small experiments of the course that compare ways of fitting I0T_post and its baselines.

Each function returns a pandas DataFrame, so notebooks show, plot and test the
same numbers.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._validation import check_positive_int
from .embeddings import EmbeddingPack
from .metrics import centroid_distance, linear_separability
from .post import DistributionNormalization, I0TPost, MindTheGapShift
from .retrieval import recall_at_k


def evaluate_embeddings(image_embeds, text_embeds, text_image_index=None, ks=(1, 5, 10),
                        with_separability: bool = False) -> dict:
    """Return the centroid distance and recall@k (both directions) of one set of embeddings.

    With ``with_separability=True`` the held-out linear separability is added
    (it fits a logistic regression, so it is slower).
    """
    recalls = recall_at_k(image_embeds, text_embeds, text_image_index, ks=ks)
    result = {"centroid_distance": centroid_distance(image_embeds, text_embeds)}
    if with_separability:
        result["linear_separability"] = linear_separability(image_embeds, text_embeds)
    for direction in ("i2t", "t2i"):
        for k, value in recalls[direction].items():
            result[f"recall_at_{k}_{direction}"] = value
    return result


def sample_size_curve(pack: EmbeddingPack, sizes, ks=(1,), seed: int | None = None) -> pd.DataFrame:
    """Fit I0T_post means on the first k images (and their texts), evaluate on the whole pack.

    This mirrors Table 3 of An et al. (2025), where the means come from the first
    k test samples. With ``seed`` set, k random images are used instead of the
    first k. One row per size, plus a ``raw`` row without I0T_post.
    """
    rows = [{"fit_images": 0, "method": "raw",
             **evaluate_embeddings(pack.image_embeds, pack.text_embeds, pack.text_image_index, ks)}]
    order = np.arange(pack.n_images) if seed is None else np.random.default_rng(seed).permutation(pack.n_images)
    for size in sizes:
        size = check_positive_int(size, "size")
        if size > pack.n_images:
            raise ValueError(f"size {size} is larger than the pack's {pack.n_images} images")
        fit_pack = pack.subset(np.sort(order[:size]))
        post = I0TPost().fit(fit_pack.image_embeds, fit_pack.text_embeds)
        images, texts = post.transform(pack.image_embeds, pack.text_embeds)
        rows.append({"fit_images": size, "method": "I0T_post",
                     **evaluate_embeddings(images, texts, pack.text_image_index, ks)})
    return pd.DataFrame(rows)


def _rows(selector, n_images: int) -> np.ndarray:
    rows = np.arange(n_images)[selector]
    if rows.size == 0:
        raise ValueError(f"row selection {selector!r} selects no image out of {n_images}")
    return rows


def compare_fit_sources(pack: EmbeddingPack, fit_rows, eval_rows, ks=(1, 5, 10),
                        shift_lambda: float = 0.375, dn_lambda: float = 0.25) -> pd.DataFrame:
    """Evaluate on ``eval_rows`` with means fitted on ``fit_rows`` versus on ``eval_rows`` themselves.

    Rows of the result: raw embeddings; I0T_post with means from the fitting
    rows (no test statistics); I0T_post with means from the evaluated rows (the
    paper's protocol, which uses test statistics); the Mind-the-Gap shift and
    Distribution Normalization, both fitted on the fitting rows.
    """
    fit_pack = pack.subset(_rows(fit_rows, pack.n_images))
    eval_pack = pack.subset(_rows(eval_rows, pack.n_images))
    images, texts, index = eval_pack.image_embeds, eval_pack.text_embeds, eval_pack.text_image_index

    candidates = {
        "raw": None,
        "I0T_post, means from fitting rows": I0TPost().fit(fit_pack.image_embeds, fit_pack.text_embeds),
        "I0T_post, means from evaluated rows": I0TPost().fit(images, texts),
        f"Mind-the-Gap shift (lambda {shift_lambda})": MindTheGapShift(shift_lambda).fit(
            fit_pack.image_embeds, fit_pack.text_embeds),
        f"Distribution Normalization (lambda {dn_lambda})": DistributionNormalization(dn_lambda).fit(
            fit_pack.image_embeds, fit_pack.text_embeds),
    }
    rows = []
    for name, transformer in candidates.items():
        transformed = (images, texts) if transformer is None else transformer.transform(images, texts)
        rows.append({"method": name, **evaluate_embeddings(*transformed, index, ks)})
    return pd.DataFrame(rows).set_index("method")


def shift_sweep(pack: EmbeddingPack, lambdas, ks=(1,)) -> pd.DataFrame:
    """Apply the Mind-the-Gap shift for each lambda and report the gap and recall@k."""
    rows = []
    for lambda_ in lambdas:
        shift = MindTheGapShift(lambda_=float(lambda_)).fit(pack.image_embeds, pack.text_embeds)
        images, texts = shift.transform(pack.image_embeds, pack.text_embeds)
        rows.append({"lambda": float(lambda_), **evaluate_embeddings(images, texts, pack.text_image_index, ks)})
    return pd.DataFrame(rows)

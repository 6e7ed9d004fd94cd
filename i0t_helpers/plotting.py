"""Figures of the course: both modalities in 2-D, cosine histograms, before/after panels.

Every function draws on a matplotlib ``Axes`` (created when ``ax`` is None) and
returns it, so figures compose into panels and notebooks stay short.
"""

from __future__ import annotations

import numpy as np

from ._validation import check_embedding_pair

IMAGE_COLOR = "#1f77b4"
TEXT_COLOR = "#d62728"


def _axes(ax):
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 4))
    return ax


def plot_pca(image_embeds, text_embeds, ax=None, title: str = "PCA of both modalities", connect_pairs: int = 0,
             random_state: int = 0):
    """Project images and texts together onto their first two principal components.

    The PCA is fitted on the union of both modalities, so a modality gap shows
    as two separate clouds. ``connect_pairs`` draws lines between the first n
    matched pairs (row i of images with row i of texts).
    """
    from sklearn.decomposition import PCA

    images, texts = check_embedding_pair(image_embeds, text_embeds)
    projection = PCA(n_components=2, random_state=random_state).fit(np.concatenate([images, texts]))
    image_points, text_points = projection.transform(images), projection.transform(texts)
    ax = _axes(ax)
    for row in range(min(connect_pairs, len(images), len(texts))):
        ax.plot([image_points[row, 0], text_points[row, 0]], [image_points[row, 1], text_points[row, 1]],
                color="0.7", linewidth=0.5, zorder=1)
    ax.scatter(*image_points.T, s=8, alpha=0.7, color=IMAGE_COLOR, label="images", zorder=2)
    ax.scatter(*text_points.T, s=8, alpha=0.7, color=TEXT_COLOR, label="texts", zorder=2)
    explained = projection.explained_variance_ratio_
    ax.set_xlabel(f"PC 1 ({explained[0]:.0%} of variance)")
    ax.set_ylabel(f"PC 2 ({explained[1]:.0%} of variance)")
    ax.set_title(title)
    ax.legend(loc="best", frameon=True)
    return ax


def cosine_groups(image_embeds, text_embeds) -> dict[str, np.ndarray]:
    """Return the cosine similarities of matched pairs, unmatched pairs, image-image and text-text pairs.

    Row i of images is matched with row i of texts; the unmatched, image-image
    and text-text groups use distinct pairs (the upper triangle).
    """
    images, texts = check_embedding_pair(image_embeds, text_embeds, paired=True)
    cross = images @ texts.T
    upper = np.triu_indices(len(images), k=1)
    off_diagonal = ~np.eye(len(images), dtype=bool)
    return {
        "matched image-text": np.diag(cross).copy(),
        "unmatched image-text": cross[off_diagonal],
        "image-image": (images @ images.T)[upper],
        "text-text": (texts @ texts.T)[upper],
    }


def plot_cosine_histograms(image_embeds, text_embeds, ax=None, title: str = "Cosine similarities",
                           groups=("matched image-text", "unmatched image-text", "image-image", "text-text")):
    """Draw density histograms of the cosine groups of :func:`cosine_groups` on one axis."""
    import seaborn as sns

    values = cosine_groups(image_embeds, text_embeds)
    ax = _axes(ax)
    for name in groups:
        sns.histplot(values[name], bins=60, stat="density", element="step", fill=False, ax=ax, label=name)
    ax.set_xlabel("cosine similarity")
    ax.set_title(title)
    ax.legend(loc="best", fontsize="small")
    return ax


def plot_before_after(before: tuple, after: tuple, kind: str = "pca", titles=("raw", "after I0T_post")):
    """Draw the same figure for two versions of the embeddings side by side; returns the figure.

    ``before`` and ``after`` are ``(image_embeds, text_embeds)`` tuples; ``kind``
    is ``"pca"`` or ``"cosines"``.
    """
    import matplotlib.pyplot as plt

    draw = {"pca": plot_pca, "cosines": plot_cosine_histograms}
    if kind not in draw:
        raise ValueError(f"kind must be one of {sorted(draw)}, got {kind!r}")
    figure, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=(kind == "cosines"))
    for ax, embeddings, title in zip(axes, (before, after), titles):
        draw[kind](*embeddings, ax=ax, title=title)
    figure.tight_layout()
    return figure

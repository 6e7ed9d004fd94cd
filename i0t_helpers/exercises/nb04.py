"""Checkers for the exercises of notebook 04 (I0T_async training)."""

from __future__ import annotations

import numpy as np
import torch

from ..async_heads import I0TAsyncHeads
from ..embeddings import EmbeddingPack
from ..training import epoch_batches
from ._check import close_to, report


def check_trainable_parameters(answer, embed_dim: int = 768) -> bool:
    """Exercise 1: the number of trainable parameters of I0T_async heads for a model of dimension ``embed_dim``."""
    expected = I0TAsyncHeads(embed_dim).trainable_parameter_count()
    return report(close_to(answer, expected, 0.5),
                  "each modality has one BatchNorm1d with a weight and a bias per dimension")


def check_running_mean_fraction(answer, steps: int = 9, momentum: float = 0.1) -> bool:
    """Exercise 2: the fraction of a constant batch mean in the running mean after ``steps`` steps, 3 decimals.

    Computed by running a BatchNorm1d on ``steps`` identical batches whose mean is 1.
    """
    norm = torch.nn.BatchNorm1d(1, momentum=momentum).train()
    batch = torch.tensor([[0.0], [2.0]])
    with torch.no_grad():
        for _ in range(steps):
            norm(batch)
    expected = float(norm.running_mean[0])
    return report(close_to(answer, expected, 5e-4),
                  f"the running mean starts at 0 and moves a fraction {momentum} of the way to the batch mean "
                  f"at each step, so the part still missing shrinks by a factor {1 - momentum} per step")


def check_variance_sum(answer, pack: EmbeddingPack, rows=slice(0, 400)) -> bool:
    """Exercise 3: the sum of the per-dimension population variances of the image embeddings of ``rows``, 3 decimals."""
    images = pack.subset(rows).image_embeds.astype(np.float64)
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    expected = float(images.var(axis=0).sum())
    return report(close_to(answer, expected, 5e-4),
                  "for unit vectors the variances sum to 1 - ||mean||^2; or sum images.var(axis=0) directly")


def check_training_steps(answer, n_pairs: int = 400, batch_size: int = 64, epochs: int = 3) -> bool:
    """Exercise 4: optimisation steps of ``epochs`` epochs on ``n_pairs`` pairs with the last short batch dropped."""
    expected = sum(len(epoch_batches(n_pairs, batch_size, seed=0, epoch=epoch)) for epoch in range(epochs))
    return report(close_to(answer, expected, 0.5),
                  "each epoch has floor(n_pairs / batch_size) full batches; the incomplete one is dropped")

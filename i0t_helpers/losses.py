"""Losses of I0T_async training: CLIP InfoNCE plus the two CyCLIP consistency terms.

For a batch of B matched, L2-normalised image embeddings ``I`` and text
embeddings ``T`` (rows are pairs), CyCLIP (Goel et al., NeurIPS 2022) adds two
terms to CLIP's symmetric InfoNCE loss::

    in-modal     = B * mean((I I^T - T T^T)^2)
    cross-modal  = B * mean((I T^T - T I^T)^2)
    loss         = InfoNCE(scale * I T^T) + w_in * in-modal + w_cross * cross-modal

with ``w_in = w_cross = 0.25`` and a fixed ``scale = 100`` in An et al. (2025).
The cyclic terms compare cosine matrices (CyCLIP's code divides the scaled
logits by ``scale**2``), and ``B * mean`` equals ``sum / B``.

InfoNCE is ``open_clip.ClipLoss`` on one device. Under DistributedDataParallel
the training loop gathers the features of every rank first and then calls
these losses on the whole batch.
"""

from __future__ import annotations

import torch
from torch import nn


def _check_pair(image_features, text_features):
    for name, features in (("image_features", image_features), ("text_features", text_features)):
        if not isinstance(features, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(features).__name__}")
        if features.ndim != 2:
            raise ValueError(f"{name} must have shape (batch, dim); got shape {tuple(features.shape)}")
    if image_features.shape != text_features.shape:
        raise ValueError(
            f"image_features and text_features must be matched pairs of the same shape; got "
            f"{tuple(image_features.shape)} and {tuple(text_features.shape)}"
        )
    if image_features.shape[0] < 2:
        raise ValueError(f"a contrastive loss needs at least 2 pairs per batch, got {image_features.shape[0]}")


def cyclic_terms(image_features: torch.Tensor, text_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Compute CyCLIP's in-modal and cross-modal cyclic consistency terms.

    ::

        in_modal    = B * mean((I I^T - T T^T)^2)
        cross_modal = B * mean((I T^T - T I^T)^2)

    Inputs are used as given (normalise them first). Both terms are 0 when the
    image and text similarity structures agree; the cross-modal term is 0
    whenever ``I T^T`` is symmetric.
    """
    _check_pair(image_features, text_features)
    batch_size = image_features.shape[0]
    image_image = image_features @ image_features.T
    text_text = text_features @ text_features.T
    image_text = image_features @ text_features.T
    in_modal = (image_image - text_text).square().mean() * batch_size
    cross_modal = (image_text - image_text.T).square().mean() * batch_size
    return in_modal, cross_modal


class CyCLIPLoss(nn.Module):
    """CLIP InfoNCE (``open_clip.ClipLoss``) plus the weighted CyCLIP terms.

    ``loss = InfoNCE(logit_scale * I T^T) + inmodal_weight * in_modal + crossmodal_weight * cross_modal``;
    see :func:`cyclic_terms`.

    Parameters
    ----------
    inmodal_weight, crossmodal_weight : float, default 0.25
        Weights of the two cyclic terms (An et al., 2025, following Goel et al., 2022).

    Examples
    --------
    >>> import torch, torch.nn.functional as F
    >>> features = F.normalize(torch.eye(3), dim=1)
    >>> parts = CyCLIPLoss()(features, features, 100.0, output_dict=True)
    >>> round(float(parts["inmodal_cyclic_loss"]), 4), round(float(parts["crossmodal_cyclic_loss"]), 4)
    (0.0, 0.0)
    """

    def __init__(self, inmodal_weight: float = 0.25, crossmodal_weight: float = 0.25):
        super().__init__()
        from open_clip import ClipLoss

        for name, value in (("inmodal_weight", inmodal_weight), ("crossmodal_weight", crossmodal_weight)):
            if not (isinstance(value, (int, float)) and value >= 0):
                raise ValueError(f"{name} must be a non-negative number, got {value!r}")
        self.inmodal_weight = float(inmodal_weight)
        self.crossmodal_weight = float(crossmodal_weight)
        self.clip_loss = ClipLoss()

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale,
                output_dict: bool = False):
        """Return the total loss, or with ``output_dict=True`` a dict of the total and its three parts."""
        _check_pair(image_features, text_features)
        image_features = image_features.float()
        text_features = text_features.float()
        contrastive = self.clip_loss(image_features, text_features, logit_scale)
        in_modal, cross_modal = cyclic_terms(image_features, text_features)
        total = contrastive + self.inmodal_weight * in_modal + self.crossmodal_weight * cross_modal
        if output_dict:
            return {"loss": total, "contrastive_loss": contrastive, "inmodal_cyclic_loss": in_modal,
                    "crossmodal_cyclic_loss": cross_modal}
        return total

    def extra_repr(self) -> str:
        return f"inmodal_weight={self.inmodal_weight}, crossmodal_weight={self.crossmodal_weight}"


def mcsie_loss(loss: nn.Module, image_views, text_views, logit_scale) -> torch.Tensor:
    """Average a pairwise loss over every (image view, text view) pairing (MCSIE).

    With two dropout encodings per side, ``(I1, I2)`` and ``(T1, T2)``, this is
    ``(L(I1, T1) + L(I1, T2) + L(I2, T1) + L(I2, T2)) / 4``.
    """
    if len(image_views) == 0 or len(image_views) != len(text_views):
        raise ValueError(
            f"mcsie_loss needs the same non-zero number of image and text views; got {len(image_views)} and "
            f"{len(text_views)}"
        )
    total = 0.0
    for image_features in image_views:
        for text_features in text_views:
            total = total + loss(image_features, text_features, logit_scale)
    return total / (len(image_views) * len(text_views))

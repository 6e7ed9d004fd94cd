"""I0T_async: trainable BatchNorm heads on top of frozen CLIP towers (An et al., 2025).

Each tower's output passes through its own head::

    head(z) = normalize(BN(normalize(z)))

where ``BN`` is a ``torch.nn.BatchNorm1d(embed_dim)`` with PyTorch's defaults
(affine weight and bias, running statistics with momentum 0.1, eps 1e-5). In
training mode BN standardises with the statistics of the current batch and
updates its running mean and variance. In eval mode it uses the running
statistics, so at inference each embedding is transformed on its own::

    head(z) = normalize((normalize(z) - running_mean) / sqrt(running_var + eps) * weight + bias)

An et al. (2025) train the heads in a second phase with every other weight
frozen ("asynchronous" training). Two heads of dimension 512 hold 2,048
trainable numbers (a weight and a bias per dimension and modality) plus 2,048
running statistics.

:class:`I0TAsyncModel` puts the heads on an open_clip model and exposes
``encode_image`` / ``encode_text`` like open_clip does, so retrieval and
scoring code runs on it unchanged.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ._validation import check_embeddings, check_positive_int

logger = logging.getLogger(__name__)

#: Version of the layout written by :meth:`I0TAsyncHeads.save`.
HEADS_FORMAT_VERSION = 1

#: The ``format`` entry of a saved heads file.
HEADS_FORMAT_NAME = "i0t_async_heads"

#: Logit scale of the I0T_async loss, fixed and never trained (log 100 = 4.6052).
FIXED_LOGIT_SCALE = 100.0


def _check_features(features, name: str, embed_dim: int, training: bool) -> torch.Tensor:
    """Validate a batch of tower features and return it as float32."""
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (batch, {embed_dim}), got {type(features).__name__}")
    if features.ndim != 2:
        raise ValueError(
            f"{name} must have shape (batch, {embed_dim}); got shape {tuple(features.shape)}. "
            f"Reshape a single embedding with x[None, :]."
        )
    if features.shape[1] != embed_dim:
        raise ValueError(
            f"{name} has dimension {features.shape[1]}, but the heads were built for dimension {embed_dim}; "
            f"create I0TAsyncHeads({features.shape[1]}) for this model"
        )
    if not features.is_floating_point():
        raise TypeError(f"{name} must hold floating-point embeddings, got dtype {features.dtype}")
    if training and features.shape[0] < 2:
        raise ValueError(
            f"{name} has {features.shape[0]} row(s); in training mode BatchNorm needs at least 2 rows per batch "
            f"to compute a variance. Call .eval() to transform single embeddings with the running statistics."
        )
    # BatchNorm of half-precision features loses digits the heads need, so they always run in float32.
    return features.float()


class I0TAsyncHeads(nn.Module):
    """Normalise image and text embeddings with one BatchNorm1d per modality (I0T_async).

    For tower output ``z`` of either modality::

        head(z) = normalize(BN(normalize(z)))

    In training mode ``BN`` uses the batch mean and (biased) batch variance and
    updates ``running_mean`` and ``running_var`` (the unbiased batch variance)
    with ``momentum``. In eval mode it uses the running statistics::

        BN(u) = (u - running_mean) / sqrt(running_var + eps) * weight + bias

    With ``weight = 1`` and ``bias = 0`` this is a per-dimension z-score with
    the running statistics, followed by re-normalisation; :meth:`from_statistics`
    builds exactly that from a set of embeddings.

    Parameters
    ----------
    embed_dim : int
        Dimension of the tower outputs (512 for CLIP ViT-B/32 and ViT-B/16).
    eps : float, default 1e-5
        Added to the variance before the square root (PyTorch's default).
    momentum : float, default 0.1
        Weight of the newest batch in the running statistics (PyTorch's default).
    model_name : str, default "unknown"
        The encoder the heads belong to, stored by :meth:`save` and checked by :meth:`load`.

    Attributes
    ----------
    image_norm, text_norm : torch.nn.BatchNorm1d
        The head of each modality.

    Examples
    --------
    >>> import torch
    >>> heads = I0TAsyncHeads(8)
    >>> heads.trainable_parameter_count()
    32
    >>> images, texts = heads(torch.randn(4, 8), torch.randn(4, 8))
    >>> images.shape, round(float(images.norm(dim=1).mean()), 4)
    (torch.Size([4, 8]), 1.0)
    """

    def __init__(self, embed_dim: int, eps: float = 1e-5, momentum: float = 0.1, model_name: str = "unknown"):
        super().__init__()
        self.embed_dim = check_positive_int(embed_dim, "embed_dim")
        if not (isinstance(eps, (int, float)) and eps > 0):
            raise ValueError(f"eps must be a positive number, got {eps!r}")
        if not (isinstance(momentum, (int, float)) and 0 < momentum <= 1):
            raise ValueError(f"momentum must lie in (0, 1], got {momentum!r}")
        if not isinstance(model_name, str) or not model_name:
            raise ValueError(f"model_name must be a non-empty string, got {model_name!r}")
        self.model_name = model_name
        self.image_norm = nn.BatchNorm1d(self.embed_dim, eps=float(eps), momentum=float(momentum))
        self.text_norm = nn.BatchNorm1d(self.embed_dim, eps=float(eps), momentum=float(momentum))

    def normalize_images(self, image_features: torch.Tensor) -> torch.Tensor:
        """Apply the image head: ``normalize(BN_image(normalize(z)))``, in float32."""
        features = _check_features(image_features, "image_features", self.embed_dim, self.training)
        return F.normalize(self.image_norm(F.normalize(features, dim=-1)), dim=-1)

    def normalize_texts(self, text_features: torch.Tensor) -> torch.Tensor:
        """Apply the text head: ``normalize(BN_text(normalize(z)))``, in float32."""
        features = _check_features(text_features, "text_features", self.embed_dim, self.training)
        return F.normalize(self.text_norm(F.normalize(features, dim=-1)), dim=-1)

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor):
        """Return ``(normalize_images(image_features), normalize_texts(text_features))``."""
        return self.normalize_images(image_features), self.normalize_texts(text_features)

    def trainable_parameter_count(self) -> int:
        """Count the numbers an optimiser updates: ``4 * embed_dim`` (weight and bias per modality)."""
        return sum(parameter.numel() for parameter in self.parameters() if parameter.requires_grad)

    def transform_numpy(self, image_embeds, text_embeds, device="cpu") -> tuple[np.ndarray, np.ndarray]:
        """Apply the heads in eval mode to numpy embeddings and return float32 numpy arrays.

        The module's training mode is restored afterwards. Input goes through
        the package's standard embedding checks (2-D, finite, float).
        """
        images = torch.as_tensor(check_embeddings(image_embeds, "image_embeds"), dtype=torch.float32, device=device)
        texts = torch.as_tensor(check_embeddings(text_embeds, "text_embeds"), dtype=torch.float32, device=device)
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                new_images, new_texts = self(images, texts)
        finally:
            self.train(was_training)
        return new_images.cpu().numpy(), new_texts.cpu().numpy()

    @classmethod
    def from_statistics(cls, image_embeds, text_embeds, eps: float = 1e-5, model_name: str = "unknown"):
        """Build heads in eval mode that z-score with the given embeddings' mean and variance.

        ``running_mean`` and ``running_var`` are set to the per-dimension mean
        and population variance (``ddof=0``) of the L2-normalised embeddings,
        weight to 1 and bias to 0. Trained heads whose affine parameters barely
        moved are close to this when their running statistics have converged.
        """
        images = check_embeddings(image_embeds, "image_embeds").astype(np.float64)
        texts = check_embeddings(text_embeds, "text_embeds").astype(np.float64)
        if images.shape[1] != texts.shape[1]:
            raise ValueError(
                f"image_embeds and text_embeds must have the same dimension; got {images.shape[1]} and "
                f"{texts.shape[1]}"
            )
        heads = cls(images.shape[1], eps=eps, model_name=model_name)
        with torch.no_grad():
            for norm, embeds in ((heads.image_norm, images), (heads.text_norm, texts)):
                norm.running_mean.copy_(torch.from_numpy(embeds.mean(axis=0)))
                norm.running_var.copy_(torch.from_numpy(embeds.var(axis=0)))
        return heads.eval()

    def save(self, path, model_name: str | None = None) -> Path:
        """Save only the heads' state with the model name and dimension (``torch.save``, tensors and plain types).

        The file loads with ``torch.load(..., weights_only=True)``.
        """
        model_name = self.model_name if model_name is None else model_name
        if not isinstance(model_name, str) or not model_name:
            raise ValueError(f"model_name must be a non-empty string, got {model_name!r}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "format": HEADS_FORMAT_NAME,
            "format_version": HEADS_FORMAT_VERSION,
            "model_name": model_name,
            "embed_dim": self.embed_dim,
            "eps": self.image_norm.eps,
            "momentum": self.image_norm.momentum,
            "state_dict": {key: value.detach().cpu() for key, value in self.state_dict().items()},
        }
        temporary = path.with_name(path.name + ".part")
        torch.save(payload, temporary)
        temporary.replace(path)
        logger.info("saved I0T_async heads (model %s, dimension %d) to %s", model_name, self.embed_dim, path)
        return path

    @classmethod
    def load(cls, path, model_name: str | None = None, embed_dim: int | None = None, map_location="cpu"):
        """Load heads saved by :meth:`save`, in eval mode.

        When ``model_name`` or ``embed_dim`` is given, heads of another model or
        dimension raise ``ValueError`` naming both. Files are read with
        ``torch.load(weights_only=True)``, so loading never runs code from the file.
        """
        payload = load_torch_file(path, "I0T_async heads")
        if payload.get("format") != HEADS_FORMAT_NAME:
            raise ValueError(
                f"{path} is not an I0T_async heads file (format {payload.get('format')!r}); save heads with "
                f"I0TAsyncHeads.save, or load a training checkpoint with load_checkpoint"
            )
        if int(payload.get("format_version", 0)) > HEADS_FORMAT_VERSION:
            raise ValueError(
                f"{path} uses heads format {payload['format_version']}, newer than this package supports "
                f"({HEADS_FORMAT_VERSION}); upgrade i0t_helpers"
            )
        check_heads_compatible(payload["model_name"], payload["embed_dim"], model_name, embed_dim, str(path))
        heads = cls(payload["embed_dim"], eps=payload["eps"], momentum=payload["momentum"],
                    model_name=payload["model_name"])
        heads.load_state_dict(payload["state_dict"])
        return heads.to(map_location).eval()

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, model_name={self.model_name!r}"


def load_torch_file(path, what: str) -> dict:
    """Read a ``torch.save`` file with ``weights_only=True`` and return its top-level dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError or EOFError for bad files
        raise ValueError(
            f"{path} is not a readable {what} file; only files of tensors and plain Python values are loaded "
            f"(torch.load with weights_only=True): {error}"
        ) from None
    if not isinstance(payload, dict):
        raise ValueError(f"{path} contains a {type(payload).__name__}, not the dict of a {what} file")
    return payload


def check_heads_compatible(saved_model: str, saved_dim: int, model_name: str | None, embed_dim: int | None,
                           source: str):
    """Raise ``ValueError`` when saved heads belong to another model or dimension than requested."""
    if embed_dim is not None and int(saved_dim) != int(embed_dim):
        raise ValueError(
            f"{source} contains heads of dimension {saved_dim}, but dimension {embed_dim} was requested; "
            f"heads only fit the model they were trained on, so train heads for this model"
        )
    if model_name is not None and saved_model != model_name:
        raise ValueError(
            f"{source} contains heads trained for model {saved_model!r}, not {model_name!r}; "
            f"train heads for {model_name!r}"
        )


def infer_embed_dim(towers: nn.Module) -> int:
    """Return the embedding dimension of an open_clip model (``visual.output_dim`` or the text projection)."""
    output_dim = getattr(getattr(towers, "visual", None), "output_dim", None)
    if isinstance(output_dim, int):
        return output_dim
    projection = getattr(towers, "text_projection", None)
    if isinstance(projection, nn.Linear):
        return projection.out_features
    if isinstance(projection, torch.Tensor) and projection.ndim == 2:
        return int(projection.shape[1])
    raise TypeError(
        f"cannot infer the embedding dimension of {type(towers).__name__}; pass embed_dim= or heads= explicitly"
    )


def _residual_blocks(towers: nn.Module) -> list[nn.Module]:
    """Return the transformer blocks of an open_clip model (both towers)."""
    return [module for module in towers.modules() if type(module).__name__.endswith("ResidualAttentionBlock")]


class I0TAsyncModel(nn.Module):
    """An open_clip model with I0T_async heads, exposing ``encode_image`` / ``encode_text``.

    ``encode_image(x) = heads.normalize_images(towers.encode_image(x))`` and the
    same for texts, so every output is L2-normalised whatever ``normalize`` is.
    ``forward(image, text)`` returns ``(image_features, text_features,
    logit_scale)`` like open_clip's CLIP, with the fixed logit scale of 100.

    With ``freeze_towers=True`` (the default, phase 2 of An et al. 2025) no
    tower weight requires a gradient, the towers run under ``torch.no_grad``
    and stay in eval mode even when this module is put in training mode, so
    their output is deterministic. Only the heads train and switch between
    batch and running statistics.

    Parameters
    ----------
    towers : open_clip model
        Any model with ``encode_image`` and ``encode_text`` (open_clip's CLIP,
        CustomTextCLIP, or the course's tiny model).
    heads : I0TAsyncHeads, optional
        Heads to use; new heads of the towers' dimension by default.
    model_name : str, optional
        Name stored with saved heads; defaults to ``heads.model_name``.
    freeze_towers : bool, default True
        Freeze every tower weight. ``False`` is for phase-1 fine-tuning of the
        encoders (memory and compute of full CLIP training, so a GPU job).
    use_heads : bool, default True
        ``False`` bypasses the heads (plain L2 normalisation), as in phase 1.
    logit_scale : float, default 100
        The fixed temperature returned by ``forward``.
    tower_dropout : float, default 0
        Dropout applied to the output of every transformer block of both
        towers while this module is in training mode, for MCSIE (two encodings
        of the same batch differ only by dropout). 0 turns it off.
    """

    def __init__(self, towers: nn.Module, heads: I0TAsyncHeads | None = None, *, model_name: str | None = None,
                 freeze_towers: bool = True, use_heads: bool = True, logit_scale: float = FIXED_LOGIT_SCALE,
                 tower_dropout: float = 0.0):
        super().__init__()
        for method in ("encode_image", "encode_text"):
            if not callable(getattr(towers, method, None)):
                raise TypeError(f"towers must be an open_clip model with {method}(); got {type(towers).__name__}")
        embed_dim = infer_embed_dim(towers)
        if heads is None:
            heads = I0TAsyncHeads(embed_dim, model_name=model_name or "unknown")
        elif not isinstance(heads, I0TAsyncHeads):
            raise TypeError(f"heads must be an I0TAsyncHeads, got {type(heads).__name__}")
        if heads.embed_dim != embed_dim:
            raise ValueError(
                f"heads have dimension {heads.embed_dim}, but the towers output dimension {embed_dim}; "
                f"use heads trained for this model"
            )
        if model_name is not None:
            heads.model_name = model_name
        if not (isinstance(logit_scale, (int, float)) and logit_scale > 0):
            raise ValueError(f"logit_scale must be a positive number, got {logit_scale!r}")
        if not (isinstance(tower_dropout, (int, float)) and 0.0 <= tower_dropout < 1.0):
            raise ValueError(f"tower_dropout must lie in [0, 1), got {tower_dropout!r}")

        self.towers = towers
        self.heads = heads
        self.embed_dim = embed_dim
        self.use_heads = bool(use_heads)
        self.tower_dropout = float(tower_dropout)
        self.register_buffer("logit_scale", torch.tensor(float(logit_scale)), persistent=False)
        # The hooks act only while this module's own encode_* runs, so other wrappers of the same towers
        # are unaffected.
        self._dropout_active = False
        self._dropout_hooks = []
        if self.tower_dropout > 0:
            blocks = _residual_blocks(towers)
            if not blocks:
                raise ValueError(
                    f"tower_dropout={tower_dropout} needs transformer blocks to apply dropout to, but "
                    f"{type(towers).__name__} has no open_clip ResidualAttentionBlock"
                )
            self._dropout_hooks = [block.register_forward_hook(self._block_dropout) for block in blocks]
        self.set_towers_trainable(not freeze_towers)

    @property
    def model_name(self) -> str:
        """Name of the encoder, as stored with the heads."""
        return self.heads.model_name

    @property
    def towers_trainable(self) -> bool:
        """Whether any tower weight requires a gradient."""
        return any(parameter.requires_grad for parameter in self.towers.parameters())

    def set_towers_trainable(self, trainable: bool):
        """Freeze (``False``) or unfreeze (``True``) the tower weights; returns ``self``.

        The towers' own ``logit_scale`` and ``logit_bias`` stay frozen either way,
        because the I0T_async loss uses the fixed scale of this module.
        """
        self.towers.requires_grad_(bool(trainable))
        for name in ("logit_scale", "logit_bias"):
            parameter = getattr(self.towers, name, None)
            if isinstance(parameter, nn.Parameter):
                parameter.requires_grad_(False)
        self.train(self.training)
        return self

    def train(self, mode: bool = True):
        """Set training mode; frozen towers stay in eval mode so their output is deterministic."""
        super().train(mode)
        if not self.towers_trainable:
            self.towers.eval()
        return self

    def _block_dropout(self, module, inputs, output):
        # NOTE: the released training script of An et al. (2025) does not enable MCSIE, so where their dropout
        # sits inside the towers is unknown; here it acts on the output of every transformer block.
        if self._dropout_active:
            return F.dropout(output, p=self.tower_dropout, training=True)
        return output

    def _tower_features(self, encode, inputs) -> torch.Tensor:
        self._dropout_active = self.training and self.tower_dropout > 0
        try:
            with torch.set_grad_enabled(torch.is_grad_enabled() and self.towers_trainable):
                return encode(inputs)
        finally:
            self._dropout_active = False

    def remove_dropout_hooks(self):
        """Detach the MCSIE dropout hooks from the towers (for reusing the towers elsewhere)."""
        for hook in self._dropout_hooks:
            hook.remove()
        self._dropout_hooks = []
        self.tower_dropout = 0.0

    def encode_image(self, image: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Encode images; the output is always L2-normalised (``normalize`` is accepted for open_clip's API)."""
        features = self._tower_features(self.towers.encode_image, image)
        if not self.use_heads:
            return F.normalize(features.float(), dim=-1)
        return self.heads.normalize_images(features)

    def encode_text(self, text: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Encode token ids; the output is always L2-normalised (``normalize`` is accepted for open_clip's API)."""
        features = self._tower_features(self.towers.encode_text, text)
        if not self.use_heads:
            return F.normalize(features.float(), dim=-1)
        return self.heads.normalize_texts(features)

    def forward(self, image: torch.Tensor, text: torch.Tensor, views: int | None = None):
        """Encode a batch of images and token ids.

        Returns ``(image_features, text_features, logit_scale)``. With
        ``views=k`` each side is encoded ``k`` times (different dropout masks
        when ``tower_dropout > 0``) and the first two entries are tuples of
        ``k`` tensors; one call keeps DistributedDataParallel to one forward
        per backward.
        """
        if views is None:
            return self.encode_image(image), self.encode_text(text), self.logit_scale
        views = check_positive_int(views, "views")
        images = tuple(self.encode_image(image) for _ in range(views))
        texts = tuple(self.encode_text(text) for _ in range(views))
        return images, texts, self.logit_scale


def head_statistics(heads: I0TAsyncHeads) -> pd.DataFrame:
    """Summarise what each head holds: running statistics and how far the affine parameters moved.

    One row per modality with the sum, mean, min and max of ``running_var``, the
    norm of ``running_mean``, the largest ``|weight - 1|`` and ``|bias|``, and
    the number of batches tracked. For L2-normalised input the per-dimension
    variances sum to at most 1 (``sum_k Var(u_k) = E||u||^2 - ||E u||^2 <= 1``),
    so the mean running variance of a converged head is at most ``1 / dim``.
    """
    rows = []
    for modality, norm in (("image", heads.image_norm), ("text", heads.text_norm)):
        variance = norm.running_var.detach().double().cpu()
        rows.append({
            "modality": modality,
            "running_var_sum": float(variance.sum()),
            "running_var_mean": float(variance.mean()),
            "running_var_min": float(variance.min()),
            "running_var_max": float(variance.max()),
            "running_mean_norm": float(norm.running_mean.detach().double().norm()),
            "max_abs_weight_change": float((norm.weight.detach().double() - 1.0).abs().max()),
            "max_abs_bias": float(norm.bias.detach().double().abs().max()),
            "batches_tracked": int(norm.num_batches_tracked),
        })
    return pd.DataFrame(rows).set_index("modality")

"""open_clip models used by the course, including a tiny stand-in that needs no download.

:func:`create_tiny_model` builds a randomly initialised CLIP of 3.4 million
parameters (3.2 million of them in the token-embedding table) from a custom
configuration. It shares open_clip's code
paths (towers, preprocessing, tokenizer) with real models, so tests and offline
demonstrations exercise the same code that runs on pretrained weights.
"""

from __future__ import annotations

import copy
import logging

logger = logging.getLogger(__name__)

#: Name under which the tiny configuration is registered with open_clip.
TINY_MODEL_NAME = "i0t-tiny-vit"

#: A small ViT + text transformer: 32x32 images, 64-d embeddings, 2 layers per tower.
TINY_MODEL_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def register_tiny_model_config():
    """Register :data:`TINY_MODEL_CONFIG` with open_clip under :data:`TINY_MODEL_NAME` (idempotent)."""
    from open_clip import factory

    if TINY_MODEL_NAME not in factory._MODEL_CONFIGS:
        factory._MODEL_CONFIGS[TINY_MODEL_NAME] = copy.deepcopy(TINY_MODEL_CONFIG)


def create_tiny_model(seed: int = 0):
    """Return ``(model, preprocess, tokenizer)`` of a tiny randomly initialised CLIP, in eval mode on CPU.

    The same ``seed`` gives bit-identical weights. Nothing is downloaded: the
    tokenizer is open_clip's bundled BPE vocabulary.
    """
    import open_clip
    import torch

    register_tiny_model_config()
    torch.manual_seed(seed)
    model, _, preprocess = open_clip.create_model_and_transforms(TINY_MODEL_NAME, pretrained=None)
    model.eval()
    tokenizer = open_clip.get_tokenizer(TINY_MODEL_NAME)
    return model, preprocess, tokenizer

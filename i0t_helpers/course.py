"""Set-up shared by the course notebooks: seeding, device choice, display options, data source."""

from __future__ import annotations

import logging
import random

import numpy as np

logger = logging.getLogger(__name__)

#: The data source of the committed notebook outputs (what CI runs).
DEFAULT_SOURCE = "starter"


def seed_everything(seed: int = 0):
    """Seed Python's, numpy's and (when installed) torch's random generators."""
    random.seed(seed)
    np.random.seed(seed)
    try:
        import torch
    except ImportError:
        return
    torch.manual_seed(seed)


def pick_device(prefer_gpu: bool = True) -> str:
    """Return ``"cuda"`` when a GPU is available and wanted, else ``"cpu"``."""
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda" if prefer_gpu and torch.cuda.is_available() else "cpu"


def setup_notebook(seed: int = 0, prefer_gpu: bool = True) -> str:
    """Prepare a notebook session and return the device.

    Seeds every generator, shows library warnings (such as input coercions) in
    the notebook, turns off progress bars when the notebook runs headless under
    CI (``CI`` set in the environment) so saved outputs stay comparable, and sets
    the display precision of pandas to 4 decimals.
    """
    import os

    import pandas as pd

    seed_everything(seed)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", force=True)
    pd.set_option("display.precision", 4)
    if os.environ.get("CI"):
        os.environ.setdefault("TQDM_DISABLE", "1")
    try:
        import seaborn as sns

        sns.set_theme(context="notebook", style="whitegrid")
    except ImportError:
        pass
    return pick_device(prefer_gpu)


def load_source(source: str = DEFAULT_SOURCE, **options):
    """Return the embedding pack a notebook analyses.

    ``"starter"`` (the default) is the 500 COCO pairs embedded by CLIP ViT-B/16;
    any other pack name or ``.npz`` path is loaded with :func:`load_pack`.
    ``options`` are passed on to :func:`load_pack`.
    """
    from .packs import load_pack

    return load_pack(source, **options)

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


def _use_inline_figures():
    """Show figures inline in a Jupyter kernel, even when MPLBACKEND selects a non-interactive backend."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None and type(shell).__name__ == "ZMQInteractiveShell":
        shell.run_line_magic("matplotlib", "inline")


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
    _use_inline_figures()
    try:
        import seaborn as sns

        sns.set_theme(context="notebook", style="whitegrid")
    except ImportError:
        pass
    return pick_device(prefer_gpu)


#: Prefix of a live data source: ``"live:MODEL/PRETRAINED/DATASET[:N_IMAGES]"``.
LIVE_PREFIX = "live:"


def parse_live_source(source: str) -> dict:
    """Split ``"live:MODEL/PRETRAINED/DATASET[:N_IMAGES]"`` into its parts.

    ``PRETRAINED`` may be a checkpoint path containing slashes, because the
    model is the first part and the dataset the last. ``N_IMAGES`` keeps the
    first images of the dataset only. Example:
    ``"live:ViT-B-32/openai/coco-val2017:1000"``.
    """
    from .encoding import LIVE_DATASETS

    body = source[len(LIVE_PREFIX):]
    model, _, rest = body.partition("/")
    pretrained, _, dataset = rest.rpartition("/")
    if not (model and pretrained and dataset):
        raise ValueError(
            f"a live source looks like 'live:MODEL/PRETRAINED/DATASET', e.g. 'live:ViT-B-32/openai/coco-val2017'; "
            f"got {source!r}"
        )
    dataset, _, count = dataset.partition(":")
    if dataset not in LIVE_DATASETS:
        raise ValueError(f"unknown live dataset {dataset!r} in {source!r}; choose one of {', '.join(LIVE_DATASETS)}")
    if count and not (count.isdigit() and int(count) > 0):
        raise ValueError(f"the image count after ':' must be a positive integer; got {count!r} in {source!r}")
    return {"model": model, "pretrained": pretrained, "dataset": dataset, "n_images": int(count) if count else None}


def load_source(source: str = DEFAULT_SOURCE, **options):
    """Return the embedding pack a notebook analyses.

    * ``"starter"`` (the default): the 500 COCO pairs embedded by CLIP ViT-B/16;
      other pack names and ``.npz`` paths are loaded with :func:`load_pack`,
      which receives ``options``.
    * ``"live:MODEL/PRETRAINED/DATASET[:N_IMAGES]"``: encode a dataset with an
      open_clip model now (see :func:`parse_live_source`), for example
      ``"live:ViT-B-32/openai/coco-val2017"``. Like the starter pack, the result
      has one caption per image (the first one in file order, the protocol of
      An et al. (2025)) and keeps every caption of the image as a reference.
      ``options`` go to :func:`i0t_helpers.encoding.dataset_pack` (``device``
      and ``precision`` go to :func:`i0t_helpers.models.load_model`).
      Embeddings are cached on disk, so a second run reads them back.
    """
    if str(source).startswith(LIVE_PREFIX):
        from .encoding import dataset_pack
        from .models import load_model

        parts = parse_live_source(str(source))
        loaded = load_model(parts["model"], parts["pretrained"], device=options.pop("device", None),
                            precision=options.pop("precision", "auto"))
        options.setdefault("captions", "first")
        return dataset_pack(loaded, parts["dataset"], n_images=parts["n_images"], **options)

    from .packs import load_pack

    return load_pack(source, **options)

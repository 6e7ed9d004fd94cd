"""Training of the I0T_async heads, from cached embeddings or live through frozen open_clip towers.

Phase 2 of I0T_async (An et al., 2025) trains only the two BatchNorm heads of
:class:`~i0t_helpers.async_heads.I0TAsyncHeads`; every tower weight is frozen.
With frozen towers and no dropout the towers are a fixed function, so the heads
see exactly the same inputs whether each batch is re-encoded (what the authors'
code does) or read from embeddings computed once. Both loops are here and share
the optimiser, schedule, loss, checkpointing and evaluation:

* :func:`train_cached` trains on an embedding matrix (seconds on a CPU);
* :func:`train_live` runs images and token ids through the towers every step,
  with a DataLoader, AMP on CUDA, DistributedDataParallel under ``torchrun``,
  optional MCSIE dropout and optional phase-1 fine-tuning of the towers.

Both draw batches from the same seeded permutation (:func:`epoch_batches`), so
fed the same pairs they produce the same heads up to float rounding.

The defaults of :class:`AsyncTrainingConfig` are the hyperparameters reported by
An et al. (2025): AdamW with lr 1e-6 and weight decay 1e-2, 3 epochs, batch
128, a cosine schedule with 200 warm-up steps, seed 7, CyCLIP loss with both
cyclic weights 0.25 and the logit scale fixed at 100.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from ._validation import check_embedding_pair, check_positive_int
from .async_heads import I0TAsyncHeads, I0TAsyncModel, check_heads_compatible, load_torch_file
from .losses import CyCLIPLoss, mcsie_loss
from .metrics import centroid_distance, linear_separability
from .retrieval import recall_at_k

logger = logging.getLogger(__name__)

#: The ``format`` entry of a training checkpoint.
CHECKPOINT_FORMAT_NAME = "i0t_async_checkpoint"
CHECKPOINT_FORMAT_VERSION = 1

#: Token ids of open_clip's BPE tokenizer that start and end every text.
START_OF_TEXT_TOKEN = 49406
END_OF_TEXT_TOKEN = 49407


# Configuration and schedule ---------------------------------------------------


@dataclass(frozen=True)
class AsyncTrainingConfig:
    """Hyperparameters of I0T_async head training; the defaults are those of An et al. (2025).

    Parameters
    ----------
    epochs : int, default 3
    batch_size : int, default 128
        Global batch: under DistributedDataParallel each of the ``world_size``
        processes gets ``batch_size / world_size`` pairs (the authors used 64 on
        each of 2 GPUs).
    lr : float, default 1e-6
        Peak learning rate of AdamW.
    weight_decay : float, default 1e-2
        AdamW's decoupled weight decay, applied to every trainable parameter.
        NOTE: open_clip's training script exempts normalisation weights and
        biases from weight decay; whether the authors' setup does is unknown.
        At lr 1e-6 the decay changes a weight by about 1e-8 per step either way.
    warmup_steps : int, default 200
        Steps of linear warm-up before the cosine decay (see :func:`cosine_lr`).
    seed : int, default 7
        Seeds the batch order of every epoch.
    logit_scale : float, default 100
        Fixed InfoNCE temperature (never trained).
    inmodal_weight, crossmodal_weight : float, default 0.25
        Weights of the CyCLIP terms.
    beta1, beta2, adam_eps : float
        AdamW's moment coefficients and epsilon (PyTorch's defaults).
    drop_last : bool, default True
        Drop the last incomplete batch of each epoch, as open_clip's training
        loader does. Distributed training requires it.
    """

    epochs: int = 3
    batch_size: int = 128
    lr: float = 1e-6
    weight_decay: float = 1e-2
    warmup_steps: int = 200
    seed: int = 7
    logit_scale: float = 100.0
    inmodal_weight: float = 0.25
    crossmodal_weight: float = 0.25
    beta1: float = 0.9
    beta2: float = 0.999
    adam_eps: float = 1e-8
    drop_last: bool = True

    def __post_init__(self):
        check_positive_int(self.epochs, "epochs")
        check_positive_int(self.batch_size, "batch_size", minimum=2)
        check_positive_int(self.warmup_steps, "warmup_steps", minimum=0)
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        for name in ("lr", "logit_scale", "adam_eps"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        for name in ("weight_decay", "inmodal_weight", "crossmodal_weight"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a non-negative finite number, got {value!r}")
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 <= value < 1):
                raise ValueError(f"{name} must lie in [0, 1), got {value!r}")

    def to_dict(self) -> dict:
        """Return the configuration as a dict of plain Python values."""
        return dataclasses.asdict(self)


def make_config(config: AsyncTrainingConfig | None = None, **overrides) -> AsyncTrainingConfig:
    """Return ``config`` (default: the hyperparameters of An et al., 2025) with the given fields replaced."""
    config = AsyncTrainingConfig() if config is None else config
    if not isinstance(config, AsyncTrainingConfig):
        raise TypeError(f"config must be an AsyncTrainingConfig, got {type(config).__name__}")
    unknown = set(overrides) - {field.name for field in dataclasses.fields(AsyncTrainingConfig)}
    if unknown:
        raise TypeError(
            f"unknown training option(s) {sorted(unknown)}; valid options are "
            f"{[field.name for field in dataclasses.fields(AsyncTrainingConfig)]}"
        )
    return dataclasses.replace(config, **overrides)


def cosine_lr(step: int, base_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Return the learning rate of a 0-based ``step`` under linear warm-up then cosine decay.

    ::

        lr(s) = base_lr * (s + 1) / warmup_steps                        for s < warmup_steps
        lr(s) = base_lr * (1 + cos(pi * (s - warmup_steps) / (total_steps - warmup_steps))) / 2   otherwise

    This is open_clip's ``cosine_lr`` schedule. When ``warmup_steps`` exceeds
    the number of steps, training ends before the peak is reached.
    """
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup_steps) / decay_steps)) * base_lr


def epoch_batches(n_rows: int, batch_size: int, seed: int, epoch: int, drop_last: bool = True, rank: int = 0,
                  world_size: int = 1) -> list[np.ndarray]:
    """Return this process's row indices of every batch of one epoch.

    The rows are shuffled with ``numpy.random.default_rng([seed, epoch])`` and
    cut into global batches of ``batch_size``. Under DistributedDataParallel
    each global batch is split into ``world_size`` equal slices and process
    ``rank`` gets its slice, so one process with the same seed gets the same
    global batches. Batches of fewer than 2 rows are dropped because
    BatchNorm cannot compute a variance from one row.
    """
    n_rows = check_positive_int(n_rows, "n_rows")
    batch_size = check_positive_int(batch_size, "batch_size", minimum=2)
    if world_size > 1 and (batch_size % world_size or not drop_last):
        raise ValueError(
            f"distributed training needs drop_last=True and a batch_size divisible by the {world_size} "
            f"processes; got batch_size={batch_size}, drop_last={drop_last}"
        )
    order = np.random.default_rng([int(seed), int(epoch)]).permutation(n_rows)
    batches = [order[start:start + batch_size] for start in range(0, n_rows, batch_size)]
    if drop_last and len(batches[-1]) < batch_size:
        batches.pop()
    batches = [batch for batch in batches if len(batch) >= 2]
    if not batches:
        raise ValueError(
            f"no training batch: {n_rows} rows are fewer than batch_size={batch_size} with drop_last={drop_last}; "
            f"lower batch_size (--batch-size on the command line) or pass drop_last=False to the Python API"
        )
    if world_size > 1:
        share = batch_size // world_size
        batches = [batch[rank * share:(rank + 1) * share] for batch in batches]
    return batches


class SeededBatchSampler(Sampler):
    """Batch sampler of a DataLoader that yields :func:`epoch_batches`; call :meth:`set_epoch` each epoch."""

    def __init__(self, n_rows: int, batch_size: int, seed: int, drop_last: bool = True, rank: int = 0,
                 world_size: int = 1):
        self.n_rows, self.batch_size, self.seed = n_rows, batch_size, seed
        self.drop_last, self.rank, self.world_size = drop_last, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int):
        """Select the epoch whose permutation :meth:`__iter__` yields."""
        self.epoch = int(epoch)

    def _batches(self) -> list[np.ndarray]:
        return epoch_batches(self.n_rows, self.batch_size, self.seed, self.epoch, self.drop_last, self.rank,
                             self.world_size)

    def __iter__(self):
        for batch in self._batches():
            yield batch.tolist()

    def __len__(self) -> int:
        return len(self._batches())


# Datasets ---------------------------------------------------------------------


class ImageCaptionDataset(Dataset):
    """Pairs of images and captions, preprocessed and tokenised for an open_clip model.

    Parameters
    ----------
    images : sequence of path or PIL.Image.Image
        Image files (opened and converted to RGB on access) or images.
    captions : sequence of str
        ``captions[i]`` describes ``images[i]``.
    preprocess : callable
        The open_clip image transform (from ``create_model_and_transforms``).
    tokenizer : callable
        The open_clip tokenizer; item ``i`` contains ``tokenizer([captions[i]])[0]``.
    """

    def __init__(self, images, captions, preprocess: Callable, tokenizer: Callable):
        if len(images) != len(captions):
            raise ValueError(
                f"images and captions must pair up row by row; got {len(images)} images and {len(captions)} captions"
            )
        if len(images) == 0:
            raise ValueError("an ImageCaptionDataset needs at least one image-caption pair")
        self.images = list(images)
        self.captions = [str(caption) for caption in captions]
        self.preprocess = preprocess
        self.tokenizer = tokenizer

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        from PIL import Image

        image = self.images[index]
        if not isinstance(image, Image.Image):
            path = Path(image)
            if not path.is_file():
                raise FileNotFoundError(f"image {index} not found: {path}")
            with Image.open(path) as opened:
                image = opened.convert("RGB")
        return self.preprocess(image), self.tokenizer([self.captions[index]])[0]


class SyntheticImageTextDataset(Dataset):
    """Random image tensors and random token sequences, for tests and throughput checks.

    Item ``i`` is always the same: its generator is seeded with ``(seed, i)``.
    Each text is ``[start, k random ids, end, 0, ...]`` with k from 5 to 20, the
    layout of open_clip's tokenizer, so open_clip's end-of-text pooling works.
    """

    def __init__(self, n_pairs: int, image_size: int = 224, context_length: int = 77, vocab_size: int = 49408,
                 seed: int = 0):
        self.n_pairs = check_positive_int(n_pairs, "n_pairs")
        self.image_size = check_positive_int(image_size, "image_size")
        self.context_length = check_positive_int(context_length, "context_length", minimum=23)
        self.vocab_size = check_positive_int(vocab_size, "vocab_size", minimum=END_OF_TEXT_TOKEN + 1)
        self.seed = int(seed)

    def __len__(self) -> int:
        return self.n_pairs

    def __getitem__(self, index: int):
        if not 0 <= index < self.n_pairs:
            raise IndexError(f"index {index} is outside 0..{self.n_pairs - 1}")
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + int(index))
        image = torch.randn(3, self.image_size, self.image_size, generator=generator)
        length = int(torch.randint(5, 21, (1,), generator=generator))
        tokens = torch.zeros(self.context_length, dtype=torch.long)
        tokens[0] = START_OF_TEXT_TOKEN
        tokens[1:length + 1] = torch.randint(1, START_OF_TEXT_TOKEN, (length,), generator=generator)
        tokens[length + 1] = END_OF_TEXT_TOKEN
        return image, tokens


def coco_val2017_image_url(image_id: int) -> str:
    """Return the public URL of a COCO val2017 image."""
    return f"http://images.cocodataset.org/val2017/{int(image_id):012d}.jpg"


def fetch_coco_val2017_images(image_ids, folder, progress: bool = True) -> list[Path]:
    """Download COCO val2017 images one by one into ``folder`` (skipping those present) and return their paths.

    NOTE: COCO publishes no per-image hashes, so single images are not verified;
    a file that fails to decode raises when the dataset opens it.
    """
    import pooch
    from tqdm.auto import tqdm

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for image_id in tqdm(list(image_ids), desc="COCO images", **({} if progress else {"disable": True})):
        url = coco_val2017_image_url(image_id)
        name = url.rsplit("/", 1)[1]
        if not (folder / name).is_file():
            pooch.retrieve(url, known_hash=None, fname=name, path=folder, progressbar=False)
        paths.append(folder / name)
    return paths


def train_live_on_starter_images(pack, image_folder=None, *, train_rows=slice(0, 400), eval_rows=slice(400, 500),
                                 model_name: str = "ViT-B-16", pretrained: str = "openai", device=None,
                                 num_workers: int = 2, progress: bool = True, **options):
    """Train heads live on the COCO images and captions of a pack, with pretrained open_clip towers.

    The starter pack contains CLIP ViT-B/16 (OpenAI) embeddings of 500 COCO
    val2017 images and one caption each; this downloads those images (about
    80 MB), loads the same model through open_clip (a download of about
    600 MB) and runs :func:`train_live` on ``train_rows`` with held-out
    evaluation on ``eval_rows``. Meant for a GPU session such as Colab; it
    needs internet access. ``options`` go to :func:`train_live`.

    Returns ``(model, history)``.
    """
    import open_clip

    from .download import resolve_data_dir

    if pack.image_ids is None or pack.captions is None:
        raise ValueError("the pack has no COCO image ids or captions; use the starter pack")
    if pack.n_texts != pack.n_images:
        raise ValueError(f"the live demonstration needs one caption per image; the pack has {pack.n_images} images "
                         f"and {pack.n_texts} texts")
    folder = Path(image_folder) if image_folder is not None else resolve_data_dir() / "coco" / "val2017_images"
    train_index = np.arange(pack.n_images)[train_rows]
    eval_index = np.arange(pack.n_images)[eval_rows]
    if np.intersect1d(train_index, eval_index).size:
        raise ValueError("train_rows and eval_rows overlap; held-out rows must not be trained on")

    towers, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained)
    tokenizer = open_clip.get_tokenizer(model_name)
    paths = fetch_coco_val2017_images(pack.image_ids[np.concatenate([train_index, eval_index])], folder, progress)
    paths = dict(zip(np.concatenate([train_index, eval_index]).tolist(), paths))

    def dataset(rows):
        return ImageCaptionDataset([paths[row] for row in rows], [pack.captions[row] for row in rows], preprocess,
                                   tokenizer)

    model = I0TAsyncModel(towers, model_name=f"{model_name} ({pretrained})")
    history = train_live(model, dataset(train_index), eval_dataset=dataset(eval_index), device=device,
                         num_workers=num_workers, progress=progress, **options)
    return model, history


# Evaluation -------------------------------------------------------------------


def evaluate_embeddings(image_embeds, text_embeds, text_image_index=None, random_state: int = 0) -> dict:
    """Return the held-out figures tracked during training.

    Keys: ``centroid_distance``, ``linear_separability`` (held-out logistic
    regression accuracy), ``recall_at_1_i2t`` and ``recall_at_1_t2i`` (fractions
    in [0, 1]); see :mod:`i0t_helpers.metrics` and :mod:`i0t_helpers.retrieval`.
    """
    recalls = recall_at_k(image_embeds, text_embeds, text_image_index=text_image_index, ks=(1,))
    return {
        "centroid_distance": centroid_distance(image_embeds, text_embeds),
        "linear_separability": linear_separability(image_embeds, text_embeds, random_state=random_state),
        "recall_at_1_i2t": recalls["i2t"][1],
        "recall_at_1_t2i": recalls["t2i"][1],
    }


def evaluate_heads(heads: I0TAsyncHeads, pack, device="cpu") -> dict:
    """Apply ``heads`` in eval mode to an :class:`EmbeddingPack` and return :func:`evaluate_embeddings`."""
    images, texts = heads.transform_numpy(pack.image_embeds, pack.text_embeds, device=device)
    return evaluate_embeddings(images, texts, pack.text_image_index)


def held_out_comparison(train_pack, eval_pack, heads: I0TAsyncHeads | None = None, device="cpu") -> pd.DataFrame:
    """Compare raw embeddings, trained heads and training-row baselines on held-out rows.

    Every method takes its statistics from the training pairs only
    (``train_pack.paired()``), never from the held-out rows:

    * ``raw``: the embeddings as they are;
    * ``I0T_async``: ``heads`` in eval mode (skipped when ``heads`` is None);
    * ``I0T_post``: :class:`~i0t_helpers.post.I0TPost` fitted on the training pairs;
    * ``z-score``: :meth:`I0TAsyncHeads.from_statistics` of the training pairs, which is
      what heads with untouched affine parameters and converged running statistics compute.

    Returns one row per method with the columns of :func:`evaluate_embeddings`.
    """
    from .post import I0TPost

    train_images, train_texts = train_pack.paired()
    rows = {"raw": evaluate_embeddings(eval_pack.image_embeds, eval_pack.text_embeds, eval_pack.text_image_index)}
    if heads is not None:
        rows["I0T_async"] = evaluate_heads(heads, eval_pack, device=device)
    post = I0TPost().fit(train_images, train_texts)
    rows["I0T_post"] = evaluate_embeddings(*post.transform(eval_pack.image_embeds, eval_pack.text_embeds),
                                           eval_pack.text_image_index)
    zscore = I0TAsyncHeads.from_statistics(train_images, train_texts)
    rows["z-score"] = evaluate_heads(zscore, eval_pack)
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "method"
    return table


def _progress_options(progress: bool) -> dict:
    # With progress=True tqdm still honours TQDM_DISABLE, because an explicit disable= would override it.
    return {} if progress else {"disable": True}


def encode_dataset(model: nn.Module, dataset: Dataset, batch_size: int = 256, device=None, num_workers: int = 0,
                   amp: bool | None = None, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Encode every pair of ``dataset`` with ``model.encode_image`` / ``model.encode_text``.

    Works for an open_clip model (raw tower outputs) and for
    :class:`~i0t_helpers.async_heads.I0TAsyncModel` (normalised outputs). The
    model runs in eval mode, which is restored afterwards. Returns float32
    numpy arrays ``(images, texts)`` in dataset order.
    """
    from tqdm.auto import tqdm

    device = torch.device(device) if device is not None else next(model.parameters()).device
    amp = device.type == "cuda" if amp is None else amp
    loader = DataLoader(dataset, batch_size=check_positive_int(batch_size, "batch_size"), shuffle=False,
                        num_workers=num_workers, pin_memory=device.type == "cuda")
    was_training = model.training
    model.eval()
    images, texts = [], []
    try:
        with torch.no_grad(), torch.autocast(device.type, enabled=amp):
            for image_batch, text_batch in tqdm(loader, desc="encoding", **_progress_options(progress)):
                images.append(model.encode_image(image_batch.to(device, non_blocking=True)).float().cpu())
                texts.append(model.encode_text(text_batch.to(device, non_blocking=True)).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(images).numpy(), torch.cat(texts).numpy()


# Checkpoints ------------------------------------------------------------------


def load_checkpoint(path) -> dict:
    """Read a training checkpoint written by :func:`train_cached` or :func:`train_live`.

    Returns its dict: ``heads`` (state dict), ``towers`` (state dict or
    ``None``), ``optimizer``, ``scaler``, ``epoch`` (epochs completed), ``step``,
    ``config``, ``history`` (list of dicts), ``model_name``, ``embed_dim`` and
    ``mode``. Read with ``torch.load(weights_only=True)``.
    """
    payload = load_torch_file(path, "training checkpoint")
    if payload.get("format") != CHECKPOINT_FORMAT_NAME:
        raise ValueError(f"{path} is not an I0T_async training checkpoint (format {payload.get('format')!r})")
    if int(payload.get("format_version", 0)) > CHECKPOINT_FORMAT_VERSION:
        raise ValueError(f"{path} uses checkpoint format {payload['format_version']}; upgrade i0t_helpers")
    return payload


def _save_checkpoint(path: Path, payload: dict):
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".part")
    torch.save(payload, temporary)
    temporary.replace(path)


def _check_resumable(checkpoint: dict, path, config: AsyncTrainingConfig, heads: I0TAsyncHeads, mode: str):
    check_heads_compatible(checkpoint["model_name"], checkpoint["embed_dim"], heads.model_name, heads.embed_dim,
                           str(path))
    if checkpoint["mode"] != mode:
        raise ValueError(f"{path} is a checkpoint of {checkpoint['mode']} training; it cannot resume {mode} training")
    saved = checkpoint["config"]
    differences = {key: (saved.get(key), value) for key, value in config.to_dict().items() if saved.get(key) != value}
    if differences:
        described = ", ".join(f"{key}: saved {old!r}, now {new!r}" for key, (old, new) in differences.items())
        raise ValueError(
            f"{path} was written with other training options ({described}); resume with the saved options "
            f"or start a new run with resume=False"
        )


# The shared loop --------------------------------------------------------------


def _distributed_info() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def init_distributed(backend: str | None = None) -> tuple[int, int, int]:
    """Join the process group that ``torchrun`` describes and return ``(rank, world_size, local_rank)``.

    Without ``torchrun`` (``WORLD_SIZE`` unset or 1) nothing is initialised and
    ``(0, 1, 0)`` is returned. The backend defaults to NCCL when CUDA is
    available and gloo otherwise; with NCCL the process uses GPU ``local_rank``.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world_size <= 1:
        return 0, 1, 0
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend)
    return torch.distributed.get_rank(), torch.distributed.get_world_size(), local_rank


@dataclass
class _Run:
    """What differs between the cached and the live loop."""

    mode: str
    heads: I0TAsyncHeads
    trainable: nn.Module
    batches: Callable[[int], Iterable]
    features: Callable[[object], tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]]
    steps_per_epoch: int
    device: torch.device
    evaluate: Callable[[], dict] | None = None
    amp_dtype: torch.dtype | None = None
    towers: nn.Module | None = None


def _batch_loss(loss: CyCLIPLoss, image_views, text_views, logit_scale: float, rank: int, world_size: int):
    image_views = [view.float() for view in image_views]
    text_views = [view.float() for view in text_views]
    if world_size > 1:
        # Every process computes the loss of the global batch; gathering with gradients makes
        # DistributedDataParallel's averaged gradient equal the global loss's gradient.
        import warnings

        from open_clip.loss import gather_features

        with warnings.catch_warnings():
            # open_clip 3.3 gathers with torch.distributed.nn.all_gather, which torch 2.14 marks as deprecated.
            warnings.simplefilter("ignore", FutureWarning)
            gathered = [gather_features(image, text, gather_with_grad=True, rank=rank, world_size=world_size)
                        for image, text in zip(image_views, text_views)]
        image_views = [pair[0] for pair in gathered]
        text_views = [pair[1] for pair in gathered]
    if len(image_views) == 1:
        return loss(image_views[0], text_views[0], logit_scale)
    return mcsie_loss(loss, image_views, text_views, logit_scale)


def _cpu_state(module: nn.Module) -> dict:
    return {key: value.detach().cpu() for key, value in module.state_dict().items()}


def _checkpoint_payload(run: _Run, config: AsyncTrainingConfig, optimizer, scaler, epochs_done: int, step: int,
                        history: list[dict]) -> dict:
    """Return what a checkpoint stores: the heads, fine-tuned towers if any, optimiser and scaler state, progress."""
    towers_trained = run.towers is not None and any(p.requires_grad for p in run.towers.parameters())
    return {
        "format": CHECKPOINT_FORMAT_NAME,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "mode": run.mode,
        "model_name": run.heads.model_name,
        "embed_dim": run.heads.embed_dim,
        "heads": _cpu_state(run.heads),
        "towers": _cpu_state(run.towers) if towers_trained else None,
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "epoch": epochs_done,
        "step": step,
        "config": config.to_dict(),
        "history": history,
    }


def _restore(run: _Run, config: AsyncTrainingConfig, checkpoint_path: Path, optimizer, scaler):
    """Load a checkpoint into the run when one exists; return ``(step, epochs_done, history)``."""
    if not checkpoint_path.is_file():
        logger.info("no checkpoint at %s yet; starting from scratch", checkpoint_path)
        return 0, 0, []
    checkpoint = load_checkpoint(checkpoint_path)
    _check_resumable(checkpoint, checkpoint_path, config, run.heads, run.mode)
    run.heads.load_state_dict(checkpoint["heads"])
    if checkpoint["towers"] is not None:
        if run.towers is None:
            raise ValueError(f"{checkpoint_path} contains fine-tuned towers; resume it with train_live")
        run.towers.load_state_dict(checkpoint["towers"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scaler.load_state_dict(checkpoint["scaler"])
    logger.info("resumed from %s after epoch %d (step %d)", checkpoint_path, checkpoint["epoch"], checkpoint["step"])
    return checkpoint["step"], checkpoint["epoch"], list(checkpoint["history"])


def _fit(run: _Run, config: AsyncTrainingConfig, checkpoint_path, resume: bool, stop_after_epoch: int | None,
         progress: bool) -> pd.DataFrame:
    from tqdm.auto import tqdm

    rank, world_size = _distributed_info()
    loss = CyCLIPLoss(config.inmodal_weight, config.crossmodal_weight)
    parameters = [parameter for parameter in run.trainable.parameters() if parameter.requires_grad]
    if not parameters:
        raise ValueError("nothing to train: no parameter requires a gradient")
    optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay,
                                  betas=(config.beta1, config.beta2), eps=config.adam_eps)
    use_scaler = run.amp_dtype == torch.float16 and run.device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    total_steps = run.steps_per_epoch * config.epochs
    checkpoint_path = None if checkpoint_path is None else Path(checkpoint_path)
    if stop_after_epoch is not None:
        stop_after_epoch = check_positive_int(stop_after_epoch, "stop_after_epoch")

    step, start_epoch, history = 0, 0, []
    if resume:
        if checkpoint_path is None:
            raise ValueError("resume=True needs checkpoint_path")
        step, start_epoch, history = _restore(run, config, checkpoint_path, optimizer, scaler)

    if start_epoch == 0 and not history and run.evaluate is not None and rank == 0:
        run.heads.eval()
        history.append({"epoch": 0, "step": 0, "lr": 0.0, "train_loss": float("nan"), "nonfinite_losses": 0,
                        "seconds": 0.0, **run.evaluate()})

    for epoch in range(start_epoch, config.epochs):
        run.trainable.train()
        started = time.perf_counter()
        losses, nonfinite = [], 0
        bar = tqdm(total=run.steps_per_epoch, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False,
                   **_progress_options(progress))
        for batch in run.batches(epoch):
            lr = cosine_lr(step, config.lr, config.warmup_steps, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(run.device.type, dtype=run.amp_dtype or torch.float32,
                                enabled=run.amp_dtype is not None):
                image_views, text_views = run.features(batch)
            batch_loss = _batch_loss(loss, image_views, text_views, config.logit_scale, rank, world_size)
            scaler.scale(batch_loss).backward()
            scaler.step(optimizer)
            scaler.update()
            step += 1

            value = float(batch_loss.detach())
            if not math.isfinite(value):
                nonfinite += 1
                logger.warning("non-finite loss %s at step %d (epoch %d)", value, step, epoch + 1)
            losses.append(value)
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4f}")
        bar.close()

        row = {"epoch": epoch + 1, "step": step, "lr": lr, "train_loss": float(np.mean(losses)),
               "nonfinite_losses": nonfinite, "seconds": time.perf_counter() - started}
        if run.evaluate is not None and rank == 0:
            run.heads.eval()
            row.update(run.evaluate())
        history.append(row)
        logger.info("epoch %d/%d: mean loss %.4f over %d steps", epoch + 1, config.epochs, row["train_loss"],
                    len(losses))

        if checkpoint_path is not None and rank == 0:
            _save_checkpoint(checkpoint_path, _checkpoint_payload(run, config, optimizer, scaler, epoch + 1, step,
                                                                  history))
        if world_size > 1:
            torch.distributed.barrier()
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and epoch + 1 < config.epochs:
            logger.info("stopping after epoch %d as requested; resume with resume=True", epoch + 1)
            break

    run.heads.eval()
    return pd.DataFrame(history)


# Cached training --------------------------------------------------------------


def train_cached(heads: I0TAsyncHeads, image_embeds, text_embeds, *, eval_image_embeds=None, eval_text_embeds=None,
                 eval_text_image_index=None, config: AsyncTrainingConfig | None = None, device="cpu",
                 checkpoint_path=None, resume: bool = False, stop_after_epoch: int | None = None,
                 progress: bool = True, **overrides) -> pd.DataFrame:
    """Train I0T_async heads in place on precomputed tower outputs and return the history.

    Row ``i`` of ``image_embeds`` and of ``text_embeds`` form a training pair
    (use :meth:`EmbeddingPack.paired` for packs with several captions per
    image). The embeddings are used as the towers produced them; the heads
    L2-normalise first. Each step takes one batch of :func:`epoch_batches`,
    applies the heads in training mode, computes the CyCLIP loss with the fixed
    logit scale and takes an AdamW step with the :func:`cosine_lr` learning
    rate. Training runs in float32 on a single device.

    Parameters
    ----------
    heads : I0TAsyncHeads
        Trained in place; left in eval mode.
    image_embeds, text_embeds : array of shape (n_pairs, dim)
    eval_image_embeds, eval_text_embeds : array, optional
        Held-out embeddings; when given, :func:`evaluate_embeddings` runs on the
        heads' eval-mode output before training (epoch 0) and after every epoch.
    eval_text_image_index : array of shape (n_eval_texts,), optional
        Image row of each held-out text, when an image has several captions.
    config : AsyncTrainingConfig, optional
        Hyperparameters (default: the paper's); ``overrides`` replace fields,
        for example ``train_cached(..., lr=1e-3, epochs=30)``.
    checkpoint_path : path, optional
        Written after every epoch (heads, optimizer, step, options, history).
    resume : bool, default False
        Continue from ``checkpoint_path`` when it exists; the options must match.
    stop_after_epoch : int, optional
        End this call after that epoch (for time-limited sessions); a later call
        with ``resume=True`` continues with the same schedule.
    progress : bool, default True
        Show a tqdm progress bar per epoch.

    Returns
    -------
    pandas.DataFrame
        One row per epoch (epoch 0 = before training when evaluating) with
        ``epoch``, ``step``, ``lr``, ``train_loss``, ``nonfinite_losses``,
        ``seconds`` and, with held-out data, the keys of :func:`evaluate_embeddings`.
    """
    if not isinstance(heads, I0TAsyncHeads):
        raise TypeError(f"heads must be an I0TAsyncHeads, got {type(heads).__name__}")
    config = make_config(config, **overrides)
    images, texts = check_embedding_pair(image_embeds, text_embeds, paired=True, normalize=False)
    if images.shape[1] != heads.embed_dim:
        raise ValueError(
            f"the embeddings have dimension {images.shape[1]}, but the heads were built for {heads.embed_dim}"
        )
    evaluate = None
    if (eval_image_embeds is None) != (eval_text_embeds is None):
        raise ValueError("give both eval_image_embeds and eval_text_embeds, or neither")
    if eval_image_embeds is not None:
        eval_images, eval_texts = check_embedding_pair(eval_image_embeds, eval_text_embeds)

        def evaluate():
            new_images, new_texts = heads.transform_numpy(eval_images, eval_texts, device=device)
            return evaluate_embeddings(new_images, new_texts, eval_text_image_index)

    if _distributed_info()[1] > 1:
        logger.warning("train_cached runs the whole training in every process; launch it without torchrun")

    device = torch.device(device)
    heads.to(device)
    image_tensor = torch.as_tensor(images, dtype=torch.float32, device=device)
    text_tensor = torch.as_tensor(texts, dtype=torch.float32, device=device)
    n_rows = len(images)

    def batches(epoch):
        for rows in epoch_batches(n_rows, config.batch_size, config.seed, epoch, config.drop_last):
            yield torch.as_tensor(rows, device=device)

    def features(rows):
        return (heads.normalize_images(image_tensor[rows]),), (heads.normalize_texts(text_tensor[rows]),)

    run = _Run(mode="cached", heads=heads, trainable=heads, batches=batches, features=features,
               steps_per_epoch=len(epoch_batches(n_rows, config.batch_size, config.seed, 0, config.drop_last)),
               device=device, evaluate=evaluate)
    return _fit(run, config, checkpoint_path, resume, stop_after_epoch, progress)


# Live training ----------------------------------------------------------------


def _to_batch_norm(heads: I0TAsyncHeads):
    """Replace SyncBatchNorm layers of ``heads`` by BatchNorm1d with the same state."""
    for name in ("image_norm", "text_norm"):
        layer = getattr(heads, name)
        if isinstance(layer, nn.SyncBatchNorm):
            plain = nn.BatchNorm1d(layer.num_features, eps=layer.eps, momentum=layer.momentum)
            plain.load_state_dict(layer.state_dict())
            setattr(heads, name, plain.to(layer.weight.device))


def _live_device(device) -> torch.device:
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def _amp_dtype(amp: bool | None, amp_dtype, device: torch.device) -> torch.dtype | None:
    amp = device.type == "cuda" if amp is None else bool(amp)
    if not amp:
        return None
    if device.type != "cuda":
        raise ValueError(f"AMP is only used on CUDA; on {device.type} training runs in float32, so pass amp=False")
    dtype = getattr(torch, amp_dtype) if isinstance(amp_dtype, str) else amp_dtype
    if dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"amp_dtype must be float16 or bfloat16, got {amp_dtype!r}")
    return dtype


def train_live(model: I0TAsyncModel, dataset: Dataset, *, eval_dataset: Dataset | None = None,
               eval_text_image_index=None, config: AsyncTrainingConfig | None = None, device=None,
               num_workers: int = 2, amp: bool | None = None, amp_dtype="float16", mcsie: bool = False,
               sync_batchnorm: bool = False, checkpoint_path=None, resume: bool = False,
               stop_after_epoch: int | None = None, progress: bool = True, **overrides) -> pd.DataFrame:
    """Train the heads of an :class:`I0TAsyncModel` by re-encoding every batch, and return the history.

    Each step loads a batch of (image, token ids) pairs with a DataLoader, runs
    it through the towers (frozen: in eval mode under ``torch.no_grad``) and the
    heads (training mode), and takes the same optimiser step as
    :func:`train_cached`. With frozen towers and ``mcsie=False`` the result
    equals :func:`train_cached` on the towers' outputs, at the cost of a tower
    forward pass per pair and epoch.

    Parameters
    ----------
    model : I0TAsyncModel
        Its heads (and, for phase 1, its unfrozen towers) are trained in place.
        With ``model.use_heads=False`` the heads' parameters are frozen, which is
        phase-1 fine-tuning of the encoders alone; unfrozen towers with heads is
        the synchronous "+BN" variant. Training unfrozen towers needs the memory
        and compute of CLIP fine-tuning, so run it on a GPU.
    dataset : Dataset
        Yields ``(image_tensor, token_ids)``, like :class:`ImageCaptionDataset`.
    eval_dataset : Dataset, optional
        Held-out pairs, encoded by the model in eval mode before training and
        after every epoch (process 0 only) and scored with :func:`evaluate_embeddings`.
    config, **overrides
        Hyperparameters as in :func:`train_cached`; ``batch_size`` is the global batch.
    device : str or torch.device, optional
        Default: ``cuda:LOCAL_RANK`` when CUDA is available, else CPU.
    num_workers : int, default 2
        DataLoader worker processes.
    amp, amp_dtype : bool or None, "float16" or "bfloat16"
        Automatic mixed precision for the towers; default on for CUDA (with a
        gradient scaler for float16) and refused on CPU, where training runs in
        float32. The heads and the loss always run in float32.
    mcsie : bool, default False
        Encode each batch twice with ``model.tower_dropout`` active and average
        the loss over the four (image view, text view) pairings. Needs
        ``tower_dropout > 0``; cached training cannot reproduce it.
    sync_batchnorm : bool, default False
        Under ``torchrun``: ``False`` gives each GPU its own batch statistics
        (what An et al. did: 64 pairs per GPU); ``True`` converts the heads to
        ``SyncBatchNorm`` so statistics cover the global batch (CUDA only).
        Either way DistributedDataParallel broadcasts the running statistics of
        process 0 before every forward pass, so all processes hold the same heads.
    checkpoint_path, resume, stop_after_epoch, progress
        As in :func:`train_cached`. Process 0 writes the checkpoint; fine-tuned
        towers are saved with it.

    Returns
    -------
    pandas.DataFrame
        One row per epoch; see :func:`train_cached`.
    """
    if not isinstance(model, I0TAsyncModel):
        raise TypeError(f"model must be an I0TAsyncModel, got {type(model).__name__}")
    config = make_config(config, **overrides)
    rank, world_size = _distributed_info()
    device = _live_device(device)
    dtype = _amp_dtype(amp, amp_dtype, device)
    if mcsie and model.tower_dropout <= 0:
        raise ValueError(
            "mcsie=True needs dropout in the towers, otherwise both encodings are identical; build the model with "
            "I0TAsyncModel(towers, tower_dropout=0.1)"
        )
    if sync_batchnorm and (world_size == 1 or device.type != "cuda"):
        raise ValueError(
            "sync_batchnorm=True needs distributed training on CUDA (launch with torchrun on GPUs); "
            "on one device the batch statistics already cover the whole batch"
        )
    if len(dataset) == 0:
        raise ValueError("dataset is empty")

    model.heads.requires_grad_(model.use_heads)
    model.to(device)
    if sync_batchnorm:
        model.heads = nn.SyncBatchNorm.convert_sync_batchnorm(model.heads)
    trainable = model
    if world_size > 1:
        trainable = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    sampler = SeededBatchSampler(len(dataset), config.batch_size, config.seed, config.drop_last, rank, world_size)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                        pin_memory=device.type == "cuda", persistent_workers=num_workers > 0)
    views = 2 if mcsie else 1

    def batches(epoch):
        sampler.set_epoch(epoch)
        return loader

    def features(batch):
        images, tokens = batch
        image_views, text_views, _ = trainable(images.to(device, non_blocking=True),
                                               tokens.to(device, non_blocking=True), views=views)
        return image_views, text_views

    evaluate = None
    if eval_dataset is not None:
        def evaluate():
            eval_images, eval_texts = encode_dataset(model, eval_dataset, batch_size=max(config.batch_size, 2),
                                                     device=device, num_workers=num_workers,
                                                     amp=dtype is not None, progress=progress)
            return evaluate_embeddings(eval_images, eval_texts, eval_text_image_index)

    run = _Run(mode="live", heads=model.heads, trainable=trainable, batches=batches, features=features,
               steps_per_epoch=len(sampler), device=device, evaluate=evaluate, amp_dtype=dtype, towers=model.towers)
    try:
        history = _fit(run, config, checkpoint_path, resume, stop_after_epoch, progress)
    finally:
        if sync_batchnorm:
            _to_batch_norm(model.heads)
        model.eval()
    if world_size > 1:
        # The last step updated each process's running statistics with its own batch; keep process 0's,
        # which is what the checkpoint holds, so every process ends with the same heads.
        for buffer in model.heads.buffers():
            torch.distributed.broadcast(buffer, src=0)
    return history

"""Downstream evaluation of live embeddings: cross-modal retrieval and zero-shot classification.

Two protocols for image-text retrieval, each with and without I0T_post
(An et al., 2025):

* **all captions**: every caption of every image is a query (text to image)
  and a gallery item (image to text, a hit when any caption of the image is in
  the top k). This is the usual COCO 5k protocol, reported by An et al. (2025)
  in their appendix table of COCO results.
* **first caption**: one caption per image, the first in file order. An et al.
  (2025) use this protocol for their Flickr30k 1k results.

Zero-shot classification builds one prototype per class with
``open_clip.build_zero_shot_classifier`` (the mean of the normalised
embeddings of the class name in every prompt template, normalised again) and
predicts the class whose prototype has the highest cosine with the image. The
I0T_post variant centres the class prototypes with the text mean (the mean of
the prototypes) and the images with the image mean (the mean of the evaluated
images), then re-normalises both:

    p'_c = normalize(p_c - mean_c(p)),    x'_i = normalize(x_i - mean_i(x))
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ._validation import check_embedding_pair, check_positive_int
from .embeddings import EmbeddingPack
from .post import I0TPost
from .retrieval import recall_at_k

logger = logging.getLogger(__name__)

#: Retrieval protocol names, as they appear in tables and JSON output.
ALL_CAPTIONS = "all captions"
FIRST_CAPTION = "first caption"

_PHOTO_QUALITIES = ("", "blurry ", "black and white ", "low contrast ", "high contrast ", "bad ", "good ")


def _cifar_templates() -> tuple[str, ...]:
    templates = []
    for article in ("a", "the"):
        templates += [f"a {quality}photo of {article} {{}}." for quality in _PHOTO_QUALITIES]
        templates += [f"a photo of {article} {size} {{}}." for size in ("small", "big")]
    return tuple(templates)


#: The 18 prompt templates that CLIP (Radford et al., 2021) published for CIFAR-10 and CIFAR-100,
#: in the form ``"a blurry photo of a {}."``. open_clip 3.3 ships only ImageNet templates
#: (``open_clip.zero_shot_metadata``), which :func:`zero_shot_templates` also offers.
CIFAR_TEMPLATES = _cifar_templates()


def zero_shot_templates(name: str = "cifar") -> tuple:
    """Return prompt templates by name.

    ``"cifar"`` gives :data:`CIFAR_TEMPLATES` (18 templates, the count An et al.
    (2025) report for CIFAR-100); ``"openai-imagenet"`` and ``"simple-imagenet"``
    give open_clip's 80 and 7 ImageNet templates.
    """
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

    choices = {"cifar": CIFAR_TEMPLATES, "openai-imagenet": OPENAI_IMAGENET_TEMPLATES,
               "simple-imagenet": SIMPLE_IMAGENET_TEMPLATES}
    if name not in choices:
        raise ValueError(f"unknown template set {name!r}; choose one of {', '.join(choices)}")
    return tuple(choices[name])


# Retrieval -----------------------------------------------------------------------------------


def first_caption_pack(pack: EmbeddingPack) -> EmbeddingPack:
    """Return a pack with one caption per image: the first of its rows in ``text_image_index`` order."""
    images_with_text, first_rows = np.unique(pack.text_image_index, return_index=True)
    if len(images_with_text) < pack.n_images:
        missing = int(np.setdiff1d(np.arange(pack.n_images), images_with_text)[0])
        raise ValueError(f"image row {missing} has no caption; every image needs at least one for retrieval")
    return EmbeddingPack(
        image_embeds=pack.image_embeds,
        text_embeds=pack.text_embeds[first_rows],
        captions=None if pack.captions is None else [pack.captions[row] for row in first_rows],
        image_ids=pack.image_ids,
        references=pack.references,
        metadata={**pack.metadata, "captions_per_image": "first"},
    )


def captions_per_image(pack: EmbeddingPack) -> np.ndarray:
    """Return the number of captions of each image."""
    return np.bincount(pack.text_image_index, minlength=pack.n_images)


def retrieval_recalls(image_embeds, text_embeds, text_image_index=None, ks=(1, 5, 10), post: bool = False,
                      post_transform: I0TPost | None = None) -> dict:
    """Return image-to-text and text-to-image recall@k in percent, optionally after I0T_post.

    Parameters
    ----------
    image_embeds : array of shape (n_images, dim)
    text_embeds : array of shape (n_texts, dim)
    text_image_index : array of shape (n_texts,), optional
        Image row of each text; default: text i describes image i.
    ks : sequence of int
    post : bool
        Apply I0T_post first: each modality is centred with its own mean and
        re-normalised.
    post_transform : I0TPost, optional
        Already-fitted means to use with ``post=True`` (for example fitted on
        another split). By default the means of the evaluated embeddings are
        used, as in An et al. (2025).

    Returns
    -------
    dict
        ``{"i2t": {k: recall}, "t2i": {k: recall}}`` with recalls in [0, 100].
    """
    images, texts = check_embedding_pair(image_embeds, text_embeds)
    if post:
        transform = post_transform if post_transform is not None else I0TPost().fit(images, texts)
        images, texts = transform.transform(images, texts)
    elif post_transform is not None:
        raise ValueError("post_transform is only used with post=True")
    recalls = recall_at_k(images, texts, text_image_index, ks=ks)
    return {direction: {k: 100.0 * value for k, value in values.items()}
            for direction, values in recalls.items()}


def retrieval_table(pack: EmbeddingPack, ks=(1, 5, 10), post: bool = True) -> pd.DataFrame:
    """Return recall@k (percent) of a pack under both protocols, raw and after I0T_post.

    The "all captions" protocol is reported only when some image has more than
    one caption; "first caption" is always reported. It keeps the first of each
    image's rows in the pack, which for a pack of one caption per image is that
    caption (the starter pack keeps the last COCO caption of each image). I0T_post
    means are fitted on the embeddings evaluated under each protocol.

    Returns
    -------
    pandas.DataFrame
        Index ``(protocol, method)`` with methods ``"CLIP"`` (the raw
        embeddings) and ``"I0T_post"``; columns ``"I2T R@k"`` then ``"T2I R@k"``.
    """
    ks = tuple(check_positive_int(k, "k") for k in ks)
    evaluated = []
    if captions_per_image(pack).max() > 1:
        evaluated.append((ALL_CAPTIONS, pack))
    evaluated.append((FIRST_CAPTION, first_caption_pack(pack)))

    rows, index = [], []
    for protocol, subset in evaluated:
        for method, apply_post in (("CLIP", False), ("I0T_post", True)):
            if apply_post and not post:
                continue
            recalls = retrieval_recalls(subset.image_embeds, subset.text_embeds, subset.text_image_index,
                                        ks=ks, post=apply_post)
            row = {f"I2T R@{k}": recalls["i2t"][k] for k in ks}
            row.update({f"T2I R@{k}": recalls["t2i"][k] for k in ks})
            rows.append(row)
            index.append((protocol, method))
    return pd.DataFrame(rows, index=pd.MultiIndex.from_tuples(index, names=["protocol", "method"]))


# Zero-shot classification --------------------------------------------------------------------


def class_prototypes(loaded, classnames: Sequence[str], templates: Sequence = CIFAR_TEMPLATES,
                     classes_per_batch: int = 10, progress: bool = False) -> np.ndarray:
    """Return one L2-normalised text prototype per class, built by ``open_clip.build_zero_shot_classifier``.

    Each prototype is ``normalize(mean_t normalize(f_text(template_t(class))))``
    over the templates.

    Returns
    -------
    ndarray of shape (n_classes, embed_dim), float32
    """
    import torch
    from open_clip import build_zero_shot_classifier

    classnames = [str(name) for name in classnames]
    if not classnames:
        raise ValueError("classnames is empty; pass at least one class name")
    templates = tuple(templates)
    if not templates:
        raise ValueError("templates is empty; pass at least one template such as 'a photo of a {}.'")
    if isinstance(templates[0], str) and any("{}" not in template for template in templates):
        raise ValueError("every string template needs a '{}' where the class name goes")
    classes_per_batch = check_positive_int(classes_per_batch, "classes_per_batch")

    with torch.inference_mode(), loaded.autocast():
        weights = build_zero_shot_classifier(
            loaded.model, loaded.tokenizer, classnames, templates,
            num_classes_per_batch=classes_per_batch, device=loaded.device, use_tqdm=progress,
        )
    prototypes = weights.float().T.cpu().numpy()
    return prototypes / np.linalg.norm(prototypes, axis=1, keepdims=True)


def zero_shot_accuracy(image_embeds, labels, class_embeds, ks=(1, 5), post: bool = False,
                       post_transform: I0TPost | None = None) -> dict:
    """Return top-k zero-shot accuracy in percent, optionally after I0T_post.

    An image counts as correct at k when its label's prototype is among the k
    prototypes of highest cosine. Ties count against the image: a wrong class
    with the same score as the right one ranks before it.

    Parameters
    ----------
    image_embeds : array of shape (n_images, dim)
    labels : array of int, shape (n_images,)
        Class index of each image, in ``[0, n_classes)``.
    class_embeds : array of shape (n_classes, dim)
        Class prototypes, from :func:`class_prototypes`.
    ks : sequence of int
    post : bool
        Apply I0T_post: prototypes centred with the text mean (the mean of the
        prototypes), images with the image mean (of ``image_embeds``).
    post_transform : I0TPost, optional
        Already-fitted means to use with ``post=True`` instead.

    Returns
    -------
    dict
        ``{k: accuracy}`` with accuracies in [0, 100].
    """
    images, prototypes = check_embedding_pair(image_embeds, class_embeds)
    labels = np.asarray(labels)
    if labels.shape != (len(images),):
        raise ValueError(f"labels must have one entry per image ({len(images)}); got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must be integer class indices, got dtype {labels.dtype}")
    if labels.min() < 0 or labels.max() >= len(prototypes):
        raise ValueError(f"labels must lie in [0, {len(prototypes) - 1}]; got {labels.min()} to {labels.max()}")
    ks = tuple(check_positive_int(k, "k") for k in ks)

    if post:
        transform = post_transform if post_transform is not None else I0TPost().fit(images, prototypes)
        images, prototypes = transform.transform(images, prototypes)
    elif post_transform is not None:
        raise ValueError("post_transform is only used with post=True")

    scores = images @ prototypes.T
    correct_scores = scores[np.arange(len(images)), labels]
    ranks = np.count_nonzero(scores >= correct_scores[:, None], axis=1) - 1
    return {k: 100.0 * float(np.mean(ranks < k)) for k in ks}


def zero_shot_table(image_embeds, labels, class_embeds, ks=(1, 5), post: bool = True) -> pd.DataFrame:
    """Return top-k zero-shot accuracy (percent) as a table with rows ``"CLIP"`` and ``"I0T_post"``."""
    rows = {"CLIP": zero_shot_accuracy(image_embeds, labels, class_embeds, ks=ks)}
    if post:
        rows["I0T_post"] = zero_shot_accuracy(image_embeds, labels, class_embeds, ks=ks, post=True)
    table = pd.DataFrame({method: {f"top-{k}": value for k, value in values.items()}
                          for method, values in rows.items()}).T
    table.index.name = "method"
    return table


def cifar100_classnames(dataset) -> list[str]:
    """Return the class names of a torchvision CIFAR-100 dataset with underscores turned into spaces."""
    return [name.replace("_", " ") for name in dataset.classes]


def load_cifar100_test(root=None, download: bool = True):
    """Return torchvision's CIFAR-100 test split (10,000 images), downloading it to ``root`` when missing.

    ``root`` defaults to ``cifar100/`` in the course's data folder.
    """
    from torchvision.datasets import CIFAR100

    from .download import DownloadError, resolve_data_dir

    root = Path(root).expanduser() if root is not None else resolve_data_dir() / "cifar100"
    try:
        return CIFAR100(str(root), train=False, download=download)
    except (OSError, RuntimeError) as error:
        raise DownloadError(
            f"CIFAR-100 is not in {root} and could not be downloaded ({error}); on a machine with internet access "
            f"run load_cifar100_test(root) once, or copy the extracted cifar-100-python folder into {root}"
        ) from None


def evaluate_cifar100(loaded, dataset=None, root=None, templates: Sequence = CIFAR_TEMPLATES, ks=(1, 5),
                      post: bool = True, batch_size: int = 256, num_workers: int | None = None,
                      progress: bool = True, cache: bool = True, cache_dir=None) -> pd.DataFrame:
    """Zero-shot CIFAR-100 test accuracy of a model, raw and after I0T_post.

    Parameters
    ----------
    loaded : LoadedModel
    dataset : torchvision-style dataset, optional
        Items ``(PIL image, label)`` and a ``classes`` attribute; default the
        CIFAR-100 test split from :func:`load_cifar100_test`.
    root : str or Path, optional
        Where CIFAR-100 is stored or downloaded.
    templates : sequence of str or callables
        Prompt templates; default the 18 of :data:`CIFAR_TEMPLATES`.
    ks, post
        As in :func:`zero_shot_table`.
    batch_size, num_workers, progress, cache, cache_dir
        Passed to :func:`i0t_helpers.encoding.encode_images`.
    """
    from .encoding import encode_images

    if dataset is None:
        dataset = load_cifar100_test(root)
    images, labels = [], []
    for image, label in (dataset[i] for i in range(len(dataset))):
        images.append(image)
        labels.append(int(label))
    image_embeds = encode_images(loaded, images, batch_size=batch_size, num_workers=num_workers,
                                 progress=progress, cache=cache, cache_dir=cache_dir)
    prototypes = class_prototypes(loaded, cifar100_classnames(dataset), templates, progress=progress)
    return zero_shot_table(image_embeds, np.asarray(labels), prototypes, ks=ks, post=post)

"""Reference-free and reference-based caption metrics on embeddings: CLIP-S, RefCLIP-S and I0T-S.

Every score takes L2-normalisable embeddings, so the outputs of any encoder can
be scored; encoding is kept apart in :func:`encode_captions` and
:func:`encode_images`. Captions are usually scored with their image through a
``caption_image_index`` that gives, for each caption row, the row of its image
(several candidate captions may share one image, as in Flickr8k).

=============== ==================================================== ==========
score           formula (c: caption, v: image, r: reference)         default w
=============== ==================================================== ==========
CLIP-S          ``w * max(cos(c, v), 0)``                            2.5
RefCLIP-S       ``H(CLIP-S(c, v), max(max_r cos(c, r), 0))``         2.5
I0T-S           ``w * cos(c', v')`` after I0T_post, no clipping      1
=============== ==================================================== ==========

``H`` is the harmonic mean. CLIP-S and RefCLIP-S are from Hessel et al. (2021),
I0T-S from An et al. (2025). Hessel et al. encode captions as ``"A photo
depicts " + caption`` (references too, in their released code); see
:func:`add_caption_prefix`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from ._validation import check_embedding_pair, check_embeddings, check_positive_int, check_text_image_index
from .post import I0TPost

logger = logging.getLogger(__name__)

#: Caption prefix of Hessel et al. (2021); one space separates it from the caption.
CAPTION_PREFIX = "A photo depicts"
#: Weight w of CLIP-S and RefCLIP-S in Hessel et al. (2021).
CLIP_SCORE_WEIGHT = 2.5
#: Weight of torchmetrics' CLIPScore (0 to 100 scale).
TORCHMETRICS_CLIP_SCORE_WEIGHT = 100.0
#: I0T-S settings: the formula of An et al. (2025) and what their released code computes.
I0T_SCORE_VARIANTS = {
    "paper": {"w": 1.0, "clip": False},
    "official-code": {"w": 2.0, "clip": True},
}
#: Caption rows scored at once when comparing a caption with its references.
REFERENCE_CHUNK_ROWS = 4096


# Text preparation ----------------------------------------------------------------------------


def add_caption_prefix(captions, prefix: str | None = CAPTION_PREFIX) -> list[str]:
    """Collapse whitespace in each caption and prepend ``prefix`` and one space.

    Hessel et al. (2021) feed ``"A photo depicts " + caption`` to CLIP's text
    tower for candidates, and their released code does the same for references.
    Their Flickr8k script first joins each caption's words with single spaces.
    Scores of captions encoded with and without the prefix are not comparable.

    Parameters
    ----------
    captions : str or sequence of str
        Captions to prepare. A single string is treated as one caption.
    prefix : str or None
        Text placed before every caption; ``None`` or ``""`` only collapses
        whitespace.

    Returns
    -------
    list of str

    Examples
    --------
    >>> add_caption_prefix(["a dog  runs ."])
    ['A photo depicts a dog runs .']
    """
    if isinstance(captions, str):
        captions = [captions]
    if prefix is not None and not isinstance(prefix, str):
        raise TypeError(f"prefix must be a string or None, got {type(prefix).__name__}")
    prepared = []
    for position, caption in enumerate(captions):
        if not isinstance(caption, str):
            raise TypeError(f"captions[{position}] must be a string, got {type(caption).__name__}: {caption!r}")
        words = " ".join(caption.split())
        prepared.append(f"{prefix.strip()} {words}" if prefix and prefix.strip() else words)
    return prepared


def caption_token_counts(tokenizer, texts) -> np.ndarray:
    """Count the tokens of each text, start and end tokens included.

    CLIP's text tower reads at most ``context_length`` tokens (77 for the
    OpenAI models). open_clip's tokenizer cuts longer texts and puts the end
    token last, so words past the limit do not change the embedding. Compare
    the counts with ``tokenizer.context_length`` to find captions that lose
    words.

    Parameters
    ----------
    tokenizer : open_clip tokenizer
        Needs an ``encode(text)`` method returning the BPE ids without start
        and end tokens, as open_clip's ``SimpleTokenizer`` has.
    texts : sequence of str

    Returns
    -------
    ndarray of int64, shape (n_texts,)
    """
    encode = getattr(tokenizer, "encode", None)
    if encode is None:
        raise TypeError(
            f"{type(tokenizer).__name__} has no encode method; pass open_clip's SimpleTokenizer "
            f"(open_clip.get_tokenizer on an OpenAI-style model)"
        )
    if isinstance(texts, str):
        texts = [texts]
    return np.array([len(encode(text)) + 2 for text in texts], dtype=np.int64)


# Encoding ------------------------------------------------------------------------------------


def encode_captions(model, tokenizer, captions, prefix: str | None = CAPTION_PREFIX, batch_size: int = 256,
                    device: str = "cpu", progress: bool = True) -> np.ndarray:
    """Encode captions with an open_clip model and return L2-normalised float32 embeddings.

    Each caption passes through :func:`add_caption_prefix` first, so the
    default matches Hessel et al. (2021); pass ``prefix=None`` to encode the
    bare captions. Texts longer than the tokenizer's context length are
    truncated by the tokenizer; their number is logged as a warning.

    Parameters
    ----------
    model : open_clip model
        Anything with ``encode_text(tokens)``; it is used as it is (put it in
        eval mode and on ``device`` yourself).
    tokenizer : callable
        Returns a tensor of token ids for a list of strings.
    captions : sequence of str
    prefix : str or None
        See :func:`add_caption_prefix`.
    batch_size : int
    device : str
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    ndarray of shape (n_captions, dim), float32
    """
    import torch
    from tqdm.auto import tqdm

    batch_size = check_positive_int(batch_size, "batch_size")
    texts = add_caption_prefix(captions, prefix)
    if not texts:
        raise ValueError("captions is empty; pass at least one caption")
    context_length = getattr(tokenizer, "context_length", None)
    if context_length is not None and hasattr(tokenizer, "encode"):
        n_long = int((caption_token_counts(tokenizer, texts) > context_length).sum())
        if n_long:
            logger.warning("%d of %d captions exceed %d tokens and are truncated by the tokenizer",
                           n_long, len(texts), context_length)

    outputs = []
    with torch.no_grad():
        for start in tqdm(range(0, len(texts), batch_size), disable=not progress, desc="captions"):
            tokens = tokenizer(texts[start:start + batch_size]).to(device)
            outputs.append(model.encode_text(tokens).float().cpu().numpy())
    return check_embeddings(np.concatenate(outputs), "caption embeddings").astype(np.float32)


def encode_images(model, preprocess, images, batch_size: int = 64, device: str = "cpu",
                  progress: bool = True) -> np.ndarray:
    """Encode images (file paths or PIL images) and return L2-normalised float32 embeddings.

    Parameters
    ----------
    model : open_clip model
        Anything with ``encode_image(pixels)``, already in eval mode on ``device``.
    preprocess : callable
        The model's image transform (PIL image to tensor).
    images : sequence of str, Path or PIL.Image.Image
    batch_size, device, progress
        As in :func:`encode_captions`.

    Returns
    -------
    ndarray of shape (n_images, dim), float32
    """
    import torch
    from PIL import Image
    from tqdm.auto import tqdm

    batch_size = check_positive_int(batch_size, "batch_size")
    images = list(images)
    if not images:
        raise ValueError("images is empty; pass at least one image path or PIL image")

    outputs = []
    with torch.no_grad():
        for start in tqdm(range(0, len(images), batch_size), disable=not progress, desc="images"):
            pixels = []
            for item in images[start:start + batch_size]:
                if isinstance(item, Image.Image):
                    pixels.append(preprocess(item.convert("RGB")))
                    continue
                with Image.open(item) as image:
                    pixels.append(preprocess(image.convert("RGB")))
            batch = torch.stack(pixels).to(device)
            outputs.append(model.encode_image(batch).float().cpu().numpy())
    return check_embeddings(np.concatenate(outputs), "image embeddings").astype(np.float32)


# Scores --------------------------------------------------------------------------------------


def _check_weight(w) -> float:
    if isinstance(w, bool) or not isinstance(w, (int, float, np.integer, np.floating)) or not math.isfinite(w) or w <= 0:
        raise ValueError(f"w must be a positive finite number, got {w!r}")
    return float(w)


def _prepare(image_embeds, caption_embeds, caption_image_index):
    """Validate and L2-normalise both sides; return them and the image row of every caption."""
    images, captions = check_embedding_pair(image_embeds, caption_embeds)
    index = check_text_image_index(caption_image_index, len(captions), len(images))
    return images, captions, index


def _row_cosines(images, captions, index) -> np.ndarray:
    return np.einsum("ij,ij->i", images[index], captions, dtype=np.float64)


def pair_cosines(image_embeds, caption_embeds, caption_image_index=None) -> np.ndarray:
    """Return the cosine of every caption with its image, in float64.

    Parameters
    ----------
    image_embeds : array-like of shape (n_images, dim)
    caption_embeds : array-like of shape (n_captions, dim)
    caption_image_index : array-like of int, shape (n_captions,), optional
        Image row of each caption; defaults to row i with row i, which needs
        ``n_captions == n_images``.

    Returns
    -------
    ndarray of shape (n_captions,)
    """
    images, captions, index = _prepare(image_embeds, caption_embeds, caption_image_index)
    return _row_cosines(images, captions, index)


def clip_score(image_embeds, caption_embeds, caption_image_index=None, w: float = CLIP_SCORE_WEIGHT) -> np.ndarray:
    """Compute CLIP-S of each caption with its image (Hessel et al., 2021).

    ::

        CLIP-S(c, v) = w * max(cos(c, v), 0)

    Both sides are L2-normalised first (with a logged warning when they were
    not). The clipping at 0 applies to each pair; averaging first and clipping
    the mean gives a different number whenever some cosines are negative.
    With w = 2.5 the scores lie in [0, 2.5]; torchmetrics reports the same
    quantity with w = 100. Encode the captions with the "A photo depicts"
    prefix (see :func:`add_caption_prefix`) to match published values.

    Parameters
    ----------
    image_embeds : array-like of shape (n_images, dim)
    caption_embeds : array-like of shape (n_captions, dim)
    caption_image_index : array-like of int, shape (n_captions,), optional
        Image row of each caption; defaults to row i with row i.
    w : float
        Positive scale.

    Returns
    -------
    ndarray of shape (n_captions,), float64

    Examples
    --------
    >>> import numpy as np
    >>> clip_score(np.array([[1.0, 0.0], [1.0, 0.0]]), np.array([[0.6, 0.8], [-0.6, 0.8]]))
    array([1.5, 0. ])
    """
    w = _check_weight(w)
    return w * np.maximum(pair_cosines(image_embeds, caption_embeds, caption_image_index), 0.0)


def reference_similarity(caption_embeds, reference_embeds, reference_image_index, caption_image_index=None,
                         n_images: int | None = None) -> np.ndarray:
    """Return ``max(max_r cos(c, r), 0)`` for every caption c over the references r of its image.

    Parameters
    ----------
    caption_embeds : array-like of shape (n_captions, dim)
    reference_embeds : array-like of shape (n_references, dim)
        All references, flat.
    reference_image_index : array-like of int, shape (n_references,)
        Image row that each reference describes.
    caption_image_index : array-like of int, shape (n_captions,), optional
        Image row of each caption; defaults to ``arange(n_captions)``.
    n_images : int, optional
        Number of image rows; defaults to one more than the largest index.

    Returns
    -------
    ndarray of shape (n_captions,), float64

    Raises
    ------
    ValueError
        When a caption's image has no reference.
    """
    captions, references = check_embedding_pair(caption_embeds, reference_embeds)
    reference_index = np.asarray(reference_image_index)
    if caption_image_index is None:
        caption_index = np.arange(len(captions))
    else:
        caption_index = np.asarray(caption_image_index)
    if n_images is None:
        n_images = int(max(caption_index.max(initial=-1), reference_index.max(initial=-1))) + 1
    caption_index = check_text_image_index(caption_index, len(captions), n_images)
    reference_index = check_text_image_index(reference_index, len(references), n_images)

    counts = np.bincount(reference_index, minlength=n_images)
    without = np.flatnonzero(counts[caption_index] == 0)
    if without.size:
        raise ValueError(
            f"{without.size} caption(s) have no reference for their image, first caption row {int(without[0])} "
            f"(image row {int(caption_index[without[0]])}); give every scored image at least one reference"
        )

    # References sorted by image, so those of image g are sorted_references[offsets[g]:offsets[g] + counts[g]].
    sorted_references = references[np.argsort(reference_index, kind="stable")]
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])

    best = np.empty(len(captions), dtype=np.float64)
    for start in range(0, len(captions), REFERENCE_CHUNK_ROWS):
        rows = np.arange(start, min(start + REFERENCE_CHUNK_ROWS, len(captions)))
        chunk_counts = counts[caption_index[rows]]
        group_starts = np.concatenate([[0], np.cumsum(chunk_counts)[:-1]])
        caption_rows = np.repeat(rows, chunk_counts)
        within_group = np.arange(chunk_counts.sum()) - np.repeat(group_starts, chunk_counts)
        reference_rows = np.repeat(offsets[caption_index[rows]], chunk_counts) + within_group
        cosines = np.einsum("ij,ij->i", captions[caption_rows], sorted_references[reference_rows], dtype=np.float64)
        best[rows] = np.maximum.reduceat(cosines, group_starts)
    return np.maximum(best, 0.0)


def harmonic_mean(a, b) -> np.ndarray:
    """Return ``2ab / (a + b)`` elementwise, defined as 0 where ``a + b == 0``.

    Both inputs must be finite and non-negative (clipped scores); anything else
    raises ``ValueError`` rather than turning into a valid-looking 0. The product
    is formed as ``2 a (b / (a + b))`` so that tiny scores do not underflow.
    """
    arrays = []
    for name, values in (("a", a), ("b", b)):
        if values is None:
            raise TypeError(f"harmonic_mean: {name} is None; pass an array of non-negative scores")
        array = np.asarray(values, dtype=np.float64)
        if not np.isfinite(array).all() or (array < 0).any():
            raise ValueError(f"harmonic_mean: {name} must hold finite non-negative scores; clip them at 0 first")
        arrays.append(array)
    a, b = np.broadcast_arrays(*arrays)
    total = a + b
    positive = total > 0
    result = np.zeros(a.shape, dtype=np.float64)
    result[positive] = 2.0 * a[positive] * (b[positive] / total[positive])
    return result


def ref_clip_score(image_embeds, caption_embeds, reference_embeds, reference_image_index, caption_image_index=None,
                   w: float = CLIP_SCORE_WEIGHT) -> np.ndarray:
    """Compute RefCLIP-S: the harmonic mean of CLIP-S and the best reference similarity (Hessel et al., 2021).

    ::

        RefCLIP-S(c, R, v) = H(w * max(cos(c, v), 0),  max(max_{r in R} cos(c, r), 0))
        H(a, b) = 2ab / (a + b),  and 0 when a = b = 0

    The image side is on the scale w (0 to 2.5 by default) and the text side on
    0 to 1, as in the paper. The released CLIPScore code does not clip the text
    side at 0; the two agree unless every reference has a negative cosine with
    the candidate.

    Parameters
    ----------
    image_embeds : array-like of shape (n_images, dim)
    caption_embeds : array-like of shape (n_captions, dim)
    reference_embeds : array-like of shape (n_references, dim)
        Embeddings of all references, encoded like the captions (with the same prefix).
    reference_image_index : array-like of int, shape (n_references,)
        Image row of each reference.
    caption_image_index : array-like of int, shape (n_captions,), optional
        Image row of each caption; defaults to row i with row i.
    w : float

    Returns
    -------
    ndarray of shape (n_captions,), float64
    """
    images, captions, index = _prepare(image_embeds, caption_embeds, caption_image_index)
    image_side = clip_score(images, captions, index, w=w)
    text_side = reference_similarity(captions, reference_embeds, reference_image_index, index, n_images=len(images))
    return harmonic_mean(image_side, text_side)


def i0t_score(image_embeds, caption_embeds, caption_image_index=None, post: I0TPost | None = None,
              variant: str = "paper") -> np.ndarray:
    """Compute I0T-S: the cosine of image and caption after I0T_post standardisation (An et al., 2025).

    ::

        v' = normalize(v - mean_image),   c' = normalize(c - mean_text)
        I0T-S(c, v) = cos(c', v')                    variant "paper" (default): w = 1, range [-1, 1]
        I0T-S(c, v) = 2.0 * max(cos(c', v'), 0)      variant "official-code": w = 2, range [0, 2]

    An et al. define I0T-S without scaling or clipping. Their released code
    scores ``2.0 * max(cos, 0)``, which maps every negative cosine to a tie at 0
    and so changes rank correlations; ``variant="official-code"`` reproduces it.

    Where the means come from is the ``post`` argument:

    * ``None`` (default, as in An et al.): fit :class:`~i0t_helpers.post.I0TPost`
      on the evaluated set itself, the image mean over the rows of
      ``image_embeds`` (each image once) and the text mean over all captions.
      The scores then depend on which other pairs are evaluated with them.
    * a fitted ``I0TPost`` (for example ``I0TPost.load(path)`` with statistics of
      a reference corpus): its means are used unchanged, so a pair's score does
      not depend on the rest of the batch.

    Parameters
    ----------
    image_embeds : array-like of shape (n_images, dim)
    caption_embeds : array-like of shape (n_captions, dim)
    caption_image_index : array-like of int, shape (n_captions,), optional
        Image row of each caption; defaults to row i with row i.
    post : I0TPost, optional
    variant : {"paper", "official-code"}

    Returns
    -------
    ndarray of shape (n_captions,), float64
    """
    if variant not in I0T_SCORE_VARIANTS:
        raise ValueError(f"variant must be one of {sorted(I0T_SCORE_VARIANTS)}, got {variant!r}")
    if post is not None and not isinstance(post, I0TPost):
        raise TypeError(f"post must be a fitted I0TPost or None, got {type(post).__name__}")
    images, captions, index = _prepare(image_embeds, caption_embeds, caption_image_index)
    if post is None:
        post = I0TPost().fit(images, captions)
    standardised_images = post.transform_images(images)
    standardised_captions = post.transform_texts(captions)
    cosines = _row_cosines(standardised_images, standardised_captions, index)

    settings = I0T_SCORE_VARIANTS[variant]
    if settings["clip"]:
        cosines = np.maximum(cosines, 0.0)
    return settings["w"] * cosines


# Text-only baseline --------------------------------------------------------------------------


def tfidf_reference_similarity(candidates, references, candidate_reference_index=None) -> np.ndarray:
    """Score each candidate by its best TF-IDF cosine with its references: a text-only baseline.

    ::

        score(c) = max_{r in R(c)} cos(tfidf(c), tfidf(r))

    The vocabulary and the inverse document frequencies are fitted on all
    distinct reference texts (scikit-learn's ``TfidfVectorizer`` defaults:
    lower-casing, words of two or more characters, smooth IDF, L2-normalised
    rows). It uses no image, so it measures how much of the human judgment
    can be predicted from the overlap of words with the references alone.

    Parameters
    ----------
    candidates : sequence of str
    references : sequence of sequence of str
        Reference groups (for example one per image).
    candidate_reference_index : array-like of int, shape (n_candidates,), optional
        Group of each candidate; defaults to group i for candidate i.

    Returns
    -------
    ndarray of shape (n_candidates,), float64, in [0, 1]
    """
    from sklearn.feature_extraction.text import TfidfVectorizer

    candidates = list(candidates)
    references = [list(group) for group in references]
    if not candidates:
        raise ValueError("candidates is empty")
    index = check_text_image_index(
        None if candidate_reference_index is None else np.asarray(candidate_reference_index),
        len(candidates), len(references),
    )
    empty = [group for group in np.unique(index) if not references[group]]
    if empty:
        raise ValueError(f"{len(empty)} reference group(s) used by candidates are empty, first group {empty[0]}")

    flat = [text for group in references for text in group]
    vectorizer = TfidfVectorizer().fit(sorted(set(flat)))
    candidate_vectors = vectorizer.transform(candidates).tocsr()
    reference_vectors = vectorizer.transform(flat).tocsr()

    counts = np.array([len(group) for group in references])
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    candidate_rows = np.repeat(np.arange(len(candidates)), counts[index])
    reference_rows = np.concatenate([np.arange(offsets[g], offsets[g] + counts[g]) for g in index])
    similarities = np.asarray(
        candidate_vectors[candidate_rows].multiply(reference_vectors[reference_rows]).sum(axis=1)
    ).ravel()
    starts = np.concatenate([[0], np.cumsum(counts[index])[:-1]])
    return np.maximum.reduceat(similarities, starts).astype(np.float64)


# Comparing scores ----------------------------------------------------------------------------


def separation_auc(positive_scores, negative_scores) -> float:
    """Return the probability that a positive pair outscores a negative one, ties counting half.

    This is the area under the ROC curve (the Mann-Whitney U statistic divided by
    ``n_positive * n_negative``): 1 separates perfectly, 0.5 is chance. It
    depends only on the order of the scores, so a rescaled score has the same AUC.
    """
    from scipy.stats import rankdata

    positive = _check_scores(positive_scores, "positive_scores")
    negative = _check_scores(negative_scores, "negative_scores")
    ranks = rankdata(np.concatenate([positive, negative]))
    n_positive, n_negative = len(positive), len(negative)
    u_statistic = ranks[:n_positive].sum() - n_positive * (n_positive + 1) / 2.0
    return float(u_statistic / (n_positive * n_negative))


def _check_scores(values, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.dtype == object or not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise TypeError(f"{name} must be numeric, got dtype {array.dtype}")
    array = array.astype(np.float64).ravel()
    if array.size == 0:
        raise ValueError(f"{name} is empty")
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise ValueError(f"{name} has {bad.size} NaN or infinite value(s), first at position {int(bad[0])}")
    return array


@dataclass(frozen=True)
class PairwiseAccuracy:
    """Agreement of a metric with human preferences between two candidates.

    Attributes
    ----------
    accuracy : float
        Share of the counted pairs where the metric prefers the candidate most
        humans preferred; metric ties count as ``tie_credit``.
    n_pairs : int
        Pairs counted.
    n_human_ties : int
        Pairs left out because humans split evenly.
    n_metric_ties : int
        Counted pairs where both candidates got the same metric score.
    """

    accuracy: float
    n_pairs: int
    n_human_ties: int
    n_metric_ties: int


def pairwise_accuracy(scores_a, scores_b, human_preference_a, tie_credit: float = 0.5) -> PairwiseAccuracy:
    """Measure how often a metric picks the candidate that humans preferred (Pascal-50S style).

    For each two-candidate judgment the human side is the share of annotators
    who preferred candidate A (1 or 0 for a single vote, 0.6 when 3 of 5 chose
    A). Pairs with a share of exactly 0.5 have no majority and are left out,
    counted in ``n_human_ties``. The metric is right when it scores the
    majority's candidate higher. A metric tie earns ``tie_credit``: 0.5 by
    default, what a coin flip earns on average, or 0 to count ties as errors.

    Parameters
    ----------
    scores_a, scores_b : array-like of shape (n_pairs,)
        Metric scores of the two candidates.
    human_preference_a : array-like of shape (n_pairs,)
        Share of annotators preferring A, in [0, 1]; booleans are accepted.
    tie_credit : float
        Credit of a metric tie, in [0, 1].

    Returns
    -------
    PairwiseAccuracy
    """
    a = _check_scores(scores_a, "scores_a")
    b = _check_scores(scores_b, "scores_b")
    preference = _check_scores(np.asarray(human_preference_a, dtype=np.float64), "human_preference_a")
    if not (len(a) == len(b) == len(preference)):
        raise ValueError(
            f"scores_a, scores_b and human_preference_a must have the same length; got {len(a)}, {len(b)} and "
            f"{len(preference)}"
        )
    if preference.min() < 0 or preference.max() > 1:
        raise ValueError(
            f"human_preference_a must be shares in [0, 1]; got values from {preference.min()} to {preference.max()}"
        )
    if not 0.0 <= tie_credit <= 1.0:
        raise ValueError(f"tie_credit must lie in [0, 1], got {tie_credit}")

    decided = preference != 0.5
    n_counted = int(decided.sum())
    if n_counted == 0:
        raise ValueError("every pair is a human tie (preference 0.5); no pair has a majority to agree with")
    prefers_a = preference[decided] > 0.5
    difference = a[decided] - b[decided]
    ties = difference == 0
    correct = np.where(prefers_a, difference > 0, difference < 0)
    credit = correct.sum() + tie_credit * ties.sum()
    return PairwiseAccuracy(
        accuracy=float(credit / n_counted),
        n_pairs=n_counted,
        n_human_ties=int((~decided).sum()),
        n_metric_ties=int(ties.sum()),
    )


@dataclass(frozen=True)
class ModalityParadox:
    """How often an image is closer to another image than to its own caption.

    Attributes
    ----------
    image_closer_fraction : float
        Share of images i whose nearest other image j has
        ``cos(v_i, v_j) > cos(v_i, c_i)``.
    closer_image_share : float
        Mean over i of the share of other images j with
        ``cos(v_i, v_j) > cos(v_i, c_i)``: how many unrelated images beat the
        correct caption for a typical image.
    mean_matched_cosine : float
        Mean ``cos(v_i, c_i)`` over the pairs.
    mean_nearest_image_cosine : float
        Mean over i of ``max_{j != i} cos(v_i, v_j)``.
    mean_image_image_cosine : float
        Mean of ``cos(v_i, v_j)`` over all ``i != j``.
    """

    image_closer_fraction: float
    closer_image_share: float
    mean_matched_cosine: float
    mean_nearest_image_cosine: float
    mean_image_image_cosine: float


def modality_paradox(image_embeds, caption_embeds) -> ModalityParadox:
    """Measure whether images sit closer to other images than to their own captions.

    Under a modality gap, every image embedding is nearer to unrelated images
    than to the caption that describes it, so a raw cosine compares captions
    from far away. Pass I0T_post-transformed embeddings to see the effect of
    removing the gap.

    Parameters
    ----------
    image_embeds : array-like of shape (n, dim)
    caption_embeds : array-like of shape (n, dim)
        Row i is the caption of image i.

    Returns
    -------
    ModalityParadox
    """
    images, captions = check_embedding_pair(image_embeds, caption_embeds, paired=True)
    if len(images) < 2:
        raise ValueError("modality_paradox needs at least 2 pairs, because each image is compared with the others")
    image_image = images.astype(np.float64) @ images.T.astype(np.float64)
    np.fill_diagonal(image_image, -np.inf)
    nearest = image_image.max(axis=1)
    matched = _row_cosines(images, captions, np.arange(len(images)))
    off_diagonal = image_image[~np.eye(len(images), dtype=bool)]
    closer_counts = (image_image > matched[:, None]).sum(axis=1)  # the diagonal is -inf, never counted
    return ModalityParadox(
        image_closer_fraction=float(np.mean(nearest > matched)),
        closer_image_share=float(np.mean(closer_counts / (len(images) - 1))),
        mean_matched_cosine=float(matched.mean()),
        mean_nearest_image_cosine=float(nearest.mean()),
        mean_image_image_cosine=float(off_diagonal.mean()),
    )


def random_negative_indices(n: int, seed: int = 0) -> np.ndarray:
    """Return, for each row i of n, a uniformly random other row j != i (seeded)."""
    n = check_positive_int(n, "n", minimum=2)
    rng = np.random.default_rng(seed)
    return (np.arange(n) + rng.integers(1, n, size=n)) % n


def hard_negative_indices(captions) -> np.ndarray:
    """Return, for each caption, the other caption that shares the most words with it.

    "Most words" is the highest TF-IDF cosine (scikit-learn defaults, fitted on
    the captions themselves), so rare shared words count more than common ones.
    Such a caption describes another image but looks similar on the surface:
    a hard negative for a caption metric. Two images can have near-identical
    captions, so a few hard negatives also describe the image correctly.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer

    captions = list(captions)
    if len(captions) < 2:
        raise ValueError("hard_negative_indices needs at least 2 captions")
    vectors = TfidfVectorizer().fit_transform(captions)
    similarity = (vectors @ vectors.T).toarray()
    np.fill_diagonal(similarity, -np.inf)
    return similarity.argmax(axis=1)


def score_matrix(image_embeds, caption_embeds, score: str = "clip", post: I0TPost | None = None,
                 w: float | None = None) -> np.ndarray:
    """Return the scores of every image (rows) with every caption (columns).

    Parameters
    ----------
    image_embeds : array-like of shape (n_images, dim)
    caption_embeds : array-like of shape (n_captions, dim)
    score : {"clip", "i0t", "cosine"}
        ``"clip"``: CLIP-S with weight ``w`` (default 2.5). ``"i0t"``: I0T-S of
        the paper (weight ``w``, default 1, no clipping), with the means of
        ``post`` or, when ``post`` is None, of the rows given. ``"cosine"``: the
        raw cosine.
    post : I0TPost, optional
    w : float, optional

    Returns
    -------
    ndarray of shape (n_images, n_captions), float64
    """
    images, captions = check_embedding_pair(image_embeds, caption_embeds)
    if score == "clip":
        weight = _check_weight(CLIP_SCORE_WEIGHT if w is None else w)
        return weight * np.maximum(images.astype(np.float64) @ captions.T.astype(np.float64), 0.0)
    if score == "cosine":
        return images.astype(np.float64) @ captions.T.astype(np.float64)
    if score == "i0t":
        weight = _check_weight(1.0 if w is None else w)
        if post is None:
            post = I0TPost().fit(images, captions)
        standardised_images = post.transform_images(images).astype(np.float64)
        standardised_captions = post.transform_texts(captions).astype(np.float64)
        return weight * standardised_images @ standardised_captions.T
    raise ValueError(f"score must be 'clip', 'i0t' or 'cosine', got {score!r}")

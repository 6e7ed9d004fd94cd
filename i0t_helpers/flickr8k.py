"""Flickr8k-Expert and Flickr8k-CF human judgments of captions, read from the raw text files.

The raw files come from ``Flickr8k_text.zip`` (Hodosh, Young and Hockenmaier,
2013), fetched as the ``flickr8k-text`` dataset. The benchmarks are prepared
as the CLIPScore authors did (Hessel et al., 2021), which later work such as
PAC-S (Sarto et al., 2023) reuses:

* **Flickr8k-Expert**: 5,822 rated pairs over the 1,000 test images, three
  expert ratings each on a 1-4 scale. A pair is dropped when the candidate's
  text equals one of the image's own five captions, leaving 5,664 pairs and
  16,992 judgments. The references of an image are its five captions.
  Customarily reported with Kendall tau-c.
* **Flickr8k-CF** (CrowdFlower): all 47,830 pairs, one judgment each (the
  share of "yes" votes). When a candidate's text equals one of its image's
  captions, that caption is removed from the image's references instead
  (Python's ``list.remove``: the first equal caption, once per such
  candidate). Customarily reported with Kendall tau-b.

Malformed lines (wrong number of fields, unparsable or out-of-range numbers,
inconsistent vote counts, repeated pairs) are skipped, counted and logged as
a warning. Blank lines are ignored. Texts are compared exactly after removing
the line ending, as the CLIPScore preparation does.

The module also writes and reads the JSON layout of the CLIPScore and PAC-S
evaluation scripts, reads per-pair score files for the ``correlate`` command,
and scores the pairs with an open_clip model when the images (the
``flickr8k-images`` dataset) are available.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from .caption_metrics import CAPTION_PREFIX
from .correlation import HumanCorrelation, human_correlation

logger = logging.getLogger(__name__)

DATASET_NAME = "flickr8k-text"
#: Benchmark name -> customary Kendall tau variant.
BENCHMARKS = {"flickr8k-expert": "c", "flickr8k-cf": "b"}

EXPERT_RAW_PAIRS = 5822
EXPERT_PAIRS = 5664
EXPERT_JUDGMENTS = 16992
CF_PAIRS = 47830
N_TEST_IMAGES = 1000
#: Largest |yes_fraction - n_yes / (n_yes + n_no)| accepted in CrowdFlowerAnnotations.txt.
YES_FRACTION_TOLERANCE = 1e-5
#: Malformed line numbers quoted in a warning.
N_QUOTED_LINES = 5

IMAGES_DATASET_NAME = "flickr8k-images"
#: Image folder named in the CLIPScore JSON ``image_path`` fields (the archive's own misspelling).
CLIPSCORE_IMAGES_FOLDER = "Flicker8k_Dataset"


# Raw files -----------------------------------------------------------------------------------


def _image_of_caption_id(caption_id: str) -> str:
    """Return the image file name of a caption id ``<image>#<k>``.

    The official token file names one image ``2258277193_586949ec62.jpg.1``;
    the trailing ``.1`` is dropped so the name matches the image file.
    """
    image = caption_id.rsplit("#", 1)[0]
    return image[:-2] if image.endswith(".jpg.1") else image


def _warn_malformed(path, bad_lines: list[tuple[int, str]]):
    if bad_lines:
        quoted = "; ".join(f"line {number}: {reason}" for number, reason in bad_lines[:N_QUOTED_LINES])
        logger.warning("%s: skipped %d malformed line(s) (%s%s)", path, len(bad_lines), quoted,
                       "; ..." if len(bad_lines) > N_QUOTED_LINES else "")


def _read_lines(path) -> list[tuple[int, list[str]]]:
    """Return (line number, tab-separated fields) of every non-blank line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found; run: python data_download.py get {DATASET_NAME} (add --mirror DIR when offline)"
        )
    rows = []
    with open(path, encoding="utf-8", errors="replace") as stream:
        for number, line in enumerate(stream, start=1):
            line = line.rstrip("\r\n")
            if line.strip():
                rows.append((number, line.strip().split("\t")))
    return rows


@dataclass
class Flickr8kCaptions:
    """The five human captions of every Flickr8k image.

    Attributes
    ----------
    by_id : dict
        ``caption_id -> text`` (ids ``<image>#<k>`` as in the file).
    by_image : dict
        ``image file name -> [captions in file order]``.
    n_malformed_lines : int
    """

    by_id: dict
    by_image: dict
    n_malformed_lines: int = 0


def read_captions(path) -> Flickr8kCaptions:
    """Read ``Flickr8k.token.txt`` (lines ``<image>#<k><TAB><caption>``).

    Lines without a tab, without ``#k`` or with an empty caption, and repeated
    ids, are skipped and counted.
    """
    by_id: dict[str, str] = {}
    by_image: dict[str, list[str]] = defaultdict(list)
    bad_lines = []
    for number, fields in _read_lines(path):
        if len(fields) != 2:
            bad_lines.append((number, f"expected 2 tab-separated fields, found {len(fields)}"))
            continue
        caption_id, text = fields[0].strip(), fields[1].strip()
        image, _, k = caption_id.rpartition("#")
        if not image or not k.isdigit():
            bad_lines.append((number, f"caption id {caption_id!r} is not <image>#<k>"))
            continue
        if not text:
            bad_lines.append((number, "empty caption"))
            continue
        if caption_id in by_id:
            bad_lines.append((number, f"repeated caption id {caption_id}"))
            continue
        by_id[caption_id] = text
        by_image[_image_of_caption_id(caption_id)].append(text)
    _warn_malformed(path, bad_lines)
    return Flickr8kCaptions(by_id=by_id, by_image=dict(by_image), n_malformed_lines=len(bad_lines))


def read_test_images(path) -> list[str]:
    """Read ``Flickr_8k.testImages.txt``: one image file name per line."""
    return [fields[0].strip() for _, fields in _read_lines(path)]


def _parse_annotations(path, n_values: int, parse) -> tuple[list[tuple], int]:
    """Parse ``image<TAB>caption_id<TAB>values...`` lines with ``parse(values) -> tuple``, skipping bad lines."""
    records, bad_lines, seen = [], [], set()
    for number, fields in _read_lines(path):
        if len(fields) != 2 + n_values:
            bad_lines.append((number, f"expected {2 + n_values} tab-separated fields, found {len(fields)}"))
            continue
        image, caption_id = fields[0].strip(), fields[1].strip()
        if "#" not in caption_id:
            bad_lines.append((number, f"caption id {caption_id!r} is not <image>#<k>"))
            continue
        try:
            values = parse([value.strip() for value in fields[2:]])
        except ValueError as error:
            bad_lines.append((number, str(error)))
            continue
        if (image, caption_id) in seen:
            bad_lines.append((number, f"repeated pair {image} / {caption_id}"))
            continue
        seen.add((image, caption_id))
        records.append((image, caption_id, *values))
    _warn_malformed(path, bad_lines)
    return records, len(bad_lines)


def _parse_expert(values: list[str]) -> tuple:
    ratings = []
    for value in values:
        if not value.isdigit() or not 1 <= int(value) <= 4:
            raise ValueError(f"expert rating {value!r} is not an integer from 1 to 4")
        ratings.append(int(value))
    return tuple(ratings)


def _parse_crowdflower(values: list[str]) -> tuple:
    try:
        yes_fraction = float(values[0])
        n_yes, n_no = int(values[1]), int(values[2])
    except ValueError:
        raise ValueError(f"values {values!r} are not a fraction and two counts") from None
    if n_yes < 0 or n_no < 0 or n_yes + n_no == 0:
        raise ValueError(f"vote counts {n_yes} yes / {n_no} no are invalid")
    if not abs(yes_fraction - n_yes / (n_yes + n_no)) <= YES_FRACTION_TOLERANCE:
        raise ValueError(f"yes fraction {values[0]} disagrees with {n_yes} yes / {n_no} no")
    return yes_fraction, n_yes, n_no


def read_expert_annotations(path) -> pd.DataFrame:
    """Read ``ExpertAnnotations.txt``: columns image, caption_id, expert_1, expert_2, expert_3 (ratings 1-4).

    The number of skipped malformed lines is in ``frame.attrs["n_malformed_lines"]``.
    """
    records, n_bad = _parse_annotations(path, 3, _parse_expert)
    frame = pd.DataFrame(records, columns=["image", "caption_id", "expert_1", "expert_2", "expert_3"])
    frame.attrs["n_malformed_lines"] = n_bad
    return frame


def read_crowdflower_annotations(path) -> pd.DataFrame:
    """Read ``CrowdFlowerAnnotations.txt``: columns image, caption_id, yes_fraction, n_yes, n_no.

    ``yes_fraction`` keeps the file's value (0.333333333333333, not 1/3), so
    ties match other tools that read the same file. Lines whose fraction
    disagrees with the counts by more than :data:`YES_FRACTION_TOLERANCE` are
    malformed. The number of skipped lines is in ``frame.attrs["n_malformed_lines"]``.
    """
    records, n_bad = _parse_annotations(path, 3, _parse_crowdflower)
    frame = pd.DataFrame(records, columns=["image", "caption_id", "yes_fraction", "n_yes", "n_no"])
    frame.attrs["n_malformed_lines"] = n_bad
    return frame


# Prepared benchmarks -------------------------------------------------------------------------


@dataclass
class HumanJudgments:
    """Judged image-caption pairs, their references and the individual human ratings.

    Attributes
    ----------
    name : str
        ``"flickr8k-expert"`` or ``"flickr8k-cf"`` (or another label).
    pairs : pandas.DataFrame
        One row per judged pair: ``image`` (file name), ``caption_id`` and
        ``candidate`` (the caption text); row i is pair i.
    references : dict
        ``image -> list of reference captions``.
    judgment_pair_index : ndarray of int
        Pair (row of ``pairs``) rated by each judgment.
    ratings : ndarray of float
        The human rating of each judgment.
    tau_variant : str or None
        Kendall variant customarily reported on this benchmark.
    n_raw_pairs : int
        Pairs read from the raw file, before preparation.
    n_dropped_pairs : int
        Pairs left out by the preparation.
    n_malformed_lines : int
        Lines of the raw files that were skipped.
    dropped_pairs : pandas.DataFrame or None
        ``image`` and ``caption_id`` of the raw pairs the preparation left out.
    notes : dict
        Counts behind ``n_dropped_pairs`` and other preparation details.
    """

    name: str
    pairs: pd.DataFrame
    references: dict
    judgment_pair_index: np.ndarray
    ratings: np.ndarray
    tau_variant: str | None = None
    n_raw_pairs: int = 0
    n_dropped_pairs: int = 0
    n_malformed_lines: int = 0
    dropped_pairs: pd.DataFrame | None = None
    notes: dict = field(default_factory=dict)

    def __post_init__(self):
        missing = {"image", "caption_id", "candidate"} - set(self.pairs.columns)
        if missing:
            raise ValueError(f"pairs needs the columns image, caption_id and candidate; missing {sorted(missing)}")
        self.pairs = self.pairs.reset_index(drop=True)
        self.judgment_pair_index = np.asarray(self.judgment_pair_index, dtype=np.int64)
        self.ratings = np.asarray(self.ratings, dtype=np.float64)
        if self.judgment_pair_index.shape != self.ratings.shape:
            raise ValueError(
                f"judgment_pair_index and ratings must have one entry per judgment; got {self.judgment_pair_index.shape} "
                f"and {self.ratings.shape}"
            )
        if len(self.judgment_pair_index) and (self.judgment_pair_index.min() < 0
                                               or self.judgment_pair_index.max() >= len(self.pairs)):
            raise ValueError(f"judgment_pair_index must lie in [0, {len(self.pairs) - 1}]")
        if not np.isfinite(self.ratings).all():
            raise ValueError("ratings contain NaN or infinite values")
        duplicated = self.pairs.duplicated(["image", "caption_id"])
        if duplicated.any():
            first = self.pairs[duplicated].iloc[0]
            raise ValueError(f"pairs repeat {int(duplicated.sum())} (image, caption_id) keys, first "
                             f"{first['image']} / {first['caption_id']}")
        unknown = sorted(set(self.pairs["image"]) - set(self.references))
        if unknown:
            raise ValueError(f"{len(unknown)} image(s) of pairs have no reference list, first {unknown[0]}")

    @property
    def n_pairs(self) -> int:
        """Number of judged pairs."""
        return len(self.pairs)

    @property
    def n_judgments(self) -> int:
        """Number of individual ratings."""
        return len(self.ratings)

    @property
    def n_images(self) -> int:
        """Number of distinct images among the pairs."""
        return int(self.pairs["image"].nunique())

    @property
    def images(self) -> list[str]:
        """Distinct images in order of first appearance among the pairs."""
        return list(dict.fromkeys(self.pairs["image"]))

    def pair_references(self) -> list[list[str]]:
        """Return the references of each pair's image, in pair order."""
        return [self.references[image] for image in self.pairs["image"]]

    def subset_images(self, images) -> "HumanJudgments":
        """Return the judgments of the given images only (for quick runs), renumbering pairs."""
        selected = set(images)
        unknown = selected - set(self.pairs["image"])
        if unknown:
            raise ValueError(f"{len(unknown)} image(s) have no judged pair in {self.name}, first {sorted(unknown)[0]}")
        keep = self.pairs["image"].isin(selected).to_numpy()
        new_row = np.cumsum(keep) - 1
        kept_judgments = keep[self.judgment_pair_index]
        return HumanJudgments(
            name=self.name,
            pairs=self.pairs[keep],
            references={image: list(self.references[image]) for image in self.references if image in selected},
            judgment_pair_index=new_row[self.judgment_pair_index[kept_judgments]],
            ratings=self.ratings[kept_judgments],
            tau_variant=self.tau_variant,
            n_raw_pairs=int(keep.sum()),
            notes={"subset_of_images": f"{len(selected)} of {self.n_images}"},
        )

    def judgment_frame(self) -> pd.DataFrame:
        """Return one row per judgment: image, caption_id, candidate, rating."""
        frame = self.pairs.iloc[self.judgment_pair_index].reset_index(drop=True)
        frame["rating"] = self.ratings
        return frame

    def correlate(self, pair_scores, n_bootstrap: int = 0, confidence: float = 0.95, seed: int = 0,
                  progress: bool = False) -> HumanCorrelation:
        """Correlate per-pair metric scores (in ``pairs`` order) with the ratings; intervals resample images."""
        scores = np.asarray(pair_scores, dtype=np.float64)
        if scores.shape != (self.n_pairs,):
            raise ValueError(f"pair_scores must have one score per pair ({self.n_pairs}), got shape {scores.shape}")
        return human_correlation(
            scores, self.judgment_pair_index, self.ratings, pair_groups=self.pairs["image"].to_numpy(),
            n_bootstrap=n_bootstrap, confidence=confidence, seed=seed, conventional_variant=self.tau_variant,
            dataset=self.name, progress=progress,
        )

    def __repr__(self) -> str:
        return (f"HumanJudgments({self.name!r}, n_pairs={self.n_pairs}, n_judgments={self.n_judgments}, "
                f"n_images={self.n_images}, tau_variant={self.tau_variant!r})")


def _candidate_texts(frame: pd.DataFrame, captions: Flickr8kCaptions, source: str) -> tuple[pd.DataFrame, int]:
    """Attach each pair's candidate text and drop pairs whose caption id or image is unknown (counted, logged)."""
    known_caption = frame["caption_id"].isin(captions.by_id.keys())
    known_image = frame["image"].isin(captions.by_image.keys())
    unusable = ~(known_caption & known_image)
    if unusable.any():
        first = frame[unusable].iloc[0]
        logger.warning("%s: skipped %d pair(s) whose caption id or image is not in the captions file, first %s / %s",
                       source, int(unusable.sum()), first["image"], first["caption_id"])
    frame = frame[~unusable].copy()
    frame["candidate"] = frame["caption_id"].map(captions.by_id)
    return frame, int(unusable.sum())


def _warn_count(label: str, actual: int, expected: int):
    if actual != expected:
        logger.warning("%s: found %d, the official files give %d; check the source files", label, actual, expected)


def prepare_expert(expert: pd.DataFrame, captions: Flickr8kCaptions, check_counts: bool = True) -> HumanJudgments:
    """Prepare Flickr8k-Expert as Hessel et al. (2021) did.

    Drops each pair whose candidate text equals one of the image's own
    captions, keeps the other pairs with their three ratings (three
    judgments per pair, ratings as floats 1-4) and uses the image's captions as
    references. With the official files: 5,822 -> 5,664 pairs, 16,992
    judgments, 1,000 images; other counts are logged as a warning when
    ``check_counts`` is true.
    """
    n_raw = len(expert)
    frame, n_unusable = _candidate_texts(expert, captions, "ExpertAnnotations")
    is_reference = np.array([candidate in captions.by_image[image]
                             for image, candidate in zip(frame["image"], frame["candidate"])], dtype=bool)
    kept = frame[~is_reference].reset_index(drop=True)
    logger.info("Flickr8k-Expert: dropped %d of %d pairs whose candidate is one of the image's own captions",
                int(is_reference.sum()), n_raw)

    ratings = kept[["expert_1", "expert_2", "expert_3"]].to_numpy(dtype=np.float64)
    judgments = HumanJudgments(
        name="flickr8k-expert",
        pairs=kept[["image", "caption_id", "candidate"]],
        references={image: list(captions.by_image[image]) for image in dict.fromkeys(kept["image"])},
        judgment_pair_index=np.repeat(np.arange(len(kept)), 3),
        ratings=ratings.ravel(),
        tau_variant=BENCHMARKS["flickr8k-expert"],
        n_raw_pairs=n_raw,
        n_dropped_pairs=int(is_reference.sum()) + n_unusable,
        n_malformed_lines=int(expert.attrs.get("n_malformed_lines", 0)) + captions.n_malformed_lines,
        dropped_pairs=frame.loc[is_reference, ["image", "caption_id"]].reset_index(drop=True),
        notes={"dropped_because_candidate_is_a_reference": int(is_reference.sum()),
               "dropped_because_unknown_ids": n_unusable},
    )
    if check_counts:
        _warn_count("Flickr8k-Expert raw pairs", n_raw, EXPERT_RAW_PAIRS)
        _warn_count("Flickr8k-Expert prepared pairs", judgments.n_pairs, EXPERT_PAIRS)
        _warn_count("Flickr8k-Expert images", judgments.n_images, N_TEST_IMAGES)
    return judgments


def prepare_crowdflower(crowdflower: pd.DataFrame, captions: Flickr8kCaptions,
                        check_counts: bool = True) -> HumanJudgments:
    """Prepare Flickr8k-CF as Hessel et al. (2021) did.

    Keeps every pair with its yes-fraction as the single judgment. The
    references of an image start as its captions. Then, for each of its pairs
    in file order, one caption equal to the candidate is removed
    (``list.remove``), so a caption written twice loses one copy per pair. With the official files: 47,830 pairs and judgments,
    1,000 images.
    """
    n_raw = len(crowdflower)
    frame, n_unusable = _candidate_texts(crowdflower, captions, "CrowdFlowerAnnotations")
    frame = frame.reset_index(drop=True)

    references: dict[str, list[str]] = {}
    n_removed = 0
    for image, candidate in zip(frame["image"], frame["candidate"]):
        if image not in references:
            references[image] = list(captions.by_image[image])
        if candidate in references[image]:
            references[image].remove(candidate)
            n_removed += 1
    empty = [image for image, refs in references.items() if not refs]
    if empty:
        logger.warning("Flickr8k-CF: %d image(s) lost all references, first %s", len(empty), empty[0])

    judgments = HumanJudgments(
        name="flickr8k-cf",
        pairs=frame[["image", "caption_id", "candidate"]],
        references=references,
        judgment_pair_index=np.arange(len(frame)),
        ratings=frame["yes_fraction"].to_numpy(dtype=np.float64),
        tau_variant=BENCHMARKS["flickr8k-cf"],
        n_raw_pairs=n_raw,
        n_dropped_pairs=n_unusable,
        n_malformed_lines=int(crowdflower.attrs.get("n_malformed_lines", 0)) + captions.n_malformed_lines,
        notes={"references_removed_because_candidate_is_a_reference": n_removed},
    )
    if check_counts:
        _warn_count("Flickr8k-CF pairs", judgments.n_pairs, CF_PAIRS)
        _warn_count("Flickr8k-CF images", judgments.n_images, N_TEST_IMAGES)
    return judgments


def flickr8k_folder(data_dir=None, mirror=None, download: bool = True) -> Path:
    """Return ``<data folder>/flickr8k``, fetching the ``flickr8k-text`` dataset first when it is missing."""
    from .download import fetch, is_present, resolve_data_dir

    data_dir = resolve_data_dir(data_dir)
    if not is_present(DATASET_NAME, data_dir):
        if not download:
            raise FileNotFoundError(
                f"the Flickr8k text files are not in {data_dir / 'flickr8k'}; run: python data_download.py get "
                f"{DATASET_NAME}"
            )
        fetch(DATASET_NAME, data_dir=data_dir, mirror=mirror, progressbar=False)
    return data_dir / "flickr8k"


def load_flickr8k(name: str, data_dir=None, mirror=None, download: bool = True) -> HumanJudgments:
    """Load a prepared Flickr8k benchmark: ``"flickr8k-expert"`` or ``"flickr8k-cf"``.

    The raw files are fetched into the data folder first when missing (from
    ``mirror`` or ``I0T_DATA_MIRROR`` when set, else from the internet),
    unless ``download=False``.
    """
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}")
    folder = flickr8k_folder(data_dir, mirror, download)
    captions = read_captions(folder / "Flickr8k.token.txt")
    if name == "flickr8k-expert":
        return prepare_expert(read_expert_annotations(folder / "ExpertAnnotations.txt"), captions)
    return prepare_crowdflower(read_crowdflower_annotations(folder / "CrowdFlowerAnnotations.txt"), captions)


# CLIPScore / PAC-S JSON ----------------------------------------------------------------------


def to_clipscore_json(judgments: HumanJudgments) -> dict:
    """Return the judgments in the JSON layout of the CLIPScore and PAC-S Flickr8k scripts.

    ``{key: {"image_id", "image_path", "ground_truth": [references],
    "human_judgement": [{"image_id", "image_path", "caption", "rating",
    "caption_id"}, ...]}}``, one judgment entry per rating. Keys follow the
    CLIPScore files: the image name without extension for Expert, with it for
    CF; ``image_path`` is ``Flicker8k_Dataset/<image>``. The extra
    ``caption_id`` field is ignored by those scripts and lets
    :func:`from_clipscore_json` restore the pairs exactly.
    """
    strip_extension = judgments.name == "flickr8k-expert"
    index: dict[str, dict] = {}
    for (image, caption_id, candidate), rating in zip(
            judgments.pairs.iloc[judgments.judgment_pair_index][["image", "caption_id", "candidate"]].itertuples(
                index=False, name=None),
            judgments.ratings):
        key = image.split(".")[0] if strip_extension else image
        path = f"{CLIPSCORE_IMAGES_FOLDER}/{image}"
        entry = index.setdefault(key, {"human_judgement": [], "image_id": key, "image_path": path,
                                       "ground_truth": list(judgments.references[image])})
        entry["human_judgement"].append({"image_id": key, "image_path": path, "caption": candidate,
                                         "rating": float(rating), "caption_id": caption_id})
    return index


def write_clipscore_json(judgments: HumanJudgments, path) -> Path:
    """Write :func:`to_clipscore_json` to ``path`` and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as stream:
        json.dump(to_clipscore_json(judgments), stream)
    return path


def from_clipscore_json(data: dict, name: str, tau_variant: str | None = None) -> HumanJudgments:
    """Build :class:`HumanJudgments` from the CLIPScore / PAC-S JSON layout.

    Judgments carrying a ``caption_id`` (written by :func:`to_clipscore_json`)
    are grouped by image and caption id, in any order. Without one,
    consecutive judgments of the same image with the same caption text form
    one pair, and the caption id becomes
    ``<image>@<position>``. Judgments with a NaN rating are skipped and
    counted, as the CLIPScore script does.
    """
    if not isinstance(data, dict) or not data:
        raise ValueError("the CLIPScore JSON must be a non-empty object mapping image keys to entries")
    records, ratings, pair_of_judgment, references = [], [], [], {}
    pair_row: dict[tuple[str, str], int] = {}
    n_nan = 0
    for key, entry in data.items():
        try:
            image = PurePosixPath(entry["image_path"]).name
            ground_truth = [str(text) for text in entry["ground_truth"]]
            human = entry["human_judgement"]
        except (KeyError, TypeError):
            raise ValueError(
                f"entry {key!r} lacks image_path, ground_truth or human_judgement; is this a CLIPScore Flickr8k JSON?"
            ) from None
        references[image] = ground_truth
        previous_caption = None
        for position, judgment in enumerate(human):
            try:
                rating = float(judgment["rating"])
                caption = str(judgment["caption"])
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"judgment {position} of entry {key!r} lacks a numeric rating or a caption") from None
            if not np.isfinite(rating):
                n_nan += 1
                continue

            caption_id = judgment.get("caption_id")
            if caption_id is not None:
                key_of_pair = (image, str(caption_id))
                if key_of_pair not in pair_row:
                    pair_row[key_of_pair] = len(records)
                    records.append((image, str(caption_id), caption))
                pair = pair_row[key_of_pair]
            else:
                if caption != previous_caption or records[-1][0] != image:
                    records.append((image, f"{image}@{position}", caption))
                previous_caption = caption
                pair = len(records) - 1
            pair_of_judgment.append(pair)
            ratings.append(rating)
    if n_nan:
        logger.warning("skipped %d judgment(s) with a NaN rating", n_nan)
    pairs = pd.DataFrame(records, columns=["image", "caption_id", "candidate"])
    return HumanJudgments(name=name, pairs=pairs, references=references, judgment_pair_index=pair_of_judgment,
                          ratings=ratings, tau_variant=tau_variant if tau_variant else BENCHMARKS.get(name),
                          n_raw_pairs=len(pairs))


def read_clipscore_json(path, name: str, tau_variant: str | None = None) -> HumanJudgments:
    """Read a CLIPScore / PAC-S Flickr8k JSON file; see :func:`from_clipscore_json`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CLIPScore JSON not found: {path}")
    try:
        with open(path, encoding="utf-8") as stream:
            data = json.load(stream)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    return from_clipscore_json(data, name, tau_variant)


# Per-pair score files ------------------------------------------------------------------------

SCORE_COLUMNS = ("image", "caption_id", "score")


def read_pair_scores(path) -> pd.DataFrame:
    """Read a CSV of per-pair metric scores with columns ``image``, ``caption_id``, ``score``.

    Raises ``ValueError`` for an empty file, missing columns, scores that are
    not numbers, NaN or infinite scores and repeated pairs, naming a few rows
    (CSV line numbers, the header being line 1).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"score file not found: {path}")
    try:
        frame = pd.read_csv(path, dtype={"image": str, "caption_id": str}, keep_default_na=False,
                            na_values={"score": ["", "nan", "NaN", "NA"]})
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path} is empty; expected a CSV with the header image,caption_id,score") from None
    except pd.errors.ParserError as error:
        raise ValueError(f"{path} is not a readable CSV: {error}") from None
    missing = [column for column in SCORE_COLUMNS if column not in frame.columns]
    if missing:
        raise ValueError(f"{path} lacks the column(s) {', '.join(missing)}; found {', '.join(map(str, frame.columns))}. "
                         f"Write one row per judged pair with the header image,caption_id,score")
    if frame.empty:
        raise ValueError(f"{path} has a header but no rows")

    scores = pd.to_numeric(frame["score"], errors="coerce")
    not_numbers = frame.index[scores.isna() & frame["score"].notna()]
    if len(not_numbers):
        raise ValueError(f"{path}: score is not a number on {len(not_numbers)} row(s), first at line "
                         f"{not_numbers[0] + 2} ({frame['score'].iloc[not_numbers[0]]!r})")
    bad = frame.index[~np.isfinite(scores.to_numpy(dtype=np.float64))]
    if len(bad):
        lines = ", ".join(str(row + 2) for row in bad[:N_QUOTED_LINES])
        raise ValueError(f"{path}: {len(bad)} score(s) are NaN or infinite (lines {lines}); score every pair")
    duplicated = frame.index[frame.duplicated(["image", "caption_id"], keep="first")]
    if len(duplicated):
        first = frame.iloc[duplicated[0]]
        raise ValueError(f"{path}: {len(duplicated)} pair(s) appear more than once, first {first['image']} / "
                         f"{first['caption_id']} at line {duplicated[0] + 2}; keep one score per pair")
    result = frame[list(SCORE_COLUMNS)].copy()
    result["score"] = scores.astype(np.float64)
    return result


def align_pair_scores(judgments: HumanJudgments, scores: pd.DataFrame) -> np.ndarray:
    """Return the scores in the order of ``judgments.pairs``.

    Scores of raw pairs that the preparation left out (``judgments.dropped_pairs``,
    for example the 158 Flickr8k-Expert pairs whose candidate is one of the
    image's own captions) are ignored with a logged warning, so a file scoring
    all raw pairs works. Raises ``ValueError`` naming up to five pairs when the
    score table misses judged pairs or contains pairs the benchmark does not have.
    """
    keys = pd.MultiIndex.from_frame(judgments.pairs[["image", "caption_id"]])
    given = pd.MultiIndex.from_frame(scores[["image", "caption_id"]])
    if given.has_duplicates:
        raise ValueError("the score table repeats pairs; keep one score per (image, caption_id)")
    if judgments.dropped_pairs is not None and len(judgments.dropped_pairs):
        dropped = given.intersection(pd.MultiIndex.from_frame(judgments.dropped_pairs[["image", "caption_id"]]))
        if len(dropped):
            logger.warning("ignoring %d scored pair(s) that %s leaves out by its preparation", len(dropped),
                           judgments.name)
            keep = ~given.isin(dropped)
            scores, given = scores[keep], given[keep]
    unknown = given.difference(keys, sort=False)
    if len(unknown):
        named = ", ".join(f"{image} / {caption_id}" for image, caption_id in list(unknown)[:N_QUOTED_LINES])
        raise ValueError(
            f"{len(unknown)} scored pair(s) are not judged pairs of {judgments.name} ({named}); check the image "
            f"names and caption ids"
        )
    missing = keys.difference(given, sort=False)
    if len(missing):
        named = ", ".join(f"{image} / {caption_id}" for image, caption_id in list(missing)[:N_QUOTED_LINES])
        raise ValueError(
            f"the score file misses {len(missing)} of the {judgments.n_pairs} judged pairs of {judgments.name} "
            f"({named}); score every pair"
        )
    lookup = pd.Series(scores["score"].to_numpy(dtype=np.float64), index=given)
    return lookup.reindex(keys).to_numpy(dtype=np.float64)


def write_pair_scores(judgments: HumanJudgments, pair_scores, path) -> Path:
    """Write per-pair scores (in ``judgments.pairs`` order) as a CSV that ``correlate`` reads."""
    scores = np.asarray(pair_scores, dtype=np.float64)
    if scores.shape != (judgments.n_pairs,):
        raise ValueError(f"pair_scores must have one score per pair ({judgments.n_pairs}), got shape {scores.shape}")
    frame = judgments.pairs[["image", "caption_id"]].copy()
    frame["score"] = scores
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False, float_format="%.17g")
    return path


# Live scoring with images --------------------------------------------------------------------


def images_folder(data_dir=None) -> Path:
    """Return where the ``flickr8k-images`` dataset puts the Flickr8k images below the data folder."""
    from .download import get_dataset, resolve_data_dir

    return resolve_data_dir(data_dir) / get_dataset(IMAGES_DATASET_NAME).folders[0].target


def missing_images(images, folder) -> list[str]:
    """Return the image names of ``images`` that are not files in ``folder``."""
    folder = Path(folder)
    return [image for image in images if not (folder / image).is_file()]


def find_cached_checkpoint(model_name: str = "ViT-B-32", pretrained: str = "openai") -> Path | None:
    """Return the local file of an open_clip checkpoint if it is already downloaded, else None.

    Looks in the Hugging Face hub cache (``huggingface_hub.try_to_load_from_cache``,
    which never touches the network) and in open_clip's URL download folder
    ``~/.cache/clip``. A ``pretrained`` value that is a path to an existing file
    is returned as it is.
    """
    if Path(pretrained).expanduser().is_file():
        return Path(pretrained).expanduser()
    try:
        from open_clip import pretrained as open_clip_pretrained
    except ImportError:
        return None
    config = open_clip_pretrained.get_pretrained_cfg(model_name, pretrained)
    if not config:
        return None
    hub = config.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        # open_clip writes "org/model/filename", or "org/model/" for its default file names.
        repo_id, filename = hub.rsplit("/", 1)
        for weights_name in (filename, "open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
            if not weights_name:
                continue
            cached = try_to_load_from_cache(repo_id, weights_name)
            if isinstance(cached, str) and Path(cached).is_file():
                return Path(cached)
    url = config.get("url", "")
    if url:
        candidate = Path("~/.cache/clip").expanduser() / PurePosixPath(url).name
        if candidate.is_file():
            return candidate
    return None


def missing_live_requirements(images, data_dir=None, model_name: str = "ViT-B-32",
                              pretrained: str = "openai") -> list[str]:
    """List what the live Flickr8k evaluation lacks on this machine, without any network access.

    Checks that open_clip is installed, that the checkpoint is in a local
    cache (:func:`find_cached_checkpoint`) and that every image of ``images``
    is in :func:`images_folder`. Returns an empty list when everything is there.
    """
    missing = []
    try:
        import open_clip  # noqa: F401
    except ImportError:
        missing.append("the open_clip package (pip install open_clip_torch)")
    else:
        if find_cached_checkpoint(model_name, pretrained) is None:
            missing.append(f"the {model_name} / {pretrained} weights (not in the local Hugging Face or open_clip cache)")
    images = list(images)
    absent = missing_images(images, images_folder(data_dir))
    if absent:
        missing.append(f"the Flickr8k images ({len(absent)} of {len(images)} not in the data folder; "
                       f"python data_download.py get {IMAGES_DATASET_NAME} fetches them, about 1 GB)")
    return missing


def score_pairs_with_model(judgments: HumanJudgments, model, preprocess, tokenizer, images_dir,
                           device: str = "cpu", prefix: str | None = CAPTION_PREFIX, batch_size: int = 64,
                           post=None, progress: bool = True) -> pd.DataFrame:
    """Score every judged pair with CLIP-S, RefCLIP-S and I0T-S using an open_clip model.

    Each distinct image and candidate text is encoded once. Candidates and
    references are encoded with ``prefix`` ("A photo depicts" by default, as
    Hessel et al., 2021; None encodes the bare captions). I0T-S uses the means
    of ``post`` or, when it is None, the image mean over the distinct images
    and the text mean over the candidates of all pairs.

    Returns
    -------
    pandas.DataFrame
        ``pairs`` with the columns ``clip_s``, ``ref_clip_s``, ``i0t_s`` added.
    """
    from .caption_metrics import clip_score, encode_captions, encode_images, i0t_score, ref_clip_score

    images_dir = Path(images_dir)
    images = judgments.images
    absent = missing_images(images, images_dir)
    if absent:
        raise FileNotFoundError(f"{len(absent)} of {len(images)} images are missing from {images_dir}, first {absent[0]}")
    image_row = {image: row for row, image in enumerate(images)}
    caption_image_index = judgments.pairs["image"].map(image_row).to_numpy()

    image_embeds = encode_images(model, preprocess, [images_dir / image for image in images],
                                 batch_size=batch_size, device=device, progress=progress)
    distinct_candidates = list(dict.fromkeys(judgments.pairs["candidate"]))
    candidate_row = {text: row for row, text in enumerate(distinct_candidates)}
    distinct_embeds = encode_captions(model, tokenizer, distinct_candidates, prefix=prefix,
                                      batch_size=4 * batch_size, device=device, progress=progress)
    caption_embeds = distinct_embeds[judgments.pairs["candidate"].map(candidate_row).to_numpy()]

    reference_texts, reference_image_index = [], []
    for image in images:
        reference_texts.extend(judgments.references[image])
        reference_image_index.extend([image_row[image]] * len(judgments.references[image]))
    reference_embeds = encode_captions(model, tokenizer, reference_texts, prefix=prefix,
                                       batch_size=4 * batch_size, device=device, progress=progress)

    scored = judgments.pairs.copy()
    scored["clip_s"] = clip_score(image_embeds, caption_embeds, caption_image_index)
    scored["ref_clip_s"] = ref_clip_score(image_embeds, caption_embeds, reference_embeds,
                                          np.asarray(reference_image_index), caption_image_index)
    scored["i0t_s"] = i0t_score(image_embeds, caption_embeds, caption_image_index, post=post)
    return scored

"""``gap``: the gap report for a pack or for two .npy files, optionally after I0T_post."""

from __future__ import annotations

import argparse

import numpy as np

from ..metrics import gap_report
from ..post import I0TPost
from ._common import add_embedding_arguments, load_embedding_input, parse_rows, print_json

_JSON_KEYS = {
    "centroid_distance": "centroid_distance",
    "severity": "severity",
    "linear_separability": "linear_separability",
    "matched_pair_cosine": "matched_pair_cosine",
    "l2i": "l2i",
    "relative_modality_gap": "relative_modality_gap",
    "recall_at_1_i2t": "recall_at_1_i2t",
    "recall_at_5_i2t": "recall_at_5_i2t",
    "recall_at_10_i2t": "recall_at_10_i2t",
    "recall_at_1_t2i": "recall_at_1_t2i",
    "recall_at_5_t2i": "recall_at_5_t2i",
    "recall_at_10_t2i": "recall_at_10_t2i",
}


def register(subparsers):
    parser = subparsers.add_parser(
        "gap",
        help="measure the modality gap (and optionally I0T_post) of a pack or of IMAGES.npy TEXTS.npy",
        description="Print the modality-gap report: centroid distance, linear separability, cosines, "
                    "L2I, RMG and recall@1/5/10 in both directions.",
    )
    add_embedding_arguments(parser)
    parser.add_argument("--post", action="store_true", help="also report the figures after I0T_post")
    parser.add_argument("--fit-on", default=None, metavar="ROWS",
                        help="image rows whose embeddings give the I0T_post means, e.g. 0:400; figures are then "
                             "reported on the remaining rows (default: fit and report on all rows)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the linear-separability split (default 0)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.set_defaults(func=run)


def _report_dict(pack) -> dict:
    images, texts = pack.image_embeds, pack.text_embeds
    table = gap_report(images, texts, text_image_index=pack.text_image_index)
    values = table["value"].to_dict()
    return {key: values[name] for key, name in _JSON_KEYS.items()}


def run(arguments) -> int:
    pack = load_embedding_input(arguments)
    if arguments.fit_on is not None and not arguments.post:
        raise ValueError("--fit-on only applies with --post")

    evaluated = pack
    fit_pack = pack
    if arguments.fit_on is not None:
        rows = parse_rows(arguments.fit_on, pack.n_images, "--fit-on")
        selected = np.zeros(pack.n_images, dtype=bool)
        selected[rows] = True
        if selected.all():
            raise ValueError("--fit-on selects every row, leaving none to report on; omit it to fit on all rows")
        fit_pack = pack.subset(selected)
        evaluated = pack.subset(~selected)

    result = {"n_images": evaluated.n_images, "n_texts": evaluated.n_texts, "dim": evaluated.dim,
              "model": evaluated.model_name}
    result.update(_report_dict(evaluated))
    if arguments.post:
        post = I0TPost().fit(fit_pack.image_embeds, fit_pack.text_embeds)
        transformed = evaluated.with_embeddings(*post.transform(evaluated.image_embeds, evaluated.text_embeds))
        result.update({f"post_{key}": value for key, value in _report_dict(transformed).items()})
        result["post_fit_rows"] = arguments.fit_on or "all"
        result["post_n_fit_images"] = fit_pack.n_images

    if arguments.json:
        print_json(result)
        return 0

    print(f"model: {result['model']}   images: {result['n_images']}   texts: {result['n_texts']}   "
          f"dim: {result['dim']}")
    if arguments.post:
        print(f"I0T_post means fitted on {result['post_n_fit_images']} images (rows: {result['post_fit_rows']})")
    header = f"{'metric':<24}{'raw':>10}" + (f"{'I0T_post':>12}" if arguments.post else "")
    print(header)
    print("-" * len(header))
    for key in _JSON_KEYS:
        raw = result[key]
        line = f"{key:<24}{_format(raw):>10}"
        if arguments.post:
            line += f"{_format(result['post_' + key]):>12}"
        print(line)
    return 0


def _format(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)

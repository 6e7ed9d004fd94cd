"""``evaluate``: retrieval recall@k of an embedding pack, optionally after I0T_post."""

from __future__ import annotations

from ..evaluation import retrieval_table
from ._common import print_json


def register(subparsers):
    parser = subparsers.add_parser(
        "evaluate",
        help="image-text retrieval recall@k of a pack (all captions and first caption), optionally after I0T_post",
        description="Print image-to-text and text-to-image recall@k in percent. A pack with several captions per "
                    "image is evaluated with all captions (the COCO 5k protocol) and with the first caption of "
                    "each image only (the protocol of An et al. (2025) for Flickr30k); a pack with one caption "
                    "per image under the second only. With --post, I0T_post means are fitted on the evaluated "
                    "embeddings.",
    )
    parser.add_argument("--pack", required=True,
                        help="an embedding pack .npz (from encode) or a named pack (starter, ...)")
    parser.add_argument("--post", action="store_true", help="also report recall after I0T_post")
    parser.add_argument("--ks", default="1,5,10", help="comma-separated k values (default 1,5,10)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--data-dir", default=None, help="data folder for named packs (default: data/)")
    parser.add_argument("--mirror", default=None, help="mirror folder or URL used when a named pack must be fetched")
    parser.set_defaults(func=run)


def _parse_ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"--ks must be comma-separated positive integers such as 1,5,10; got {text!r}") from None
    if not ks or min(ks) < 1:
        raise ValueError(f"--ks must be comma-separated positive integers such as 1,5,10; got {text!r}")
    return ks


def run(arguments) -> int:
    from ..packs import load_pack

    ks = _parse_ks(arguments.ks)
    pack = load_pack(arguments.pack, data_dir=arguments.data_dir, mirror=arguments.mirror)
    table = retrieval_table(pack, ks=ks, post=arguments.post)

    if arguments.json:
        result = {"model": pack.model_name, "n_images": pack.n_images, "n_texts": pack.n_texts,
                  "dim": pack.dim, "recall": {}}
        for (protocol, method), row in table.iterrows():
            key = protocol.replace(" ", "_")
            result["recall"].setdefault(key, {})[method] = {
                column.replace(" ", "_").replace("@", "_at_"): round(float(value), 4) for column, value in row.items()
            }
        print_json(result)
        return 0

    print(f"model: {pack.model_name}   images: {pack.n_images}   texts: {pack.n_texts}   dim: {pack.dim}")
    print("recall@k in percent")
    print(table.to_string(float_format=lambda value: f"{value:.2f}"))
    return 0

"""``diagnose``: the peak dimensions of each modality and their share of the gap."""

from __future__ import annotations

from ..diagnose import peak_dimensions, top_gap_share
from ..metrics import centroid_distance
from ._common import add_embedding_arguments, load_embedding_input, print_json


def register(subparsers):
    parser = subparsers.add_parser(
        "diagnose",
        help="list the peak dimensions of each modality of a pack or of IMAGES.npy TEXTS.npy",
        description="Print the top-k dimensions with the largest absolute mean in each modality, with their mean, "
                    "standard deviation across samples and share of the squared centroid distance (0-based "
                    "dimension numbers).",
    )
    add_embedding_arguments(parser)
    parser.add_argument("--top", type=int, default=5, metavar="K",
                        help="number of peak dimensions listed per modality (default 5)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.set_defaults(func=run)


def _peak_records(table) -> list[dict]:
    return [
        {"dim": int(row.dim), "mean": float(row.mean), "std": float(row.std), "gap_share": float(row.gap_share)}
        for row in table.itertuples()
    ]


def run(arguments) -> int:
    pack = load_embedding_input(arguments)
    peaks = peak_dimensions(pack, top=arguments.top)
    distance = centroid_distance(pack.image_embeds, pack.text_embeds)
    result = {
        "model": pack.model_name,
        "n_images": pack.n_images,
        "n_texts": pack.n_texts,
        "dim": pack.dim,
        "centroid_distance": distance,
        "top_k_gap_share": top_gap_share(pack, ks=arguments.top)[arguments.top] if distance > 0 else None,
        "image_peaks": _peak_records(peaks["image"]),
        "text_peaks": _peak_records(peaks["text"]),
    }
    if arguments.json:
        print_json(result)
        return 0

    print(f"model: {result['model']}   images: {result['n_images']}   texts: {result['n_texts']}   "
          f"dim: {result['dim']}")
    print(f"centroid distance: {distance:.4f}")
    if result["top_k_gap_share"] is not None:
        print(f"the {arguments.top} dimensions that contribute most carry {result['top_k_gap_share']:.4f} of the "
              f"squared centroid distance")
    labels = pack.metadata.get("modalities")
    if not (isinstance(labels, list) and len(labels) == 2):
        labels = ["image", "text"]
    for key, label in zip(("image_peaks", "text_peaks"), labels):
        print(f"\n{label} peaks (largest |mean| first)")
        header = f"{'rank':>4}{'dim':>6}{'mean':>10}{'std':>10}{'gap_share':>11}"
        print(header)
        print("-" * len(header))
        for rank, record in enumerate(result[key], start=1):
            print(f"{rank:>4}{record['dim']:>6}{record['mean']:>10.4f}{record['std']:>10.4f}"
                  f"{record['gap_share']:>11.4f}")
    return 0

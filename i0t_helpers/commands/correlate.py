"""``correlate``: Kendall tau-b, tau-c and Pearson of a per-pair score file against Flickr8k human judgments."""

from __future__ import annotations

from ..flickr8k import BENCHMARKS, align_pair_scores, load_flickr8k, read_pair_scores
from ._common import print_json


def register(subparsers):
    parser = subparsers.add_parser(
        "correlate",
        help="correlate per-pair caption-metric scores with Flickr8k-Expert or Flickr8k-CF human judgments",
        description="Read SCORES.csv (columns image, caption_id, score; one row per judged pair), repeat each "
                    "pair's score once per human rating and print Kendall tau-b, Kendall tau-c (scipy.stats."
                    "kendalltau) and Pearson r, with the numbers of pairs and judgments used. Flickr8k-Expert is "
                    "customarily reported with tau-c, Flickr8k-CF with tau-b.",
    )
    parser.add_argument("--dataset", required=True, choices=sorted(BENCHMARKS),
                        help="the human judgments: flickr8k-expert (5,664 pairs, 3 ratings each) or flickr8k-cf "
                             "(47,830 pairs, 1 rating each)")
    parser.add_argument("--scores", required=True, metavar="SCORES.csv",
                        help="CSV with the header image,caption_id,score and one row per judged pair")
    parser.add_argument("--bootstrap", type=int, default=0, metavar="N",
                        help="also print 95%% percentile intervals from N resamples of the images (default 0: none)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object (keys kendall_tau_b, kendall_tau_c, pearson, n_pairs, "
                             "n_judgments, ...) instead of a table")
    parser.add_argument("--data-dir", default=None, help="data folder holding flickr8k/ (default: data/)")
    parser.add_argument("--mirror", default=None,
                        help="mirror folder or URL used when the Flickr8k text files must be fetched")
    parser.set_defaults(func=run)


def run(arguments) -> int:
    if arguments.bootstrap < 0:
        raise ValueError(f"--bootstrap must be 0 or a positive number of resamples, got {arguments.bootstrap}")
    scores = read_pair_scores(arguments.scores)
    judgments = load_flickr8k(arguments.dataset, data_dir=arguments.data_dir, mirror=arguments.mirror)
    pair_scores = align_pair_scores(judgments, scores)
    result = judgments.correlate(pair_scores, n_bootstrap=arguments.bootstrap, seed=arguments.seed)

    if arguments.json:
        print_json(result.as_dict())
        return 0
    print(f"dataset: {result.dataset}   pairs: {result.n_pairs}   judgments: {result.n_judgments}   "
          f"images: {result.n_images}")
    print(f"customary variant on this dataset: Kendall tau-{result.conventional_variant}")
    print(result.summary().split("\n", 1)[1])
    return 0

"""Time recall ranks of this checkout against another copy of the package, side by side.

Both versions and the bare block matrix products run interleaved in one
process on the same CLIP-like float32 data, so load on a shared machine hits
all three alike. Their ranks are checked to be identical first.

    git archive 6bdea89 i0t_helpers | tar -x -C /tmp/before
    python benchmarks/bench_recall_before_after.py /tmp/before --rows 16384 --repeats 3
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import format_spread, machine_info, summarize, time_call, write_results  # noqa: E402
from benchmarks.bench_recall import block_products_only, make_pairs  # noqa: E402
from i0t_helpers.retrieval import DEFAULT_CHUNK_SIZE, retrieval_ranks  # noqa: E402


def import_other_package(folder: Path):
    """Import the i0t_helpers found in ``folder`` under the name ``other_i0t_helpers``."""
    package = folder / "i0t_helpers"
    spec = importlib.util.spec_from_file_location("other_i0t_helpers", package / "__init__.py",
                                                  submodule_search_locations=[str(package)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["other_i0t_helpers"] = module
    spec.loader.exec_module(module)
    return importlib.import_module("other_i0t_helpers.retrieval")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("other", type=Path, help="folder that contains the other i0t_helpers package")
    parser.add_argument("--rows", type=int, default=16384, help="images (and captions)")
    parser.add_argument("--dim", type=int, default=512, help="embedding dimension")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions of each variant")
    args = parser.parse_args()

    other = import_other_package(args.other)
    images, texts = make_pairs(args.rows, args.dim)
    for ours, theirs in zip(retrieval_ranks(images, texts), other.retrieval_ranks(images, texts)):
        np.testing.assert_array_equal(ours, theirs)

    variants = {
        f"block products only, chunk_size={DEFAULT_CHUNK_SIZE}":
            lambda: block_products_only(images, texts, DEFAULT_CHUNK_SIZE),
        f"retrieval_ranks in {args.other.name}": lambda: other.retrieval_ranks(images, texts),
        "retrieval_ranks in this checkout": lambda: retrieval_ranks(images, texts),
    }
    timings = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, function in variants.items():
            timings[name].append(time_call(function)[0])

    floor = timings[next(iter(variants))]
    payload = {"machine": machine_info(), "rows": args.rows, "dim": args.dim, "other": str(args.other),
               "timings": {name: summarize(values) for name, values in timings.items()},
               "ratio_to_products": {name: summarize([a / b for a, b in zip(values, floor)])
                                     for name, values in timings.items()}}
    path = write_results("recall_before_after", payload)
    print("| variant | time, median (min-max) | ratio to the block products, median (min-max) |")
    print("| --- | --- | --- |")
    for name, summary in payload["timings"].items():
        print(f"| {name} | {format_spread(summary)} | {format_spread(payload['ratio_to_products'][name], 'x')} |")
    print(f"\nresults written to {path}")


if __name__ == "__main__":
    main()

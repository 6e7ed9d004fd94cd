"""Benchmark blockwise recall@k against one dense matrix product, and its peak memory.

Two parts, both on CLIP-like float32 unit embeddings (dim 512, one caption per image):

1. ``--dense-rows`` (default 30,000): recall@1/5/10 at each ``--chunk-sizes``
   and the same blocks' matrix products alone,
   timed side by side with one dense ``images @ texts.T`` into a preallocated
   output (numpy and torch; the faster one is the reference), after one
   untimed warm-up call of each. A 30k x 30k float32 matrix takes 3.6 GB and
   fits beside other jobs on a 24 GiB machine; a 100k x 100k one (40 GB) does not.
2. ``--rows`` (default 100,000): each recall run in a fresh process, reporting
   its time, peak RSS and tracemalloc peak, interleaved with a run that only
   computes the same blocks' matrix products (the floor any blockwise method
   pays). The dense product at this size is extrapolated from part 1 as
   ``t_dense * (rows / dense_rows)**2``, since its cost is proportional to the
   number of scores.

    python benchmarks/bench_recall.py --rows 100000 --dense-rows 30000 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# I0T_BENCH_PACKAGE_DIR points at another copy of i0t_helpers (for example an
# older commit unpacked with `git archive`) to measure it with the same script.
if os.environ.get("I0T_BENCH_PACKAGE_DIR"):
    sys.path.insert(0, os.environ["I0T_BENCH_PACKAGE_DIR"])

from benchmarks._common import (  # noqa: E402
    format_spread,
    machine_info,
    mib,
    peak_rss_bytes,
    run_child,
    summarize,
    time_call,
    write_results,
)
from i0t_helpers.retrieval import recall_at_k  # noqa: E402

KS = (1, 5, 10)


def make_pairs(rows: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Draw unit image embeddings and captions that are noisy copies of them (float32)."""
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((rows, dim), dtype=np.float32)
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    texts = rng.standard_normal((rows, dim), dtype=np.float32)
    texts *= 1.5 / np.sqrt(dim)
    texts += images
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    return images, texts


def block_products_only(images: np.ndarray, texts: np.ndarray, chunk_size: int) -> None:
    """Compute the same blocks of scores as recall_at_k and nothing else."""
    buffer = np.empty(chunk_size * chunk_size, dtype=images.dtype)
    for image_start in range(0, len(images), chunk_size):
        image_block = images[image_start:image_start + chunk_size]
        for text_start in range(0, len(texts), chunk_size):
            text_block = texts[text_start:text_start + chunk_size]
            out = buffer[:len(image_block) * len(text_block)].reshape(len(image_block), len(text_block))
            np.matmul(image_block, text_block.T, out=out)


def child_run(variant: str, rows: int, dim: int, chunk_size: int) -> dict:
    """Run one variant at ``rows`` in this fresh process; report time and memory."""
    images, texts = make_pairs(rows, dim)
    rss_before = peak_rss_bytes()
    tracemalloc.start()
    start = time.perf_counter()
    if variant == "recall":
        result = recall_at_k(images, texts, ks=KS, chunk_size=chunk_size)
    else:
        block_products_only(images, texts, chunk_size)
        result = None
    seconds = time.perf_counter() - start
    traced = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"variant": variant, "chunk_size": chunk_size, "seconds": seconds, "peak_rss_before": rss_before,
            "peak_rss": peak_rss_bytes(), "traced_peak": traced, "recall": result,
            "load_average": os.getloadavg()[0]}


def dense_side_by_side(rows: int, dim: int, chunk_sizes: list[int], repeats: int) -> dict:
    """Time dense products (numpy, torch) and recall@k at each chunk size, interleaved."""
    import torch

    images, texts = make_pairs(rows, dim, seed=1)
    out = np.empty((rows, rows), dtype=np.float32)
    torch_images, torch_texts, torch_out = (torch.from_numpy(array) for array in (images, texts, out))
    variants = {
        "dense numpy matmul": lambda: np.matmul(images, texts.T, out=out),
        "dense torch.mm": lambda: torch.mm(torch_images, torch_texts.T, out=torch_out),
    } | {
        f"block products only chunk_size={size}": (lambda size=size: block_products_only(images, texts, size))
        for size in chunk_sizes
    } | {
        f"recall_at_k chunk_size={size}": (lambda size=size: recall_at_k(images, texts, ks=KS, chunk_size=size))
        for size in chunk_sizes
    }
    for function in variants.values():
        function()  # warm-up: first touch of the output pages, BLAS buffers and thread start
    timings = {name: [] for name in variants}
    for _ in range(repeats):
        for name, function in variants.items():
            seconds, _ = time_call(function)
            timings[name].append(seconds)
    return timings


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="images (and captions) of the large run")
    parser.add_argument("--dense-rows", type=int, default=30_000, help="size of the side-by-side dense comparison")
    parser.add_argument("--dim", type=int, default=512, help="embedding dimension")
    parser.add_argument("--chunk-sizes", type=int, nargs="+", default=[4096, 1024], help="recall_at_k chunk_size values")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions of each variant")
    parser.add_argument("--skip-dense", action="store_true", help="skip part 1")
    parser.add_argument("--skip-large", action="store_true", help="skip part 2")
    parser.add_argument("--tag", default="", help="suffix of the results file name, e.g. 'before'")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    results_name = "recall" + (f"_{args.tag}" if args.tag else "")

    if args.child:
        print(json.dumps(child_run(args.child, args.rows, args.dim, args.chunk_sizes[0])))
        return

    info = machine_info()
    info["package_dir"] = os.environ.get("I0T_BENCH_PACKAGE_DIR")
    payload = {"machine": info, "rows": args.rows, "dense_rows": args.dense_rows, "dim": args.dim,
               "chunk_sizes": args.chunk_sizes, "repeats": args.repeats, "ks": KS}

    if not args.skip_dense:
        timings = dense_side_by_side(args.dense_rows, args.dim, args.chunk_sizes, args.repeats)
        dense_names = ["dense numpy matmul", "dense torch.mm"]
        reference = min(dense_names, key=lambda name: summarize(timings[name])["median"])
        payload["dense"] = {
            "reference": reference,
            "timings": {name: summarize(values) for name, values in timings.items()},
            "ratio_to_reference": {name: summarize([a / b for a, b in zip(values, timings[reference])])
                                   for name, values in timings.items()},
        }
        write_results(results_name, payload)

    if not args.skip_large:
        script = Path(__file__)
        size = ["--rows", str(args.rows), "--dim", str(args.dim)]
        runs = []
        for _ in range(args.repeats):
            for chunk_size in args.chunk_sizes:
                runs.append(run_child(script, ["--child", "recall", *size, "--chunk-sizes", str(chunk_size)]))
            runs.append(run_child(script, ["--child", "products", *size, "--chunk-sizes", str(args.chunk_sizes[0])]))
            write_results(results_name, payload | {"large_runs": runs})
        payload["large_runs"] = runs

    info["load_average_after"] = [round(value, 2) for value in os.getloadavg()]
    path = write_results(results_name, payload)
    print_tables(payload)
    print(f"\nresults written to {path}")


def print_tables(payload: dict):
    if "dense" in payload:
        dense = payload["dense"]
        print(f"Side by side at {payload['dense_rows']:,} x {payload['dense_rows']:,} (reference: {dense['reference']})")
        print("| variant | time, median (min-max) | ratio to the dense product, median (min-max) |")
        print("| --- | --- | --- |")
        for name, summary in dense["timings"].items():
            print(f"| {name} | {format_spread(summary)} | {format_spread(dense['ratio_to_reference'][name], 'x')} |")
        print()
    if "large_runs" in payload:
        rows = payload["rows"]
        print(f"At {rows:,} x {rows:,}, one fresh process per run")
        print("| variant | time, median (min-max) | peak RSS, max | tracemalloc peak, max |")
        print("| --- | --- | --- | --- |")
        groups = {}
        for run in payload["large_runs"]:
            name = ("recall_at_k" if run["variant"] == "recall" else "block products only") + \
                f" chunk_size={run['chunk_size']}"
            groups.setdefault(name, []).append(run)
        for name, group in groups.items():
            times = summarize([run["seconds"] for run in group])
            print(f"| {name} | {format_spread(times, digits=1)} | {mib(max(run['peak_rss'] for run in group))} | "
                  f"{mib(max(run['traced_peak'] for run in group))} |")
        if "dense" in payload:
            reference = payload["dense"]["timings"][payload["dense"]["reference"]]["median"]
            estimate = reference * (rows / payload["dense_rows"]) ** 2
            print(f"\nDense product at {rows:,} (not run, 40 GB of scores): estimated {estimate:.1f} s "
                  f"from the {payload['dense_rows']:,} reference")


if __name__ == "__main__":
    main()

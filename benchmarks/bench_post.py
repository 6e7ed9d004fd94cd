"""Benchmark I0T_post fit + transform against a bare numpy pass doing the same arithmetic.

Both normalise every row, take the float64 column mean, subtract it and
normalise again, on one float32 matrix of ``--rows x --dim`` (one modality:
the other modality costs the same). Timings alternate the two, so the load of
a shared machine hits both alike; the ratio is taken per repetition. Peak
memory is measured in a fresh process per variant. A third part shows that
the memory ``partial_fit`` needs does not grow with the number of rows, for
in-memory and memory-mapped input.

    python benchmarks/bench_post.py --rows 1000000 --dim 512 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
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
    traced_peak,
    write_results,
)
from i0t_helpers.post import I0TPost  # noqa: E402


def make_embeddings(rows: int, dim: int, seed: int = 0) -> np.ndarray:
    """Draw CLIP-like float32 embeddings: Gaussian rows plus one large shared offset, not normalised."""
    rng = np.random.default_rng(seed)
    embeds = rng.standard_normal((rows, dim), dtype=np.float32)
    embeds[:, 0] += 8.0  # a modality-specific "peak" dimension
    embeds *= 0.5
    return embeds


def numpy_plain(embeds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Do the arithmetic of I0T_post as idiomatic whole-array numpy: normalise, mean, subtract, normalise."""
    out = embeds / np.linalg.norm(embeds, axis=1, keepdims=True)
    mean = out.mean(axis=0, dtype=np.float64)
    out -= mean.astype(np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return mean, out


def numpy_tuned(embeds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Do the same arithmetic with one output array, in-place updates and einsum row norms."""
    out = embeds / np.sqrt(np.einsum("ij,ij->i", embeds, embeds))[:, None]
    mean = out.mean(axis=0, dtype=np.float64)
    out -= mean.astype(np.float32)
    out /= np.sqrt(np.einsum("ij,ij->i", out, out))[:, None]
    return mean, out


BASELINES = {"numpy plain": numpy_plain, "numpy tuned": numpy_tuned}


def i0t_post(embeds: np.ndarray, chunk_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Fit I0T_post on ``embeds`` as images and transform them."""
    post = I0TPost(chunk_rows=chunk_rows).partial_fit(image_embeds=embeds)
    return post.image_mean_, post.transform_images(embeds)


def child_peak(variant: str, rows: int, dim: int, chunk_rows: int) -> dict:
    """Measure one variant's peak memory in this (fresh) process."""
    embeds = make_embeddings(rows, dim)
    rss_before = peak_rss_bytes()
    if variant in BASELINES:
        traced, _ = traced_peak(BASELINES[variant], embeds)
    else:
        traced, _ = traced_peak(i0t_post, embeds, chunk_rows)
    return {"variant": variant, "input_bytes": embeds.nbytes, "peak_rss_before": rss_before,
            "peak_rss": peak_rss_bytes(), "traced_peak": traced}


def child_fit_memory(rows: int, dim: int, chunk_rows: int) -> dict:
    """Measure the memory allocated by partial_fit on in-memory and memory-mapped input of ``rows`` rows."""
    embeds = make_embeddings(rows, dim, seed=1)
    in_memory, fitted = traced_peak(I0TPost(chunk_rows=chunk_rows).partial_fit, image_embeds=embeds)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "embeds.npy"
        np.save(path, embeds)
        del embeds
        mapped = np.load(path, mmap_mode="r")
        memmap_peak, fitted_mapped = traced_peak(I0TPost(chunk_rows=chunk_rows).partial_fit, image_embeds=mapped)
        same = bool(np.array_equal(fitted.image_mean_, fitted_mapped.image_mean_))
        del mapped
    return {"rows": rows, "chunk_rows": chunk_rows, "traced_peak_in_memory": in_memory,
            "traced_peak_memmap": memmap_peak, "memmap_mean_equals_in_memory": same,
            "stored_statistics_bytes": fitted._image_sum.nbytes}


def time_side_by_side(embeds: np.ndarray, chunk_sizes: list[int], repeats: int) -> dict[str, list[float]]:
    """Time every variant ``repeats`` times, interleaved, and return the seconds of each run."""
    variants = dict(BASELINES) | {
        f"i0t_post chunk_rows={chunk_rows}": (lambda x, c=chunk_rows: i0t_post(x, c)) for chunk_rows in chunk_sizes
    }
    for function in variants.values():
        function(embeds)  # warm-up, untimed
    timings = {name: [] for name in variants}
    for _ in range(repeats):
        for name, function in variants.items():
            seconds, result = time_call(function, embeds)
            timings[name].append(seconds)
            del result
    return timings


def print_tables(payload: dict):
    timings, ratios = payload["timings"], payload["ratio_to_numpy_tuned"]
    print("| variant | time, median (min-max) | ratio to numpy tuned, median (min-max) |")
    print("| --- | --- | --- |")
    for name, summary in timings.items():
        print(f"| {name} | {format_spread(summary)} | {format_spread(ratios[name], unit='x')} |")
    print()
    print("| variant | input | peak RSS of the process | allocated by the call (tracemalloc peak) |")
    print("| --- | --- | --- | --- |")
    for peak in payload["peak_memory"]:
        print(f"| {peak['variant']} | {mib(peak['input_bytes'])} | {mib(peak['peak_rss'])} | "
              f"{mib(peak['traced_peak'])} |")
    print()
    print("| rows | partial_fit allocation peak, in memory | memmap | memmap mean == in-memory mean |")
    print("| --- | --- | --- | --- |")
    for entry in payload["fit_memory"]:
        print(f"| {entry['rows']:,} | {mib(entry['traced_peak_in_memory'])} | {mib(entry['traced_peak_memmap'])} | "
              f"{entry['memmap_mean_equals_in_memory']} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the benchmark matrix")
    parser.add_argument("--dim", type=int, default=512, help="embedding dimension")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions of each variant")
    parser.add_argument("--chunk-rows", type=int, nargs="+", default=[65536, 8192],
                        help="I0TPost chunk_rows values to time")
    parser.add_argument("--fit-memory-rows", type=int, nargs="+", default=[300_000, 1_000_000],
                        help="row counts of the partial_fit memory check")
    parser.add_argument("--tag", default="", help="suffix of the results file name, e.g. 'before'")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    # The benchmark rows are deliberately not unit length; the warning about it is expected.
    logging.getLogger("i0t_helpers").setLevel(logging.ERROR)

    if args.child == "fit_memory":
        print(json.dumps(child_fit_memory(args.rows, args.dim, args.chunk_rows[0])))
        return
    if args.child:
        print(json.dumps(child_peak(args.child, args.rows, args.dim, args.chunk_rows[0])))
        return

    info = machine_info()
    info["package_dir"] = os.environ.get("I0T_BENCH_PACKAGE_DIR")
    embeds = make_embeddings(args.rows, args.dim)
    reference_mean, reference = numpy_plain(embeds)
    for chunk_rows in args.chunk_rows:
        mean, transformed = i0t_post(embeds, chunk_rows)
        np.testing.assert_allclose(mean, reference_mean, rtol=0, atol=1e-6)
        np.testing.assert_allclose(transformed, reference, rtol=0, atol=1e-5)
    del reference, transformed

    timings = time_side_by_side(embeds, args.chunk_rows, args.repeats)
    del embeds
    ratios = {name: summarize([ours / base for ours, base in zip(values, timings["numpy tuned"])])
              for name, values in timings.items()}

    script = Path(__file__)
    size = ["--rows", str(args.rows), "--dim", str(args.dim)]
    peaks = [run_child(script, ["--child", name, *size]) for name in BASELINES]
    for chunk_rows in args.chunk_rows:
        peak = run_child(script, ["--child", "i0t_post", *size, "--chunk-rows", str(chunk_rows)])
        peak["variant"] = f"i0t_post chunk_rows={chunk_rows}"
        peaks.append(peak)
    fit_memory = [
        run_child(script, ["--child", "fit_memory", "--rows", str(rows), "--dim", str(args.dim),
                           "--chunk-rows", str(args.chunk_rows[0])])
        for rows in args.fit_memory_rows
    ]
    info["load_average_after"] = [round(value, 2) for value in os.getloadavg()]

    payload = {"machine": info, "rows": args.rows, "dim": args.dim, "repeats": args.repeats,
               "timings": {name: summarize(values) for name, values in timings.items()},
               "ratio_to_numpy_tuned": ratios, "peak_memory": peaks, "fit_memory": fit_memory}
    path = write_results(f"post_{args.rows}x{args.dim}" + (f"_{args.tag}" if args.tag else ""), payload)
    print_tables(payload)
    print(f"\nresults written to {path}")


if __name__ == "__main__":
    main()

"""Benchmark I0T_async head training from cached embeddings against live re-encoding.

Both variants train the same heads with the same options on the same synthetic
image-caption pairs (random 32x32 images and random token sequences for the
course's tiny open_clip model, or 224x224 for ``--model ViT-B-32``, randomly
initialised). Live training runs every batch through the frozen towers, as the
authors' code does. Cached training encodes the pairs once and then trains on
the stored embeddings. The script reports the median time per epoch of each,
their ratio, the one-time encoding cost of the cached variant and the peak
memory of each variant. Each run uses ``--threads`` torch threads (default 1),
because on a machine shared with other jobs multi-threaded kernels wait for
busy cores and their timings scatter by an order of magnitude.

Every variant runs in a fresh Python process (so peak memory is its own),
the variants alternate ``--repeats`` times so the load of a shared machine hits
both alike, and the first epoch of each run is left out of the medians as warm-up.

    python benchmarks/bench_async_cached_vs_live.py                    # tiny model, 1024 pairs
    python benchmarks/bench_async_cached_vs_live.py --model ViT-B-32 --pairs 256 --epochs 2 --repeats 1

The figures are written to ``benchmarks/results/async_cached_vs_live_<model>.json``
and printed as a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def peak_rss_bytes() -> int:
    """Return this process's peak resident set size (``VmHWM`` of /proc/self/status)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise OSError("VmHWM not found in /proc/self/status; this benchmark measures memory on Linux only")


def current_rss_bytes() -> int:
    """Return this process's current resident set size (``VmRSS``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise OSError("VmRSS not found in /proc/self/status; this benchmark measures memory on Linux only")


def machine_info() -> dict:
    """Describe the CPU, core count, load and library versions."""
    import open_clip
    import torch

    cpu_model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu_model": cpu_model,
        "usable_cores": len(os.sched_getaffinity(0)),
        "load_average_1_5_15": [round(value, 2) for value in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }


def build_towers(model_name: str):
    import torch

    from i0t_helpers.models import create_tiny_model

    if model_name == "tiny":
        towers, _, _ = create_tiny_model(seed=0)
        return towers
    import open_clip

    torch.manual_seed(0)
    return open_clip.create_model(model_name, pretrained=None).eval()


def run_variant(arguments) -> dict:
    """Train one variant in this process and return its timings and memory."""
    import torch

    from i0t_helpers.async_heads import I0TAsyncHeads, I0TAsyncModel
    from i0t_helpers.training import SyntheticImageTextDataset, encode_dataset, train_cached, train_live

    torch.set_num_threads(arguments.threads)
    torch.manual_seed(0)
    towers = build_towers(arguments.model)
    image_size = towers.visual.image_size
    image_size = image_size[0] if isinstance(image_size, (tuple, list)) else image_size
    dataset = SyntheticImageTextDataset(arguments.pairs, image_size=image_size, seed=0)
    options = dict(epochs=arguments.epochs, batch_size=arguments.batch_size, progress=False)
    baseline_rss = current_rss_bytes()

    encode_seconds = 0.0
    if arguments.variant == "cached":
        started = time.perf_counter()
        images, texts = encode_dataset(towers, dataset, batch_size=arguments.batch_size,
                                       num_workers=arguments.num_workers, progress=False)
        encode_seconds = time.perf_counter() - started
        heads = I0TAsyncHeads(images.shape[1])
        history = train_cached(heads, images, texts, **options)
    else:
        model = I0TAsyncModel(towers)
        history = train_live(model, dataset, num_workers=arguments.num_workers, **options)

    return {
        "variant": arguments.variant,
        "epoch_seconds": [float(value) for value in history["seconds"]],
        "steps_per_epoch": int(history["step"].iloc[0]),
        "encode_seconds": encode_seconds,
        "baseline_rss_bytes": baseline_rss,
        "peak_rss_bytes": peak_rss_bytes(),
    }


def run_child(arguments, variant: str) -> dict:
    command = [sys.executable, __file__, "--variant", variant, "--model", arguments.model,
               "--pairs", str(arguments.pairs), "--batch-size", str(arguments.batch_size),
               "--epochs", str(arguments.epochs), "--num-workers", str(arguments.num_workers),
               "--threads", str(arguments.threads)]
    completed = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def summarize(runs: list[dict]) -> dict:
    # The first epoch of each run carries one-off costs (allocator warm-up, lazy initialisation).
    timed = [seconds for run in runs for seconds in run["epoch_seconds"][1:]] or \
            [seconds for run in runs for seconds in run["epoch_seconds"]]
    return {
        "median_epoch_seconds": statistics.median(timed),
        "min_epoch_seconds": min(timed),
        "max_epoch_seconds": max(timed),
        "epoch_seconds": [round(value, 5) for value in timed],
        "steps_per_epoch": runs[0]["steps_per_epoch"],
        "median_encode_seconds": statistics.median(run["encode_seconds"] for run in runs),
        "peak_rss_mib": max(run["peak_rss_bytes"] for run in runs) / 2**20,
        "training_rss_increase_mib": max(run["peak_rss_bytes"] - run["baseline_rss_bytes"] for run in runs) / 2**20,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", help="'tiny' (the course's 64-d model) or an open_clip "
                                                        "architecture, randomly initialised (default: tiny)")
    parser.add_argument("--pairs", type=int, default=1024, help="synthetic image-caption pairs (default: 1024)")
    parser.add_argument("--batch-size", type=int, default=128, help="batch size (default: 128)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run, the first one untimed (default: 4)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each variant, alternating (default: 3)")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers (default: 0)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads of each run (default: 1, which keeps timings stable on a "
                             "shared machine)")
    parser.add_argument("--variant", choices=["cached", "live"], help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)

    if arguments.variant is not None:
        print(json.dumps(run_variant(arguments)))
        return 0

    runs = {"live": [], "cached": []}
    for repeat in range(arguments.repeats):
        for variant in ("live", "cached"):
            runs[variant].append(run_child(arguments, variant))
            print(f"run {repeat + 1}/{arguments.repeats} {variant}: epochs "
                  f"{', '.join(f'{s:.4f}' for s in runs[variant][-1]['epoch_seconds'])} s", file=sys.stderr)
    live, cached = summarize(runs["live"]), summarize(runs["cached"])
    ratio = live["median_epoch_seconds"] / cached["median_epoch_seconds"]
    payload = {
        "machine": machine_info(),
        "command": " ".join(["python", "benchmarks/bench_async_cached_vs_live.py", *(argv or sys.argv[1:])]),
        "model": arguments.model,
        "pairs": arguments.pairs,
        "batch_size": arguments.batch_size,
        "epochs_per_run": arguments.epochs,
        "repeats": arguments.repeats,
        "num_workers": arguments.num_workers,
        "torch_threads_per_run": arguments.threads,
        "live": live,
        "cached": cached,
        "live_over_cached_epoch_ratio": ratio,
        "epochs_to_repay_encoding": cached["median_encode_seconds"] / max(
            live["median_epoch_seconds"] - cached["median_epoch_seconds"], 1e-12),
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"async_cached_vs_live_{arguments.model.replace('/', '-')}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")

    machine = payload["machine"]
    print(f"Machine: {machine['cpu_model']}, {machine['usable_cores']} usable cores, torch {machine['torch']} "
          f"({arguments.threads} thread(s) per run), load average {machine['load_average_1_5_15']}")
    print(f"Model: {arguments.model} (random init), {arguments.pairs} pairs, batch {arguments.batch_size}, "
          f"{live['steps_per_epoch']} steps per epoch, {arguments.repeats} runs x {arguments.epochs - 1} timed epochs")
    print()
    print("| variant | time per epoch, median (min-max) | one-time encoding | peak RSS | RSS increase in training |")
    print("|---|---|---|---|---|")
    for name, figures in (("live re-encoding", live), ("cached embeddings", cached)):
        print(f"| {name} | {figures['median_epoch_seconds']:.4f} s ({figures['min_epoch_seconds']:.4f}-"
              f"{figures['max_epoch_seconds']:.4f}) | {figures['median_encode_seconds']:.3f} s | "
              f"{figures['peak_rss_mib']:.0f} MiB | {figures['training_rss_increase_mib']:.0f} MiB |")
    print()
    print(f"live / cached time per epoch: {ratio:.1f}x; the encoding pass pays for itself after "
          f"{payload['epochs_to_repay_encoding']:.2f} epochs")
    print(f"results written to {path.relative_to(Path(__file__).resolve().parents[1])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

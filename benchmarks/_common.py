"""Shared helpers of the benchmark scripts: machine description, timing summaries, peak memory.

The scripts are plain Python, run from the repository root, for example
``python benchmarks/bench_post.py``. Each writes its figures as JSON under
``benchmarks/results/`` and prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    """Return the CPU model name reported by the kernel."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict:
    """Describe the machine, the BLAS in use and the library versions, for the results page."""
    import numpy
    import psutil
    import scipy
    import sklearn
    import threadpoolctl
    import torch

    blas = [
        {key: pool.get(key) for key in ("internal_api", "prefix", "version", "architecture", "num_threads")}
        for pool in threadpoolctl.threadpool_info()
    ]
    memory = psutil.virtual_memory()
    return {
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "memory_total_gib": round(memory.total / 2**30, 1),
        "memory_available_gib": round(memory.available / 2**30, 1),
        "load_average_1_5_15": [round(value, 2) for value in os.getloadavg()],
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "scikit_learn": sklearn.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "psutil": psutil.__version__,
        "blas": blas,
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        "OPENBLAS_L2_SIZE": os.environ.get("OPENBLAS_L2_SIZE"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }


def summarize(seconds: list[float]) -> dict:
    """Return the median, min, max and every value of a list of timings (seconds)."""
    return {
        "median": statistics.median(seconds),
        "min": min(seconds),
        "max": max(seconds),
        "runs": [round(value, 4) for value in seconds],
    }


def format_spread(summary: dict, unit: str = "s", digits: int = 2) -> str:
    """Format a timing summary as ``median (min-max) unit``."""
    return f"{summary['median']:.{digits}f} ({summary['min']:.{digits}f}-{summary['max']:.{digits}f}) {unit}"


def time_call(function, *args, **kwargs) -> tuple[float, object]:
    """Run ``function`` once and return its wall time in seconds and its result."""
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - start, result


def traced_peak(function, *args, **kwargs) -> tuple[int, object]:
    """Run ``function`` under tracemalloc; return the peak bytes it allocated and its result.

    numpy reports its array buffers to tracemalloc, so this counts every array
    the call creates, but not buffers that BLAS allocates internally.
    """
    tracemalloc.start()
    try:
        result = function(*args, **kwargs)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, result


def peak_rss_bytes() -> int:
    """Return the peak resident set size of this process so far.

    Reads ``VmHWM`` from /proc/self/status, the high-water mark of this
    process's own address space. ``getrusage``'s ``ru_maxrss`` is no use in a
    child process, because Linux carries the parent's peak over ``fork`` and ``exec``.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_child(script: Path, arguments: list[str]) -> dict:
    """Run ``script`` in a fresh interpreter and return the JSON object it prints on its last line."""
    completed = subprocess.run(
        [sys.executable, str(script), *arguments], check=True, capture_output=True, text=True
    )
    return json.loads(completed.stdout.strip().splitlines()[-1])


def write_results(name: str, payload: dict) -> Path:
    """Write ``payload`` as ``benchmarks/results/NAME.json`` and return the path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def mib(n_bytes: float) -> str:
    """Format a byte count in MiB."""
    return f"{n_bytes / 2**20:,.0f} MiB"

"""Time every course notebook executed headless, excluding kernel start-up.

Each notebook in ``notebooks/`` whose name starts with a digit is executed top
to bottom with nbclient in a fresh kernel, in starter mode (the notebooks'
default ``SOURCE = "starter"``), without writing it back. The kernel start-up
is timed apart from the cells; the slowest cells are listed so that what takes
long can be named. Set ``CI=true`` (no progress bars, as in CI) and
``I0T_DATA_MIRROR`` to the data mirror when the data are not in ``data/`` yet.

    CI=true python benchmarks/bench_notebooks.py --repeats 3
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import format_spread, machine_info, summarize, write_results  # noqa: E402

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"


def time_notebook(path: Path, timeout: int) -> dict:
    """Execute one notebook in a fresh kernel; return kernel start-up, per-cell and total cell time."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    cells, error = [], None
    start = time.perf_counter()
    with client.setup_kernel():
        kernel_seconds = time.perf_counter() - start
        for index, cell in enumerate(notebook.cells):
            if cell.cell_type != "code":
                continue
            cell_start = time.perf_counter()
            try:
                client.execute_cell(cell, index)
            except CellExecutionError as failure:
                error = f"cell {index}: {str(failure).strip().splitlines()[-1]}"
                break
            finally:
                first_line = next((line for line in cell.source.splitlines() if line.strip()), "")
                cells.append({"cell": index, "seconds": time.perf_counter() - cell_start, "source": first_line[:80]})
    return {"kernel_seconds": kernel_seconds, "cells_seconds": sum(cell["seconds"] for cell in cells),
            "cells": cells, "error": error}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="executions of each notebook")
    parser.add_argument("--timeout", type=int, default=1200, help="limit per cell, in seconds")
    parser.add_argument("--slow-cell", type=float, default=5.0, help="list cells slower than this (median, s)")
    parser.add_argument("notebooks", nargs="*", type=Path, help="notebooks to time (default: every NN_*.ipynb)")
    args = parser.parse_args()

    notebooks = args.notebooks or sorted(NOTEBOOK_DIR.glob("[0-9]*.ipynb"))
    info = machine_info()
    info["CI"] = os.environ.get("CI")
    runs = {path.name: [] for path in notebooks}
    for _ in range(args.repeats):
        for path in notebooks:
            runs[path.name].append(time_notebook(path, args.timeout))
            write_results("notebooks", {"machine": info, "runs": runs})
    info["load_average_after"] = [round(value, 2) for value in os.getloadavg()]
    write_results("notebooks", {"machine": info, "runs": runs})

    print("| notebook | cells, median (min-max) | kernel start-up, median | status |")
    print("| --- | --- | --- | --- |")
    totals = [0.0] * args.repeats
    for name, results in runs.items():
        cell_times = [result["cells_seconds"] for result in results]
        totals = [total + seconds for total, seconds in zip(totals, cell_times)]
        errors = {result["error"] for result in results if result["error"]}
        status = "; ".join(sorted(errors)) if errors else "ok"
        kernel = summarize([result["kernel_seconds"] for result in results])["median"]
        print(f"| {name} | {format_spread(summarize(cell_times), digits=1)} | {kernel:.1f} s | {status} |")
    print(f"| total | {format_spread(summarize(totals), digits=1)} | | |")

    print(f"\nCells slower than {args.slow_cell:.0f} s (median):")
    for name, results in runs.items():
        for position, cell in enumerate(results[0]["cells"]):
            seconds = [result["cells"][position]["seconds"] for result in results if len(result["cells"]) > position]
            median = summarize(seconds)["median"]
            if median > args.slow_cell:
                print(f"- {name} cell {cell['cell']}: {median:.1f} s  `{cell['source']}`")


if __name__ == "__main__":
    main()

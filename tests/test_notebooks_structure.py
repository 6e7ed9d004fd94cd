"""Every committed notebook comes from a clean top-to-bottom run and leaks nothing of the machine it ran on.

nbval (``pytest --nbval notebooks``) re-runs each notebook and compares outputs;
these checks read the saved files only, so they run in milliseconds and catch a
notebook saved after cells were run out of order, saved with an error, or with
paths, memory addresses or progress widgets that differ from machine to machine.
Each check is a function that lists problems, tested once on a notebook with
planted faults so that it can fail.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest

REPOSITORY = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPOSITORY / "notebooks").glob("*.ipynb"))

#: Absolute paths of a particular machine: Linux and macOS home folders, /tmp, /work and Windows drives.
ABSOLUTE_PATH = re.compile(r"(?<![\w./-])(/work/|/root/|/home/|/tmp/|/Users/|[A-Za-z]:\\)")
MEMORY_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]{6,}")
#: Output types containing text; images and other binary data are base64 and are not searched.
TEXT_MIME_TYPES = ("text/plain", "text/html", "text/markdown", "text/latex", "application/json")
WIDGET_MIME_TYPE = "application/vnd.jupyter.widget-view+json"


def load_notebook(path: Path) -> dict:
    with open(path, encoding="utf-8") as stream:
        return json.load(stream)


def joined(text) -> str:
    return "".join(text) if isinstance(text, list) else str(text)


def code_cells(notebook: dict) -> list[dict]:
    return [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]


def output_texts(cell: dict):
    """Yield every text an output of ``cell`` shows: streams, results, displays and tracebacks."""
    for output in cell.get("outputs", []):
        if output["output_type"] == "stream":
            yield joined(output["text"])
        elif output["output_type"] == "error":
            yield "\n".join(output.get("traceback", []))
        else:
            for mime_type, value in output.get("data", {}).items():
                if mime_type in TEXT_MIME_TYPES:
                    yield json.dumps(value) if isinstance(value, dict) else joined(value)


# Checks: each returns a list of problems, empty for a good notebook ---------------------------


def execution_count_problems(notebook: dict) -> list[str]:
    counts = [cell.get("execution_count") for cell in code_cells(notebook)]
    if not counts:
        return ["no code cell"]
    if counts != list(range(1, len(counts) + 1)):
        return [f"execution counts {counts} are not 1..{len(counts)}: not saved from one clean top-to-bottom "
                f"run; re-run with jupyter nbconvert --to notebook --execute --inplace"]
    return []


def error_output_problems(notebook: dict) -> list[str]:
    problems = []
    for number, cell in enumerate(code_cells(notebook), start=1):
        for output in cell.get("outputs", []):
            if output["output_type"] == "error":
                problems.append(f"code cell {number}: error output {output.get('ename')}: {output.get('evalue')}")
            elif output["output_type"] == "stream" and "Traceback (most recent call last)" in joined(output["text"]):
                problems.append(f"code cell {number}: a traceback was printed")
    return problems


def absolute_path_problems(notebook: dict) -> list[str]:
    problems = []
    for number, cell in enumerate(notebook["cells"], start=1):
        for text in [joined(cell["source"])] + list(output_texts(cell)):
            for match in ABSOLUTE_PATH.finditer(text):
                problems.append(
                    f"cell {number}: absolute path {text[match.start():match.start() + 60]!r}; print paths "
                    f"relative to the repository or the data folder"
                )
    return problems


def machine_specific_output_problems(notebook: dict) -> list[str]:
    problems = []
    for number, cell in enumerate(code_cells(notebook), start=1):
        for text in output_texts(cell):
            problems += [f"code cell {number}: memory address {match.group()!r} in an output"
                         for match in MEMORY_ADDRESS.finditer(text)]
        if _output_ignored_by_nbval(cell):
            continue  # an interactive widget on purpose, whose output nbval does not compare
        for output in cell.get("outputs", []):
            if WIDGET_MIME_TYPE in output.get("data", {}):
                problems.append(f"code cell {number}: a widget (a progress bar?) was saved; pass progress=False, "
                                f"or mark an interactive cell with # NBVAL_IGNORE_OUTPUT")
    return problems


def _output_ignored_by_nbval(cell: dict) -> bool:
    source = joined(cell["source"])
    tags = cell.get("metadata", {}).get("tags", [])
    return "# NBVAL_IGNORE_OUTPUT" in source or "nbval-ignore-output" in tags


def colab_badge_problems(notebook: dict, file_name: str) -> list[str]:
    first_cell = joined(notebook["cells"][0]["source"]) if notebook["cells"] else ""
    if "colab-badge.svg" not in first_cell:
        return ["the first cell has no Open in Colab badge"]
    if f"/blob/main/notebooks/{file_name})" not in first_cell:
        return [f"the Colab badge does not link to notebooks/{file_name}"]
    return []


# The committed notebooks -------------------------------------------------------------------


requires_notebooks = pytest.mark.skipif(not NOTEBOOKS, reason="no notebook is committed yet")
each_notebook = pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)


@requires_notebooks
@each_notebook
def test_execution_counts_in_order(path):
    assert execution_count_problems(load_notebook(path)) == []


@requires_notebooks
@each_notebook
def test_no_error_outputs(path):
    assert error_output_problems(load_notebook(path)) == []


@requires_notebooks
@each_notebook
def test_no_absolute_paths(path):
    assert absolute_path_problems(load_notebook(path)) == []


@requires_notebooks
@each_notebook
def test_no_machine_specific_outputs(path):
    assert machine_specific_output_problems(load_notebook(path)) == []


@requires_notebooks
@each_notebook
def test_colab_badge_names_notebook(path):
    assert colab_badge_problems(load_notebook(path), path.name) == []


def test_notebook_names_numbered():
    for path in NOTEBOOKS:
        assert re.fullmatch(r"\d\d_[a-z0-9_]+\.ipynb", path.name), f"{path.name} is not named NN_name.ipynb"


def test_make_test_runs_nbval_strict():
    """``make test`` compares every output (``--nbval``), not only errors (``--nbval-lax``)."""
    makefile = (REPOSITORY / "Makefile").read_text(encoding="utf-8")
    test_recipe = makefile.split("\ntest:", 1)[1].split("\n\n", 1)[0]

    assert "--nbval notebooks" in test_recipe
    assert "--nbval-lax" not in test_recipe


# The checks find planted faults ------------------------------------------------------------


def _faulty_notebook() -> dict:
    badge = ("[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
             "(https://colab.research.google.com/github/i0t-course/i0t-course/blob/main/notebooks/02_other.ipynb)")
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_markdown_cell("# Title\n" + badge),
        nbformat.v4.new_code_cell("pack = load_pack('/home/alice/pack.npz')", execution_count=2, outputs=[
            nbformat.v4.new_output("stream", name="stdout", text="saved to C:\\Users\\alice\\out.npz\n"),
        ]),
        nbformat.v4.new_code_cell("print(model)", execution_count=1, outputs=[
            nbformat.v4.new_output("execute_result", data={"text/plain": "<Model object at 0x7f3a2b1c0d90>"},
                                   execution_count=1),
            nbformat.v4.new_output("display_data", data={WIDGET_MIME_TYPE: {"model_id": "abc"}}),
        ]),
        nbformat.v4.new_code_cell("1 / 0", execution_count=3, outputs=[
            nbformat.v4.new_output("error", ename="ZeroDivisionError", evalue="division by zero", traceback=[]),
        ]),
        nbformat.v4.new_code_cell("x = 1"),
    ]
    return json.loads(nbformat.writes(notebook))


def _clean_notebook() -> dict:
    badge = ("[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
             "(https://colab.research.google.com/github/i0t-course/i0t-course/blob/main/notebooks/01_x.ipynb)")
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_markdown_cell("# Title\n" + badge + "\nSee https://example.org/home/page and data/packs/."),
        nbformat.v4.new_code_cell("print(1 / 2)", execution_count=1, outputs=[
            nbformat.v4.new_output("stream", name="stdout", text="0.5 and 0x1f\n"),
        ]),
        nbformat.v4.new_code_cell("x = 1", execution_count=2),
        nbformat.v4.new_code_cell("# NBVAL_IGNORE_OUTPUT\nexplorer()", execution_count=3, outputs=[
            nbformat.v4.new_output("display_data", data={WIDGET_MIME_TYPE: {"model_id": "abc"}}),
        ]),
    ]
    return json.loads(nbformat.writes(notebook))


def test_checks_find_planted_faults():
    notebook = _faulty_notebook()

    assert len(execution_count_problems(notebook)) == 1
    assert len(error_output_problems(notebook)) == 1
    assert len(absolute_path_problems(notebook)) == 2
    assert len(machine_specific_output_problems(notebook)) == 2
    assert colab_badge_problems(notebook, "01_x.ipynb") == ["the Colab badge does not link to notebooks/01_x.ipynb"]


def test_checks_pass_clean_notebook():
    notebook = _clean_notebook()

    assert execution_count_problems(notebook) == []
    assert error_output_problems(notebook) == []
    assert absolute_path_problems(notebook) == []
    assert machine_specific_output_problems(notebook) == []
    assert colab_badge_problems(notebook, "01_x.ipynb") == []

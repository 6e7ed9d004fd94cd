"""Every subcommand on bad files and bad options: exit status 2 and one ``error:`` line, never a traceback.

Subcommands that read embeddings through the shared ``IMAGES.npy TEXTS.npy`` /
``--pack`` arguments are found from the parser, so a new one is covered by the
file tables below without edits. The others have their own cases, and
:func:`test_every_subcommand_covered` fails when a subcommand has none.
Files holding pickles carry a payload that would create a marker file if it were
ever unpickled, so the tests also show that no code runs from a data file.
"""

from __future__ import annotations

import logging
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from i0t_helpers.cli import build_parser, main

REPOSITORY = Path(__file__).resolve().parent.parent
#: Eight rows of dimension 8: enough for diagnose's default of five peak dimensions.
N_ROWS, DIM = 8, 8


def subcommand_parsers() -> dict:
    parser = build_parser()
    subparsers = next(action for action in parser._actions if action.dest == "command")
    return dict(subparsers.choices)


def argument_names(parser) -> set[str]:
    return {action.dest for action in parser._actions}


SUBCOMMANDS = subcommand_parsers()
#: Subcommands whose input is a required ``--pack``.
PACK_COMMANDS = sorted(name for name, parser in SUBCOMMANDS.items()
                       if any(action.dest == "pack" and action.required for action in parser._actions))
#: Subcommands taking ``IMAGES.npy TEXTS.npy`` or ``--pack``.
EMBEDDING_COMMANDS = sorted(name for name, parser in SUBCOMMANDS.items()
                            if {"images", "texts", "pack"} <= argument_names(parser)
                            and not any(action.required for action in parser._actions if action.option_strings))


def run_cli(capsys, *arguments) -> tuple[int, str, str]:
    """Run the command line in this process; a ``SystemExit`` (from argparse or parser.exit) gives the status."""
    try:
        status = main([str(argument) for argument in arguments])
    except SystemExit as exit_request:
        status = exit_request.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_one_error_line(status: int, err: str, *fragments: str):
    """Exit status 2 and exactly one line on standard error, starting ``error:`` and containing ``fragments``."""
    lines = err.strip().splitlines()
    assert status == 2, err
    assert len(lines) == 1, f"expected one line on standard error, got:\n{err}"
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment.lower() in lines[0].lower(), f"{fragment!r} not in {lines[0]!r}"


class _Unpickled:
    """Creates ``marker`` when unpickled: proof that a file's pickle was executed."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def unit_rows(rows: int, dim: int, seed: int) -> np.ndarray:
    values = np.random.default_rng(seed).normal(size=(rows, dim))
    return (values / np.linalg.norm(values, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Good and bad embedding files, keyed by kind, plus the marker that a pickle payload would create."""
    folder = tmp_path_factory.mktemp("cli_files")
    marker = folder / "pickle_was_executed"
    paths = {"marker": marker}

    def save(name: str, array, allow_pickle: bool = False) -> Path:
        path = folder / f"{name}.npy"
        np.save(path, array, allow_pickle=allow_pickle)
        return path

    def write(name: str, data: bytes) -> Path:
        path = folder / name
        path.write_bytes(data)
        return path

    paths["images"] = save("images", unit_rows(N_ROWS, DIM, 0))
    paths["texts"] = save("texts", unit_rows(N_ROWS, DIM, 1))

    payload = _Unpickled(marker)
    zero_row = unit_rows(N_ROWS, DIM, 2)
    zero_row[3] = 0.0
    with_nan = unit_rows(N_ROWS, DIM, 3)
    with_nan[2, 1] = np.nan
    good_npy = paths["images"].read_bytes()
    paths["bad npy"] = {
        "missing file": (folder / "absent.npy", "not found"),
        "directory": (folder, "not found"),
        "empty file": (write("empty.npy", b""), "not a .npy file"),
        "CSV text": (write("table.npy", b"a,b\n1,2\n"), "not a .npy file"),
        "raw pickle": (write("raw_pickle.npy", pickle.dumps(payload)), "not a .npy file"),
        "pickled object array": (save("objects", np.array([payload, payload], dtype=object), allow_pickle=True),
                                 "pickled Python objects"),
        "npz archive": (write("archive.npy", _npz_bytes(folder, images=unit_rows(2, DIM, 0))), "--pack"),
        "truncated": (write("truncated.npy", good_npy[:len(good_npy) - 40]), "not a readable .npy file"),
        "1-D": (save("one_d", unit_rows(1, DIM, 0)[0]), "1-D array"),
        "3-D": (save("three_d", unit_rows(N_ROWS, DIM, 0)[None]), "3-D array"),
        "int dtype": (save("ints", np.ones((N_ROWS, DIM), dtype=np.int64)), "floating-point"),
        "strings": (save("strings", np.full((N_ROWS, DIM), "0.5")), "floating-point"),
        "NaN": (save("nan", with_nan), "NaN"),
        "zero row": (save("zero_row", zero_row), "all-zero row"),
        "no rows": (save("no_rows", np.zeros((0, DIM), dtype=np.float32)), "has 0"),
        "fewer rows": (save("fewer_rows", unit_rows(N_ROWS - 1, DIM, 4)), "rows"),
        "other dimension": (save("other_dim", unit_rows(N_ROWS, DIM + 1, 5)), "dimension"),
    }
    paths["bad pack"] = {
        "missing file": (folder / "absent.npz", "not found"),
        "unknown name": ("startr", "unknown pack"),
        "not a zip": (write("garbage.npz", b"this is not an archive"), "pack"),
        "raw pickle": (write("pickle.npz", pickle.dumps(payload)), "pack"),
        "pickled object array": (write("objects.npz", _npz_bytes(
            folder, image_embeds=np.array([payload], dtype=object), text_embeds=unit_rows(1, DIM, 0))),
            "pickled objects"),
        "missing arrays": (write("partial.npz", _npz_bytes(folder, text_embeds=unit_rows(2, DIM, 0))),
                           "missing arrays"),
        "npy file": (paths["images"], "pack"),
    }
    return paths


def _npz_bytes(folder: Path, **arrays) -> bytes:
    path = folder / "scratch.npz"
    np.savez(path, **arrays)
    data = path.read_bytes()
    path.unlink()
    return data


NPY_KINDS = ["missing file", "directory", "empty file", "CSV text", "raw pickle", "pickled object array",
             "npz archive", "truncated", "1-D", "3-D", "int dtype", "strings", "NaN", "zero row", "no rows",
             "fewer rows", "other dimension"]
PACK_KINDS = ["missing file", "unknown name", "not a zip", "raw pickle", "pickled object array", "missing arrays",
              "npy file"]


# Commands that read embeddings -------------------------------------------------------------


def test_embedding_commands_found():
    assert {"gap", "diagnose"} <= set(EMBEDDING_COMMANDS)


@pytest.mark.parametrize("command", EMBEDDING_COMMANDS)
def test_embedding_command_accepts_good_files(command, files, capsys):
    status, out, err = run_cli(capsys, command, files["images"], files["texts"], "--json")

    assert status == 0, err
    assert out.strip().startswith("{")


@pytest.mark.parametrize("slot", ["images", "texts"])
@pytest.mark.parametrize("kind", NPY_KINDS)
@pytest.mark.parametrize("command", EMBEDDING_COMMANDS)
def test_bad_npy_file_one_line_error(command, kind, slot, files, capsys):
    bad_path, fragment = files["bad npy"][kind]
    arguments = [bad_path, files["texts"]] if slot == "images" else [files["images"], bad_path]

    status, _, err = run_cli(capsys, command, *arguments)

    assert_one_error_line(status, err, fragment)
    assert not files["marker"].exists(), "a pickle in a data file was executed"


@pytest.mark.parametrize("kind", PACK_KINDS)
@pytest.mark.parametrize("command", EMBEDDING_COMMANDS)
def test_bad_pack_one_line_error(command, kind, files, capsys):
    bad_pack, fragment = files["bad pack"][kind]

    status, _, err = run_cli(capsys, command, "--pack", bad_pack)

    assert_one_error_line(status, err, fragment)
    assert not files["marker"].exists(), "a pickle in a data file was executed"


@pytest.mark.parametrize("command", EMBEDDING_COMMANDS)
def test_embedding_command_argument_mistakes(command, files, capsys):
    cases = [
        ((), "give IMAGES.npy and TEXTS.npy"),
        ((files["images"],), "give IMAGES.npy and TEXTS.npy"),
        ((files["images"], files["texts"], "--pack", "starter"), "not both"),
    ]
    for arguments, fragment in cases:
        status, _, err = run_cli(capsys, command, *arguments)
        assert_one_error_line(status, err, fragment)


@pytest.mark.parametrize("command", EMBEDDING_COMMANDS)
def test_float16_files_coerced(command, files, tmp_path, capsys, caplog):
    """float16 embeddings are a documented coercion: upcast with a logged warning, then the normal output."""
    np.save(tmp_path / "images16.npy", np.load(files["images"]).astype(np.float16))

    with caplog.at_level(logging.WARNING):
        status, out, err = run_cli(capsys, command, tmp_path / "images16.npy", files["texts"], "--json")

    assert status == 0, err
    assert "float16; upcasting to float32" in caplog.text
    assert out.strip().startswith("{")


# Options of single commands -----------------------------------------------------------------


@pytest.mark.parametrize("arguments, fragment", [
    (("--fit-on", "0:4"), "--fit-on only applies with --post"),
    (("--post", "--fit-on", "abc"), "--fit-on must look like"),
    (("--post", "--fit-on", "4:2"), "selects no row"),
    (("--post", "--fit-on", "0:8"), "selects every row"),
    (("--post", "--fit-on", "1,99"), "outside"),
    (("--post", "--fit-on", "1:2:3"), "--fit-on must look like"),
])
def test_gap_bad_fit_on(arguments, fragment, files, capsys):
    status, _, err = run_cli(capsys, "gap", files["images"], files["texts"], *arguments)

    assert_one_error_line(status, err, fragment)


@pytest.mark.parametrize("top", ["0", "-1"])
def test_diagnose_bad_top(top, files, capsys):
    status, _, err = run_cli(capsys, "diagnose", files["images"], files["texts"], "--top", top)

    assert_one_error_line(status, err, "top")


@pytest.mark.parametrize("option, value", [("--top", "many"), ("--seed", "1.5")])
def test_option_type_errors_exit_2(option, value, files, capsys):
    command = "diagnose" if option == "--top" else "gap"

    with pytest.raises(SystemExit) as raised:
        main([command, str(files["images"]), str(files["texts"]), option, value])

    err = capsys.readouterr().err
    assert raised.value.code == 2
    assert "Traceback" not in err
    assert f"argument {option}: invalid int value" in err


# Score files ---------------------------------------------------------------------------------


SCORE_FILES = {
    "missing file": (None, "not found"),
    "directory": ("<dir>", "not found"),
    "empty file": ("", "empty"),
    "header only": ("image,caption_id,score\n", "no rows"),
    "missing column": ("image,score\n1.jpg,0.5\n", "caption_id"),
    "score not a number": ("image,caption_id,score\n1.jpg,1.jpg#0,high\n", "not a number"),
    "NaN score": ("image,caption_id,score\n1.jpg,1.jpg#0,nan\n", "NaN or infinite"),
    "infinite score": ("image,caption_id,score\n1.jpg,1.jpg#0,inf\n", "NaN or infinite"),
    "repeated pair": ("image,caption_id,score\n1.jpg,1.jpg#0,0.5\n1.jpg,1.jpg#0,0.6\n", "more than once"),
    "binary": (b"\x93NUMPY\x01\x00\xff\xfe\x00garbage", ""),
    "ragged rows": ("image,caption_id,score\n1.jpg,1.jpg#0,0.5,extra,more\n", ""),
}


@pytest.mark.parametrize("kind", sorted(SCORE_FILES))
def test_correlate_bad_score_file(kind, tmp_path, capsys):
    content, fragment = SCORE_FILES[kind]
    path = tmp_path / "scores.csv"
    if content == "<dir>":
        path = tmp_path
    elif content is not None:
        path.write_bytes(content if isinstance(content, bytes) else content.encode())

    status, _, err = run_cli(capsys, "correlate", "--dataset", "flickr8k-expert", "--scores", path)

    assert_one_error_line(status, err, fragment)


def test_correlate_negative_bootstrap(tmp_path, capsys):
    path = tmp_path / "scores.csv"
    path.write_text("image,caption_id,score\n1.jpg,1.jpg#0,0.5\n")

    status, _, err = run_cli(capsys, "correlate", "--dataset", "flickr8k-expert", "--scores", path,
                             "--bootstrap", "-5")

    assert_one_error_line(status, err, "--bootstrap")


# Commands reading a required --pack ---------------------------------------------------------


@pytest.fixture(scope="module")
def small_pack(tmp_path_factory) -> Path:
    from i0t_helpers import EmbeddingPack

    path = tmp_path_factory.mktemp("cli_pack") / "pack.npz"
    return EmbeddingPack(unit_rows(20, DIM, 6), unit_rows(20, DIM, 7), metadata={"model": "test"}).save(path)


def test_pack_commands_found():
    assert {"evaluate", "train-async"} <= set(PACK_COMMANDS)


@pytest.mark.parametrize("kind", PACK_KINDS)
@pytest.mark.parametrize("command", PACK_COMMANDS)
def test_pack_command_bad_pack(command, kind, files, capsys):
    bad_pack, fragment = files["bad pack"][kind]

    status, _, err = run_cli(capsys, command, "--pack", bad_pack)

    assert_one_error_line(status, err, fragment)
    assert not files["marker"].exists(), "a pickle in a data file was executed"


@pytest.mark.parametrize("ks", ["0", "a,b", "1,,5", "-1", ""])
def test_evaluate_bad_ks(ks, small_pack, capsys):
    status, _, err = run_cli(capsys, "evaluate", "--pack", small_pack, "--ks", ks)

    assert_one_error_line(status, err, "--ks must be comma-separated positive integers")


TRAIN_ASYNC_CASES = {
    "zero epochs": (("--epochs", "0"), "epochs must be at least 1"),
    "batch of zero": (("--batch-size", "0"), "batch_size must be at least"),
    "batch larger than the data": (("--batch-size", "64"), "no training batch"),
    "NaN learning rate": (("--lr", "nan"), "lr must be a positive finite number"),
    "negative learning rate": (("--lr", "-1"), "lr must be a positive finite number"),
    "negative warm-up": (("--warmup-steps", "-1"), "warmup_steps must be at least 0"),
    "overlapping rows": (("--train-rows", "0:10", "--eval-rows", "5:15"), "share 5 image row"),
    "no held-out rows": (("--train-rows", "0:1000"), "no held-out rows"),
    "malformed rows": (("--train-rows", "zero:ten"), "--train-rows must look like"),
    "rows outside the pack": (("--eval-rows", "5,99"), "outside"),
    "invalid device": (("--device", "bogus"), "device"),
}
TRAIN_ASYNC_GAPS: dict[str, str] = {}


@pytest.mark.parametrize("case", sorted(TRAIN_ASYNC_CASES))
def test_train_async_bad_options(case, small_pack, capsys, request):
    if case in TRAIN_ASYNC_GAPS:
        request.applymarker(pytest.mark.xfail(strict=True, raises=RuntimeError, reason=TRAIN_ASYNC_GAPS[case]))
    arguments, fragment = TRAIN_ASYNC_CASES[case]

    status, _, err = run_cli(capsys, "train-async", "--pack", small_pack, "--no-progress", *arguments)

    assert_one_error_line(status, err, fragment)


def test_heads_file_with_pickle_rejected(files, tmp_path):
    """I0T_async heads are loaded with weights_only=True: a pickle payload is refused, not run."""
    from i0t_helpers.async_heads import I0TAsyncHeads

    path = tmp_path / "heads.pt"
    torch = pytest.importorskip("torch")
    torch.save({"state_dict": _Unpickled(files["marker"])}, path)

    with pytest.raises(ValueError, match="weights_only=True"):
        I0TAsyncHeads.load(path)
    assert not files["marker"].exists()


def test_heads_file_of_other_model_rejected(tmp_path):
    from i0t_helpers.async_heads import I0TAsyncHeads

    path = I0TAsyncHeads.from_statistics(np.eye(4), np.eye(4), model_name="model-a").save(tmp_path / "heads.pt")

    with pytest.raises(ValueError, match="'model-a', not 'model-b'"):
        I0TAsyncHeads.load(path, model_name="model-b")
    with pytest.raises(ValueError, match="dimension 4, but dimension 8"):
        I0TAsyncHeads.load(path, embed_dim=8)


# encode --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def encode_inputs(tmp_path_factory, files):
    """A folder of three small images (one broken), caption files good and bad, and checkpoints from strangers."""
    from PIL import Image

    torch = pytest.importorskip("torch")
    folder = tmp_path_factory.mktemp("encode_inputs")
    images = folder / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for number in range(3):
        Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)).save(images / f"im{number}.png")
    (images / "broken.png").write_bytes(b"not a png")

    def write(name: str, text: str) -> Path:
        path = folder / name
        path.write_text(text)
        return path

    torch.save({"state_dict": _Unpickled(files["marker"])}, folder / "pickle_payload.pt")
    (folder / "garbage.pt").write_bytes(bytes(range(256)) * 8)
    return {
        "images": images,
        "captions": write("captions.tsv", "im0.png\ta red square\nim1.png\ta blue square\nim2.png\tnoise\n"),
        "broken image captions": write("broken.tsv", "im0.png\ta red square\nbroken.png\tnothing\n"),
        "missing image captions": write("missing.tsv", "im0.png\ta red square\nabsent.png\tnothing\n"),
        "CSV without caption column": write("captions.csv", "file,text\nim0.png,a red square\n"),
        "invalid JSON": write("captions.json", "{not json"),
        "empty captions": write("empty.tsv", ""),
        "pickle payload": folder / "pickle_payload.pt",
        "garbage checkpoint": folder / "garbage.pt",
        "out": folder / "out.npz",
    }


ENCODE_CASES = {
    "no inputs": (lambda paths: [], "give --images DIR_OR_LIST and --captions FILE, or --dataset"),
    "dataset and images": (lambda paths: ["--dataset", "flickr8k-test", "--images", paths["images"],
                                          "--captions", paths["captions"]], "not both"),
    "out not npz": (lambda paths: ["--images", paths["images"], "--captions", paths["captions"], "--out",
                                   paths["out"].with_suffix(".npy")], "--out must end in .npz"),
    "missing image folder": (lambda paths: ["--images", paths["images"] / "absent", "--captions",
                                            paths["captions"]], "not found"),
    "missing captions file": (lambda paths: ["--images", paths["images"], "--captions",
                                             paths["captions"].with_name("absent.tsv")], "not found"),
    "CSV without caption column": (lambda paths: ["--images", paths["images"], "--captions",
                                                  paths["CSV without caption column"]], "caption"),
    "invalid JSON": (lambda paths: ["--images", paths["images"], "--captions", paths["invalid JSON"]],
                     "not valid JSON"),
    "empty captions": (lambda paths: ["--images", paths["images"], "--captions", paths["empty captions"]],
                       "no captions"),
    "caption of a missing image": (lambda paths: ["--images", paths["images"], "--captions",
                                                  paths["missing image captions"]], "absent.png"),
    "broken image": (lambda paths: ["--images", paths["images"], "--captions", paths["broken image captions"]],
                     "broken.png"),
    "checkpoint with pickle payload": (lambda paths: ["--images", paths["images"], "--captions",
                                                      paths["captions"], "--pretrained", paths["pickle payload"]],
                                       "would run code"),
    "garbage checkpoint": (lambda paths: ["--images", paths["images"], "--captions", paths["captions"],
                                          "--pretrained", paths["garbage checkpoint"]], "checkpoint"),
    "unknown model": (lambda paths: ["--model", "no-such-model", "--images", paths["images"], "--captions",
                                     paths["captions"]], "no-such-model"),
}
ENCODE_GAPS: dict[str, str] = {}


@pytest.mark.parametrize("case", sorted(ENCODE_CASES))
def test_encode_bad_input(case, encode_inputs, files, capsys, request):
    if case in ENCODE_GAPS:
        request.applymarker(pytest.mark.xfail(strict=True, raises=RuntimeError, reason=ENCODE_GAPS[case]))
    build_arguments, fragment = ENCODE_CASES[case]
    arguments = build_arguments(encode_inputs)
    if "--model" not in arguments:
        arguments = ["--model", "i0t-tiny-vit", "--pretrained", "none"] + arguments
    if "--out" not in arguments:
        arguments += ["--out", encode_inputs["out"]]

    status, _, err = run_cli(capsys, "encode", "--no-cache", "--quiet", *arguments)

    assert_one_error_line(status, err, fragment)
    assert not encode_inputs["out"].exists(), "no pack may be written after an error"
    assert not files["marker"].exists(), "a pickle in a checkpoint was executed"


# Coverage and a real process -----------------------------------------------------------------


#: Subcommands with hand-written cases in this file, besides those found in EMBEDDING_COMMANDS and PACK_COMMANDS.
COVERED_SEPARATELY = {"correlate", "encode"}


def test_every_subcommand_covered():
    uncovered = set(SUBCOMMANDS) - set(EMBEDDING_COMMANDS) - set(PACK_COMMANDS) - COVERED_SEPARATELY
    assert not uncovered, f"add bad-input cases for the subcommands {sorted(uncovered)}"


@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
def test_subcommand_help(command, capsys):
    with pytest.raises(SystemExit) as raised:
        main([command, "--help"])

    assert raised.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_command_line_process_one_line(files):
    """The installed entry point, in its own process: exit status 2, one line, no traceback."""
    bad_path = files["bad npy"]["pickled object array"][0]

    completed = subprocess.run([sys.executable, "-m", "i0t_helpers", "gap", str(bad_path), str(files["texts"])],
                               capture_output=True, text=True, cwd=REPOSITORY, timeout=120)

    assert_one_error_line(completed.returncode, completed.stderr, "pickled Python objects")
    assert completed.stdout == ""
    assert not files["marker"].exists()

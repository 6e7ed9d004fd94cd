import json
import pickle
import subprocess
import sys

import numpy as np
import pytest

from i0t_helpers.cli import main

from .conftest import unit_rows


def run_cli(capsys, *arguments):
    status = main(list(arguments))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_gap_json_on_starter_pack(capsys, starter_pack):
    status, out, _ = run_cli(capsys, "gap", "--pack", "starter", "--post", "--json")
    result = json.loads(out)
    assert status == 0
    assert result["centroid_distance"] == pytest.approx(0.8514, abs=5e-4)
    assert result["post_centroid_distance"] == pytest.approx(0.0279, abs=5e-4)
    assert result["recall_at_1_i2t"] == pytest.approx(0.552)
    assert result["recall_at_1_t2i"] == pytest.approx(0.506)
    assert result["post_recall_at_1_i2t"] == pytest.approx(0.542)
    assert result["post_recall_at_1_t2i"] == pytest.approx(0.500)
    assert {"linear_separability", "post_linear_separability"} <= result.keys()


def test_gap_fit_on_reports_held_out_rows(capsys, starter_pack):
    status, out, _ = run_cli(capsys, "gap", "--pack", "starter", "--post", "--fit-on", "0:400", "--json")
    result = json.loads(out)
    assert status == 0
    assert result["n_images"] == 100
    assert result["centroid_distance"] == pytest.approx(0.869, abs=5e-4)
    assert result["post_centroid_distance"] == pytest.approx(0.158, abs=5e-4)


def test_gap_on_two_npy_files(capsys, tmp_path, gapped_embeddings):
    images, texts = gapped_embeddings
    np.save(tmp_path / "images.npy", images.astype(np.float32))
    np.save(tmp_path / "texts.npy", texts.astype(np.float32))
    status, out, _ = run_cli(capsys, "gap", str(tmp_path / "images.npy"), str(tmp_path / "texts.npy"), "--json")
    assert status == 0
    expected = np.linalg.norm(images.mean(0) - texts.mean(0))
    assert json.loads(out)["centroid_distance"] == pytest.approx(expected, abs=1e-6)


def test_gap_table_output(capsys, starter_pack):
    status, out, _ = run_cli(capsys, "gap", "--pack", "starter")
    assert status == 0
    assert "centroid_distance" in out
    assert "0.8514" in out


@pytest.fixture
def bad_files(tmp_path):
    good = unit_rows(np.random.default_rng(0).normal(size=(10, 4))).astype(np.float32)
    np.save(tmp_path / "good.npy", good)
    np.save(tmp_path / "good_8d.npy", unit_rows(np.ones((10, 8))).astype(np.float32))
    np.save(tmp_path / "short.npy", good[:5])
    np.save(tmp_path / "vector.npy", good[0])
    np.save(tmp_path / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    nan = good.copy()
    nan[3, 1] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    (tmp_path / "text.npy").write_text("hello")
    with open(tmp_path / "raw.pkl", "wb") as stream:
        pickle.dump(good, stream)
    return tmp_path


@pytest.mark.parametrize(
    "images, texts, fragment",
    [
        ("missing.npy", "good.npy", "not found"),
        ("pickled.npy", "good.npy", "pickled Python objects"),
        ("vector.npy", "good.npy", "1-D array"),
        ("good.npy", "short.npy", "10 rows but TEXTS has 5"),
        ("good.npy", "good_8d.npy", "same dimension"),
        ("nan.npy", "good.npy", "NaN"),
        ("text.npy", "good.npy", "not a .npy file"),
        ("raw.pkl", "good.npy", "not a .npy file"),
    ],
)
def test_gap_bad_files_exit_2_with_one_line(capsys, bad_files, images, texts, fragment):
    status, out, err = run_cli(capsys, "gap", str(bad_files / images), str(bad_files / texts))
    assert status == 2
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("error: ")
    assert fragment in err


def test_gap_fit_on_without_post_exits_2(capsys):
    status, _, err = run_cli(capsys, "gap", "--pack", "starter", "--fit-on", "0:10")
    assert status == 2
    assert "--fit-on only applies with --post" in err


def test_gap_bad_row_range_exits_2(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["gap", "--pack", "starter", "--post", "--fit-on", "abc"])
    assert exited.value.code == 2
    assert "must look like 0:400" in capsys.readouterr().err


def test_module_entry_point_runs():
    completed = subprocess.run([sys.executable, "-m", "i0t_helpers", "--help"], capture_output=True, text=True,
                               timeout=120)
    assert completed.returncode == 0
    assert "gap" in completed.stdout

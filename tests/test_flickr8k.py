"""Flickr8k-Expert and CF preparation on the real files, malformed lines, JSON exchange and the correlate command."""

import json
import logging

import numpy as np
import pandas as pd
import pytest
from scipy.stats import kendalltau, pearsonr

from i0t_helpers import cli
from i0t_helpers.download import DownloadError, fetch, is_present, resolve_data_dir, resolve_mirror, verify
from i0t_helpers.flickr8k import (
    CF_PAIRS,
    EXPERT_JUDGMENTS,
    EXPERT_PAIRS,
    EXPERT_RAW_PAIRS,
    N_TEST_IMAGES,
    HumanJudgments,
    align_pair_scores,
    find_cached_checkpoint,
    from_clipscore_json,
    load_flickr8k,
    missing_live_requirements,
    prepare_crowdflower,
    read_captions,
    read_clipscore_json,
    read_crowdflower_annotations,
    read_expert_annotations,
    read_pair_scores,
    read_test_images,
    score_pairs_with_model,
    to_clipscore_json,
    write_clipscore_json,
    write_pair_scores,
)


@pytest.fixture(scope="module")
def flickr8k_dir(tmp_path_factory):
    """A data folder holding the flickr8k-text files, fetched from the configured mirror when there is one."""
    mirror = resolve_mirror()
    if mirror is not None:
        data_dir = tmp_path_factory.mktemp("data")
        fetch("flickr8k-text", data_dir=data_dir, mirror=mirror, progressbar=False)
        return data_dir
    if is_present("flickr8k-text"):
        return resolve_data_dir()
    try:
        fetch("flickr8k-text", progressbar=False)
    except DownloadError as error:
        pytest.skip(f"the Flickr8k text files are not available offline: {error}")
    return resolve_data_dir()


@pytest.fixture(scope="module")
def expert(flickr8k_dir):
    return load_flickr8k("flickr8k-expert", data_dir=flickr8k_dir, download=False)


@pytest.fixture(scope="module")
def crowdflower(flickr8k_dir):
    return load_flickr8k("flickr8k-cf", data_dir=flickr8k_dir, download=False)


def run_cli(*arguments):
    return cli.main(list(arguments))


# Fetching and counts --------------------------------------------------------------------------


def test_fetch_from_mirror_verifies_every_file(flickr8k_dir):
    status = verify("flickr8k-text", data_dir=flickr8k_dir)
    assert set(status.values()) == {"ok"}
    assert len(status) == 5


def test_expert_counts(expert):
    assert expert.n_raw_pairs == EXPERT_RAW_PAIRS == 5822
    assert expert.n_pairs == EXPERT_PAIRS == 5664
    assert expert.n_judgments == EXPERT_JUDGMENTS == 16992
    assert expert.n_images == N_TEST_IMAGES == 1000
    assert expert.n_dropped_pairs == 158
    assert len(expert.dropped_pairs) == 158
    assert expert.n_malformed_lines == 0
    assert expert.tau_variant == "c"


def test_cf_counts(crowdflower):
    assert crowdflower.n_pairs == CF_PAIRS == 47830
    assert crowdflower.n_judgments == 47830
    assert crowdflower.n_images == 1000
    assert crowdflower.n_dropped_pairs == 0
    assert crowdflower.n_malformed_lines == 0
    assert crowdflower.tau_variant == "b"


def test_images_are_the_test_split(expert, crowdflower, flickr8k_dir):
    test_images = set(read_test_images(flickr8k_dir / "flickr8k" / "Flickr_8k.testImages.txt"))
    assert len(test_images) == 1000
    assert set(expert.images) == test_images
    assert set(crowdflower.images) == test_images


def test_expert_drops_only_candidates_that_are_references(expert, flickr8k_dir):
    captions = read_captions(flickr8k_dir / "flickr8k" / "Flickr8k.token.txt")
    for image, candidate, references in zip(expert.pairs["image"], expert.pairs["candidate"],
                                            expert.pair_references()):
        assert candidate not in references
        assert references == captions.by_image[image]
        assert len(references) == 5
    for image, caption_id in expert.dropped_pairs.itertuples(index=False):
        assert captions.by_id[caption_id] in captions.by_image[image]


def test_expert_ratings_are_three_per_pair(expert, flickr8k_dir):
    raw = read_expert_annotations(flickr8k_dir / "flickr8k" / "ExpertAnnotations.txt")
    assert np.bincount(expert.judgment_pair_index).tolist() == [3] * 5664
    assert set(np.unique(expert.ratings)) == {1.0, 2.0, 3.0, 4.0}
    first = raw.merge(expert.pairs.iloc[[0]], on=["image", "caption_id"])
    np.testing.assert_array_equal(expert.ratings[:3], first[["expert_1", "expert_2", "expert_3"]].to_numpy()[0])


def test_cf_references_lose_the_candidate(crowdflower, flickr8k_dir):
    from collections import Counter

    captions = read_captions(flickr8k_dir / "flickr8k" / "Flickr8k.token.txt")
    removed_total = 0
    for image, group in crowdflower.pairs.groupby("image"):
        original = Counter(captions.by_image[image])
        candidates = Counter(group["candidate"])
        removed = original - Counter(crowdflower.references[image])
        # list.remove takes out one equal caption per candidate, as long as one is left.
        assert removed == Counter({text: min(count, original[text]) for text, count in candidates.items()
                                   if text in original})
        removed_total += sum(removed.values())
    assert removed_total == crowdflower.notes["references_removed_because_candidate_is_a_reference"] == 723
    own = crowdflower.pairs[crowdflower.pairs["caption_id"].str.split("#").str[0] == crowdflower.pairs["image"]]
    assert len(own) == 721
    assert crowdflower.ratings.min() == 0.0
    assert crowdflower.ratings.max() == 1.0


# Malformed lines ------------------------------------------------------------------------------


def test_cf_malformed_lines_skipped_and_counted(tmp_path, flickr8k_dir, caplog):
    lines = (flickr8k_dir / "flickr8k" / "CrowdFlowerAnnotations.txt").read_text().splitlines()
    damaged = lines[:10] + [
        "only\ttwo",
        "img.jpg\tother.jpg#1\t0.5\t3\t0",  # fraction disagrees with the counts
        "img.jpg\tother.jpg#2\tmany\t1\t2",  # not a number
        "img.jpg\tother.jpg#3\t0\t0\t0",  # no votes
        "",
        lines[3],  # repeated pair
    ] + lines[10:20]
    path = tmp_path / "CrowdFlowerAnnotations.txt"
    path.write_text("\n".join(damaged) + "\n")
    with caplog.at_level(logging.WARNING):
        frame = read_crowdflower_annotations(path)
    assert len(frame) == 20
    assert frame.attrs["n_malformed_lines"] == 5
    assert "skipped 5 malformed line(s)" in caplog.text
    assert "line 11" in caplog.text

    captions = read_captions(flickr8k_dir / "flickr8k" / "Flickr8k.token.txt")
    judgments = prepare_crowdflower(frame, captions, check_counts=False)
    assert judgments.n_pairs == 20
    assert judgments.n_malformed_lines == 5


def test_expert_and_token_malformed_lines(tmp_path, caplog):
    expert_path = tmp_path / "ExpertAnnotations.txt"
    expert_path.write_text("a.jpg\tb.jpg#0\t1\t2\t3\na.jpg\tb.jpg#1\t1\t5\t3\na.jpg\tb.jpg#2\t1\t2\n")
    frame = read_expert_annotations(expert_path)
    assert len(frame) == 1
    assert frame.attrs["n_malformed_lines"] == 2
    token_path = tmp_path / "Flickr8k.token.txt"
    token_path.write_text("a.jpg#0\ta dog\nno tab here\nb.jpg\ta cat\na.jpg#1\t \na.jpg#0\trepeat\n")
    captions = read_captions(token_path)
    assert captions.by_image == {"a.jpg": ["a dog"]}
    assert captions.n_malformed_lines == 4
    assert "skipped 4 malformed line(s)" in caplog.text


def test_missing_raw_file_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="data_download.py get flickr8k-text"):
        read_captions(tmp_path / "Flickr8k.token.txt")


def test_token_file_quirk_maps_to_image_name(tmp_path):
    path = tmp_path / "Flickr8k.token.txt"
    path.write_text("2258277193_586949ec62.jpg.1#0\tpeople waiting for the subway\n")
    captions = read_captions(path)
    assert captions.by_image == {"2258277193_586949ec62.jpg": ["people waiting for the subway"]}
    assert "2258277193_586949ec62.jpg.1#0" in captions.by_id


# CLIPScore / PAC-S JSON -----------------------------------------------------------------------


def test_expert_json_round_trip(expert, tmp_path):
    path = write_clipscore_json(expert, tmp_path / "flickr8k.json")
    data = json.loads(path.read_text())
    assert len(data) == 1000
    key, entry = next(iter(data.items()))
    assert not key.endswith(".jpg")
    assert entry["image_path"] == f"Flicker8k_Dataset/{key}.jpg"
    assert sum(len(value["human_judgement"]) for value in data.values()) == 16992
    assert {"caption", "rating", "image_id", "image_path"} <= set(entry["human_judgement"][0])

    restored = read_clipscore_json(path, "flickr8k-expert")
    assert restored.n_pairs == 5664
    assert restored.n_judgments == 16992
    assert restored.tau_variant == "c"
    pd.testing.assert_frame_equal(restored.pairs.sort_values(["image", "caption_id"]).reset_index(drop=True),
                                  expert.pairs.sort_values(["image", "caption_id"]).reset_index(drop=True))
    assert restored.references == expert.references
    original = expert.judgment_frame().sort_values(["image", "caption_id"], kind="stable")["rating"].to_numpy()
    again = restored.judgment_frame().sort_values(["image", "caption_id"], kind="stable")["rating"].to_numpy()
    np.testing.assert_array_equal(original, again)


def test_json_with_caption_ids_in_any_order(expert):
    data = to_clipscore_json(expert.subset_images(expert.images[:5]))
    for entry in data.values():
        entry["human_judgement"].reverse()
    restored = from_clipscore_json(data, "flickr8k-expert")
    assert restored.n_pairs == expert.subset_images(expert.images[:5]).n_pairs
    assert np.bincount(restored.judgment_pair_index).tolist() == [3] * restored.n_pairs
    with pytest.raises(ValueError, match="lacks a numeric rating"):
        from_clipscore_json({"k": {"image_path": "a.jpg", "ground_truth": [], "human_judgement": [{"rating": 1}]}},
                            "flickr8k-expert")


def test_cf_json_keys_keep_extension(crowdflower):
    data = to_clipscore_json(crowdflower)
    assert all(key.endswith(".jpg") for key in data)
    assert sum(len(value["human_judgement"]) for value in data.values()) == 47830


def test_json_without_caption_ids_groups_consecutive_ratings():
    data = {"img1": {"image_path": "Flicker8k_Dataset/img1.jpg", "ground_truth": ["a dog"],
                     "human_judgement": [{"caption": "a cat", "rating": 1.0}, {"caption": "a cat", "rating": 2.0},
                                         {"caption": "a dog runs", "rating": 4.0},
                                         {"caption": "a dog runs", "rating": float("nan")}]}}
    judgments = from_clipscore_json(data, "flickr8k-expert")
    assert judgments.n_pairs == 2
    assert judgments.n_judgments == 3
    assert judgments.judgment_pair_index.tolist() == [0, 0, 1]
    assert judgments.pairs["image"].tolist() == ["img1.jpg", "img1.jpg"]
    with pytest.raises(ValueError, match="lacks image_path"):
        from_clipscore_json({"img1": {"ground_truth": []}}, "flickr8k-expert")


# Score files and the correlate command --------------------------------------------------------


def tied_scores(n, seed=0):
    return np.random.default_rng(seed).integers(0, 12, size=n) / 11.0


@pytest.mark.parametrize("name", ["flickr8k-expert", "flickr8k-cf"])
def test_correlate_reproduces_scipy_exactly(name, expert, crowdflower, flickr8k_dir, tmp_path, capsys):
    judgments = expert if name == "flickr8k-expert" else crowdflower
    scores = tied_scores(judgments.n_pairs)
    path = write_pair_scores(judgments, scores, tmp_path / "scores.csv")
    shuffled = pd.read_csv(path).sample(frac=1.0, random_state=0)
    shuffled.to_csv(path, index=False, float_format="%.17g")

    assert run_cli("correlate", "--dataset", name, "--scores", str(path), "--json",
                   "--data-dir", str(flickr8k_dir)) == 0
    result = json.loads(capsys.readouterr().out)
    repeated = scores[judgments.judgment_pair_index]
    assert result["kendall_tau_b"] == kendalltau(repeated, judgments.ratings, variant="b").statistic
    assert result["kendall_tau_c"] == kendalltau(repeated, judgments.ratings, variant="c").statistic
    assert result["pearson"] == pytest.approx(pearsonr(repeated, judgments.ratings).statistic, abs=1e-15)
    assert result["n_pairs"] == judgments.n_pairs
    assert result["n_judgments"] == judgments.n_judgments


def test_correlate_table_names_variants(expert, flickr8k_dir, tmp_path, capsys):
    path = write_pair_scores(expert, tied_scores(expert.n_pairs), tmp_path / "scores.csv")
    assert run_cli("correlate", "--dataset", "flickr8k-expert", "--scores", str(path),
                   "--data-dir", str(flickr8k_dir)) == 0
    out = capsys.readouterr().out
    assert "Kendall tau-b" in out
    assert "Kendall tau-c (convention)" in out
    assert "Pearson r" in out
    assert "pairs: 5664" in out
    assert "judgments: 16992" in out


def test_correlate_ignores_pairs_the_preparation_dropped(expert, flickr8k_dir, tmp_path, capsys, caplog):
    scores = tied_scores(expert.n_pairs)
    frame = expert.pairs[["image", "caption_id"]].assign(score=scores)
    extra = expert.dropped_pairs.assign(score=0.5)
    path = tmp_path / "all_raw_pairs.csv"
    pd.concat([frame, extra]).to_csv(path, index=False, float_format="%.17g")
    assert run_cli("correlate", "--dataset", "flickr8k-expert", "--scores", str(path), "--json",
                   "--data-dir", str(flickr8k_dir)) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n_pairs"] == 5664
    assert result["kendall_tau_c"] == kendalltau(scores[expert.judgment_pair_index], expert.ratings,
                                                 variant="c").statistic
    assert "ignoring 158 scored pair(s)" in caplog.text


def write_rows(path, rows, header="image,caption_id,score"):
    path.write_text(header + "\n" + "".join(f"{row}\n" for row in rows))
    return path


@pytest.mark.parametrize("case, message", [
    ("missing", "misses 1 of the 5664 judged pairs"),
    ("unknown", "2 scored pair(s) are not judged pairs"),
    ("nan", "NaN or infinite (lines 3)"),
    ("duplicate", "appear more than once"),
    ("empty", "is empty"),
    ("header_only", "has a header but no rows"),
    ("no_score_column", "lacks the column(s) score"),
    ("text_score", "not a number"),
])
def test_correlate_errors(case, message, expert, flickr8k_dir, tmp_path, capsys):
    rows = [f"{image},{caption_id},{float(score)!r}" for (image, caption_id), score in
            zip(expert.pairs[["image", "caption_id"]].itertuples(index=False), tied_scores(expert.n_pairs))]
    path = tmp_path / "scores.csv"
    if case == "missing":
        write_rows(path, rows[1:])
    elif case == "unknown":
        write_rows(path, rows + ["nowhere.jpg,nowhere.jpg#0,0.1", "nowhere.jpg,nowhere.jpg#1,0.2"])
    elif case == "nan":
        rows[1] = rows[1].rsplit(",", 1)[0] + ",nan"
        write_rows(path, rows)
    elif case == "duplicate":
        write_rows(path, rows + [rows[0]])
    elif case == "empty":
        path.write_text("")
    elif case == "header_only":
        write_rows(path, [])
    elif case == "no_score_column":
        write_rows(path, [row.rsplit(",", 1)[0] for row in rows], header="image,caption_id")
    elif case == "text_score":
        rows[4] = rows[4].rsplit(",", 1)[0] + ",high"
        write_rows(path, rows)
    status = run_cli("correlate", "--dataset", "flickr8k-expert", "--scores", str(path),
                     "--data-dir", str(flickr8k_dir))
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("error: ")
    assert message in err
    if case == "missing":
        assert "1056338697_4f7d7ce270.jpg / 2549968784_39bfbe44f9.jpg#2" in err
    if case == "unknown":
        assert "nowhere.jpg / nowhere.jpg#0" in err


def test_correlate_missing_file(flickr8k_dir, tmp_path, capsys):
    assert run_cli("correlate", "--dataset", "flickr8k-cf", "--scores", str(tmp_path / "none.csv"),
                   "--data-dir", str(flickr8k_dir)) == 2
    assert "score file not found" in capsys.readouterr().err


def test_align_pair_scores_orders_by_pairs(expert):
    frame = expert.pairs[["image", "caption_id"]].assign(score=np.arange(expert.n_pairs, dtype=float))
    aligned = align_pair_scores(expert, frame.iloc[::-1])
    np.testing.assert_array_equal(aligned, np.arange(expert.n_pairs))


def test_read_pair_scores_types(tmp_path):
    path = write_rows(tmp_path / "s.csv", ["a.jpg,b.jpg#0,1", "a.jpg,b.jpg#1,0.25"])
    frame = read_pair_scores(path)
    assert frame["score"].dtype == np.float64
    assert frame["caption_id"].tolist() == ["b.jpg#0", "b.jpg#1"]


# Judgment helpers and the live path -----------------------------------------------------------


def test_judgments_validate_and_subset(expert):
    subset = expert.subset_images(expert.images[:3])
    assert subset.n_images == 3
    assert subset.n_judgments == 3 * subset.n_pairs
    ratings = subset.judgment_frame().groupby(["image", "caption_id"])["rating"].apply(sorted)
    original = expert.judgment_frame().groupby(["image", "caption_id"])["rating"].apply(sorted)
    assert ratings.to_dict() == original.loc[ratings.index].to_dict()
    with pytest.raises(ValueError, match="repeat"):
        HumanJudgments("x", pd.concat([subset.pairs, subset.pairs]), subset.references, [0], [1.0])
    with pytest.raises(ValueError, match="no judged pair"):
        expert.subset_images(["nowhere.jpg"])


def test_correlate_method_uses_convention(expert):
    scores = tied_scores(expert.n_pairs)
    result = expert.correlate(scores)
    assert result.conventional_variant == "c"
    assert result.conventional_tau == kendalltau(scores[expert.judgment_pair_index], expert.ratings,
                                                 variant="c").statistic


def test_live_requirements_are_checked_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert find_cached_checkpoint("ViT-B-32", str(tmp_path / "missing.pt")) is None
    checkpoint = tmp_path / "weights.pt"
    checkpoint.write_bytes(b"0")
    assert find_cached_checkpoint("ViT-B-32", str(checkpoint)) == checkpoint
    missing = missing_live_requirements(["a.jpg"], data_dir=tmp_path, pretrained=str(checkpoint))
    assert len(missing) == 1
    assert "1 of 1" in missing[0]
    assert str(tmp_path) not in missing[0]


def test_score_pairs_with_tiny_model(expert, tmp_path):
    from PIL import Image

    from i0t_helpers.caption_metrics import clip_score, encode_captions, encode_images, i0t_score
    from i0t_helpers.models import create_tiny_model

    subset = expert.subset_images(expert.images[:4])
    for number, image in enumerate(subset.images):
        Image.fromarray(np.full((48, 64, 3), 40 * number, dtype=np.uint8)).save(tmp_path / image)
    model, preprocess, tokenizer = create_tiny_model(seed=0)
    scored = score_pairs_with_model(subset, model, preprocess, tokenizer, tmp_path, progress=False)
    assert list(scored.columns[-3:]) == ["clip_s", "ref_clip_s", "i0t_s"]
    assert len(scored) == subset.n_pairs

    images = encode_images(model, preprocess, [tmp_path / image for image in subset.images], progress=False)
    captions = encode_captions(model, tokenizer, subset.pairs["candidate"].tolist(), progress=False)
    rows = subset.pairs["image"].map({image: row for row, image in enumerate(subset.images)}).to_numpy()
    np.testing.assert_allclose(scored["clip_s"], clip_score(images, captions, rows), atol=1e-5)
    np.testing.assert_allclose(scored["i0t_s"], i0t_score(images, captions, rows), atol=1e-5)
    assert (scored["ref_clip_s"] >= 0).all()

    with pytest.raises(FileNotFoundError, match="missing"):
        score_pairs_with_model(subset, model, preprocess, tokenizer, tmp_path / "empty", progress=False)



def test_length_exercise_checker(expert):
    from i0t_helpers.exercises import nb05

    lengths = expert.pairs["candidate"].str.split().str.len().to_numpy(dtype=float)
    tau_c = kendalltau(lengths[expert.judgment_pair_index], expert.ratings, variant="c").statistic
    assert nb05.check_length_baseline_tau(round(tau_c, 3), expert)
    assert not nb05.check_length_baseline_tau(round(-tau_c, 3), expert)

"""The checkers of notebooks 01 and 03 accept the right answer and reject a wrong one."""

import numpy as np
import pytest

from i0t_helpers.exercises import nb01, nb03
from i0t_helpers.experiments import compare_fit_sources
from i0t_helpers.metrics import centroid_distance


def test_nb01_matched_cosine(starter_pack, capsys):
    images, texts = starter_pack.paired()
    answer = round(float(np.mean(np.sum(images * texts, axis=1))), 3)
    assert nb01.check_matched_cosine(answer, starter_pack)
    assert not nb01.check_matched_cosine(answer + 0.01, starter_pack)
    assert not nb01.check_matched_cosine(None, starter_pack)
    assert "Hint" in capsys.readouterr().out


def test_nb01_half_gap(starter_pack):
    half = starter_pack.subset(slice(0, 250))
    assert nb01.check_half_gap(round(centroid_distance(half.image_embeds, half.text_embeds), 3), starter_pack)


def test_nb01_best_shift_lambda(starter_pack):
    assert nb01.check_best_shift_lambda(0.0, starter_pack)
    assert not nb01.check_best_shift_lambda(1.0, starter_pack)


def test_nb03_smallest_good_sample(starter_pack):
    assert nb03.check_smallest_good_sample(128, starter_pack)
    assert not nb03.check_smallest_good_sample(64, starter_pack)


def test_nb03_reversed_split(starter_pack):
    table = compare_fit_sources(starter_pack, slice(400, 500), slice(0, 400))
    answer = round(float(table.loc["I0T_post, means from fitting rows", "centroid_distance"]), 3)
    assert nb03.check_reversed_split(answer, starter_pack)


@pytest.mark.parametrize("answer", ["abc", [1, 2], float("nan")])
def test_checkers_reject_non_numbers(starter_pack, answer):
    assert not nb03.check_gap_after_post_on_texts_only(answer, starter_pack)

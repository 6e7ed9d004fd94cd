import numpy as np
import pytest

from i0t_helpers.embeddings import EmbeddingPack
from i0t_helpers.experiments import compare_fit_sources, evaluate_embeddings, sample_size_curve, shift_sweep
from i0t_helpers.metrics import centroid_distance
from i0t_helpers.post import I0TPost


@pytest.fixture
def toy_pack(gapped_embeddings):
    return EmbeddingPack(*gapped_embeddings)


def test_sample_size_curve_full_size_equals_fit_on_all(toy_pack):
    curve = sample_size_curve(toy_pack, [10, 60])
    full = I0TPost().fit(toy_pack.image_embeds, toy_pack.text_embeds).transform(toy_pack.image_embeds,
                                                                               toy_pack.text_embeds)
    assert list(curve["method"]) == ["raw", "I0T_post", "I0T_post"]
    assert curve.iloc[2]["centroid_distance"] == pytest.approx(centroid_distance(*full))
    assert curve.iloc[0]["centroid_distance"] == pytest.approx(centroid_distance(toy_pack.image_embeds,
                                                                                 toy_pack.text_embeds))


def test_sample_size_curve_rejects_oversized(toy_pack):
    with pytest.raises(ValueError, match="larger than"):
        sample_size_curve(toy_pack, [61])


def test_sample_size_curve_on_starter_pack(starter_pack):
    curve = sample_size_curve(starter_pack, [32, 500]).set_index("fit_images")
    assert curve.loc[500, "centroid_distance"] == pytest.approx(0.0279, abs=5e-4)
    assert curve.loc[32, "centroid_distance"] > curve.loc[500, "centroid_distance"]


def test_compare_fit_sources_on_starter_pack(starter_pack):
    table = compare_fit_sources(starter_pack, slice(0, 400), slice(400, 500))
    assert table.loc["raw", "centroid_distance"] == pytest.approx(0.869, abs=5e-4)
    assert table.loc["I0T_post, means from fitting rows", "centroid_distance"] == pytest.approx(0.158, abs=5e-4)
    leaky = table.loc["I0T_post, means from evaluated rows", "centroid_distance"]
    assert leaky < table.loc["I0T_post, means from fitting rows", "centroid_distance"]


def test_shift_sweep_zero_lambda_is_raw(toy_pack):
    sweep = shift_sweep(toy_pack, [0.0, 1.0])
    raw = evaluate_embeddings(toy_pack.image_embeds, toy_pack.text_embeds, ks=(1,))
    assert sweep.iloc[0]["centroid_distance"] == pytest.approx(raw["centroid_distance"])
    assert sweep.iloc[1]["centroid_distance"] < raw["centroid_distance"]


def test_evaluate_embeddings_keys(toy_pack):
    result = evaluate_embeddings(toy_pack.image_embeds, toy_pack.text_embeds, ks=(1, 5), with_separability=True)
    assert set(result) == {"centroid_distance", "linear_separability", "recall_at_1_i2t", "recall_at_5_i2t",
                           "recall_at_1_t2i", "recall_at_5_t2i"}
    assert np.isfinite(list(result.values())).all()

"""I0T_async heads, the open_clip wrapper and the CyCLIP loss, against hand computations."""

import math
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.special import logsumexp

from i0t_helpers.async_heads import FIXED_LOGIT_SCALE, I0TAsyncHeads, I0TAsyncModel, head_statistics
from i0t_helpers.losses import CyCLIPLoss, cyclic_terms, mcsie_loss
from i0t_helpers.models import create_tiny_model


def unit(array):
    array = np.asarray(array, dtype=np.float64)
    return array / np.linalg.norm(array, axis=1, keepdims=True)


def randomised_heads(dim=6, seed=0):
    """Heads with non-trivial running statistics and affine parameters."""
    generator = torch.Generator().manual_seed(seed)
    heads = I0TAsyncHeads(dim)
    with torch.no_grad():
        for norm in (heads.image_norm, heads.text_norm):
            norm.running_mean.copy_(torch.randn(dim, generator=generator) * 0.1)
            norm.running_var.copy_(torch.rand(dim, generator=generator) * 0.05 + 0.01)
            norm.weight.copy_(1.0 + torch.randn(dim, generator=generator) * 0.2)
            norm.bias.copy_(torch.randn(dim, generator=generator) * 0.1)
    return heads


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Run these small models on one thread: faster than two, and steady on a shared machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny():
    towers, preprocess, tokenizer = create_tiny_model(seed=0)
    return towers, tokenizer


# The heads ------------------------------------------------------------------


def test_eval_mode_matches_hand_formula():
    heads = randomised_heads().eval()
    rng = np.random.default_rng(1)
    features = rng.normal(size=(5, 6)) * 3.0
    for norm, method in ((heads.image_norm, heads.normalize_images), (heads.text_norm, heads.normalize_texts)):
        mean = norm.running_mean.double().numpy()
        var = norm.running_var.double().numpy()
        weight = norm.weight.detach().double().numpy()
        bias = norm.bias.detach().double().numpy()
        expected = unit((unit(features) - mean) / np.sqrt(var + 1e-5) * weight + bias)
        got = method(torch.tensor(features, dtype=torch.float32)).detach().double().numpy()
        np.testing.assert_allclose(got, expected, atol=1e-6)


def test_eval_mode_transforms_rows_independently():
    heads = randomised_heads().eval()
    features = torch.randn(4, 6)
    together = heads.normalize_images(features)
    alone = torch.cat([heads.normalize_images(features[i:i + 1]) for i in range(4)])
    torch.testing.assert_close(together, alone)


def test_training_mode_uses_batch_statistics():
    heads = randomised_heads().train()
    rng = np.random.default_rng(2)
    features = rng.normal(size=(8, 6))
    old_mean = heads.image_norm.running_mean.double().numpy().copy()
    old_var = heads.image_norm.running_var.double().numpy().copy()
    weight = heads.image_norm.weight.detach().double().numpy()
    bias = heads.image_norm.bias.detach().double().numpy()

    got = heads.normalize_images(torch.tensor(features, dtype=torch.float32)).detach().double().numpy()

    units = unit(features)
    batch_mean, batch_var = units.mean(axis=0), units.var(axis=0)
    expected = unit((units - batch_mean) / np.sqrt(batch_var + 1e-5) * weight + bias)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(heads.image_norm.running_mean.numpy(), 0.9 * old_mean + 0.1 * batch_mean, atol=1e-6)
    unbiased = units.var(axis=0, ddof=1)
    np.testing.assert_allclose(heads.image_norm.running_var.numpy(), 0.9 * old_var + 0.1 * unbiased, atol=1e-6)


def test_outputs_are_unit_vectors():
    heads = randomised_heads()
    images, texts = heads(torch.randn(7, 6), torch.randn(7, 6))
    torch.testing.assert_close(images.norm(dim=1), torch.ones(7))
    torch.testing.assert_close(texts.norm(dim=1), torch.ones(7))


def test_trainable_parameter_count():
    assert I0TAsyncHeads(512).trainable_parameter_count() == 2048
    assert I0TAsyncHeads(64).trainable_parameter_count() == 256
    buffers = sum(buffer.numel() for name, buffer in I0TAsyncHeads(512).named_buffers() if "running" in name)
    assert buffers == 2048


def test_half_precision_input_runs_in_float32():
    heads = randomised_heads().eval()
    features = torch.randn(3, 6)
    half = heads.normalize_texts(features.half())
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, heads.normalize_texts(features.half().float()))


@pytest.mark.parametrize("features, error, message", [
    (torch.randn(4, 5), ValueError, "dimension 5"),
    (torch.randn(6), ValueError, "shape"),
    (torch.ones(4, 6, dtype=torch.int64), TypeError, "floating-point"),
    (np.ones((4, 6), dtype=np.float32), TypeError, "torch.Tensor"),
])
def test_bad_features_raise(features, error, message):
    with pytest.raises(error, match=message):
        randomised_heads().normalize_images(features)


def test_single_row_needs_eval_mode():
    heads = randomised_heads().train()
    with pytest.raises(ValueError, match="at least 2 rows"):
        heads.normalize_images(torch.randn(1, 6))
    assert heads.eval().normalize_images(torch.randn(1, 6)).shape == (1, 6)


@pytest.mark.parametrize("options", [{"embed_dim": 0}, {"embed_dim": 4, "eps": 0.0}, {"embed_dim": 4, "momentum": 2.0},
                                     {"embed_dim": 4, "model_name": ""}])
def test_bad_constructor_arguments(options):
    with pytest.raises(ValueError):
        I0TAsyncHeads(**options)


def test_from_statistics_is_a_zscore():
    rng = np.random.default_rng(3)
    images, texts = unit(rng.normal(size=(50, 6)) + 2.0), unit(rng.normal(size=(50, 6)) - 1.0)
    heads = I0TAsyncHeads.from_statistics(images, texts)
    assert not heads.training
    new_images, _ = heads.transform_numpy(images, texts)
    expected = unit((images - images.mean(axis=0)) / np.sqrt(images.var(axis=0) + 1e-5))
    np.testing.assert_allclose(new_images, expected, atol=1e-5)


def test_running_variance_sum_of_unit_vectors():
    # sum_k Var(u_k) = E||u||^2 - ||E u||^2 = 1 - ||mean||^2 <= 1 for unit vectors.
    rng = np.random.default_rng(4)
    images, texts = unit(rng.normal(size=(200, 32)) + 0.5), unit(rng.normal(size=(200, 32)))
    table = head_statistics(I0TAsyncHeads.from_statistics(images, texts))
    for modality, embeds in (("image", images), ("text", texts)):
        expected = 1.0 - np.linalg.norm(embeds.mean(axis=0)) ** 2
        assert table.loc[modality, "running_var_sum"] == pytest.approx(expected, abs=1e-5)
        assert table.loc[modality, "running_var_sum"] <= 1.0
        assert table.loc[modality, "running_var_mean"] <= 1.0 / 32 + 1e-7


def test_head_statistics_of_new_heads():
    table = head_statistics(I0TAsyncHeads(16))
    assert list(table.index) == ["image", "text"]
    assert table.loc["image", "running_var_sum"] == 16.0
    assert table.loc["text", "max_abs_weight_change"] == 0.0
    assert table.loc["text", "batches_tracked"] == 0


# Saving and loading ---------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    heads = randomised_heads()
    heads.model_name = "tiny"
    path = heads.save(tmp_path / "heads.pt")
    loaded = I0TAsyncHeads.load(path, model_name="tiny", embed_dim=6)
    assert loaded.model_name == "tiny"
    assert not loaded.training
    for key, value in heads.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    payload = torch.load(path, weights_only=True)
    assert payload["embed_dim"] == 6
    assert payload["model_name"] == "tiny"


def test_load_rejects_other_dimension(tmp_path):
    path = I0TAsyncHeads(8, model_name="tiny").save(tmp_path / "heads.pt")
    with pytest.raises(ValueError, match="dimension 8.*dimension 512"):
        I0TAsyncHeads.load(path, embed_dim=512)


def test_load_rejects_other_model(tmp_path):
    path = I0TAsyncHeads(8, model_name="tiny").save(tmp_path / "heads.pt")
    with pytest.raises(ValueError, match="'tiny', not 'ViT-B-32'"):
        I0TAsyncHeads.load(path, model_name="ViT-B-32")


def test_load_rejects_pickled_objects(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as stream:
        pickle.dump({"format": "i0t_async_heads", "payload": pickle.PickleError("x")}, stream, protocol=2)
    with pytest.raises(ValueError, match="weights_only"):
        I0TAsyncHeads.load(path)


def test_load_rejects_other_files(tmp_path):
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an I0T_async heads file"):
        I0TAsyncHeads.load(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        I0TAsyncHeads.load(tmp_path / "missing.pt")


# The open_clip wrapper ------------------------------------------------------


def tiny_batch(tokenizer, n=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 32, 32, generator=generator)
    tokens = tokenizer([f"a photo of object number {i}" for i in range(n)])
    return images, tokens


def test_wrapper_applies_heads_to_tower_output(tiny):
    towers, tokenizer = tiny
    model = I0TAsyncModel(towers, randomised_heads(64), model_name="tiny").eval()
    images, tokens = tiny_batch(tokenizer)
    with torch.no_grad():
        expected_images = model.heads.normalize_images(towers.encode_image(images))
        expected_texts = model.heads.normalize_texts(towers.encode_text(tokens))
        image_features, text_features, logit_scale = model(images, tokens)
    torch.testing.assert_close(image_features, expected_images)
    torch.testing.assert_close(text_features, expected_texts)
    torch.testing.assert_close(model.encode_image(images, normalize=False), expected_images)
    assert float(logit_scale) == FIXED_LOGIT_SCALE
    assert model.model_name == "tiny"


def test_wrapper_freezes_towers(tiny):
    towers, tokenizer = tiny
    model = I0TAsyncModel(towers).train()
    assert not model.towers_trainable
    assert not towers.training
    assert model.heads.training
    assert all(not parameter.requires_grad for parameter in towers.parameters())

    images, tokens = tiny_batch(tokenizer)
    image_features, text_features, _ = model(images, tokens)
    CyCLIPLoss()(image_features, text_features, 100.0).backward()
    assert all(parameter.grad is None for parameter in towers.parameters())
    for name, parameter in model.heads.named_parameters():
        assert parameter.grad is not None, name
        assert parameter.grad.abs().sum() > 0, name


def test_phase_one_unfreezes_towers_but_not_logit_scale():
    towers, _, _ = create_tiny_model(seed=1)
    model = I0TAsyncModel(towers, freeze_towers=False, use_heads=False).train()
    assert model.towers_trainable
    assert towers.training
    assert not towers.logit_scale.requires_grad
    model.set_towers_trainable(False)
    assert not model.towers_trainable
    assert not towers.training


def test_wrapper_without_heads_only_normalises(tiny):
    towers, tokenizer = tiny
    model = I0TAsyncModel(towers, randomised_heads(64), use_heads=False).eval()
    images, _ = tiny_batch(tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(images), F.normalize(towers.encode_image(images), dim=-1))


def test_tower_dropout_gives_different_views_only_in_training(tiny):
    towers, tokenizer = tiny
    model = I0TAsyncModel(towers, tower_dropout=0.1)
    images, tokens = tiny_batch(tokenizer, n=6)
    model.train()
    torch.manual_seed(0)
    image_views, text_views, _ = model(images, tokens, views=2)
    assert len(image_views) == 2
    assert len(text_views) == 2
    assert not torch.allclose(image_views[0], image_views[1])
    model.eval()
    with torch.no_grad():
        image_views, _, _ = model(images, tokens, views=2)
    torch.testing.assert_close(image_views[0], image_views[1])

    plain = I0TAsyncModel(towers, model.heads).eval()
    with torch.no_grad():
        torch.testing.assert_close(plain.encode_image(images), model.encode_image(images))
    model.remove_dropout_hooks()


def test_wrapper_rejects_mismatched_heads(tiny):
    towers, _ = tiny
    with pytest.raises(ValueError, match="dimension 512.*dimension 64"):
        I0TAsyncModel(towers, I0TAsyncHeads(512))
    with pytest.raises(TypeError, match="open_clip model"):
        I0TAsyncModel(torch.nn.Linear(3, 3))
    with pytest.raises(ValueError, match="tower_dropout"):
        I0TAsyncModel(towers, tower_dropout=1.5)


# Losses ---------------------------------------------------------------------


def test_cyclic_terms_by_hand():
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    texts = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    # I I^T - T T^T = [[0, -0.6], [-0.6, 0]]: mean of squares 0.18, times B = 2 gives 0.36.
    # I T^T - T I^T = [[0, 0.6], [-0.6, 0]]: the same 0.36.
    in_modal, cross_modal = cyclic_terms(images, texts)
    assert float(in_modal) == pytest.approx(0.36, abs=1e-6)
    assert float(cross_modal) == pytest.approx(0.36, abs=1e-6)


def numpy_cyclip(images, texts, scale, inmodal_weight=0.25, crossmodal_weight=0.25):
    batch = len(images)
    logits = scale * images @ texts.T
    labels = np.arange(batch)
    image_to_text = np.mean(logsumexp(logits, axis=1) - logits[labels, labels])
    text_to_image = np.mean(logsumexp(logits.T, axis=1) - logits.T[labels, labels])
    in_modal = sum((images[i] @ images[j] - texts[i] @ texts[j]) ** 2
                   for i in range(batch) for j in range(batch)) / batch
    cross_modal = sum((images[i] @ texts[j] - texts[i] @ images[j]) ** 2
                      for i in range(batch) for j in range(batch)) / batch
    return (image_to_text + text_to_image) / 2 + inmodal_weight * in_modal + crossmodal_weight * cross_modal


def test_cyclip_loss_matches_numpy():
    rng = np.random.default_rng(5)
    images, texts = unit(rng.normal(size=(5, 4))), unit(rng.normal(size=(5, 4)))
    for scale, weights in ((100.0, (0.25, 0.25)), (10.0, (1.0, 0.5)), (1.0, (0.0, 0.0))):
        loss = CyCLIPLoss(*weights)(torch.tensor(images), torch.tensor(texts), scale)
        assert float(loss) == pytest.approx(numpy_cyclip(images, texts, scale, *weights), rel=1e-6)


def test_cyclip_loss_parts_add_up():
    rng = np.random.default_rng(6)
    images, texts = (torch.tensor(unit(rng.normal(size=(4, 3))), dtype=torch.float32) for _ in range(2))
    parts = CyCLIPLoss()(images, texts, 100.0, output_dict=True)
    total = parts["contrastive_loss"] + 0.25 * parts["inmodal_cyclic_loss"] + 0.25 * parts["crossmodal_cyclic_loss"]
    assert float(parts["loss"]) == pytest.approx(float(total), rel=1e-6)


def test_mcsie_averages_four_pairings():
    rng = np.random.default_rng(7)
    views = [torch.tensor(unit(rng.normal(size=(4, 3)))) for _ in range(4)]
    loss = CyCLIPLoss()
    expected = sum(float(loss(views[i], views[2 + j], 100.0)) for i in range(2) for j in range(2)) / 4
    assert float(mcsie_loss(loss, views[:2], views[2:], 100.0)) == pytest.approx(expected, rel=1e-6)
    single_pairing = float(loss(views[0], views[2], 100.0))
    assert float(mcsie_loss(loss, views[:1], views[2:3], 100.0)) == pytest.approx(single_pairing)
    with pytest.raises(ValueError, match="same non-zero number"):
        mcsie_loss(loss, views[:2], views[2:3], 100.0)


@pytest.mark.parametrize("images, texts, message", [
    (torch.randn(4, 3), torch.randn(5, 3), "same shape"),
    (torch.randn(1, 3), torch.randn(1, 3), "at least 2 pairs"),
    (torch.randn(4), torch.randn(4), "shape"),
])
def test_cyclip_loss_rejects_bad_batches(images, texts, message):
    with pytest.raises(ValueError, match=message):
        CyCLIPLoss()(images, texts, 100.0)


def test_cyclip_loss_rejects_negative_weights():
    with pytest.raises(ValueError, match="inmodal_weight"):
        CyCLIPLoss(inmodal_weight=-1.0)
    assert math.isfinite(float(CyCLIPLoss()(torch.eye(3), torch.eye(3), 100.0)))

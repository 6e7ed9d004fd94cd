"""I0T_async training: schedule, batches, cached versus live loops, checkpoints, CLI and the GPU check script.

The two-process DistributedDataParallel test launches ``torchrun`` and takes
about 20 s on a 2-core machine, so it runs only with ``I0T_RUN_SLOW=1``.
"""

import importlib.util
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from i0t_helpers.async_heads import I0TAsyncHeads, I0TAsyncModel
from i0t_helpers.cli import main as cli_main
from i0t_helpers.metrics import centroid_distance, linear_separability
from i0t_helpers.models import create_tiny_model
from i0t_helpers.retrieval import recall_at_k
from i0t_helpers.training import (
    AsyncTrainingConfig,
    ImageCaptionDataset,
    SyntheticImageTextDataset,
    cosine_lr,
    encode_dataset,
    epoch_batches,
    evaluate_embeddings,
    load_checkpoint,
    make_config,
    train_cached,
    train_live,
)

REPOSITORY = Path(__file__).resolve().parent.parent
RUN_SLOW = os.environ.get("I0T_RUN_SLOW") == "1"

#: Options that make the heads move visibly in a few steps.
FAST = dict(batch_size=16, lr=1e-2, warmup_steps=2, seed=3)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Run these small models on one thread: faster than two, and steady on a shared machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny_towers():
    towers, _, _ = create_tiny_model(seed=0)
    return towers


@pytest.fixture(scope="module")
def synthetic_pairs():
    return SyntheticImageTextDataset(32, image_size=32, seed=1)


@pytest.fixture(scope="module")
def cached_tower_outputs(tiny_towers, synthetic_pairs):
    return encode_dataset(tiny_towers, synthetic_pairs, batch_size=32, progress=False)


def heads_state(heads):
    return {key: value.detach().clone() for key, value in heads.state_dict().items()}


# Schedule, batches and options ------------------------------------------------


def test_cosine_lr_by_hand():
    assert cosine_lr(0, 1.0, 4, 10) == pytest.approx(0.25)
    assert cosine_lr(3, 1.0, 4, 10) == pytest.approx(1.0)
    assert cosine_lr(4, 1.0, 4, 10) == pytest.approx(1.0)
    assert cosine_lr(7, 1.0, 4, 10) == pytest.approx(0.5)
    assert cosine_lr(9, 2.0, 4, 10) == pytest.approx(2.0 * (1 + math.cos(math.pi * 5 / 6)) / 2)
    # 200 warm-up steps (An et al., 2025) are longer than the 9 steps on 400 pairs: the peak is never reached.
    assert cosine_lr(8, 1e-6, 200, 9) == pytest.approx(4.5e-8)


def test_epoch_batches_cover_rows_once():
    batches = epoch_batches(10, 4, seed=0, epoch=0, drop_last=False)
    assert [len(batch) for batch in batches] == [4, 4, 2]
    assert sorted(np.concatenate(batches).tolist()) == list(range(10))
    assert [len(batch) for batch in epoch_batches(10, 4, seed=0, epoch=0)] == [4, 4]


def test_epoch_batches_are_seeded():
    first = epoch_batches(20, 5, seed=1, epoch=0)
    assert all(np.array_equal(a, b) for a, b in zip(first, epoch_batches(20, 5, seed=1, epoch=0)))
    assert not all(np.array_equal(a, b) for a, b in zip(first, epoch_batches(20, 5, seed=1, epoch=1)))
    assert not all(np.array_equal(a, b) for a, b in zip(first, epoch_batches(20, 5, seed=2, epoch=0)))


def test_epoch_batches_split_across_processes():
    whole = epoch_batches(24, 8, seed=0, epoch=2)
    slices = [epoch_batches(24, 8, seed=0, epoch=2, rank=rank, world_size=2) for rank in range(2)]
    for batch, first, second in zip(whole, *slices):
        assert np.array_equal(np.concatenate([first, second]), batch)
    with pytest.raises(ValueError, match="divisible"):
        epoch_batches(24, 9, seed=0, epoch=0, world_size=2)


def test_epoch_batches_drop_single_rows():
    assert [len(batch) for batch in epoch_batches(9, 4, seed=0, epoch=0, drop_last=False)] == [4, 4]
    with pytest.raises(ValueError, match="fewer than batch_size"):
        epoch_batches(100, 128, seed=0, epoch=0)


def test_config_defaults_are_the_papers():
    config = AsyncTrainingConfig()
    assert (config.lr, config.weight_decay, config.epochs, config.batch_size) == (1e-6, 1e-2, 3, 128)
    assert (config.warmup_steps, config.seed, config.logit_scale) == (200, 7, 100.0)
    assert (config.inmodal_weight, config.crossmodal_weight) == (0.25, 0.25)


@pytest.mark.parametrize("overrides, error", [
    ({"lr": -1.0}, ValueError), ({"epochs": 0}, ValueError), ({"batch_size": 1}, ValueError),
    ({"beta2": 1.0}, ValueError), ({"learning_rate": 1e-3}, TypeError), ({"epochs": 2.5}, TypeError),
])
def test_bad_options_raise(overrides, error):
    with pytest.raises(error):
        make_config(**overrides)


# Cached training ----------------------------------------------------------------


def test_cached_training_on_starter_pack(starter_pack):
    train, held_out = starter_pack.subset(slice(0, 400)), starter_pack.subset(slice(400, 500))
    heads = I0TAsyncHeads(512, model_name=starter_pack.model_name)
    history = train_cached(heads, *train.paired(), eval_image_embeds=held_out.image_embeds,
                           eval_text_embeds=held_out.text_embeds, progress=False)

    assert history["epoch"].tolist() == [0, 1, 2, 3]
    assert history["step"].tolist() == [0, 3, 6, 9]
    before, after = history.iloc[0], history.iloc[-1]
    assert before["centroid_distance"] == pytest.approx(
        centroid_distance(held_out.image_embeds, held_out.text_embeds), abs=1e-6)
    assert after["centroid_distance"] < before["centroid_distance"] - 0.2
    assert after["recall_at_1_i2t"] >= before["recall_at_1_i2t"]
    assert np.isfinite(history["train_loss"].iloc[1:]).all()
    assert not heads.training


def test_cached_running_mean_by_hand(starter_pack):
    # After k steps from zero, running_mean = sum_i 0.1 * 0.9^(k - i) * batch_mean_i; at lr 1e-6 the
    # affine parameters barely move, so the heads are a z-score with these partial statistics.
    images, texts = starter_pack.subset(slice(0, 400)).paired()
    heads = I0TAsyncHeads(512)
    train_cached(heads, images, texts, progress=False)

    expected = np.zeros(512)
    for epoch in range(3):
        for rows in epoch_batches(400, 128, seed=7, epoch=epoch):
            expected = 0.9 * expected + 0.1 * images[rows].astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(heads.image_norm.running_mean.numpy(), expected, atol=1e-6)
    assert float((heads.image_norm.weight.detach() - 1).abs().max()) < 1e-6
    assert float(heads.text_norm.bias.detach().abs().max()) < 1e-6


def test_cached_rejects_bad_input():
    heads = I0TAsyncHeads(8)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="dimension 6"):
        train_cached(heads, rng.normal(size=(20, 6)), rng.normal(size=(20, 6)), progress=False)
    with pytest.raises(ValueError, match="paired input"):
        train_cached(heads, rng.normal(size=(20, 8)), rng.normal(size=(19, 8)), progress=False)
    with pytest.raises(ValueError, match="NaN"):
        train_cached(heads, np.full((20, 8), np.nan), rng.normal(size=(20, 8)), progress=False)
    with pytest.raises(ValueError, match="both eval_image_embeds and eval_text_embeds"):
        train_cached(heads, rng.normal(size=(20, 8)), rng.normal(size=(20, 8)),
                     eval_image_embeds=rng.normal(size=(5, 8)), progress=False)
    with pytest.raises(TypeError, match="I0TAsyncHeads"):
        train_cached(torch.nn.BatchNorm1d(8), rng.normal(size=(20, 8)), rng.normal(size=(20, 8)))


def test_evaluate_embeddings_matches_metrics(gapped_embeddings):
    images, texts = gapped_embeddings
    figures = evaluate_embeddings(images, texts)
    recalls = recall_at_k(images, texts, ks=(1,))
    assert figures == {"centroid_distance": centroid_distance(images, texts),
                       "linear_separability": linear_separability(images, texts),
                       "recall_at_1_i2t": recalls["i2t"][1], "recall_at_1_t2i": recalls["t2i"][1]}


# Live training and its equivalence with cached training -------------------------------


def test_live_equals_cached_on_tiny_model(tiny_towers, synthetic_pairs, cached_tower_outputs):
    model = I0TAsyncModel(tiny_towers, model_name="tiny")
    live_history = train_live(model, synthetic_pairs, num_workers=0, progress=False, epochs=2, **FAST)
    cached_heads = I0TAsyncHeads(64, model_name="tiny")
    cached_history = train_cached(cached_heads, *cached_tower_outputs, progress=False, epochs=2, **FAST)

    moved = float((cached_heads.image_norm.weight.detach() - 1).abs().max())
    assert moved > 1e-3, "the heads must move for the comparison to mean anything"
    for key, value in cached_heads.state_dict().items():
        torch.testing.assert_close(model.heads.state_dict()[key], value, atol=1e-5, rtol=0, msg=key)
    np.testing.assert_allclose(live_history["train_loss"], cached_history["train_loss"], atol=1e-5)


def test_live_step_changes_only_heads(tiny_towers, synthetic_pairs):
    before = {key: value.clone() for key, value in tiny_towers.state_dict().items()}
    model = I0TAsyncModel(tiny_towers)
    initial_heads = heads_state(model.heads)
    train_live(model, synthetic_pairs, num_workers=0, progress=False, epochs=1, **FAST)

    for key, value in tiny_towers.state_dict().items():
        assert torch.equal(value, before[key]), f"tower weight {key} changed"
    assert all(parameter.grad is None for parameter in tiny_towers.parameters())
    assert not torch.equal(model.heads.image_norm.weight.detach(), initial_heads["image_norm.weight"])
    assert not torch.equal(model.heads.text_norm.bias.detach(), initial_heads["text_norm.bias"])


def test_live_evaluation_and_mcsie(tiny_towers, synthetic_pairs):
    held_out = SyntheticImageTextDataset(8, image_size=32, seed=2)
    plain = train_live(I0TAsyncModel(tiny_towers), synthetic_pairs, eval_dataset=held_out, num_workers=0,
                       progress=False, epochs=1, **FAST)
    assert plain["epoch"].tolist() == [0, 1]
    assert set(plain.columns) >= {"centroid_distance", "linear_separability", "recall_at_1_i2t"}

    torch.manual_seed(0)
    mcsie_model = I0TAsyncModel(tiny_towers, tower_dropout=0.1)
    mcsie = train_live(mcsie_model, synthetic_pairs, mcsie=True, num_workers=0, progress=False, epochs=1, **FAST)
    mcsie_model.remove_dropout_hooks()
    assert np.isfinite(mcsie["train_loss"]).all()
    assert mcsie["train_loss"].iloc[-1] != pytest.approx(plain["train_loss"].iloc[-1], abs=1e-6)


def test_phase_one_trains_towers_without_heads(tmp_path, synthetic_pairs):
    towers, _, _ = create_tiny_model(seed=2)
    before = {key: value.clone() for key, value in towers.state_dict().items()}
    model = I0TAsyncModel(towers, freeze_towers=False, use_heads=False)
    initial_heads = heads_state(model.heads)
    path = tmp_path / "phase1.pt"
    history = train_live(model, synthetic_pairs, checkpoint_path=path, num_workers=0, progress=False, epochs=1,
                         **FAST)

    assert np.isfinite(history["train_loss"]).all()
    assert not torch.equal(towers.visual.conv1.weight.detach(), before["visual.conv1.weight"])
    assert torch.equal(towers.logit_scale.detach(), before["logit_scale"])
    for key, value in model.heads.state_dict().items():
        assert torch.equal(value, initial_heads[key]), key
    saved_towers = load_checkpoint(path)["towers"]
    assert torch.equal(saved_towers["visual.conv1.weight"], towers.visual.conv1.weight.detach())


def test_live_rejects_bad_options(tiny_towers, synthetic_pairs):
    model = I0TAsyncModel(tiny_towers)
    with pytest.raises(ValueError, match="dropout"):
        train_live(model, synthetic_pairs, mcsie=True, num_workers=0, progress=False)
    with pytest.raises(ValueError, match="AMP"):
        train_live(model, synthetic_pairs, device="cpu", amp=True, num_workers=0, progress=False)
    with pytest.raises(ValueError, match="sync_batchnorm"):
        train_live(model, synthetic_pairs, sync_batchnorm=True, num_workers=0, progress=False)
    with pytest.raises(TypeError, match="I0TAsyncModel"):
        train_live(tiny_towers, synthetic_pairs)


def test_live_with_dataloader_workers(tiny_towers, synthetic_pairs, cached_tower_outputs):
    model = I0TAsyncModel(tiny_towers)
    train_live(model, synthetic_pairs, num_workers=1, progress=False, epochs=1, **FAST)
    cached_heads = I0TAsyncHeads(64)
    train_cached(cached_heads, *cached_tower_outputs, progress=False, epochs=1, **FAST)
    torch.testing.assert_close(model.heads.image_norm.weight, cached_heads.image_norm.weight, atol=1e-5, rtol=0)


# Datasets ---------------------------------------------------------------------------


def test_synthetic_pairs_are_reproducible():
    dataset = SyntheticImageTextDataset(3, image_size=8, seed=5)
    image, tokens = dataset[1]
    again_image, again_tokens = SyntheticImageTextDataset(3, image_size=8, seed=5)[1]
    assert torch.equal(image, again_image)
    assert torch.equal(tokens, again_tokens)
    assert image.shape == (3, 8, 8)
    assert tokens.shape == (77,)
    end = int((tokens == 49407).nonzero()[0, 0])
    assert tokens[0] == 49406
    assert 6 <= end <= 21
    assert (tokens[end + 1:] == 0).all()
    with pytest.raises(IndexError):
        dataset[3]


def test_image_caption_dataset_reads_files(tmp_path):
    from PIL import Image

    _, preprocess, tokenizer = create_tiny_model(seed=0)
    path = tmp_path / "red.png"
    Image.new("RGB", (40, 30), (255, 0, 0)).save(path)
    dataset = ImageCaptionDataset([path, Image.new("RGB", (20, 20))], ["a red square", "a black square"],
                                  preprocess, tokenizer)
    image, tokens = dataset[0]
    assert image.shape == (3, 32, 32)
    assert torch.equal(tokens, tokenizer(["a red square"])[0])
    with pytest.raises(ValueError, match="2 images and 1 captions"):
        ImageCaptionDataset([path, path], ["one"], preprocess, tokenizer)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        ImageCaptionDataset([tmp_path / "missing.png"], ["x"], preprocess, tokenizer)[0]


# Checkpoints -----------------------------------------------------------------------


def test_cached_resume_matches_uninterrupted_run(tmp_path, cached_tower_outputs):
    straight = I0TAsyncHeads(64, model_name="tiny")
    straight_history = train_cached(straight, *cached_tower_outputs, progress=False, epochs=3, **FAST)

    path = tmp_path / "run.pt"
    resumed = I0TAsyncHeads(64, model_name="tiny")
    first = train_cached(resumed, *cached_tower_outputs, checkpoint_path=path, stop_after_epoch=1,
                         progress=False, epochs=3, **FAST)
    assert first["epoch"].tolist() == [1]
    checkpoint = load_checkpoint(path)
    assert (checkpoint["epoch"], checkpoint["step"], checkpoint["mode"]) == (1, 2, "cached")
    assert checkpoint["towers"] is None

    fresh = I0TAsyncHeads(64, model_name="tiny")
    history = train_cached(fresh, *cached_tower_outputs, checkpoint_path=path, resume=True, progress=False,
                           epochs=3, **FAST)
    assert history["epoch"].tolist() == [1, 2, 3]
    np.testing.assert_allclose(history["train_loss"], straight_history["train_loss"], rtol=0, atol=0)
    for key, value in straight.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


def test_resume_rejects_other_options_and_heads(tmp_path, cached_tower_outputs):
    path = tmp_path / "run.pt"
    train_cached(I0TAsyncHeads(64, model_name="tiny"), *cached_tower_outputs, checkpoint_path=path,
                 progress=False, epochs=1, **FAST)
    with pytest.raises(ValueError, match="lr: saved 0.01, now 0.001"):
        train_cached(I0TAsyncHeads(64, model_name="tiny"), *cached_tower_outputs, checkpoint_path=path,
                     resume=True, progress=False, epochs=1, **{**FAST, "lr": 1e-3})
    with pytest.raises(ValueError, match="'tiny', not 'other'"):
        train_cached(I0TAsyncHeads(64, model_name="other"), *cached_tower_outputs, checkpoint_path=path,
                     resume=True, progress=False, epochs=1, **FAST)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="dimension 64"):
        train_cached(I0TAsyncHeads(8, model_name="tiny"), rng.normal(size=(32, 8)), rng.normal(size=(32, 8)),
                     checkpoint_path=path, resume=True, progress=False, epochs=1, **FAST)
    with pytest.raises(ValueError, match="checkpoint_path"):
        train_cached(I0TAsyncHeads(64), *cached_tower_outputs, resume=True, progress=False, **FAST)
    with pytest.raises(ValueError, match="not an I0T_async training checkpoint"):
        load_checkpoint(I0TAsyncHeads(4).save(tmp_path / "heads.pt"))


def test_live_resume_matches_uninterrupted_run(tmp_path, tiny_towers, synthetic_pairs):
    straight = I0TAsyncModel(tiny_towers)
    train_live(straight, synthetic_pairs, num_workers=0, progress=False, epochs=2, **FAST)
    path = tmp_path / "live.pt"
    first = I0TAsyncModel(tiny_towers)
    train_live(first, synthetic_pairs, checkpoint_path=path, stop_after_epoch=1, num_workers=0, progress=False,
               epochs=2, **FAST)
    resumed = I0TAsyncModel(tiny_towers)
    train_live(resumed, synthetic_pairs, checkpoint_path=path, resume=True, num_workers=0, progress=False,
               epochs=2, **FAST)
    for key, value in straight.heads.state_dict().items():
        assert torch.equal(resumed.heads.state_dict()[key], value), key
    with pytest.raises(ValueError, match="live training"):
        train_cached(I0TAsyncHeads(64), *encode_dataset(tiny_towers, synthetic_pairs, progress=False),
                     checkpoint_path=path, resume=True, progress=False, epochs=2, **FAST)


# Command line -----------------------------------------------------------------------


def test_cli_reports_before_and_after(capsys, tmp_path):
    out = tmp_path / "heads.pt"
    status = cli_main(["train-async", "--pack", "starter", "--train-rows", "0:400", "--eval-rows", "400:500",
                       "--json", "--no-progress", "--out", str(out)])
    assert status == 0
    result = json.loads(capsys.readouterr().out)
    assert result["trainable_parameters"] == 2048
    assert result["steps"] == 9
    assert result["n_train_pairs"] == 400
    assert result["n_eval_images"] == 100
    for stage in ("before", "after", "i0t_post_fitted_on_train_rows"):
        assert set(result[stage]) == {"centroid_distance", "linear_separability", "recall_at_1_i2t",
                                      "recall_at_1_t2i"}
    assert result["after"]["centroid_distance"] < result["before"]["centroid_distance"]
    assert I0TAsyncHeads.load(out, embed_dim=512).model_name == result["model"]


def test_cli_table_and_errors(capsys):
    assert cli_main(["train-async", "--pack", "starter", "--epochs", "1", "--no-progress"]) == 0
    output = capsys.readouterr().out
    assert "trainable parameters: 2,048" in output
    assert "I0T_post" in output
    assert cli_main(["train-async", "--pack", "starter", "--train-rows", "0:400", "--eval-rows", "300:500"]) == 2
    assert "share 100 image row(s)" in capsys.readouterr().err
    assert cli_main(["train-async", "--pack", "starter", "--lr", "-1"]) == 2
    assert "lr must be a positive" in capsys.readouterr().err
    assert cli_main(["train-async", "--pack", "starter", "--device", "gpu0"]) == 2
    assert "--device must be cpu, cuda, cuda:N or auto" in capsys.readouterr().err


# The GPU check script on CPU, and distributed training ---------------------------------


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check_async", REPOSITORY / "scripts" / "gpu_check_async.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_smoke_on_cpu(capsys, tmp_path):
    status = load_gpu_check().main(["--device", "cpu", "--steps", "3", "--json-out", str(tmp_path / "r.json")])
    output = capsys.readouterr().out
    assert status == 0, output
    assert "images/s:" in output
    assert "losses finite: yes" in output
    assert "PASSED" in output
    assert json.loads((tmp_path / "r.json").read_text())["running_statistics_updated_every_step"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.skipif(not RUN_SLOW, reason="launches torchrun with 2 processes (about 20 s); set I0T_RUN_SLOW=1")
def test_two_process_ddp_on_cpu(tmp_path):
    result_path = tmp_path / "ddp.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
               "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
               str(REPOSITORY / "scripts" / "gpu_check_async.py"), "--device", "cpu", "--steps", "3",
               "--json-out", str(result_path)]
    environment = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "TQDM_DISABLE": "1"}
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    result = json.loads(result_path.read_text())
    assert result["processes"] == 2
    assert result["heads_identical_across_processes"]
    assert result["losses_finite"]


# Exercise checkers of notebook 04 -------------------------------------------------------


def test_nb04_checkers_accept_right_answers(starter_pack, capsys):
    from i0t_helpers.exercises import nb04

    assert nb04.check_trainable_parameters(3072, embed_dim=768)
    assert not nb04.check_trainable_parameters(10_000_000, embed_dim=768)
    assert nb04.check_running_mean_fraction(round(1 - 0.9 ** 9, 3), steps=9)
    assert not nb04.check_running_mean_fraction(0.9, steps=9)
    images = starter_pack.subset(slice(0, 400)).image_embeds.astype(np.float64)
    assert nb04.check_variance_sum(round(1 - np.linalg.norm(images.mean(axis=0)) ** 2, 3), starter_pack)
    assert not nb04.check_variance_sum(1.0, starter_pack)
    assert nb04.check_training_steps(18, n_pairs=400, batch_size=64, epochs=3)
    assert not nb04.check_training_steps(19, n_pairs=400, batch_size=64, epochs=3)
    assert not nb04.check_training_steps(None)
    assert "Hint" in capsys.readouterr().out

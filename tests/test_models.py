"""Model loading: the tiny stand-in, local checkpoints, devices, and the fast offline failure."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from i0t_helpers.download import DownloadError
from i0t_helpers.models import (
    TINY_MODEL_NAME,
    WeightsUnavailableError,
    create_tiny_model,
    load_model,
    probe_host,
    resolve_device,
    weights_source,
)

REPOSITORY = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny():
    return load_model(TINY_MODEL_NAME, device="cpu")


def _closed_loopback_port() -> int:
    """Return a loopback port that nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _same_weights(first, second) -> bool:
    left, right = first.state_dict(), second.state_dict()
    return left.keys() == right.keys() and all(torch.equal(left[name], right[name]) for name in left)


# The tiny model ----------------------------------------------------------------------------


def test_tiny_model_description(tiny):
    description = tiny.describe()
    assert description["model"] == TINY_MODEL_NAME
    assert description["pretrained"] == "random initialisation"
    assert description["device"] == "cpu"
    assert description["precision"] == "fp32"
    assert description["embed_dim"] == 64
    assert description["context_length"] == 77
    assert not tiny.model.training


def test_tiny_model_matches_create_tiny_model(tiny):
    reference, _, _ = create_tiny_model(seed=0)
    assert _same_weights(tiny.model, reference)


def test_seed_changes_weights_and_fingerprint(tiny):
    other = load_model(TINY_MODEL_NAME, device="cpu", seed=1)
    assert not _same_weights(tiny.model, other.model)
    assert tiny.weights_fingerprint != other.weights_fingerprint
    again = load_model(TINY_MODEL_NAME, device="cpu", seed=0)
    assert again.weights_fingerprint == tiny.weights_fingerprint


def test_local_checkpoint_loads_its_weights(tiny, tmp_path):
    trained = load_model(TINY_MODEL_NAME, device="cpu", seed=5)
    checkpoint = tmp_path / "tiny.pt"
    torch.save({"state_dict": trained.model.state_dict()}, checkpoint)

    loaded = load_model(TINY_MODEL_NAME, pretrained=str(checkpoint), device="cpu")

    assert loaded.pretrained == str(checkpoint.resolve())
    assert _same_weights(loaded.model, trained.model)
    assert not _same_weights(loaded.model, tiny.model)
    assert weights_source(TINY_MODEL_NAME, str(checkpoint))["kind"] == "file"


@pytest.mark.parametrize("spelling", [None, "none", "None", "random", ""])
def test_random_initialisation_spellings(spelling):
    loaded = load_model(TINY_MODEL_NAME, pretrained=spelling, device="cpu")
    assert loaded.pretrained is None


def test_cpu_forward_has_no_autocast(tiny):
    with tiny.autocast():
        assert not torch.is_autocast_enabled("cpu")
    assert tiny.autocast_dtype is None


# Bad requests ------------------------------------------------------------------------------


def test_missing_checkpoint_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint file not found"):
        load_model(TINY_MODEL_NAME, pretrained=str(tmp_path / "absent.pt"))


def test_unknown_tag_lists_the_known_tags():
    with pytest.raises(ValueError, match="openai") as raised:
        load_model("ViT-B-32", pretrained="not-a-tag")
    assert "not-a-tag" in str(raised.value)


def test_unknown_model_name():
    with pytest.raises(ValueError, match="unknown open_clip model 'ViT-Q-99'"):
        load_model("ViT-Q-99", pretrained="openai")


@pytest.mark.parametrize("device", ["toaster", "cuda:zero"])
def test_invalid_device(device):
    with pytest.raises(ValueError, match="not a valid torch device"):
        resolve_device(device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_requested_without_cuda():
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")
    assert resolve_device("auto") == "cpu"
    assert resolve_device(None) == "cpu"


def test_amp_needs_cuda():
    with pytest.raises(ValueError, match="needs a CUDA device"):
        load_model(TINY_MODEL_NAME, device="cpu", precision="amp")
    with pytest.raises(ValueError, match="precision must be"):
        load_model(TINY_MODEL_NAME, device="cpu", precision="fp8")


def test_openai_weights_get_quick_gelu(monkeypatch, tmp_path):
    """OpenAI's ViT-B-32 was trained with QuickGELU, which open_clip's ViT-B-32 configuration lacks."""
    import open_clip

    requests = []

    def record(model_name, **options):
        requests.append(options)
        raise RuntimeError("stop after recording the options")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(open_clip, "create_model_and_transforms", record)
    for tag in ("openai", "laion2b_s34b_b79k"):
        with pytest.raises(WeightsUnavailableError):
            load_model("ViT-B-32", pretrained=tag, cache_dir=tmp_path)
    assert requests[0].get("force_quick_gelu") is True
    assert "force_quick_gelu" not in requests[1]


# Offline failure ---------------------------------------------------------------------------


def test_offline_failure_message_in_process(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as raised:
        load_model("ViT-B-32", pretrained="openai", cache_dir=tmp_path)
    elapsed = time.monotonic() - started

    message = str(raised.value)
    assert elapsed < 10
    assert isinstance(raised.value, DownloadError)
    assert "'ViT-B-32'" in message
    assert "'openai'" in message
    assert "HF_HUB_OFFLINE" in message
    assert str(tmp_path) in message
    assert "timm/vit_base_patch32_clip_224.openai" in message
    assert "--pretrained /path/to/checkpoint.bin" in message


_TIMED_MAIN = """
import runpy, sys, time
import open_clip, torch  # imported first, so the timing covers the failure, not the start-up
started = time.monotonic()
try:
    runpy.run_module("i0t_helpers", run_name="__main__", alter_sys=True)
finally:
    print(f"elapsed {time.monotonic() - started:.3f}")
"""


def _run_encode(arguments, environment, tmp_path):
    """Run ``python -m i0t_helpers encode`` in a fresh process; returns the result and the seconds it ran."""
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    captions = tmp_path / "captions.tsv"
    captions.write_text("a.png\ta photo\n", encoding="utf-8")
    command = [sys.executable, "-c", _TIMED_MAIN, "encode", *arguments, "--images", str(images),
               "--captions", str(captions), "--out", str(tmp_path / "pack.npz")]
    result = subprocess.run(command, cwd=REPOSITORY, env=environment, capture_output=True, text=True, timeout=120)
    return result, float(result.stdout.split("elapsed")[-1])


def test_encode_command_fails_fast_with_hub_offline(tmp_path):
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home"),
                   "HF_HUB_CACHE": str(tmp_path / "hf-cache")}

    result, elapsed = _run_encode(["--model", "ViT-B-32", "--pretrained", "openai"], environment, tmp_path)

    assert result.returncode == 2, result.stderr
    assert elapsed < 10, f"the failure took {elapsed:.1f} s"
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, result.stderr
    assert error_lines[0].startswith("error: cannot load pretrained weights 'openai' for open_clip model 'ViT-B-32'")
    assert str(tmp_path / "hf-cache") in error_lines[0]
    assert "--pretrained /path/to/checkpoint.bin" in error_lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "pack.npz").exists()


def test_encode_command_fails_fast_when_hub_unreachable(tmp_path):
    """Without HF_HUB_OFFLINE the connection probe notices that the hub does not respond."""
    port = _closed_loopback_port()
    environment = {key: value for key, value in os.environ.items()
                   if key not in {"HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"}}
    environment.update({"HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_HOME": str(tmp_path / "hf-home"),
                        "HF_HUB_CACHE": str(tmp_path / "hf-cache")})

    result, elapsed = _run_encode(["--model", "ViT-B-32", "--pretrained", "openai"], environment, tmp_path)

    assert result.returncode == 2, result.stderr
    assert elapsed < 10, f"the failure took {elapsed:.1f} s"
    assert "download host is unreachable" in result.stderr
    assert f"127.0.0.1:{port}" in result.stderr


def test_probe_host_on_loopback():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        assert probe_host(f"127.0.0.1:{server.getsockname()[1]}", timeout=2) is None
    failure = probe_host(f"127.0.0.1:{_closed_loopback_port()}", timeout=2)
    assert failure is not None and "cannot connect" in failure


def test_weights_source_of_a_hub_tag(tmp_path):
    source = weights_source("ViT-B-32", "openai", cache_dir=tmp_path)
    assert source["kind"] == "hf-hub"
    assert source["location"] == "timm/vit_base_patch32_clip_224.openai"
    assert source["cache"] == str(tmp_path)
    assert weights_source(TINY_MODEL_NAME, None)["kind"] == "none"


def test_hub_model_name_offline_failure(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    with pytest.raises(WeightsUnavailableError, match="'hf-hub:timm/ViT-B-16-SigLIP'") as raised:
        load_model("hf-hub:timm/ViT-B-16-SigLIP", cache_dir=tmp_path)
    assert time.monotonic() - started < 10
    assert "repository timm/ViT-B-16-SigLIP" in str(raised.value)
    assert weights_source("hf-hub:timm/ViT-B-16-SigLIP", None)["kind"] == "hf-hub"


def test_unknown_model_name_raises_value_error():
    from i0t_helpers.models import load_model

    with pytest.raises(ValueError, match="unknown open_clip model 'ViT-B-99'.*ViT-B-16"):
        load_model("ViT-B-99", None, device="cpu")


def test_mismatched_checkpoint_raises_value_error(tmp_path):
    import torch

    from i0t_helpers.models import TINY_MODEL_NAME, load_model

    checkpoint = tmp_path / "other.pt"
    torch.save({"unrelated.weight": torch.zeros(2)}, checkpoint)
    with pytest.raises(ValueError, match="does not fit model"):
        load_model(TINY_MODEL_NAME, str(checkpoint), device="cpu")

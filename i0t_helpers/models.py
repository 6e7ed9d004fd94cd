"""open_clip models used by the course: any pretrained model, and a tiny stand-in that needs no download.

:func:`load_model` wraps ``open_clip.create_model_and_transforms`` and
``open_clip.get_tokenizer`` for any model name with a pretrained tag
(``"openai"``, ``"laion2b_s34b_b79k"``, ...), a local checkpoint file, or no
weights at all (random initialisation). It picks the device, keeps the weights
in float32 and runs the forward pass under autocast on CUDA. When the weights
are neither cached nor downloadable it raises :class:`WeightsUnavailableError`
within seconds: a short connection probe replaces the minute of retries that the
Hugging Face hub client spends before giving up.

:func:`create_tiny_model` builds a randomly initialised CLIP of 3.4 million
parameters (3.2 million of them in the token-embedding table) from a custom
configuration. It shares open_clip's code
paths (towers, preprocessing, tokenizer) with real models, so tests and offline
demonstrations exercise the same code that runs on pretrained weights.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import copy
import hashlib
import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .download import DownloadError

logger = logging.getLogger(__name__)

#: Name under which the tiny configuration is registered with open_clip.
TINY_MODEL_NAME = "i0t-tiny-vit"

#: A small ViT + text transformer: 32x32 images, 64-d embeddings, 2 layers per tower.
TINY_MODEL_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}

#: Seconds the connection probe waits for the weights' host before treating the machine as offline.
NETWORK_PROBE_TIMEOUT_SECONDS = 3.0

#: Cache folder of the weights that open_clip downloads from a plain URL (no Hugging Face hub entry).
OPENAI_URL_CACHE = "~/.cache/clip"

#: Model-name prefix of open_clip models whose configuration and weights come from a hub repository.
HF_HUB_PREFIX = "hf-hub:"

_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
_AUTOCAST_DTYPES = {"float16": "float16", "fp16": "float16", "bfloat16": "bfloat16", "bf16": "bfloat16"}


class WeightsUnavailableError(DownloadError):
    """Raised when pretrained weights are neither in the local cache nor downloadable."""


#: The tiny model with 512-d embeddings, the dimension of CLIP ViT-B/32 and ViT-B/16, for analyses
#: that look at more dimensions than the 64 of :data:`TINY_MODEL_CONFIG`.
TINY_WIDE_MODEL_NAME = "i0t-tiny-vit-512"
TINY_WIDE_MODEL_CONFIG = {**copy.deepcopy(TINY_MODEL_CONFIG), "embed_dim": 512}

_TINY_CONFIGS = {TINY_MODEL_NAME: TINY_MODEL_CONFIG, TINY_WIDE_MODEL_NAME: TINY_WIDE_MODEL_CONFIG}


def register_tiny_model_config():
    """Register the tiny configurations with open_clip under their names (idempotent)."""
    from open_clip import factory

    for name, config in _TINY_CONFIGS.items():
        if name not in factory._MODEL_CONFIGS:
            factory._MODEL_CONFIGS[name] = copy.deepcopy(config)


def create_tiny_model(seed: int = 0):
    """Return ``(model, preprocess, tokenizer)`` of a tiny randomly initialised CLIP, in eval mode on CPU.

    The same ``seed`` gives bit-identical weights. Nothing is downloaded: the
    tokenizer is open_clip's bundled BPE vocabulary.
    """
    import open_clip
    import torch

    register_tiny_model_config()
    torch.manual_seed(seed)
    model, _, preprocess = open_clip.create_model_and_transforms(TINY_MODEL_NAME, pretrained=None)
    model.eval()
    tokenizer = open_clip.get_tokenizer(TINY_MODEL_NAME)
    return model, preprocess, tokenizer


# The loaded model ----------------------------------------------------------------------------


@dataclass
class LoadedModel:
    """An open_clip model in eval mode with its image preprocessing, tokenizer and device.

    Attributes
    ----------
    model : torch.nn.Module
        The CLIP model, weights in float32, on ``device``.
    preprocess : callable
        The model's evaluation transform: PIL image -> normalised tensor.
    tokenizer : callable
        open_clip's tokenizer for the model: list of str -> LongTensor (n, context_length).
    model_name : str
        open_clip model name, for example ``"ViT-B-32"``.
    pretrained : str or None
        The pretrained tag, the absolute path of a local checkpoint, or ``None``
        for a random initialisation.
    device : str
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
    autocast_dtype : str or None
        ``"float16"`` or ``"bfloat16"`` when the forward pass runs under CUDA
        autocast, ``None`` for plain float32.
    seed : int or None
        Seed of a random initialisation (``pretrained=None``).
    """

    model: Any
    preprocess: Any
    tokenizer: Any
    model_name: str
    pretrained: str | None
    device: str
    autocast_dtype: str | None = None
    seed: int | None = None
    _weights_fingerprint: str | None = field(default=None, repr=False)
    _embed_dim: int | None = field(default=None, repr=False)

    @property
    def context_length(self) -> int:
        """Maximum number of tokens of a caption, start and end tokens included."""
        length = getattr(self.tokenizer, "context_length", None) or getattr(self.model, "context_length", None)
        return int(length or 77)

    @property
    def embed_dim(self) -> int:
        """Dimension of the joint embedding space, read from one text forward pass (computed once).

        Architectures store it under different attributes, so the output shape
        is the one source that holds for every open_clip model.
        """
        if self._embed_dim is None:
            import torch

            with torch.inference_mode(), self.autocast():
                tokens = self.tokenizer(["a photo"]).to(self.device)
                self._embed_dim = int(self.model.encode_text(tokens).shape[-1])
        return self._embed_dim

    @property
    def precision(self) -> str:
        """``"fp32"`` or ``"amp_float16"`` / ``"amp_bfloat16"`` (float32 weights, autocast forward)."""
        return "fp32" if self.autocast_dtype is None else f"amp_{self.autocast_dtype}"

    def autocast(self):
        """Return the context manager for a forward pass: CUDA autocast, or a no-op in float32."""
        import torch

        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=getattr(torch, self.autocast_dtype))

    @property
    def weights_fingerprint(self) -> str:
        """Short hash identifying the weights, used in cache keys.

        A pretrained tag is identified by its name, a checkpoint file by its
        path, size and modification time, and a random initialisation by a
        SHA-256 of its parameters (computed once).
        """
        if self._weights_fingerprint is None:
            self._weights_fingerprint = _fingerprint_weights(self)
        return self._weights_fingerprint

    def describe(self) -> dict:
        """Return JSON-serialisable provenance for pack metadata."""
        return {
            "model": self.model_name,
            "pretrained": self.pretrained if self.pretrained is not None else "random initialisation",
            "device": self.device,
            "precision": self.precision,
            "embed_dim": self.embed_dim,
            "context_length": self.context_length,
        }


def _fingerprint_weights(loaded: LoadedModel) -> str:
    digest = hashlib.sha256()
    digest.update(loaded.model_name.encode())
    pretrained = loaded.pretrained
    if pretrained is not None and Path(pretrained).is_file():
        stat = Path(pretrained).stat()
        digest.update(f"file:{Path(pretrained).resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    elif pretrained is not None:
        digest.update(f"tag:{pretrained}".encode())
    else:
        for name, tensor in sorted(loaded.model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


# Device and precision ------------------------------------------------------------------------


def resolve_device(device=None) -> str:
    """Return the device to run on: ``None`` or ``"auto"`` picks ``"cuda"`` when available, else ``"cpu"``.

    An explicit CUDA device on a machine without CUDA raises ``ValueError``.
    """
    import torch

    if device is None or str(device) == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(
            f"device {device!r} is not a valid torch device ({error}); use 'cpu', 'cuda' or 'auto'"
        ) from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was requested but CUDA is not available here; use device='cpu' or 'auto'")
    return str(parsed)


def _resolve_autocast_dtype(device: str, precision: str) -> str | None:
    precision = str(precision).lower()
    if precision == "fp32":
        return None
    if precision == "auto":
        return "float16" if device.startswith("cuda") else None
    if precision.startswith("amp"):
        if not device.startswith("cuda"):
            raise ValueError(
                f"precision={precision!r} needs a CUDA device; on {device!r} use precision='fp32' or 'auto'"
            )
        _, _, dtype = precision.partition("_")
        dtype = dtype or "float16"
        if dtype not in _AUTOCAST_DTYPES:
            raise ValueError(f"unknown autocast dtype {dtype!r} in precision={precision!r}; use 'amp' or 'amp_bf16'")
        return _AUTOCAST_DTYPES[dtype]
    raise ValueError(f"precision must be 'auto', 'fp32', 'amp' (float16) or 'amp_bf16'; got {precision!r}")


# Finding the weights -------------------------------------------------------------------------


def _looks_like_path(pretrained: str) -> bool:
    return (
        os.sep in pretrained
        or "/" in pretrained
        or pretrained.startswith("~")
        or pretrained.lower().endswith(_CHECKPOINT_SUFFIXES)
    )


def _hub_offline_requested() -> bool:
    """Return whether the user already switched the Hugging Face hub client to offline mode."""
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return bool(constants.HF_HUB_OFFLINE) or flag in {"1", "true", "yes", "on"}


@contextlib.contextmanager
def _hub_offline_mode(enabled: bool):
    """Make the Hugging Face hub client serve files from its cache only, inside the block."""
    from huggingface_hub import constants

    previous = constants.HF_HUB_OFFLINE
    if enabled:
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


def weights_source(model_name: str, pretrained: str | None, cache_dir=None) -> dict:
    """Describe where open_clip fetches the weights of ``(model_name, pretrained)`` and where it caches them.

    Returns a dict with ``kind`` (``"hf-hub"``, ``"url"``, ``"file"`` or
    ``"none"``), ``location`` (repository id, URL or path), ``host`` (for the
    network probe) and ``cache`` (the folder searched before downloading).
    """
    from huggingface_hub import constants

    if model_name.startswith(HF_HUB_PREFIX):
        return {
            "kind": "hf-hub",
            "location": model_name[len(HF_HUB_PREFIX):],
            "host": urlparse(constants.ENDPOINT).netloc,
            "cache": str(cache_dir or constants.HF_HUB_CACHE),
        }
    if pretrained is None:
        return {"kind": "none", "location": None, "host": None, "cache": None}
    if Path(pretrained).expanduser().is_file():
        return {"kind": "file", "location": str(Path(pretrained).expanduser().resolve()), "host": None, "cache": None}

    import open_clip

    config = open_clip.get_pretrained_cfg(model_name, pretrained)
    if config.get("hf_hub"):
        return {
            "kind": "hf-hub",
            "location": config["hf_hub"].rstrip("/"),
            "host": urlparse(constants.ENDPOINT).netloc,
            "cache": str(cache_dir or constants.HF_HUB_CACHE),
        }
    if config.get("url"):
        return {
            "kind": "url",
            "location": config["url"],
            "host": urlparse(config["url"]).netloc,
            "cache": str(cache_dir or Path(OPENAI_URL_CACHE).expanduser()),
        }
    return {"kind": "none", "location": None, "host": None, "cache": None}


def _proxy_for_https() -> str | None:
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        if os.environ.get(name):
            return os.environ[name]
    return None


def probe_host(host: str, timeout: float = NETWORK_PROBE_TIMEOUT_SECONDS) -> str | None:
    """Try a TCP connection to ``host`` (``name`` or ``name:port``, default port 443).

    When an HTTPS proxy is configured the proxy is probed instead, because the
    download goes through it. Returns ``None`` on success, else the reason of
    the failure. The whole probe, name resolution included, is bounded by
    ``timeout`` seconds.
    """
    proxy = _proxy_for_https()
    target, default_port = host, 443
    if proxy:
        if "://" not in proxy:
            proxy = f"http://{proxy}"
        target, default_port = urlparse(proxy).netloc, 8080
    name, _, port = target.rpartition("@")[2].partition(":")
    port = int(port) if port else default_port

    def connect():
        with socket.create_connection((name, port), timeout=timeout):
            return None

    executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        return executor.submit(connect).result(timeout=timeout)
    except concurrent.futures.TimeoutError:
        return f"no answer from {name}:{port} within {timeout:g} s"
    except OSError as error:
        return f"cannot connect to {name}:{port} ({error})"
    finally:
        # A hung name lookup must not block the caller; its thread ends on its own.
        executor.shutdown(wait=False)


def weights_unavailable_message(model_name: str, pretrained: str, source: dict, reason: str) -> str:
    """Return the message of :class:`WeightsUnavailableError`: what failed, where to look, how to fix it."""
    if source["kind"] == "hf-hub":
        where = (
            f"open_clip downloads them from the Hugging Face hub repository {source['location']} and caches them "
            f"in {source['cache']} (set HF_HOME or HF_HUB_CACHE to use another cache folder)"
        )
        fetch_hint = f"hf download {source['location']}"
    elif source["kind"] == "url":
        where = f"open_clip downloads them from {source['location']} and caches them in {source['cache']}"
        fetch_hint = f"curl -LO {source['location']}"
    else:
        where = "open_clip found no download source for them"
        fetch_hint = "download the checkpoint"
    return (
        f"cannot load pretrained weights {pretrained!r} for open_clip model {model_name!r}: {reason}. {where}. "
        f"To use a local checkpoint instead, fetch it on a machine with internet access (for example: "
        f"{fetch_hint}), copy it here and pass its path: load_model({model_name!r}, pretrained='/path/to/"
        f"checkpoint.bin') in Python, or --pretrained /path/to/checkpoint.bin on the command line. "
        f"pretrained=None (or --pretrained none) gives a randomly initialised model for smoke tests"
    )


def _check_pretrained_tag(model_name: str, pretrained: str):
    import open_clip

    if model_name.startswith((HF_HUB_PREFIX, "local-dir:")):
        return
    if open_clip.get_pretrained_cfg(model_name, pretrained):
        return
    if _looks_like_path(pretrained):
        raise FileNotFoundError(
            f"checkpoint file not found: {pretrained}; pass an existing file or a pretrained tag of {model_name!r}"
        )
    if model_name not in open_clip.list_models():
        raise ValueError(
            f"unknown open_clip model {model_name!r}; open_clip.list_models() lists the available names, "
            f"for example ViT-B-32 or ViT-B-16"
        )
    tags = open_clip.list_pretrained_tags_by_model(model_name)
    raise ValueError(
        f"{pretrained!r} is neither a pretrained tag of {model_name!r} nor an existing checkpoint file; "
        f"tags of {model_name!r}: {', '.join(tags) if tags else 'none'}"
    )


# Loading -------------------------------------------------------------------------------------


def load_model(model_name: str, pretrained: str | None = None, device=None, precision: str = "auto",
               cache_dir=None, seed: int | None = 0,
               network_timeout: float = NETWORK_PROBE_TIMEOUT_SECONDS) -> LoadedModel:
    """Load an open_clip model with its preprocessing and tokenizer, ready for encoding.

    Parameters
    ----------
    model_name : str
        An open_clip model name (``open_clip.list_models()``), an
        ``"hf-hub:org/repo"`` name, or :data:`TINY_MODEL_NAME` (64-d) or
        :data:`TINY_WIDE_MODEL_NAME` (512-d) for the tiny offline stand-ins.
    pretrained : str or None
        A pretrained tag of that model (``open_clip.list_pretrained_tags_by_model``),
        the path of a local checkpoint file, or ``None`` (also ``"none"`` or
        ``"random"``) for a random initialisation. Ignored for ``"hf-hub:"``
        names, whose repository supplies the weights; the loaded model then
        reports ``pretrained="hf-hub"``.
    device : str, optional
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...; ``None`` or ``"auto"`` picks
        CUDA when available.
    precision : {"auto", "fp32", "amp", "amp_bf16"}
        Weights are always float32. ``"auto"`` runs the forward pass under
        float16 autocast on CUDA and in plain float32 on CPU.
    cache_dir : str or Path, optional
        Weight cache folder passed to open_clip (default: the Hugging Face cache,
        or ``~/.cache/clip`` for URL downloads).
    seed : int or None
        Seed of a random initialisation; ignored when weights are loaded.
    network_timeout : float
        Seconds allowed for the connection probe that runs before a download.

    Returns
    -------
    LoadedModel

    Raises
    ------
    WeightsUnavailableError
        The weights are not cached and cannot be downloaded (offline, or the
        host is unreachable). The message names the model, the cache folder
        open_clip searches and how to pass a local checkpoint. With no network
        this is raised within a few seconds: when ``HF_HUB_OFFLINE=1`` is set,
        or when the probe of the weights' host fails, only the local cache is
        searched.
    FileNotFoundError
        ``pretrained`` looks like a path but no such file exists.
    ValueError
        Unknown model name or pretrained tag, or an invalid device or precision.
    """
    import open_clip
    import torch

    if not isinstance(model_name, str) or not model_name.strip():
        raise ValueError(f"model_name must be a non-empty open_clip model name, got {model_name!r}")
    if pretrained is not None and str(pretrained).strip().lower() in {"", "none", "random"}:
        pretrained = None
    if model_name.startswith(HF_HUB_PREFIX):
        # The repository supplies both configuration and weights; open_clip ignores ``pretrained`` then.
        pretrained = "hf-hub"
    elif pretrained is not None:
        pretrained = str(pretrained)
        if _looks_like_path(pretrained) and Path(pretrained).expanduser().is_file():
            pretrained = str(Path(pretrained).expanduser().resolve())
        else:
            _check_pretrained_tag(model_name, pretrained)

    device = resolve_device(device)
    autocast_dtype = _resolve_autocast_dtype(device, precision)
    if model_name in _TINY_CONFIGS:
        register_tiny_model_config()
    if not model_name.startswith(HF_HUB_PREFIX) and model_name not in open_clip.list_models():
        close = [name for name in open_clip.list_models() if name.lower().startswith(model_name.lower()[:5])][:8]
        raise ValueError(
            f"unknown open_clip model {model_name!r}; choose one of open_clip.list_models()"
            + (f", for example {', '.join(close)}" if close else ", for example ViT-B-32 or ViT-B-16")
        )

    source = weights_source(model_name, pretrained, cache_dir)
    offline = False
    reason = None
    if source["host"] is not None:
        if _hub_offline_requested():
            offline, reason = True, "HF_HUB_OFFLINE is set, so only the local cache was searched"
        else:
            failure = probe_host(source["host"], network_timeout)
            if failure is not None:
                offline = True
                reason = f"the weights are not in the local cache and the download host is unreachable: {failure}"
                logger.warning("%s; looking for %s weights in the local cache only", failure, model_name)

    options = {"cache_dir": None if cache_dir is None else str(cache_dir)}
    if pretrained is not None and not Path(pretrained).is_file() and not model_name.startswith(HF_HUB_PREFIX):
        # open_clip only warns when a tag was trained with QuickGELU (the OpenAI weights) and the model
        # configuration uses GELU; building the model with the activation it was trained with avoids that.
        tag_config = open_clip.get_pretrained_cfg(model_name, pretrained)
        model_config = open_clip.get_model_config(model_name) or {}
        if tag_config.get("quick_gelu") and not model_config.get("quick_gelu"):
            options["force_quick_gelu"] = True

    if pretrained is None and seed is not None:
        torch.manual_seed(seed)
    logger.info("loading open_clip %s (pretrained=%s) on %s", model_name, pretrained, device)
    try:
        with _hub_offline_mode(offline):
            model, _, preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=None if pretrained == "hf-hub" else pretrained, device=device,
                precision="fp32", **options
            )
            tokenizer = open_clip.get_tokenizer(model_name, cache_dir=options["cache_dir"])
    except (RuntimeError, OSError) as error:
        if source["kind"] not in {"hf-hub", "url"}:
            if isinstance(error, RuntimeError) and "state_dict" in str(error):
                raise ValueError(
                    f"the checkpoint {pretrained} does not fit model {model_name!r} (its weights have other names "
                    f"or shapes); pass the model name the checkpoint was trained with"
                ) from None
            raise
        if reason is None:
            reason = f"the download failed ({error})"
        raise WeightsUnavailableError(weights_unavailable_message(model_name, pretrained, source, reason)) from error

    model.eval()
    return LoadedModel(
        model=model,
        preprocess=preprocess,
        tokenizer=tokenizer,
        model_name=model_name,
        pretrained=pretrained,
        device=device,
        autocast_dtype=autocast_dtype,
        seed=seed if pretrained is None else None,
    )

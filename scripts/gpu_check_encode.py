"""Measure image-encoding throughput: CUDA autocast versus float32, and the whole pipeline versus the raw forward.

A randomly initialised open_clip model (nothing is downloaded) encodes
``--batch-size x --steps`` JPEG files that the script writes first: views of
scikit-image's sample photos when scikit-image is installed, else smooth
synthetic images. Two throughputs are measured for each precision:

* raw forward: ``model.encode_image`` on pre-made tensors already on the device;
* full pipeline: :func:`i0t_helpers.encoding.encode_images`, that is files read
  and preprocessed by DataLoader workers, copied to the device, encoded and
  L2-normalised.

The ratio pipeline / raw (in images per second) shows how much of the model's
speed the input pipeline delivers. The script prints one line per measurement
and a JSON summary, and exits with status 1 when a check fails:

* every embedding is finite and has unit norm;
* on CUDA, autocast and float32 embeddings of the same images have a cosine of
  at least ``--min-cosine`` for every image.

Examples::

    python scripts/gpu_check_encode.py                                          # ViT-B-32, CUDA, batch 256
    python scripts/gpu_check_encode.py --device cpu --batch-size 8 --steps 2    # CPU smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from i0t_helpers.encoding import encode_images  # noqa: E402  (after the path set-up above)
from i0t_helpers.models import load_model  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ViT-B-32", help="open_clip architecture, randomly initialised "
                        "(default: ViT-B-32)")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default: cuda)")
    parser.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default: 256)")
    parser.add_argument("--steps", type=int, default=8, help="batches timed per measurement (default: 8)")
    parser.add_argument("--num-workers", type=int, default=None,
                        help="DataLoader workers of the pipeline (default: the package's default)")
    parser.add_argument("--amp-dtype", default="float16", choices=["float16", "bfloat16"],
                        help="autocast dtype on CUDA (default: float16)")
    parser.add_argument("--image-size", default="640x480", help="size of the written JPEG files (default: 640x480)")
    parser.add_argument("--min-cosine", type=float, default=0.99,
                        help="smallest accepted cosine between autocast and float32 embeddings (default: 0.99)")
    parser.add_argument("--json-out", default=None, help="also write the results to this JSON file")
    return parser


def _source_photos() -> list:
    from PIL import Image

    try:
        import skimage.data
    except ImportError:
        return []
    folder = Path(skimage.data.__file__).parent
    names = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "hubble_deep_field.jpg", "retina.jpg",
             "motorcycle_left.png", "color.png", "ihc.png")
    return [Image.open(folder / name).convert("RGB") for name in names if (folder / name).is_file()]


def write_images(folder: Path, count: int, size: tuple[int, int], seed: int = 0) -> list[Path]:
    """Write ``count`` JPEG files of ``size`` (width, height): random views of photos, or synthetic images."""
    from PIL import Image, ImageOps

    rng = np.random.default_rng(seed)
    photos = _source_photos()
    width, height = size
    paths = []
    for number in range(count):
        if photos:
            photo = photos[number % len(photos)]
            left = int(rng.integers(0, max(1, photo.width // 4)))
            top = int(rng.integers(0, max(1, photo.height // 4)))
            image = photo.crop((left, top, left + 3 * photo.width // 4, top + 3 * photo.height // 4))
            image = image.resize(size)
            if number % 2:
                image = ImageOps.mirror(image)
        else:
            ramp = np.linspace(0, 255, width)[None, :, None] * rng.uniform(0.2, 1.0, size=3)
            noise = rng.normal(0, 12, size=(height, width, 3))
            image = Image.fromarray(np.clip(ramp + noise, 0, 255).astype(np.uint8))
        path = folder / f"image_{number:05d}.jpg"
        image.save(path, quality=90)
        paths.append(path)
    return paths


def _synchronize(device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def time_raw_forward(loaded, batch_size: int, steps: int) -> float:
    """Return images per second of ``encode_image`` on a pre-made batch already on the device."""
    size = loaded.model.visual.image_size
    height, width = (size, size) if isinstance(size, int) else size
    generator = torch.Generator(device="cpu").manual_seed(0)
    batch = torch.randn(batch_size, 3, height, width, generator=generator).to(loaded.device)
    with torch.inference_mode():
        for _ in range(2):  # warm-up: kernel selection and allocator growth
            with loaded.autocast():
                loaded.model.encode_image(batch)
        _synchronize(loaded.device)
        started = time.perf_counter()
        for _ in range(steps):
            with loaded.autocast():
                loaded.model.encode_image(batch)
        _synchronize(loaded.device)
    return batch_size * steps / (time.perf_counter() - started)


def time_pipeline(loaded, paths: list[Path], batch_size: int, num_workers: int | None) -> tuple[float, np.ndarray]:
    """Return images per second of the whole pipeline over ``paths``, and the embeddings."""
    encode_images(loaded, paths[:batch_size], batch_size=batch_size, num_workers=0, progress=False, cache=False)
    _synchronize(loaded.device)
    started = time.perf_counter()
    embeddings = encode_images(loaded, paths, batch_size=batch_size, num_workers=num_workers, progress=False,
                               cache=False)
    _synchronize(loaded.device)
    return len(paths) / (time.perf_counter() - started), embeddings


def main(argv=None) -> int:
    arguments = build_parser().parse_args(argv)
    width, height = (int(part) for part in arguments.image_size.lower().split("x"))
    loaded = load_model(arguments.model, pretrained=None, device=arguments.device, precision="fp32")
    variants = [("fp32", loaded)]
    if loaded.device.startswith("cuda"):
        variants.append((f"autocast_{arguments.amp_dtype}",
                         dataclasses.replace(loaded, autocast_dtype=arguments.amp_dtype)))

    results = {
        "model": f"{arguments.model} (random initialisation)",
        "device": torch.cuda.get_device_name(loaded.device) if loaded.device.startswith("cuda") else "cpu",
        "batch_size": arguments.batch_size,
        "steps": arguments.steps,
        "images": arguments.batch_size * arguments.steps,
        "image_size": f"{width}x{height}",
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "measurements": {},
        "checks": {},
    }
    embeddings = {}
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        paths = write_images(Path(folder), arguments.batch_size * arguments.steps, (width, height))
        print(f"wrote {len(paths)} JPEG files of {width}x{height} in {time.perf_counter() - started:.1f} s")
        for name, variant in variants:
            raw = time_raw_forward(variant, arguments.batch_size, arguments.steps)
            pipeline, embeddings[name] = time_pipeline(variant, paths, arguments.batch_size, arguments.num_workers)
            results["measurements"][name] = {
                "raw_forward_images_per_s": raw,
                "pipeline_images_per_s": pipeline,
                "pipeline_over_raw": pipeline / raw,
            }
            print(f"{name:>18}: raw forward {raw:9.1f} images/s, full pipeline {pipeline:9.1f} images/s, "
                  f"ratio {pipeline / raw:.3f}")

    failed = False
    for name, values in embeddings.items():
        norms = np.linalg.norm(values, axis=1)
        ok = bool(np.isfinite(values).all() and np.allclose(norms, 1.0, atol=1e-3))
        results["checks"][f"{name}_finite_unit_norm"] = ok
        failed |= not ok
    if len(embeddings) == 2:
        first, second = embeddings.values()
        min_cosine = float(np.min(np.sum(first * second, axis=1)))
        results["checks"]["min_cosine_autocast_vs_fp32"] = min_cosine
        failed |= min_cosine < arguments.min_cosine
        print(f"smallest cosine between autocast and float32 embeddings: {min_cosine:.5f}")
    if len(variants) == 2:
        speed_up = (results["measurements"][variants[1][0]]["raw_forward_images_per_s"]
                    / results["measurements"]["fp32"]["raw_forward_images_per_s"])
        results["autocast_speed_up_raw"] = speed_up
        print(f"autocast speed-up of the raw forward: {speed_up:.2f}x")
    else:
        print("autocast is measured on CUDA only; this run measured float32")

    results["passed"] = not failed
    print(json.dumps(results, indent=1))
    if arguments.json_out:
        Path(arguments.json_out).write_text(json.dumps(results, indent=1), encoding="utf-8")
    print("all checks passed" if not failed else "a check FAILED", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Train I0T_async heads live on a randomly initialised open_clip model and check the run.

Synthetic image tensors and token sequences go through the frozen towers for
``--steps`` steps with AMP (on CUDA); nothing is downloaded. The script prints
the throughput in images per second, the peak GPU memory and whether every loss
stayed finite, and exits with status 1 when a check fails:

* every training loss is finite and the heads' parameters stay finite;
* the heads' running statistics were updated once per step;
* under ``torchrun``, every process ends with the same heads.

Examples::

    python scripts/gpu_check_async.py                          # ViT-B-32, CUDA, 300 steps
    python scripts/gpu_check_async.py --device cpu --steps 3   # CPU smoke run with the tiny model
    torchrun --nproc-per-node 2 scripts/gpu_check_async.py     # two GPUs, per-GPU BatchNorm statistics
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None,
                        help="open_clip architecture, randomly initialised, or 'tiny' for the course's 64-d test "
                             "model (default: ViT-B-32 on CUDA, tiny on CPU)")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="device (default: cuda)")
    parser.add_argument("--steps", type=int, default=300, help="training steps (default: 300)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="global batch size (default: 128 on CUDA, 8 on CPU)")
    parser.add_argument("--lr", type=float, default=1e-6, help="peak learning rate (default: 1e-6)")
    parser.add_argument("--warmup-steps", type=int, default=200, help="learning-rate warm-up steps (default: 200)")
    parser.add_argument("--amp-dtype", default="float16", choices=["float16", "bfloat16"],
                        help="AMP precision on CUDA (default: float16 with a gradient scaler)")
    parser.add_argument("--no-amp", action="store_true", help="train in float32 on CUDA too")
    parser.add_argument("--sync-batchnorm", action="store_true",
                        help="under torchrun on GPUs, share BatchNorm statistics across GPUs")
    parser.add_argument("--num-workers", type=int, default=None,
                        help="DataLoader workers (default: 4 on CUDA, 0 on CPU)")
    parser.add_argument("--json-out", default=None, help="also write the results to this JSON file")
    return parser


def _peak_memory_gib(device: torch.device) -> tuple[str, float]:
    if device.type == "cuda":
        return "peak GPU memory", torch.cuda.max_memory_allocated(device) / 2**30
    # VmHWM is this process's own peak; getrusage's ru_maxrss would carry over the launcher's peak under torchrun.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return "peak process memory (RSS)", int(line.split()[1]) / 2**20
    return "peak process memory (RSS, unavailable on this system)", float("nan")


def _heads_agree(heads) -> bool:
    """Return whether every process has the same heads (True without torchrun)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return True
    flat = torch.cat([value.detach().double().flatten() for value in heads.state_dict().values()])
    gathered = [torch.zeros_like(flat) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(gathered, flat)
    return all(torch.equal(gathered[0], other) for other in gathered[1:])


def main(argv=None) -> int:
    arguments = build_parser().parse_args(argv)
    from i0t_helpers.async_heads import I0TAsyncModel
    from i0t_helpers.models import create_tiny_model
    from i0t_helpers.training import SyntheticImageTextDataset, init_distributed, train_live

    if arguments.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device is visible; run with --device cpu for a smoke test",
              file=sys.stderr)
        return 2
    if arguments.steps < 1:
        print(f"error: --steps must be at least 1, got {arguments.steps}", file=sys.stderr)
        return 2
    on_cuda = arguments.device == "cuda"
    model_name = arguments.model or ("ViT-B-32" if on_cuda else "tiny")
    batch_size = arguments.batch_size or (128 if on_cuda else 8)
    num_workers = arguments.num_workers
    if num_workers is None:
        num_workers = 4 if on_cuda else 0

    rank, world_size, local_rank = init_distributed("nccl" if on_cuda else "gloo")
    device = torch.device("cuda", local_rank) if on_cuda else torch.device("cpu")
    torch.manual_seed(0)
    if model_name == "tiny":
        towers, _, _ = create_tiny_model(seed=0)
    else:
        import open_clip

        towers = open_clip.create_model(model_name, pretrained=None)
    image_size = towers.visual.image_size
    image_size = image_size[0] if isinstance(image_size, (tuple, list)) else image_size
    context_length = getattr(towers, "context_length", 77)
    model = I0TAsyncModel(towers, model_name=f"{model_name} (random init)")
    dataset = SyntheticImageTextDataset(arguments.steps * batch_size, image_size=image_size,
                                        context_length=context_length, seed=0)

    if on_cuda:
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    history = train_live(model, dataset, device=device, num_workers=num_workers, amp=on_cuda and not arguments.no_amp,
                         amp_dtype=arguments.amp_dtype, sync_batchnorm=arguments.sync_batchnorm,
                         epochs=1, batch_size=batch_size, lr=arguments.lr, warmup_steps=arguments.warmup_steps,
                         progress=rank == 0)
    if on_cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started

    heads = model.heads
    losses_finite = bool(history["nonfinite_losses"].sum() == 0 and history["train_loss"].map(math.isfinite).all())
    heads_finite = all(bool(torch.isfinite(value.float()).all()) for value in heads.state_dict().values())
    steps_tracked = int(heads.image_norm.num_batches_tracked) == arguments.steps
    agree = _heads_agree(heads)
    memory_label, memory_gib = _peak_memory_gib(device)
    results = {
        "model": model_name,
        "device": torch.cuda.get_device_name(device) if on_cuda else "cpu",
        "processes": world_size,
        "steps": arguments.steps,
        "global_batch_size": batch_size,
        "amp": None if not on_cuda or arguments.no_amp else arguments.amp_dtype,
        "images_per_second": arguments.steps * batch_size / seconds,
        "seconds": seconds,
        "peak_memory_gib": memory_gib,
        "peak_memory_kind": memory_label,
        "mean_loss": float(history["train_loss"].iloc[-1]),
        "losses_finite": losses_finite,
        "heads_finite": heads_finite,
        "running_statistics_updated_every_step": steps_tracked,
        "heads_identical_across_processes": agree,
        "trainable_parameters": heads.trainable_parameter_count(),
    }
    passed = losses_finite and heads_finite and steps_tracked and agree
    results["passed"] = passed

    if rank == 0:
        print(f"model: {model_name} (random init), device: {results['device']}, processes: {world_size}, "
              f"AMP: {results['amp'] or 'off'}")
        print(f"steps: {arguments.steps} x global batch {batch_size}, wall time {seconds:.1f} s")
        print(f"images/s: {results['images_per_second']:.1f} (including data loading and warm-up)")
        print(f"{memory_label}: {memory_gib:.2f} GiB")
        print(f"mean training loss: {results['mean_loss']:.4f}")
        print(f"losses finite: {'yes' if losses_finite else 'NO'}; heads finite: {'yes' if heads_finite else 'NO'}")
        print(f"running statistics updated every step: {'yes' if steps_tracked else 'NO'}")
        if world_size > 1:
            print(f"heads identical across processes: {'yes' if agree else 'NO'}")
        print("PASSED" if passed else "FAILED")
        if arguments.json_out:
            with open(arguments.json_out, "w", encoding="utf-8") as stream:
                json.dump(results, stream, indent=2)
    if world_size > 1:
        torch.distributed.destroy_process_group()
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())

"""``train-async``: train I0T_async heads on a pack's cached embeddings and report held-out figures."""

from __future__ import annotations

import numpy as np

from ._common import parse_rows, print_json

_REPORTED = ("centroid_distance", "linear_separability", "recall_at_1_i2t", "recall_at_1_t2i")


def register(subparsers):
    parser = subparsers.add_parser(
        "train-async",
        help="train I0T_async BatchNorm heads on a pack's embeddings and report the held-out gap and recall",
        description="Train the two BatchNorm heads of I0T_async (An et al., 2025) on cached embeddings of the "
                    "training rows, with everything else frozen, and report centroid distance, linear "
                    "separability and recall@1 on the held-out rows before and after training, next to "
                    "I0T_post fitted on the same training rows. The defaults are the hyperparameters of "
                    "An et al. (2025).",
    )
    parser.add_argument("--pack", required=True, help="a named pack (starter, starter-random, ...) or a pack .npz")
    parser.add_argument("--data-dir", default=None, help="data folder for named packs (default: data/)")
    parser.add_argument("--mirror", default=None, help="mirror folder or URL used when a named pack must be fetched")
    parser.add_argument("--train-rows", default=None, metavar="ROWS",
                        help="image rows to train on, e.g. 0:400 (default: the first 80%% of the images)")
    parser.add_argument("--eval-rows", default=None, metavar="ROWS",
                        help="held-out image rows, e.g. 400:500 (default: the images not trained on)")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs (default: 3)")
    parser.add_argument("--lr", type=float, default=1e-6, help="peak AdamW learning rate (default: 1e-6)")
    parser.add_argument("--weight-decay", type=float, default=1e-2, help="AdamW weight decay (default: 0.01)")
    parser.add_argument("--batch-size", type=int, default=128, help="pairs per batch (default: 128)")
    parser.add_argument("--warmup-steps", type=int, default=200,
                        help="steps of linear learning-rate warm-up before the cosine decay (default: 200)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the batch order (default: 7)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default: cuda when available)")
    parser.add_argument("--out", default=None, metavar="HEADS.pt",
                        help="save the trained heads here (load with I0TAsyncHeads.load)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.set_defaults(func=run)


def _row_mask(text: str | None, n_images: int, name: str, default: np.ndarray) -> np.ndarray:
    if text is None:
        return default
    mask = np.zeros(n_images, dtype=bool)
    mask[parse_rows(text, n_images, name)] = True
    return mask


def run(arguments) -> int:
    import torch

    from ..async_heads import I0TAsyncHeads
    from ..packs import load_pack
    from ..training import held_out_comparison, make_config, train_cached

    config = make_config(epochs=arguments.epochs, lr=arguments.lr, weight_decay=arguments.weight_decay,
                         batch_size=arguments.batch_size, warmup_steps=arguments.warmup_steps, seed=arguments.seed)
    device = arguments.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device_type = torch.device(device).type
    except RuntimeError:
        raise ValueError(f"--device must be cpu, cuda, cuda:N or auto; got {arguments.device!r}") from None
    if device_type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device} was requested but no CUDA device is visible; use --device cpu")

    pack = load_pack(arguments.pack, data_dir=arguments.data_dir, mirror=arguments.mirror)
    n_train_default = int(round(0.8 * pack.n_images))
    default_train = np.arange(pack.n_images) < n_train_default
    train_mask = _row_mask(arguments.train_rows, pack.n_images, "--train-rows", default_train)
    eval_mask = _row_mask(arguments.eval_rows, pack.n_images, "--eval-rows", ~train_mask)
    if (train_mask & eval_mask).any():
        first = int(np.flatnonzero(train_mask & eval_mask)[0])
        raise ValueError(
            f"--train-rows and --eval-rows share {int((train_mask & eval_mask).sum())} image row(s), first {first}; "
            f"held-out rows must not be trained on"
        )
    if not eval_mask.any():
        raise ValueError("no held-out rows are left; pass --eval-rows or train on fewer rows")
    train_pack, eval_pack = pack.subset(train_mask), pack.subset(eval_mask)

    heads = I0TAsyncHeads(pack.dim, model_name=pack.model_name)
    train_images, train_texts = train_pack.paired()
    history = train_cached(heads, train_images, train_texts, eval_image_embeds=eval_pack.image_embeds,
                           eval_text_embeds=eval_pack.text_embeds, eval_text_image_index=eval_pack.text_image_index,
                           config=config, device=device, progress=not arguments.no_progress)
    table = held_out_comparison(train_pack, eval_pack, heads, device=device)

    def figures(method: str) -> dict:
        return {key: float(table.loc[method, key]) for key in _REPORTED}

    result = {
        "model": pack.model_name,
        "dim": pack.dim,
        "n_train_images": train_pack.n_images,
        "n_train_pairs": len(train_texts),
        "n_eval_images": eval_pack.n_images,
        "n_eval_texts": eval_pack.n_texts,
        "train_rows": arguments.train_rows or f"0:{n_train_default}",
        "eval_rows": arguments.eval_rows or "the rest",
        "device": device,
        "steps": int(history["step"].iloc[-1]),
        "final_train_loss": float(history["train_loss"].iloc[-1]),
        "trainable_parameters": heads.trainable_parameter_count(),
        "config": config.to_dict(),
        "before": figures("raw"),
        "after": figures("I0T_async"),
        "i0t_post_fitted_on_train_rows": figures("I0T_post"),
        "zscore_fitted_on_train_rows": figures("z-score"),
    }
    if arguments.out:
        result["heads_file"] = str(heads.save(arguments.out))

    if arguments.json:
        print_json(result)
        return 0

    print(f"model: {result['model']}   dim: {result['dim']}   device: {device}")
    print(f"trained on {result['n_train_pairs']} pairs ({result['train_rows']}), {result['steps']} steps; "
          f"held out: {result['n_eval_images']} images, {result['n_eval_texts']} texts ({result['eval_rows']})")
    print(f"trainable parameters: {result['trainable_parameters']:,}   final training loss: "
          f"{result['final_train_loss']:.4f}")
    header = f"{'held-out metric':<22}{'before':>10}{'I0T_async':>12}{'I0T_post':>11}{'z-score':>10}"
    print(header)
    print("-" * len(header))
    for key in _REPORTED:
        post = result["i0t_post_fitted_on_train_rows"][key]
        zscore = result["zscore_fitted_on_train_rows"][key]
        print(f"{key:<22}{result['before'][key]:>10.4f}{result['after'][key]:>12.4f}{post:>11.4f}{zscore:>10.4f}")
    print("I0T_post and the z-score use statistics of the training rows only, like the heads.")
    if arguments.out:
        print(f"heads saved to {result['heads_file']}")
    return 0

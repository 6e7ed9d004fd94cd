"""``encode``: embed images and captions with an open_clip model and save an embedding pack."""

from __future__ import annotations

from pathlib import Path

from ..encoding import LIVE_DATASETS


def register(subparsers):
    parser = subparsers.add_parser(
        "encode",
        help="embed a folder of images and a captions file (or a public dataset) with an open_clip model",
        description="Encode images and captions with any open_clip model and write an embedding pack (.npz) that "
                    "gap, diagnose and evaluate read. Embeddings are cached on disk, so a second run with the same "
                    "model and inputs reads them back instead of encoding again.",
    )

    parser.add_argument("--model", required=True,
                        help="open_clip model name, e.g. ViT-B-32 (see open_clip.list_models())")
    parser.add_argument("--pretrained", default="none", metavar="TAG_OR_PATH",
                        help="pretrained tag (e.g. openai, laion2b_s34b_b79k), a local checkpoint file, or 'none' "
                             "for a random initialisation (default: none)")

    source = parser.add_argument_group("inputs (give --images and --captions, or --dataset)")
    source.add_argument("--images", metavar="DIR_OR_LIST",
                        help="folder of images (searched recursively) or a text file with one image path per line")
    source.add_argument("--captions", metavar="FILE",
                        help="captions: image<TAB>caption lines, a CSV with image and caption columns, or JSON "
                             "(COCO annotations, {image: caption(s)} or [{image, caption}])")
    source.add_argument("--dataset", choices=sorted(LIVE_DATASETS),
                        help="encode a public dataset instead (downloaded on first use)")

    parser.add_argument("--out", required=True, metavar="PACK.npz", help="where to write the embedding pack")
    parser.add_argument("--caption-choice", choices=("all", "first", "last"), default="all",
                        help="with --dataset: keep all captions of each image, or only the first or last (default all)")
    parser.add_argument("--n-images", type=int, default=None, help="with --dataset: keep only the first N images")
    parser.add_argument("--skip-missing", action="store_true",
                        help="drop captions whose image is not found instead of stopping")

    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default: auto)")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "amp", "amp_bf16"),
                        help="auto: float16 autocast on CUDA, float32 on CPU (default: auto)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    parser.add_argument("--text-batch-size", type=int, default=256, help="captions per forward pass (default 256)")
    parser.add_argument("--num-workers", type=int, default=None,
                        help="DataLoader worker processes (default: up to 8, one less than the CPU count)")

    parser.add_argument("--cache-dir", default=None, help="embedding cache folder (default: data/cache/embeddings)")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the embedding cache")
    parser.add_argument("--data-dir", default=None, help="data folder for --dataset (default: data/)")
    parser.add_argument("--mirror", default=None, help="mirror folder or URL used when --dataset must be fetched")
    parser.add_argument("--quiet", action="store_true", help="hide progress bars")
    parser.set_defaults(func=run)


def run(arguments) -> int:
    from ..encoding import dataset_pack, pack_from_folder
    from ..models import load_model

    if arguments.dataset is None and not (arguments.images and arguments.captions):
        raise ValueError("give --images DIR_OR_LIST and --captions FILE, or --dataset NAME")
    if arguments.dataset is not None and (arguments.images or arguments.captions):
        raise ValueError("give either --dataset or --images with --captions, not both")
    if arguments.dataset is None and (arguments.n_images is not None or arguments.caption_choice != "all"):
        raise ValueError("--n-images and --caption-choice only apply with --dataset")
    out = Path(arguments.out)
    if out.suffix != ".npz":
        raise ValueError(f"--out must end in .npz, got {arguments.out!r}")

    loaded = load_model(arguments.model, arguments.pretrained, device=arguments.device,
                        precision=arguments.precision)
    options = {
        "batch_size": arguments.batch_size,
        "text_batch_size": arguments.text_batch_size,
        "num_workers": arguments.num_workers,
        "progress": not arguments.quiet,
        "cache": not arguments.no_cache,
        "cache_dir": arguments.cache_dir,
    }
    if arguments.dataset is not None:
        pack = dataset_pack(loaded, arguments.dataset, data_dir=arguments.data_dir, mirror=arguments.mirror,
                            n_images=arguments.n_images, captions=arguments.caption_choice, **options)
    else:
        pack = pack_from_folder(loaded, arguments.images, arguments.captions,
                                skip_missing=arguments.skip_missing, **options)
    pack.save(out)

    truncated = pack.metadata.get("n_truncated_captions", 0)
    print(f"model: {pack.model_name} on {loaded.device} ({loaded.precision})")
    print(f"encoded {pack.n_images} images and {pack.n_texts} captions, dim {pack.dim}; "
          f"{truncated} caption(s) truncated to {loaded.context_length} tokens")
    print(f"wrote {out}")
    return 0

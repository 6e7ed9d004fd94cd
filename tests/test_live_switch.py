"""The notebooks' SOURCE switch: every course notebook runs unchanged on a pack of live embeddings.

The pack replaces live data offline: scikit-image's sample photos and
captions written for them, encoded by the tiny randomly initialised open_clip
model (its 512-d variant, the embedding dimension of CLIP ViT-B/32). Each
notebook's set-up cell gets ``SOURCE = "<that pack's path>"`` and the notebook
is executed top to bottom with nbclient. A notebook whose set-up cell declares
``LIVE_SWITCH_SUPPORTED = False`` is skipped. Notebooks 01 and 03 run every
time; the other notebooks are marked ``slow`` to keep the file short.
"""

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from i0t_helpers.encoding import build_pack
from i0t_helpers.models import TINY_WIDE_MODEL_NAME, load_model

from .test_encoding import PHOTO_FOLDER, SAMPLE_PHOTOS

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK_FOLDER = Path(__file__).resolve().parent.parent / "notebooks"
#: Notebooks executed in every test run; the others run only with ``-m slow`` (about 20-50 s each here).
FAST_NOTEBOOKS = {"01_measure_the_gap.ipynb", "03_i0t_post.ipynb"}
NOTEBOOKS = [
    pytest.param(path, id=path.name, marks=() if path.name in FAST_NOTEBOOKS else pytest.mark.slow)
    for path in sorted(NOTEBOOK_FOLDER.glob("0[1-5]*.ipynb"))
]

#: Views of each photo, each with a prefix for its caption.
VIEWS = [
    ("", None), ("a close-up of ", "crop"), ("a mirrored photo of ", "mirror"), ("an upside-down photo of ", "flip"),
    ("a rotated photo of ", "rotate"), ("a small photo of ", "small"), ("a grey photo of ", "grey"),
    ("a dark photo of ", "dark"), ("a bright photo of ", "bright"), ("the left part of ", "left"),
    ("the right part of ", "right"), ("the top of ", "top"), ("the bottom of ", "bottom"),
    ("a blurred photo of ", "blur"), ("a high-contrast photo of ", "contrast"),
    ("a photo turned half a circle of ", "rotate180"), ("a photo turned three quarters of ", "rotate270"),
    ("the top left corner of ", "top-left"), ("the top right corner of ", "top-right"),
    ("the bottom left corner of ", "bottom-left"), ("the bottom right corner of ", "bottom-right"),
    ("a posterised photo of ", "posterize"), ("a solarised photo of ", "solarize"),
    ("an equalised photo of ", "equalize"),
]
#: As many images as the starter pack, which some notebooks index into.
N_IMAGES = 500
SETUP_SOURCE = re.compile(r'^SOURCE = "starter".*$', flags=re.MULTILINE)


def _view(image: Image.Image, kind: str | None) -> Image.Image:
    from PIL import ImageFilter

    width, height = image.size
    views = {
        None: lambda: image,
        "crop": lambda: image.crop((width // 4, height // 4, 3 * width // 4, 3 * height // 4)),
        "mirror": lambda: ImageOps.mirror(image),
        "flip": lambda: ImageOps.flip(image),
        "rotate": lambda: image.rotate(90, expand=True),
        "small": lambda: image.resize((max(width // 4, 8), max(height // 4, 8))),
        "grey": lambda: ImageOps.grayscale(image).convert("RGB"),
        "dark": lambda: image.point(lambda value: value // 2),
        "bright": lambda: image.point(lambda value: min(255, value * 2)),
        "left": lambda: image.crop((0, 0, width // 2, height)),
        "right": lambda: image.crop((width // 2, 0, width, height)),
        "top": lambda: image.crop((0, 0, width, height // 2)),
        "bottom": lambda: image.crop((0, height // 2, width, height)),
        "blur": lambda: image.filter(ImageFilter.GaussianBlur(3)),
        "contrast": lambda: ImageOps.autocontrast(image, cutoff=5),
        "rotate180": lambda: image.rotate(180),
        "rotate270": lambda: image.rotate(270, expand=True),
        "top-left": lambda: image.crop((0, 0, width // 2, height // 2)),
        "top-right": lambda: image.crop((width // 2, 0, width, height // 2)),
        "bottom-left": lambda: image.crop((0, height // 2, width // 2, height)),
        "bottom-right": lambda: image.crop((width // 2, height // 2, width, height)),
        "posterize": lambda: ImageOps.posterize(image, 2),
        "solarize": lambda: ImageOps.solarize(image, 128),
        "equalize": lambda: ImageOps.equalize(image),
    }
    return views[kind]()


@pytest.fixture(scope="module")
def live_pack_path(tmp_path_factory):
    """A pack of 500 photo views (21 photos x 24 views, cut to 500), one caption each, from the tiny 512-d model.

    The embedding dimension matches CLIP ViT-B/32, so analyses that look at
    many dimensions behave as with the real model.
    """
    images, captions = [], []
    for name, caption in SAMPLE_PHOTOS.items():
        photo = Image.open(PHOTO_FOLDER / name).convert("RGB")
        for prefix, kind in VIEWS:
            images.append(_view(photo, kind))
            captions.append(f"{prefix}{caption}")
    images, captions = images[:N_IMAGES], captions[:N_IMAGES]
    loaded = load_model(TINY_WIDE_MODEL_NAME, device="cpu")
    pack = build_pack(loaded, images, captions, dataset="scikit-image sample photos, 15 views each",
                      cache=False, progress=False)
    return pack.save(tmp_path_factory.mktemp("live") / "photos_tiny.npz")


def test_live_pack_is_starter_shaped(live_pack_path):
    from i0t_helpers.course import load_source

    pack = load_source(str(live_pack_path))
    assert len(SAMPLE_PHOTOS) * len(VIEWS) >= N_IMAGES
    assert pack.n_images == pack.n_texts == N_IMAGES
    assert np.array_equal(pack.text_image_index, np.arange(pack.n_images))
    assert pack.model_name == f"{TINY_WIDE_MODEL_NAME} (random initialisation)"


def _setup_cell(notebook):
    for cell in notebook.cells:
        if cell.cell_type == "code" and SETUP_SOURCE.search(cell.source):
            return cell
    return None


@pytest.mark.parametrize("notebook_path", NOTEBOOKS or [pytest.param(None, id="none")])
def test_notebook_runs_on_live_pack(notebook_path, live_pack_path, monkeypatch, request):
    if notebook_path is None:
        pytest.skip("no course notebook in notebooks/ yet")
    if notebook_path.name not in FAST_NOTEBOOKS and "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("runs only when slow tests are selected: pytest -m slow")
    notebook = nbformat.read(notebook_path, as_version=4)
    setup = _setup_cell(notebook)
    assert setup is not None, f'{notebook_path.name} has no set-up cell with SOURCE = "starter"'
    if re.search(r"^LIVE_SWITCH_SUPPORTED\s*=\s*False", setup.source, flags=re.MULTILINE):
        pytest.skip(f"{notebook_path.name} declares LIVE_SWITCH_SUPPORTED = False")

    setup.source = SETUP_SOURCE.sub(f"SOURCE = {str(live_pack_path)!r}  # live-switch test", setup.source)
    notebook.cells.append(nbformat.v4.new_code_cell(
        'print("live-switch model:", getattr(globals().get("pack"), "model_name", "no pack variable"))'
    ))
    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv("MPLBACKEND", "Agg")

    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK_FOLDER)}})
    client.execute()

    last_output = "".join(output.get("text", "") for output in notebook.cells[-1].outputs)
    assert "live-switch model:" in last_output
    if "no pack variable" not in last_output:
        assert TINY_WIDE_MODEL_NAME in last_output, last_output

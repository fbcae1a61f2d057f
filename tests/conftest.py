from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent")
    return SHARED_DATA


# Photo-like sizes (width, height) of the photographs made where ../shared/data is absent; two are grayscale.
MADE_PHOTOS = [(500, 375), (375, 500), (1024, 768), (160, 150), (640, 480), (333, 500), (500, 333), (800, 600)]


@pytest.fixture(scope="session")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """JPEG photographs for the tests that decode, crop, explain and serve them: the 32 real ILSVRC photographs
    of ../shared/data where it is present, else eight made here at photo-like sizes (smooth colour fields with
    grain, two grayscale), so that a plain clone runs the same tests."""
    sample = SHARED_DATA / "imagenet-sample"
    if sample.is_dir():
        return sorted(sample.iterdir())
    folder = tmp_path_factory.mktemp("photos")
    for index, (width, height) in enumerate(MADE_PHOTOS):
        rows, cols = np.mgrid[0:height, 0:width]
        colours = np.stack([cols * 255 / width, rows * 255 / height, (rows + cols) * 127 / (width + height)], -1)
        grain = np.random.default_rng(index).normal(0, 20, (height, width, 3))
        image = Image.fromarray((colours + grain).clip(0, 255).astype(np.uint8))
        image.convert("L" if index in (3, 6) else "RGB").save(folder / f"photo_{index:02d}.JPEG", quality=90)
    return sorted(folder.iterdir())


@pytest.fixture(scope="session")
def fashion_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root with the real Fashion-MNIST prepared (from Debian's package or a local copy)."""
    from googlenet.data import DEBIAN_FASHION_MNIST, DataError, ensure_fashion_mnist

    root = tmp_path_factory.mktemp("fashion")
    local = Path(__file__).resolve().parents[1] / "data"
    source = DEBIAN_FASHION_MNIST if DEBIAN_FASHION_MNIST.is_dir() else local / "FashionMNIST" / "raw"
    try:
        if source.is_dir():
            for f in source.iterdir():
                (root / f.name).symlink_to(f)
        ensure_fashion_mnist(root, allow_download=False)
    except DataError as error:
        pytest.skip(f"real Fashion-MNIST is not available here: {error}")
    return root

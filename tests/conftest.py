from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent")
    return SHARED_DATA


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

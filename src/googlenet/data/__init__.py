"""The data layer: image decoding, preprocessing, Fashion-MNIST, image folders, batches and splits.

Everything above it imports from here; the modules inside import each other directly.
"""

from googlenet.data.batches import (
    Batches,
    DataBundle,
    EpochSampler,
    LoaderBatches,
    TensorBatches,
    erasing_masks,
    keep_on_device,
    seeded_generator,
    split_indices,
)
from googlenet.data.fashion import (
    DEBIAN_FASHION_MNIST,
    FASHION_MNIST_FILES,
    FASHION_MNIST_TEST_IMAGES,
    ensure_fashion_mnist,
    fashion_mnist_raw_dir,
    fashion_mnist_test,
    load_fashion_mnist,
)
from googlenet.data.folders import SYNSET_MAPPING, class_names_for, folder_split, read_synset_mapping, train_transform
from googlenet.data.images import IMAGE_EXTENSIONS, collect_images, decode_image, open_image, to_8bit
from googlenet.data.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from googlenet.data.splits import build_data, eval_split, test_split_size
from googlenet.errors import DataError

__all__ = [
    "DEBIAN_FASHION_MNIST",
    "FASHION_MNIST_FILES",
    "FASHION_MNIST_TEST_IMAGES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "SYNSET_MAPPING",
    "Batches",
    "DataBundle",
    "DataError",
    "EpochSampler",
    "LoaderBatches",
    "Preprocessing",
    "TensorBatches",
    "build_data",
    "class_names_for",
    "collect_images",
    "decode_image",
    "ensure_fashion_mnist",
    "erasing_masks",
    "eval_split",
    "fashion_mnist_raw_dir",
    "fashion_mnist_test",
    "folder_split",
    "keep_on_device",
    "load_fashion_mnist",
    "open_image",
    "read_synset_mapping",
    "seeded_generator",
    "split_indices",
    "test_split_size",
    "to_8bit",
    "train_transform",
]

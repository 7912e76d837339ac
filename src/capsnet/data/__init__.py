"""Datasets (MNIST, Fashion-MNIST) from IDX files, splits, augmentation, MultiMNIST, affNIST."""

from capsnet.data.datasets import (
    DATASETS,
    DatasetSpec,
    download_dataset,
    find_dataset,
    get_spec,
    load_split,
    search_path,
)
from capsnet.data.idx import read_idx
from capsnet.data.multimnist import MultiMNISTConfig, OverlayTargets
from capsnet.data.transforms import random_shift, shift_images, train_val_split

__all__ = [
    "DATASETS",
    "DatasetSpec",
    "MultiMNISTConfig",
    "OverlayTargets",
    "download_dataset",
    "find_dataset",
    "get_spec",
    "load_split",
    "random_shift",
    "read_idx",
    "search_path",
    "shift_images",
    "train_val_split",
]

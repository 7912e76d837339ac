"""Data, in two layers: raw sources (``sources``: the IDX files of MNIST and Fashion-MNIST;
``cifar10``, ``svhn``, ``smallnorb``, ``folder``, ``npz`` readers) and tasks (``tasks``,
``custom``: what ``--dataset`` names, with splits, augmentation, MultiMNIST and affNIST built
from the sources; ``tasks.get_task`` resolves a name once into a ``task.Task``)."""

from capsnet.data.geometry import shift_images
from capsnet.data.idx import read_idx
from capsnet.data.multimnist import MultiMNISTConfig, OverlayTargets
from capsnet.data.sources import (
    DATASETS,
    DatasetSpec,
    download_dataset,
    find_dataset,
    get_spec,
    load_split,
    search_path,
)
from capsnet.data.transforms import random_shift, train_val_split

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

"""The names the command line offers (models, tasks, routings, …), importable without
PyTorch so that ``capsnet --help`` and argument errors answer at once.

Each mirrors a registry of a module that needs PyTorch; ``tests/test_cli_parser.py``
checks that they agree.
"""

from __future__ import annotations

from capsnet import _deprecated

MODELS = (  # capsnet.models.list_models() (the registered built-in models)
    "aff-capsnet",
    "aff-capsnet-small",
    "baseline-cnn",
    "baseline-cnn-small",
    "capsnet-cifar10",
    "capsnet-mnist",
    "capsnet-small",
    "efficient-capsnet",
    "efficient-capsnet-p4",
    "em-capsnet",
    "em-capsnet-small",
)
DATASETS = ("mnist", "fashion-mnist")  # capsnet.data.sources.DATASETS: the IDX sources
TASKS = (  # capsnet.data.tasks.TASKS
    "mnist",
    "fashion-mnist",
    "expanded-mnist",
    "multimnist",
    "affnist-generated",
    "affnist",
)
OFFICIAL = ("cifar10", "svhn", "smallnorb")  # capsnet.data.custom.OFFICIAL
RESIZE = ("pad", "crop", "stretch")  # capsnet.data.images.RESIZE
NORMALIZE = ("none", "per-image")  # capsnet.data.images.NORMALIZE
FITS = ("mnist",)  # capsnet.data.images.FITS: `capsnet predict --fit`
ROUTINGS = ("dynamic", "em", "self-attention")  # capsnet.nn.routing.ROUTINGS
PRECISIONS = ("fp32", "bf16", "fp16", "auto")  # capsnet.runtime.PRECISIONS and AUTO
LR_SCHEDULES = ("exponential", "cosine")  # capsnet.training.config.LR_SCHEDULES
PERTURBATION_NAMES = (  # capsnet.tools.perturbations.PERTURBATIONS
    "rotation",
    "scale",
    "shear",
    "translation",
    "stroke",
    "blur",
    "resolution",
    "elastic",
)
TABLE1_ROWS = (  # capsnet.tools.experiments.ROW_NAMES
    "baseline",
    "routing1-norecon",
    "routing1-recon",
    "routing3-norecon",
    "routing3-recon",
)
TABLE1_SIZES = ("paper", "small")  # capsnet.tools.experiments.SIZES

__all__ = [
    "DATASETS",
    "FITS",
    "LR_SCHEDULES",
    "MODELS",
    "NORMALIZE",
    "OFFICIAL",
    "PERTURBATION_NAMES",
    "PRECISIONS",
    "RESIZE",
    "ROUTINGS",
    "TABLE1_ROWS",
    "TABLE1_SIZES",
    "TASKS",
]
__getattr__ = _deprecated.module_getattr(
    __name__, {"PERTURBATIONS": ("capsnet.names.PERTURBATION_NAMES", lambda: PERTURBATION_NAMES)}
)

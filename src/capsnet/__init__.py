"""capsnet: Capsule Networks (Sabour, Frosst & Hinton, 2017) in PyTorch."""

__version__ = "0.1.0"

from capsnet.baseline import BaselineCNN, BaselineConfig  # noqa: E402
from capsnet.checkpoint import load_run  # noqa: E402
from capsnet.losses import margin_loss, reconstruction_loss  # noqa: E402
from capsnet.models import (  # noqa: E402
    CapsNet,
    CapsNetConfig,
    CapsNetOutput,
    create_model,
    list_models,
    register_model,
)
from capsnet.routing import capsule_lengths, dynamic_routing, squash  # noqa: E402

__all__ = [
    "BaselineCNN",
    "BaselineConfig",
    "CapsNet",
    "CapsNetConfig",
    "CapsNetOutput",
    "capsule_lengths",
    "create_model",
    "dynamic_routing",
    "list_models",
    "load_run",
    "margin_loss",
    "reconstruction_loss",
    "register_model",
    "squash",
]

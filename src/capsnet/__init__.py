"""capsnet: Capsule Networks (Sabour, Frosst & Hinton, 2017) in PyTorch."""

__version__ = "0.1.0"

from capsnet.losses import margin_loss, reconstruction_loss  # noqa: E402
from capsnet.models import (  # noqa: E402
    BaselineCNN,
    BaselineConfig,
    CapsNet,
    CapsNetConfig,
    CapsNetOutput,
    CifarCapsNet,
    CifarCapsNetConfig,
    EfficientCapsNet,
    EfficientCapsNetConfig,
    EMCapsNet,
    EMCapsNetConfig,
    create_model,
    list_models,
    register_model,
)
from capsnet.pretrained import list_pretrained, load_pretrained  # noqa: E402
from capsnet.routing import (  # noqa: E402
    ROUTINGS,
    Routed,
    RoutingSpec,
    capsule_lengths,
    dynamic_routing,
    efficient_squash,
    em_routing,
    self_attention_routing,
    squash,
)
from capsnet.training.rundir import load_run  # noqa: E402

__all__ = [
    "BaselineCNN",
    "BaselineConfig",
    "CapsNet",
    "CapsNetConfig",
    "CapsNetOutput",
    "CifarCapsNet",
    "CifarCapsNetConfig",
    "EMCapsNet",
    "EMCapsNetConfig",
    "EfficientCapsNet",
    "EfficientCapsNetConfig",
    "ROUTINGS",
    "Routed",
    "RoutingSpec",
    "capsule_lengths",
    "create_model",
    "dynamic_routing",
    "efficient_squash",
    "em_routing",
    "list_models",
    "list_pretrained",
    "load_pretrained",
    "load_run",
    "margin_loss",
    "reconstruction_loss",
    "register_model",
    "self_attention_routing",
    "squash",
]

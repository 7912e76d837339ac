"""capsnet: Capsule Networks (Sabour, Frosst & Hinton, 2017) in PyTorch.

The public names below are imported on first use (PEP 562), so that ``import capsnet``
and the command line's ``--help`` do not load PyTorch; ``from capsnet import X`` works
as usual.

The package is layered; each layer imports only the ones before it (``tests/test_layout.py``
checks): the base modules here (``errors``, ``typecheck``, ``names``, ``files``, ``runtime``,
``allocator``, ``targets``); ``capsnet.nn`` (routing, capsule layers, losses, native
kernels); ``capsnet.models`` and ``capsnet.data`` (neither knows the other);
``capsnet.training``; ``capsnet.tools`` (predict, export, figures, robustness, benchmarks,
experiments, the explorer); ``capsnet.cli``. Old module paths (``capsnet.routing``, …)
still import for one release, with a DeprecationWarning (:mod:`capsnet._deprecated`).
"""

from __future__ import annotations

import importlib
from typing import Any

from capsnet import _deprecated

__version__ = "0.1.0"

_LAZY = {  # public name → the module that defines it
    "margin_loss": "capsnet.nn.losses",
    "reconstruction_loss": "capsnet.nn.losses",
    **dict.fromkeys(
        (
            "AffCapsNet",
            "AffCapsNetConfig",
            "BaselineCNN",
            "BaselineConfig",
            "CapsNet",
            "CapsNetConfig",
            "CapsNetOutput",
            "CifarCapsNet",
            "CifarCapsNetConfig",
            "EfficientCapsNet",
            "EfficientCapsNetConfig",
            "EMCapsNet",
            "EMCapsNetConfig",
            "P4CapsNet",
            "P4CapsNetConfig",
            "create_model",
            "list_models",
            "register_model",
        ),
        "capsnet.models",
    ),
    "list_pretrained": "capsnet.training.pretrained",
    "load_pretrained": "capsnet.training.run",
    **dict.fromkeys(
        (
            "ROUTINGS",
            "Routed",
            "RoutingSpec",
            "capsule_lengths",
            "dynamic_routing",
            "efficient_squash",
            "em_routing",
            "self_attention_routing",
            "shared_dynamic_routing",
            "squash",
        ),
        "capsnet.nn.routing",
    ),
    "load_run": "capsnet.training.run",
}

__all__ = sorted(_LAZY)
_deprecated.install()


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'capsnet' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next access is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])

"""The model families, their registry, the shared config base and the model contract.

| file | family | registered names |
| --- | --- | --- |
| ``capsnet.py`` | CapsNet, dynamic routing (Sabour et al., 2017) | capsnet-mnist, capsnet-small |
| ``aff_capsnet.py`` | Aff-CapsNet, matrices shared by primary capsules | aff-capsnet(-small) |
| ``efficient.py`` | Efficient-CapsNet, self-attention routing | efficient-capsnet |
| ``p4.py`` | Efficient-CapsNet equivariant to quarter turns | efficient-capsnet-p4 |
| ``em_capsnet.py`` | matrix capsules with EM routing | em-capsnet, em-capsnet-small |
| ``cifar.py`` | CapsNet with 3 channels, 64 primary types, none-of-the-above | capsnet-cifar10 |
| ``baseline.py`` | the paper's baseline CNN | baseline-cnn, baseline-cnn-small |

What every model provides, and what each tool needs of it: ``contract.py``.
"""

from capsnet.models.aff_capsnet import AffCapsNet, AffCapsNetConfig
from capsnet.models.baseline import BaselineCNN, BaselineConfig, SoftmaxOutput
from capsnet.models.capsnet import CapsNet, CapsNetConfig, CapsNetOutput, CapsuleModel
from capsnet.models.cifar import CifarCapsNet, CifarCapsNetConfig
from capsnet.models.config import CapsuleConfig, ModelConfig, VectorCapsuleConfig
from capsnet.models.contract import (
    CapsuleClassifier,
    CapsuleOutput,
    Classifier,
    PoseDecoder,
    Scored,
    provides,
    require,
)
from capsnet.models.efficient import EfficientCapsNet, EfficientCapsNetConfig
from capsnet.models.em_capsnet import EMCapsNet, EMCapsNetConfig
from capsnet.models.p4 import P4CapsNet, P4CapsNetConfig
from capsnet.models.registry import (
    check_learns_absence,
    check_model_name,
    check_model_options,
    create_model,
    list_models,
    register_model,
)

__all__ = [
    "AffCapsNet",
    "AffCapsNetConfig",
    "BaselineCNN",
    "BaselineConfig",
    "CapsNet",
    "CapsNetConfig",
    "CapsNetOutput",
    "CapsuleClassifier",
    "CapsuleConfig",
    "CapsuleModel",
    "CapsuleOutput",
    "CifarCapsNet",
    "CifarCapsNetConfig",
    "Classifier",
    "EMCapsNet",
    "EMCapsNetConfig",
    "EfficientCapsNet",
    "EfficientCapsNetConfig",
    "ModelConfig",
    "P4CapsNet",
    "P4CapsNetConfig",
    "PoseDecoder",
    "Scored",
    "SoftmaxOutput",
    "VectorCapsuleConfig",
    "check_learns_absence",
    "check_model_name",
    "check_model_options",
    "create_model",
    "list_models",
    "provides",
    "register_model",
    "require",
]

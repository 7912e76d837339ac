"""The paper's baseline CNN (§5): three 5×5 convolutions, two fully connected layers, softmax.

"three convolutional layers of 256, 256, 128 channels. Each has 5x5 kernels and stride of
1. The last convolutional layers are followed by two fully connected layers of size 328,
192. The last fully connected layer is connected with dropout to a 10 class softmax layer
with cross entropy loss." The paper gives 35.4M parameters; 'same' padding (2 pixels) and
no pooling reproduce it: on 28×28 inputs the convolutions keep 128 × 28 × 28 = 100,352
features, and the network has 35,445,522 parameters
(6,656 + 1,638,656 + 819,328 conv, 32,915,784 + 63,168 + 1,930 fully connected).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from capsnet.errors import ConfigError
from capsnet.models.config import ModelConfig
from capsnet.models.registry import register_model
from capsnet.nn.layers import Conv2d, normalise_input
from capsnet.targets import OverlayTargets, multi_hot


@dataclass(frozen=True)
class BaselineConfig(ModelConfig):
    """Hyper-parameters of the baseline CNN. The defaults are the paper's MNIST baseline."""

    conv_channels: tuple[int, ...] = (256, 256, 128)
    kernel_size: int = 5  # odd: 'same' padding of kernel_size // 2, stride 1, no pooling
    hidden: tuple[int, ...] = (328, 192)
    dropout: float = 0.5  # before the softmax layer

    def validate(self) -> None:
        super().validate()
        if self.kernel_size % 2 == 0 or not 0 <= self.dropout < 1:
            raise ConfigError("baseline kernel_size must be odd and dropout in [0, 1)")


class SoftmaxOutput(NamedTuple):
    """A plain classifier's output (meets ``contract.Scored``): no capsules."""

    probabilities: Tensor  # (B, K) softmax of the logits
    logits: Tensor  # (B, K)

    @property
    def scores(self) -> Tensor:
        """(B, K) class scores (the contract's name): the probabilities."""
        return self.probabilities


class BaselineCNN(nn.Module):
    """Conv(5×5, same)+ReLU ×3 → FC+ReLU ×2 → dropout → linear → softmax."""

    learns_absence = True  # a blank's target: uniform over the classes

    def __init__(self, config: BaselineConfig | None = None):
        super().__init__()
        self.config = cfg = config or BaselineConfig()
        convs: list[nn.Module] = []
        for c_in, c_out in zip(
            (cfg.in_channels, *cfg.conv_channels[:-1]), cfg.conv_channels, strict=True
        ):
            convs += [Conv2d(c_in, c_out, cfg.kernel_size, padding=cfg.kernel_size // 2)]
            convs += [nn.ReLU(inplace=True)]
        sizes = (cfg.conv_channels[-1] * math.prod(cfg.input_size), *cfg.hidden)
        fcs: list[nn.Module] = []
        for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
            fcs += [nn.Linear(n_in, n_out), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*convs)
        self.classifier = nn.Sequential(
            *fcs, nn.Dropout(cfg.dropout), nn.Linear(sizes[-1], cfg.num_classes)
        )

    def forward(self, x: Tensor, y: Any = None) -> SoftmaxOutput:
        """x: images (B, C, H, W) in [0, 1] (normalised as ``input_norm`` says); ``y`` is
        ignored (the trainer passes it)."""
        x = normalise_input(x, self.config.input_norm)
        logits = self.classifier(self.features(x).flatten(1))  # (B, K)
        return SoftmaxOutput(logits.softmax(1), logits)

    def loss(
        self, out: SoftmaxOutput, x: Tensor, y: Tensor | OverlayTargets
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Cross-entropy against a distribution uniform over the classes present (one label,
        or OverlayTargets' several); over all classes for a blank (``ABSENT``), which a
        softmax can only say by spreading its belief."""
        k = self.config.num_classes
        hot = multi_hot(y.labels if isinstance(y, OverlayTargets) else y, k)  # (B, K)
        count = hot.sum(1, keepdim=True)  # (B, 1): classes present
        target = torch.where(count > 0, hot / count.clamp_min(1), torch.full_like(hot, 1 / k))
        loss = F.cross_entropy(out.logits.float(), target)
        return loss, {"cross_entropy": loss.detach()}


PAPER_BASELINE = BaselineConfig()
SMALL_BASELINE = BaselineConfig(conv_channels=(64, 64, 32), hidden=(128, 64))


# The paper's baseline: 35,445,522 parameters on 28×28 inputs with 10 classes.
register_model("baseline-cnn", BaselineCNN, PAPER_BASELINE)


# A CPU-sized baseline: convolutions of 64, 64, 32 channels, FC 128, 64.
register_model("baseline-cnn-small", BaselineCNN, SMALL_BASELINE)


__all__ = ["BaselineCNN", "BaselineConfig", "SoftmaxOutput"]

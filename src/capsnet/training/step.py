"""One optimisation step and what it needs: the model built for the data (``build_model``),
its optimiser (``adam``) and the step itself (``train_step``), shared by the training loop
and the benchmarks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.graph import increment_version

from capsnet import _deprecated
from capsnet.models import create_model
from capsnet.runtime import autocast
from capsnet.targets import Targets, num_correct
from capsnet.training.config import DATA_FIELDS, TrainConfig


def adam(model: nn.Module, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """The paper's Adam, or AdamW (decoupled weight decay) when ``weight_decay`` > 0; fused
    into one kernel where PyTorch has it (CPU and CUDA parameters): the same update, and for
    the paper network's 8.2M parameters on 2026-12-04's AMD EPYC 4-5 ms a step instead of
    12-18 (benchmarks/adam-fused-2026-12-04.log). The fused kernel does not count its
    in-place update in the parameters' version counters (PyTorch 2.13), which caches keyed
    on them rely on (:class:`capsnet.nn.conv.Conv2d`'s kernel spectrum); a hook after each
    step counts it.
    """
    params = list(model.parameters())
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    if weight_decay:
        optim = torch.optim.AdamW(params, lr, weight_decay=weight_decay, fused=fused)
    else:
        optim = torch.optim.Adam(params, lr=lr, fused=fused)
    if fused:
        optim.register_step_post_hook(lambda *_: increment_version(params))
    return optim


def data_fields(image_shape: tuple[int, ...], num_classes: int) -> dict[str, Any]:
    """The model config fields the data sets (``DATA_FIELDS``): in_channels C, input_size
    (H, W) of images (C, H, W), and num_classes."""
    c, h, w = image_shape
    return dict(zip(DATA_FIELDS, (c, (h, w), num_classes), strict=True))


def build_model(cfg: TrainConfig, image_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The registered model with its input shape and class count taken from the data (the
    config has checked that its overrides set none of these)."""
    return create_model(cfg.model, **data_fields(image_shape, num_classes), **cfg.model_overrides)


@_deprecated.keyword_only(5)
def train_step(
    model: nn.Module,
    forward: Callable[..., Any],
    optim: torch.optim.Optimizer,
    x: Tensor,
    y: Targets,
    *,
    precision: str = "fp32",
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[Tensor, Tensor]:
    """One optimisation step. ``forward`` is ``model`` or a wrapper of it (DDP, compiled).

    Returns the detached loss and the number of correct predictions (no device sync).
    """
    with autocast(x.device, precision):
        out = forward(x, y)
        loss, _ = model.loss(out, x, y)
    optim.zero_grad(set_to_none=True)
    if scaler is not None and scaler.is_enabled():
        scaler.scale(loss).backward()
        scaler.step(optim)
        scaler.update()
    else:
        loss.backward()
        optim.step()
    return loss.detach(), num_correct(out.scores.detach(), y)


__all__ = ["adam", "build_model", "data_fields", "train_step"]

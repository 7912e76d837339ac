"""``--tensorboard``: training scalars and figures as TensorBoard events in the run directory.

Per step: ``step/loss``, ``step/lr``, ``step/images_per_second``; per epoch: every number of
the epoch's ``history.csv`` row under ``epoch/`` (loss, accuracy, validation, images/s),
and the reconstruction and coupling figures (see :mod:`capsnet.models.figures`) of the first
validation images as ``figures/reconstructions`` and ``figures/coupling``. Events go to
``RUN_DIR/tensorboard``; view them with ``tensorboard --logdir RUN_DIR``. Needs the
``tensorboard`` package (``pip install 'capsnet[tensorboard]'``).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from capsnet.errors import ConfigError
from capsnet.models.contract import CapsuleClassifier, PoseDecoder, provides
from capsnet.models.figures import save_coupling, save_reconstructions

log = logging.getLogger(__name__)

FIGURE_IMAGES = 8  # validation images shown in the reconstruction figure


def check_available() -> None:
    """ConfigError (before any work) if the tensorboard package is missing."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise ConfigError(
            "--tensorboard needs the tensorboard package: pip install 'capsnet[tensorboard]'"
        ) from None


class TensorBoardLog:
    """A SummaryWriter on ``run_dir/tensorboard`` with the trainer's scalars and figures."""

    def __init__(self, run_dir: Path) -> None:
        check_available()
        self.log_dir = run_dir / "tensorboard"
        self._writer: Any = None

    @property
    def writer(self) -> Any:
        """The SummaryWriter, made on first use: nothing is written before training starts
        (``--overwrite`` clears the run directory first)."""
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.log_dir))
        return self._writer

    def step(self, step: int, loss: float, lr: float, images_per_second: float) -> None:
        self.writer.add_scalar("step/loss", loss, step)
        self.writer.add_scalar("step/lr", lr, step)
        self.writer.add_scalar("step/images_per_second", images_per_second, step)

    def epoch(self, row: dict[str, Any]) -> None:
        for key, value in row.items():
            if key != "epoch" and isinstance(value, int | float):
                self.writer.add_scalar(f"epoch/{key}", value, row["epoch"])
        self.writer.flush()

    def figures(
        self, model: nn.Module, x: Tensor, y: Any, epoch: int, names: Sequence[str]
    ) -> None:
        """The coupling (first image) and reconstruction figures of uint8 images ``x``."""
        if not provides(model, CapsuleClassifier) or len(x) == 0:
            return
        was_training = model.training
        images = x[:FIGURE_IMAGES].float().div(255).to(next(model.parameters()).device)
        with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
            paths = {"coupling": save_coupling(model, images[0], Path(tmp) / "c.png", names)}
            if provides(model, PoseDecoder) and isinstance(y, Tensor):
                labels = y[:FIGURE_IMAGES]
                path = Path(tmp) / "r.png"
                paths["reconstructions"] = save_reconstructions(model, images, labels, path, names)
            for tag, path in paths.items():
                with Image.open(path) as im:
                    pixels = np.asarray(im.convert("RGB"))  # (H, W, 3)
                self.writer.add_image(f"figures/{tag}", pixels, epoch, dataformats="HWC")
        model.train(was_training)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


__all__ = ["TensorBoardLog", "check_available"]

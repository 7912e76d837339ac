"""Pictures of what a trained CapsNet does (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from capsnet.checkpoint import atomic_write


def _image(x: Tensor) -> np.ndarray:
    """(C, H, W) in [0, 1] → (H, W) or (H, W, C) array for imshow."""
    return (x[0] if x.shape[0] == 1 else x.permute(1, 2, 0)).numpy()


@torch.no_grad()
def save_reconstructions(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    path: str | Path,
    class_names: Sequence[str] | None = None,
) -> Path:
    """Inputs (top row) above their reconstructions from the longest capsule (bottom row).

    ``images``: (N, C, H, W) floats in [0, 1]; titles give the true and predicted class,
    failures in red (cf. the paper's Fig. 3).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model.eval()
    device = next(model.parameters()).device
    out = model(images.to(device))
    if out.reconstructions is None:
        raise ValueError("the model has no decoder (trained with --no-reconstruction)")
    preds = out.lengths.argmax(1).cpu()
    recon = out.reconstructions.float().cpu()
    n = len(images)
    name = (lambda k: class_names[k]) if class_names else str
    fig, axes = plt.subplots(2, n, figsize=(1.3 * n, 3), squeeze=False)
    cmap = "gray" if images.shape[1] == 1 else None
    for i in range(n):
        ok = int(preds[i]) == int(labels[i])
        axes[0, i].imshow(_image(images[i].cpu()), cmap=cmap, vmin=0, vmax=1)
        axes[0, i].set_title(f"true {name(int(labels[i]))}", fontsize=7)
        axes[1, i].imshow(_image(recon[i]), cmap=cmap, vmin=0, vmax=1)
        axes[1, i].set_title(f"pred {name(int(preds[i]))}", fontsize=7, color="k" if ok else "r")
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    atomic_write(path, lambda p: fig.savefig(p, dpi=100, format="png"))
    plt.close(fig)
    return path

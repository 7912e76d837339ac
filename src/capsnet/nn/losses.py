"""Losses of the paper: margin loss (eq. 4) and the reconstruction regulariser (§4.1)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from capsnet.targets import multi_hot


def _as_multi_hot(targets: Tensor, num_classes: int) -> Tensor:
    if targets.dim() == 1:  # class indices; ABSENT (-1) is no class: all negatives
        return multi_hot(targets, num_classes)
    if targets.dim() == 2 and targets.shape[1] == num_classes:
        return targets.float()
    raise ValueError(
        f"targets must be class indices (B,) or multi-hot (B, {num_classes}), "
        f"got shape {tuple(targets.shape)}"
    )


def margin_loss(
    lengths: Tensor,
    targets: Tensor,
    m_pos: float = 0.9,
    m_neg: float = 0.1,
    lam: float = 0.5,
) -> Tensor:
    """Eq. 4: ``L_k = T_k max(0, m⁺ - |v_k|)² + λ (1 - T_k) max(0, |v_k| - m⁻)²``.

    Args:
        lengths: capsule lengths |v_k|, (B, K).
        targets: class indices (B,) or multi-hot (B, K) (several positives, e.g. MultiMNIST).
            An index ``capsnet.targets.ABSENT`` (-1) names no class: every class of that
            example is a negative (a blank image, whose capsules should all be short).

    Returns:
        Scalar: L_k summed over the K classes, averaged over the batch.
    """
    t = _as_multi_hot(targets, lengths.shape[1])
    lengths = lengths.float()
    pos = t * F.relu(m_pos - lengths).pow(2)
    neg = lam * (1.0 - t) * F.relu(lengths - m_neg).pow(2)
    return (pos + neg).sum(dim=1).mean()


def spread_loss(activations: Tensor, targets: Tensor, margin: float | Tensor) -> Tensor:
    """Spread loss of Hinton, Sabour & Frosst (2018), eq. 3:
    ``L = Σ_{i≠t} max(0, m - (a_t - a_i))²``.

    Args:
        activations: class activations a (B, K).
        targets: class indices t (B,).
        margin: m; the paper raises it linearly from 0.2 to 0.9 during training.

    Returns:
        Scalar: L averaged over the batch.
    """
    a = activations.float()
    if targets.dim() != 1:
        raise ValueError(f"spread loss needs class indices (B,), got {tuple(targets.shape)}")
    others = 1.0 - F.one_hot(targets.long(), a.shape[1]).float()  # (B, K): i ≠ t
    a_t = a.gather(1, targets.long().unsqueeze(1))  # (B, 1)
    return (others * F.relu(margin - (a_t - a)).pow(2)).sum(1).mean()


def reconstruction_loss(reconstructions: Tensor, images: Tensor) -> Tensor:
    """Sum of squared errors per example (over all pixels), averaged over the batch.

    The paper's text scales this by 0.0005; the models' default ``reconstruction_weight``
    is 0.01, the balance of the authors' code (see ``VectorCapsuleConfig``).
    """
    diff = reconstructions.float() - images.float()
    return diff.pow(2).flatten(1).sum(dim=1).mean()


def capsnet_loss(
    lengths: Tensor,
    reconstructions: Tensor | None,
    images: Tensor,
    targets: Tensor,
    reconstruction_weight: float = 0.0005,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Total training loss: margin loss + weight · reconstruction SSE.

    Returns the scalar loss and its detached parts (for logging, no device sync).
    """
    margin = margin_loss(lengths, targets)
    parts = {"margin": margin.detach()}
    if reconstructions is None or reconstruction_weight == 0:
        return margin, parts
    recon = reconstruction_loss(reconstructions, images)
    parts["reconstruction"] = recon.detach()
    return margin + reconstruction_weight * recon, parts


__all__ = ["capsnet_loss", "margin_loss", "reconstruction_loss", "spread_loss"]

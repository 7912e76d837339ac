import pytest
import torch

from capsnet import margin_loss, reconstruction_loss


def test_margin_loss_by_hand():
    lengths = torch.tensor([[0.8, 0.3, 0.05], [0.95, 0.2, 0.6]])
    targets = torch.tensor([0, 2])
    # example 1: (0.9-0.8)² + 0.5(0.3-0.1)² + 0 = 0.01 + 0.02 = 0.03
    # example 2: 0.5(0.95-0.1)² + 0.5(0.2-0.1)² + (0.9-0.6)² = 0.36125 + 0.005 + 0.09
    expected = (0.03 + 0.45625) / 2
    assert margin_loss(lengths, targets).item() == pytest.approx(expected, rel=1e-6)


def test_margin_loss_accepts_multi_hot_targets():
    lengths = torch.tensor([[0.5, 0.95, 0.3]])
    multi = torch.tensor([[1.0, 1.0, 0.0]])
    # (0.9-0.5)² + 0 + 0.5(0.3-0.1)² = 0.16 + 0.02
    assert margin_loss(lengths, multi).item() == pytest.approx(0.18, rel=1e-6)


def test_margin_loss_is_zero_beyond_the_margins():
    lengths = torch.tensor([[0.95, 0.05, 0.0]])
    assert margin_loss(lengths, torch.tensor([0])).item() == 0.0


def test_margin_loss_rejects_bad_target_shape():
    with pytest.raises(ValueError, match="targets"):
        margin_loss(torch.rand(2, 3), torch.zeros(2, 4))


def test_reconstruction_loss_is_sum_over_pixels_mean_over_batch():
    recon = torch.zeros(2, 1, 2, 2)
    images = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.5, 0.0, 0.0, 0.0]]).view(2, 1, 2, 2)
    assert reconstruction_loss(recon, images).item() == pytest.approx((2 + 0.25) / 2)

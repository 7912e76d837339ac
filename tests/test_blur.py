"""The blur augmentation (``--blur``): a Gaussian of its own σ per image, batched."""

import math

import pytest
import torch

from capsnet.data import load_split
from capsnet.data.geometry import gaussian_blur
from capsnet.data.transforms import Augmentation
from capsnet.errors import ConfigError
from capsnet.training import TrainConfig


def _dot(size: int = 15) -> torch.Tensor:
    """One image (1, 1, size, size): 1.0 at the centre, 0 elsewhere."""
    x = torch.zeros(1, 1, size, size, dtype=torch.float64)
    x[0, 0, size // 2, size // 2] = 1.0
    return x


def test_sigma_zero_leaves_images_exactly_as_they_are():
    x = torch.rand(3, 2, 9, 7)
    assert torch.equal(gaussian_blur(x, torch.zeros(3), 4), x)


def test_a_dot_becomes_the_normalised_gaussian_of_its_sigma():
    sigma, radius = 1.5, 5  # radius ceil(3σ)
    g = [math.exp(-(t**2) / (2 * sigma**2)) for t in range(-radius, radius + 1)]
    g = torch.tensor([v / sum(g) for v in g], dtype=torch.float64)  # (11,), sums to 1
    expected = torch.zeros(15, 15, dtype=torch.float64)
    expected[2:13, 2:13] = g.view(-1, 1) * g.view(1, -1)  # centred on pixel (7, 7)
    y = gaussian_blur(_dot(), torch.tensor([sigma]), radius)[0, 0]
    assert torch.allclose(y, expected, rtol=0, atol=1e-15)
    assert y.sum().item() == pytest.approx(1.0, abs=1e-12)  # no ink lost away from borders


def test_each_image_gets_its_own_sigma():
    x = torch.cat([_dot(), _dot(), _dot()])  # (3, 1, 15, 15)
    y = gaussian_blur(x, torch.tensor([0.0, 1.0, 2.0]), 6)
    assert torch.equal(y[0], x[0])
    assert y[1, 0, 7, 7] > y[2, 0, 7, 7] > 0  # the wider Gaussian has the lower peak
    assert y.sum((1, 2, 3)).tolist() == pytest.approx([1.0, 1.0, 1.0], abs=1e-12)


def test_augmentation_draws_sigma_uniformly_up_to_blur_per_image():
    x = torch.cat([_dot(), _dot()]).float()  # two identical images
    a = Augmentation(max_shift=0, blur=2.0)(x, torch.Generator().manual_seed(4))
    sigma = torch.rand(2, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 2
    assert torch.equal(a, gaussian_blur(x, sigma, math.ceil(3 * 2.0)))
    assert not torch.equal(a[0], a[1])


def test_blurred_digits_are_seeded_and_stay_uint8(mnist_dir):
    x = load_split("mnist", "test", mnist_dir, download=False)[0][:16]
    aug = Augmentation(max_shift=0, blur=1.5)
    a, b = aug(x, torch.Generator().manual_seed(1)), aug(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == x.shape and a.dtype == torch.uint8
    assert not torch.equal(a, aug(x, torch.Generator().manual_seed(2)))


@pytest.mark.parametrize("blur", [-0.5, math.nan, math.inf, 10.5])
def test_negative_non_finite_or_huge_blur_is_a_config_error(blur):
    with pytest.raises(ConfigError, match="blur"):
        TrainConfig(blur=blur)


def test_train_blur_records_it(tiny_cli_train):
    assert tiny_cli_train("--blur", "1.5")["blur"] == 1.5

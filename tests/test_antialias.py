"""antialias: a binomial low-pass of conv1's output before the primary capsules' strided
convolution (Zhang, ICML 2019), a config field of the CapsNet families that keeps every
weight."""

import pytest
import torch
from tests.conftest import TINY_MODELS

from capsnet import create_model
from capsnet.errors import ConfigError
from capsnet.models.checkpoint import weight_difference
from capsnet.nn.layers import binomial_blur

FAMILIES = ("capsnet-small", "aff-capsnet-small")


def test_size_three_spreads_an_impulse_as_one_two_one_squared_over_sixteen():
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 2, 2] = 16.0
    expected = torch.zeros(5, 5)
    expected[1:4, 1:4] = torch.tensor([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]])
    torch.testing.assert_close(binomial_blur(x, 3)[0, 0], expected)


def test_size_five_uses_row_four_of_pascals_triangle():
    x = torch.zeros(1, 1, 9, 9)
    x[0, 0, 4, 4] = 256.0
    row = torch.tensor([1.0, 4, 6, 4, 1])
    torch.testing.assert_close(binomial_blur(x, 5)[0, 0, 2:7, 2:7], torch.outer(row, row))


def test_each_channel_is_blurred_alone_and_a_constant_stays_constant():
    x = torch.stack([torch.full((6, 7), 0.5), torch.zeros(6, 7)]).unsqueeze(0)  # (1, 2, 6, 7)
    y = binomial_blur(x, 3)
    assert y.shape == x.shape
    torch.testing.assert_close(y, x)  # reflect padding: no dark border


def test_size_one_returns_the_input_itself():
    x = torch.rand(2, 3, 4, 4)
    assert binomial_blur(x, 1) is x


@pytest.mark.parametrize("name", FAMILIES)
def test_antialias_keeps_every_weight_name_and_shape(name):
    plain = create_model(name, **TINY_MODELS[name]).state_dict()
    smooth = create_model(name, **{**TINY_MODELS[name], "antialias": 3}).state_dict()
    assert weight_difference(plain, smooth) is None


@pytest.mark.parametrize("name", FAMILIES)
def test_with_antialias_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    model = create_model(name, **{**TINY_MODELS[name], "antialias": 5})
    c, (h, w) = model.config.in_channels, model.config.input_size
    x, y = torch.rand(4, c, h, w), torch.arange(4) % model.config.num_classes
    out = model(x, y)
    assert out.scores.shape == (4, model.config.num_classes)
    model.loss(out, x, y)[0].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_antialias_changes_what_the_primary_capsules_see():
    torch.manual_seed(0)
    model = create_model("capsnet-small", **TINY_MODELS["capsnet-small"]).eval()
    x = torch.rand(2, 1, *model.config.input_size)
    smooth = create_model("capsnet-small", **{**TINY_MODELS["capsnet-small"], "antialias": 3})
    smooth.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert not torch.allclose(smooth.eval().encode(x), model.encode(x))


def test_an_even_or_unknown_size_is_a_config_error():
    with pytest.raises(ConfigError, match=r"antialias must be one of \(1, 3, 5\), not 2"):
        create_model("capsnet-small", antialias=2)


def test_antialias_on_a_conv1_output_too_small_to_pad_is_a_config_error():
    small = {"input_size": (3, 3), "conv1_kernel": 2, "primary_kernel": 1, "primary_stride": 1}
    model = create_model("capsnet-small", **small, antialias=3)  # conv1 gives 2 × 2: pads by 1
    assert model(torch.rand(1, 1, 3, 3)).scores.shape == (1, 10)
    with pytest.raises(ConfigError, match="antialias 5 needs conv1's output larger than 2"):
        create_model("capsnet-small", **small, antialias=5)


def test_an_input_too_small_for_the_network_is_said_so_whatever_antialias():
    with pytest.raises(ConfigError, match=r"input size \(8, 8\) is too small for conv1 9×9"):
        create_model("capsnet-small", input_size=(8, 8))

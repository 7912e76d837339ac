"""input_norm="peak": each image divided by its brightest value inside the model, so a
model's answer does not depend on the image's contrast; "levels": that, then stretched
and clipped; "autolevels": levels with the black point lowered for images with little ink."""

import pytest
import torch
from tests.conftest import TINY_MODELS

from capsnet import create_model, list_models
from capsnet.errors import ConfigError
from capsnet.nn.layers import AUTOLEVELS_INK, LEVELS, normalise_input


def test_peak_divides_each_image_by_its_brightest_value():
    x = torch.tensor([[[[0.0, 0.25], [0.5, 0.2]]], [[[0.0, 0.0], [0.0, 0.0]]]])  # (2, 1, 2, 2)
    y = normalise_input(x, "peak")
    torch.testing.assert_close(y[0], torch.tensor([[[0.0, 0.5], [1.0, 0.4]]]))
    torch.testing.assert_close(y[1], x[1])  # a blank image stays blank


def test_levels_maps_a_fifth_of_the_peak_to_0_three_quarters_to_1_linear_between():
    assert LEVELS == (0.2, 0.75)
    x = 3 * torch.tensor([[[[0.1, 0.2, 0.475, 0.75, 1.0]]]])  # (1, 1, 1, 5), peak 3
    expected = torch.tensor([[[[0.0, 0.0, 0.5, 1.0, 1.0]]]])  # 0.475 = 0.2 + 0.55 / 2
    torch.testing.assert_close(normalise_input(x, "levels"), expected)


def test_autolevels_is_levels_where_the_image_has_ink_enough():
    assert AUTOLEVELS_INK == 0.15
    x = torch.linspace(0, 2, 20).view(1, 1, 4, 5)  # peak 2; its 3rd brightest is 17/19 of it
    torch.testing.assert_close(normalise_input(x, "autolevels"), normalise_input(x, "levels"))


def test_autolevels_moves_black_to_the_kth_brightest_pixel_of_an_image_with_little_ink():
    x = torch.zeros(1, 1, 4, 5)  # 20 pixels: k = ceil(0.15 · 20) = 3
    x[0, 0, 0, :4] = torch.tensor([2.0, 0.6, 0.2, 0.1])  # peak 2; the 3rd brightest 0.1 of it
    expected = torch.zeros(1, 1, 4, 5)
    # window [0.1, 0.65] of the peak: 0.3 → 0.2 / 0.55, 0.1 → 0, 0.05 → 0
    expected[0, 0, 0, :2] = torch.tensor([1.0, 0.2 / 0.55])
    torch.testing.assert_close(normalise_input(x, "autolevels"), expected)


def test_none_returns_the_images_as_given():
    x = torch.rand(2, 1, 4, 4)
    assert normalise_input(x, "none") is x


def test_an_unknown_input_norm_is_a_config_error():
    with pytest.raises(
        ConfigError, match="input_norm must be one of none, peak, levels, autolevels, not 'max'"
    ):
        create_model("capsnet-small", input_norm="max")


@pytest.mark.parametrize("norm", ["peak", "levels", "autolevels"])
@pytest.mark.parametrize("name", list_models())
def test_every_model_answers_the_same_at_a_third_of_the_contrast(name, norm):
    torch.manual_seed(0)
    model = create_model(name, **{**TINY_MODELS[name], "input_norm": norm}).eval()
    c, (h, w) = model.config.in_channels, model.config.input_size
    x = torch.rand(3, c, h, w)
    with torch.no_grad():
        torch.testing.assert_close(model(x / 3).scores, model(x).scores, rtol=1e-5, atol=1e-6)

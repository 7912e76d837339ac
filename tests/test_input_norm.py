"""input_norm="peak": each image divided by its brightest value inside the model, so a
model's answer does not depend on the image's contrast; "levels": that, then stretched
and clipped."""

import pytest
import torch
from tests.conftest import TINY_MODELS

from capsnet import create_model, list_models
from capsnet.errors import ConfigError
from capsnet.nn.layers import LEVELS, normalise_input


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


def test_none_returns_the_images_as_given():
    x = torch.rand(2, 1, 4, 4)
    assert normalise_input(x, "none") is x


def test_an_unknown_input_norm_is_a_config_error():
    with pytest.raises(
        ConfigError, match="input_norm must be one of none, peak, levels, not 'max'"
    ):
        create_model("capsnet-small", input_norm="max")


@pytest.mark.parametrize("norm", ["peak", "levels"])
@pytest.mark.parametrize("name", list_models())
def test_every_model_answers_the_same_at_a_third_of_the_contrast(name, norm):
    torch.manual_seed(0)
    model = create_model(name, **{**TINY_MODELS[name], "input_norm": norm}).eval()
    c, (h, w) = model.config.in_channels, model.config.input_size
    x = torch.rand(3, c, h, w)
    with torch.no_grad():
        torch.testing.assert_close(model(x / 3).scores, model(x).scores, rtol=1e-5, atol=1e-6)

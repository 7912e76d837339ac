import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from capsnet import CapsNet, CapsNetConfig, create_model, list_models, squash
from capsnet.errors import ConfigError
from capsnet.models.checkpoint import load_checkpoint, save_checkpoint
from capsnet.nn.layers import PrimaryCaps

TINY = dict(conv1_channels=8, primary_types=4, primary_dim=4, class_dim=6, decoder_hidden=(16,))


def n_params(model: torch.nn.Module, skip: str = "~") -> int:
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith(skip))


def test_paper_network_parameter_counts():
    model = create_model("capsnet-mnist")
    assert n_params(model) == 8_215_568
    assert n_params(model, skip="decoder") == 6_804_224
    assert model.config.num_primary_caps == 1152


def test_registry_lists_both_models_and_rejects_unknown_names():
    assert {"capsnet-mnist", "capsnet-small"} <= set(list_models())
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        create_model("nope")
    with pytest.raises(ConfigError, match="bad model override"):
        create_model("capsnet-small", not_a_field=1)


@pytest.mark.parametrize(
    ("channels", "size", "classes"), [(1, (28, 28), 10), (3, (32, 32), 5), (1, (36, 40), 2)]
)
def test_output_shapes_follow_the_config(channels, size, classes):
    cfg = CapsNetConfig(in_channels=channels, input_size=size, num_classes=classes, **TINY)
    out = CapsNet(cfg)(torch.rand(3, channels, *size))
    h, w = cfg.primary_grid
    assert out.scores.shape == (3, classes)
    assert out.poses.shape == (3, classes, 6)
    assert out.reconstructions.shape == (3, channels, *size)
    assert out.coupling.shape == (3, 4 * h * w, classes)


def test_input_too_small_is_a_config_error():
    with pytest.raises(ConfigError, match="too small"):
        CapsNetConfig(input_size=(16, 16))


def test_images_of_another_shape_are_refused_naming_both_shapes():
    cfg = CapsNetConfig(in_channels=1, input_size=(40, 40))
    assert cfg.input_shape == (1, 40, 40)
    cfg.check_images(torch.zeros(2, 1, 40, 40), "fitting")
    expected = r"^mnist images are \(1, 28, 28\) but the model expects \(1, 40, 40\)$"
    with pytest.raises(ConfigError, match=expected):
        cfg.check_images(torch.zeros(2, 1, 28, 28), "mnist")


def test_negative_reconstruction_weight_is_a_config_error():
    with pytest.raises(ConfigError, match="reconstruction_weight -1"):
        create_model("capsnet-small", reconstruction_weight=-1)


def test_every_parameter_gets_a_gradient():
    model = CapsNet(CapsNetConfig(**TINY))
    x, y = torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    out = model(x, y)
    loss = out.scores.sum() + out.reconstructions.sum()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_primary_capsules_group_the_channels_of_one_type_at_one_position():
    layer = PrimaryCaps(in_channels=1, types=2, dim=3, kernel_size=1, stride=1)
    with torch.no_grad():  # channel k of the conv outputs the constant k+1
        layer.conv.weight.zero_()
        layer.conv.bias.copy_(torch.arange(1.0, 7.0))
    u = layer(torch.zeros(1, 1, 2, 2))  # (1, 2 types · 2 · 2, 3)
    assert u.shape == (1, 8, 3)
    # capsules 0..3 are type 0 (channels 1,2,3), capsules 4..7 type 1 (channels 4,5,6)
    torch.testing.assert_close(u[0, :4], squash(torch.tensor([1.0, 2.0, 3.0])).expand(4, 3))
    torch.testing.assert_close(u[0, 4:], squash(torch.tensor([4.0, 5.0, 6.0])).expand(4, 3))


def test_decoder_uses_the_given_label_else_the_longest_capsule():
    model = CapsNet(CapsNetConfig(**TINY)).eval()
    x = torch.rand(2, 1, 28, 28)
    out = model(x)
    longest = out.scores.argmax(1)
    mask = torch.nn.functional.one_hot(longest, 10).float()
    torch.testing.assert_close(out.reconstructions, model.decode(out.poses, mask))
    other = (longest + 1) % 10
    torch.testing.assert_close(
        model(x, other).reconstructions,
        model.decode(out.poses, torch.nn.functional.one_hot(other, 10).float()),
    )


def test_without_reconstruction_there_is_no_decoder():
    model = CapsNet(CapsNetConfig(reconstruction=False, **TINY))
    assert model.decoder is None and model(torch.rand(1, 1, 28, 28)).reconstructions is None


def test_config_round_trips_through_a_dict():
    cfg = CapsNetConfig(input_size=(32, 30), **TINY)
    assert CapsNetConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown CapsNetConfig field"):
        CapsNetConfig.from_dict({**cfg.to_dict(), "extra": 1})


def test_a_checkpoint_saved_before_the_weight_existed_loads_with_the_papers_text(tmp_path):
    model = create_model("capsnet-small", conv1_channels=4, primary_types=2, decoder_hidden=(8,))
    assert model.config.reconstruction_weight == 0.01  # today's default: the authors' code
    path = tmp_path / "old.safetensors"
    save_checkpoint(path, model, "capsnet-small")
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    config = json.loads(meta["config"])
    del config["reconstruction_weight"]  # as written before the field existed
    save_file(load_file(path), path, metadata={**meta, "config": json.dumps(config)})
    assert load_checkpoint(path).config.reconstruction_weight == 0.0005

"""Quarter-turn equivariance (capsnet.nn.group) and the p4 Efficient-CapsNet built on it."""

import pytest
import torch

from capsnet import create_model
from capsnet.errors import ConfigError
from capsnet.models import CapsNet
from capsnet.nn.group import (
    FramedCaps,
    P4BatchNorm,
    P4Conv2d,
    group_filters,
    rotate,
    rotate_p4,
    turn_children,
)
from capsnet.nn.layers import RoutingCaps
from capsnet.nn.routing import RoutingSpec

TINY = {"stem_channels": (2, 4, 4, 8), "decoder_hidden": (16,)}


@pytest.mark.parametrize("turns", [-1, 0, 1, 2, 3, 5])
def test_rotate_is_torch_rot90(turns):
    x = torch.arange(2 * 3 * 4 * 5.0).view(2, 3, 4, 5)
    assert torch.equal(rotate(x, turns), torch.rot90(x, turns, dims=(-2, -1)))
    assert torch.equal(rotate(x, turns, dims=(1, 2)), torch.rot90(x, turns, dims=(1, 2)))


def test_group_filters_turn_each_filter_and_move_its_orientations():
    w = torch.arange(2 * 3 * 4 * 2 * 2.0).view(2, 3, 4, 2, 2)  # (C', C, 4, k, k)
    bank = group_filters(w).view(2, 4, 3, 4, 2, 2)  # (C', s, C, r, k, k)
    for s in range(4):
        for r in range(4):  # orientation r of the input meets w's orientation r − s, turned s
            expected = torch.rot90(w[:, :, (r - s) % 4], s, dims=(-2, -1))
            assert torch.equal(bank[:, s, :, r], expected)


def test_a_p4_stem_turns_with_the_image():
    torch.manual_seed(0)
    stem = torch.nn.Sequential(
        P4Conv2d(1, 3, 5, lifting=True),
        torch.nn.ReLU(),
        P4BatchNorm(3),
        P4Conv2d(3, 2, 4, 2),  # 24 → 11 px: (24 − 4) is even, the grid symmetric
    ).double()
    stem.train()  # batch statistics: over the batch, the same for the turned batch
    x = torch.rand(3, 1, 28, 28, dtype=torch.float64)
    y = stem(x)
    assert y.shape == (3, 8, 11, 11)
    for turns in (1, 2, 3):
        torch.testing.assert_close(stem(rotate(x, turns)), rotate_p4(y, turns), rtol=0, atol=1e-12)


def test_a_depthwise_p4_convolution_turns_with_the_map_and_keeps_its_channels():
    torch.manual_seed(0)
    conv = P4Conv2d(3, 3, 5, depthwise=True).double()
    x = torch.rand(2, 3 * 4, 9, 9, dtype=torch.float64)  # a p4 map
    assert conv(x).shape == (2, 12, 5, 5)
    torch.testing.assert_close(conv(rotate_p4(x, 1)), rotate_p4(conv(x), 1), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="keeps its 3 channels"):
        P4Conv2d(3, 4, 5, depthwise=True)


def test_turn_children_turns_the_grid_and_moves_the_orientations():
    u = torch.arange(2 * 4 * 3 * 3 * 1.0).view(1, -1, 1)  # (B, types·4·H·W, 1), 2 types
    turned = turn_children(u, (2, 3, 3), 1).view(2, 4, 3, 3)
    grid = u.view(2, 4, 3, 3)
    for r in range(4):  # orientation r + 1 holds orientation r's capsules, the grid turned
        assert torch.equal(turned[:, (r + 1) % 4], torch.rot90(grid[:, r], 1, dims=(-2, -1)))
    assert torch.equal(turn_children(turned.view(1, -1, 1), (2, 3, 3), -1), u)


def _framed(frames):
    torch.manual_seed(0)
    caps = RoutingCaps(2 * 4 * 9, 3, 5, 4, RoutingSpec("self-attention")).double()
    with torch.no_grad():
        caps.router.params["coupling_bias"].normal_(0, 0.1)
    return FramedCaps(caps, (2, 3, 3), frames)


def test_each_parent_keeps_its_longest_frame():
    u = torch.rand(4, 2 * 4 * 9, 3, dtype=torch.float64)
    both = _framed((0, 1))(u)
    one, other = _framed((0,))(u), _framed((1,))(u)
    longest = torch.maximum(one.activations, other.activations)
    torch.testing.assert_close(both.activations, longest, rtol=0, atol=1e-12)
    from_one = (one.activations >= other.activations).unsqueeze(-1)  # (B, J, 1)
    torch.testing.assert_close(both.poses, torch.where(from_one, one.poses, other.poses))
    weights = torch.where(from_one.transpose(1, 2), one.weights, other.weights)  # (B, I, J)
    torch.testing.assert_close(both.weights, weights)


def test_frame_r_undoes_r_quarter_turns_of_the_children():
    u = torch.rand(4, 2 * 4 * 9, 3, dtype=torch.float64)
    upright = _framed((0,))(u)
    turned = _framed((3,))(turn_children(u, (2, 3, 3), 3))
    torch.testing.assert_close(turned.activations, upright.activations, rtol=0, atol=1e-12)
    torch.testing.assert_close(turned.poses, upright.poses, rtol=0, atol=1e-12)
    # the weights come back in the turned children's own order
    back = turn_children(turned.weights, (2, 3, 3), -3)
    torch.testing.assert_close(back, upright.weights, rtol=0, atol=1e-12)


def test_with_all_four_frames_a_quarter_turn_changes_no_class_capsule():
    model = create_model("efficient-capsnet-p4", **TINY, frames=(0, 1, 2, 3)).double().eval()
    x = torch.rand(3, 1, 28, 28, dtype=torch.float64)
    out = model(x)
    for turns in (1, 2, 3):
        turned = model(rotate(x, turns))
        torch.testing.assert_close(turned.scores, out.scores, rtol=0, atol=1e-12)
        torch.testing.assert_close(turned.poses, out.poses, rtol=0, atol=1e-12)


def test_without_the_upside_down_frame_a_half_turn_is_seen_as_such():
    model = create_model("efficient-capsnet-p4", **TINY).double().eval()  # frames (0, 1, 3)
    every = create_model("efficient-capsnet-p4", **TINY, frames=(0, 1, 2, 3)).double().eval()
    every.load_state_dict(model.state_dict())
    x = torch.rand(3, 1, 28, 28, dtype=torch.float64)
    assert not torch.allclose(model(rotate(x, 2)).scores, model(x).scores)
    assert torch.all(model(x).scores <= every(x).scores)


def test_the_paper_sized_p4_network_has_its_counted_parameters():
    model = create_model("efficient-capsnet-p4")
    encoder = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("decoder"))
    # stem 208 + 4,624 + 9,232 + 32,800, batch norm 144, depthwise 2,624, W 16·10·16·8 = 20,480,
    # coupling biases 160
    assert encoder == 70_272
    assert model.config.num_primary_caps == 16 and model.config.coupling_grid == (16, 1, 1)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"frames": (0, 0)}, "distinct"),
        ({"frames": ()}, "distinct"),
        ({"frames": (0, 4)}, "quarter turns 0-3"),
        ({"frames": (-1,)}, "≥ 0"),
        ({"input_size": (28, 30)}, "square"),
        ({"stem_kernels": (5, 3, 3, 3)}, "20 − 3 is not a multiple of 2"),
    ],
)
def test_bad_p4_configs_say_what_is_wrong(override, message):
    with pytest.raises(ConfigError, match=message):
        create_model("efficient-capsnet-p4", **override)


def test_the_anchored_loss_reads_a_true_class_upright_and_the_others_at_their_longest():
    torch.manual_seed(0)
    model = create_model("efficient-capsnet-p4", **TINY).double()
    free = create_model("efficient-capsnet-p4", **TINY, anchored=False).double()
    free.load_state_dict(model.state_dict())
    x, y = torch.rand(4, 1, 28, 28, dtype=torch.float64), torch.tensor([0, 3, 3, 9])
    out = model(x, y)
    assert out.frame_scores.shape == (4, 3, 10)  # frames (0, 1, 3)
    torch.testing.assert_close(out.scores, out.frame_scores.amax(1))
    upright = out.frame_scores[:, 0]
    anchored = out.scores.clone()
    anchored[torch.arange(4), y] = upright[torch.arange(4), y]
    loss, _ = model.loss(out, x, y)
    expected, _ = CapsNet.loss(model, out._replace(scores=anchored), x, y)  # the plain loss
    torch.testing.assert_close(loss, expected)
    longest, _ = CapsNet.loss(model, out, x, y)
    torch.testing.assert_close(free.loss(out, x, y)[0], longest)
    assert not torch.allclose(loss, longest)


def test_an_anchored_model_needs_the_upright_frame():
    with pytest.raises(ConfigError, match="anchored needs the upright frame 0"):
        create_model("efficient-capsnet-p4", frames=(1, 3))
    create_model("efficient-capsnet-p4", frames=(1, 3), anchored=False)

"""Aff-CapsNets: predictions through matrices shared by groups of children, routed without
forming the votes, equal to routing the votes themselves."""

import pytest
import torch

from capsnet import create_model
from capsnet.errors import ConfigError
from capsnet.nn.layers import SharedRoutingCaps
from capsnet.nn.routing import RoutingSpec, dynamic_routing, shared_dynamic_routing


def _votes(u, w):
    """The predictions û_{j|gp} = W_gj u_gp written out: (B, G·P, J, D)."""
    return torch.einsum("gjde,bgpe->bgpjd", w, u).flatten(1, 2)


@pytest.mark.parametrize("iterations", [1, 2, 3])
@pytest.mark.parametrize("detach", [False, True])
@pytest.mark.parametrize("groups", [1, 4])
def test_shared_routing_equals_dynamic_routing_of_the_votes(iterations, detach, groups):
    torch.manual_seed(0)
    u = (0.3 * torch.randn(3, groups, 5, 8, dtype=torch.float64)).requires_grad_()
    w = (0.1 * torch.randn(groups, 10, 16, 8, dtype=torch.float64)).requires_grad_()
    v, c = shared_dynamic_routing(u, w, iterations, detach)
    v_ref, c_ref = dynamic_routing(_votes(u, w), iterations, detach)
    torch.testing.assert_close(v, v_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(c, c_ref, rtol=0, atol=1e-12)
    grads = torch.autograd.grad(v.pow(3).sum(), (u, w))
    grads_ref = torch.autograd.grad(v_ref.pow(3).sum(), (u, w))
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-12)


def test_one_iteration_couples_uniformly_and_sums_the_children_first():
    u = torch.tensor([[[[1.0, 0.0], [0.0, 2.0]]]])  # (B=1, G=1, P=2, E=2)
    w = torch.eye(2).expand(3, 2, 2).unsqueeze(0)  # (G=1, J=3, D=2, E=2): identity
    v, c = shared_dynamic_routing(u, w, iterations=1)
    s = torch.tensor([1.0, 2.0]) / 3  # Σ_i (1/J) u_i
    expected = (s.square().sum() / (1 + s.square().sum())) * s / s.norm()  # eq. 1
    torch.testing.assert_close(v[0], expected.expand(3, 2))
    torch.testing.assert_close(c, torch.full((1, 2, 3), 1 / 3))


def test_routings_without_a_shared_path_get_the_votes():
    torch.manual_seed(0)
    layer = SharedRoutingCaps(6, 8, 10, 16, groups=2, spec=RoutingSpec("self-attention"))
    u = torch.randn(2, 6, 8)
    out = layer(u)
    ref = layer.router(_votes(u.unflatten(1, (2, 3)), layer.weight), u.norm(dim=-1))
    torch.testing.assert_close(out.poses, ref.poses)


def test_children_must_split_into_equal_groups():
    with pytest.raises(ValueError, match="5 children do not split into 2"):
        SharedRoutingCaps(5, 8, 10, 16, groups=2)


def test_aff_capsnet_has_one_matrix_per_class_or_per_type():
    shared = create_model("aff-capsnet")
    assert shared.classes.weight.shape == (1, 10, 16, 8)
    # the paper network less its 1152·10 matrices, plus 10: 8,215,568 − 11,520·128 + 1,280
    assert sum(p.numel() for p in shared.parameters()) == 8_215_568 - 1152 * 10 * 128 + 1280
    per_type = create_model("aff-capsnet", share="type")
    assert per_type.classes.weight.shape == (32, 10, 16, 8)


def test_unknown_sharing_is_a_config_error():
    with pytest.raises(ConfigError, match="share must be one of all, type"):
        create_model("aff-capsnet", share="position")


@pytest.mark.parametrize("share", ["all", "type"])
def test_aff_capsnet_output_shapes_and_every_parameter_gets_a_gradient(share):
    model = create_model(
        "aff-capsnet", share=share, conv1_channels=8, primary_types=2, decoder_hidden=(16,)
    )
    x, y = torch.rand(3, 1, 28, 28), torch.tensor([1, 2, 3])
    out = model(x, y)
    assert out.scores.shape == (3, 10) and out.coupling.shape == (3, 2 * 6 * 6, 10)
    assert out.reconstructions.shape == (3, 1, 28, 28)
    model.loss(out, x, y)[0].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())

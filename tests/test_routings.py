"""EM routing, self-attention routing and the routing registry."""

import math

import pytest
import torch

from capsnet import ROUTINGS, efficient_squash, em_routing, self_attention_routing
from capsnet.errors import ConfigError
from capsnet.nn.em import MASS_EPS
from capsnet.nn.layers import RoutingCaps
from capsnet.nn.routing import RoutingSpec, get_routing


def _em(votes, activations, **kw):
    j = votes.shape[2]
    return em_routing(votes, activations, torch.zeros(j), torch.zeros(j), **kw)


def test_em_routing_finds_hand_built_clusters():
    # Children 0-2 agree tightly on parent 0 and scatter their votes for parent 1;
    # children 3-5 the other way round. EM must assign each group to the parent it agrees on.
    g = torch.Generator().manual_seed(0)
    votes = 3 * torch.randn(1, 6, 2, 4, generator=g)  # scattered by default
    votes[0, :3, 0] = 1.0 + 0.01 * torch.randn(3, 4, generator=g)
    votes[0, 3:, 1] = -1.0 + 0.01 * torch.randn(3, 4, generator=g)
    mu, a, r = _em(votes, torch.ones(1, 6), iterations=3)
    assert (r[0, :3, 0] > 0.9).all() and (r[0, 3:, 1] > 0.9).all()
    torch.testing.assert_close(mu[0, 0], torch.full((4,), 1.0), atol=0.05, rtol=0)
    torch.testing.assert_close(mu[0, 1], torch.full((4,), -1.0), atol=0.05, rtol=0)
    torch.testing.assert_close(r.sum(2), torch.ones(1, 6))
    assert a.shape == (1, 2) and ((a > 0) & (a < 1)).all()


def test_em_routing_one_iteration_averages_the_votes_weighted_by_activation():
    # With R = 1/J, μ_j is the activation-weighted mean of the votes, (1·2 + 3·6) / 4 = 5,
    # up to capsule_em's small mass: (20/3) / (4/3 + MASS_EPS).
    votes = torch.tensor([2.0, 6.0]).view(1, 2, 1, 1).expand(1, 2, 3, 1)
    mu, _, r = _em(votes, torch.tensor([[1.0, 3.0]]), iterations=1)
    torch.testing.assert_close(mu, torch.full((1, 3, 1), (20 / 3) / (4 / 3 + MASS_EPS)))
    torch.testing.assert_close(r, torch.full((1, 2, 3), 1 / 3))


@pytest.mark.parametrize(
    "votes, activations",
    [
        (torch.ones(2, 5, 3, 16), torch.ones(2, 5)),  # all votes equal: σ² = 0
        (torch.randn(2, 5, 3, 16), torch.zeros(2, 5)),  # no active child: empty clusters
        (1e6 * torch.randn(2, 5, 3, 16), torch.ones(2, 5)),  # huge votes
        (torch.randn(2, 5, 3, 16), torch.tensor([[1.0, 0, 0, 0, 0]] * 2)),  # one child
    ],
    ids=["equal", "zero-activations", "huge", "single-child"],
)
def test_em_routing_is_finite_for_degenerate_inputs(votes, activations):
    votes = votes.clone().requires_grad_()
    beta_u = torch.zeros(3, requires_grad=True)
    beta_a = torch.zeros(3, requires_grad=True)
    mu, a, r = em_routing(votes, activations, beta_u, beta_a, iterations=3)
    assert all(torch.isfinite(t).all() for t in (mu, a, r))
    (mu.sum() + a.sum()).backward()
    assert all(torch.isfinite(t.grad).all() for t in (votes, beta_u, beta_a))


def test_em_routing_rejects_zero_iterations():
    with pytest.raises(ValueError, match="at least 1"):
        _em(torch.randn(1, 2, 3, 4), torch.ones(1, 2), iterations=0)


def reference_self_attention(u_hat, bias):
    """Mazzia et al. (2021), eqs. 3-5, per example and parent, in float64."""
    batch, n_in, n_out, d = u_hat.shape
    u_hat = u_hat.double()
    v = torch.zeros(batch, n_out, d, dtype=torch.float64)
    weights = torch.zeros(batch, n_in, n_out, dtype=torch.float64)
    for b in range(batch):
        scores = torch.zeros(n_in, n_out, dtype=torch.float64)
        for j in range(n_out):
            u = u_hat[b, :, j]  # (I, D)
            a = u @ u.T / math.sqrt(d)  # (I, I) self-attention matrix
            scores[:, j] = a.sum(1)
        c = torch.softmax(scores, dim=1)  # over the parents
        for j in range(n_out):
            s = ((c[:, j] + bias[:, j].double()).unsqueeze(1) * u_hat[b, :, j]).sum(0)
            n = s.norm()
            v[b, j] = (1 - 1 / math.exp(n)) * s / n
        weights[b] = c + bias.double()
    return v, weights


def test_self_attention_routing_matches_the_equations():
    u_hat = torch.randn(3, 7, 4, 5)
    bias = 0.1 * torch.randn(7, 4)
    v, w = self_attention_routing(u_hat, bias)
    v_ref, w_ref = reference_self_attention(u_hat, bias)
    torch.testing.assert_close(v.double(), v_ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(w.double(), w_ref, atol=1e-6, rtol=1e-5)


def _autograd_self_attention(u_hat, bias, detach_agreement):
    """The routing as documented, by autograd: weights from (detached) votes, then the
    weighted sum of the real votes."""
    agree = u_hat.detach() if detach_agreement else u_hat
    scores = (agree * agree.sum(1, keepdim=True)).sum(-1) / math.sqrt(u_hat.shape[-1])
    weights = torch.softmax(scores, dim=2) + bias
    s = (weights.unsqueeze(-1) * u_hat).sum(1)  # (B, J, D)
    n = torch.sqrt(s.pow(2).sum(-1, keepdim=True) + 1e-8)
    return (1 - torch.exp(-n)) * s / n, weights


@pytest.mark.parametrize("detach", [False, True])
def test_self_attention_gradients_match_autograd_of_the_documented_meaning(detach):
    u_hat = torch.randn(2, 6, 3, 4, dtype=torch.float64, requires_grad=True)
    bias = (0.1 * torch.randn(6, 3, dtype=torch.float64)).requires_grad_()
    w_v, w_c = torch.randn(2, 3, 4, dtype=torch.float64), torch.randn(2, 6, 3, dtype=torch.float64)
    grads = []
    for route in (self_attention_routing, _autograd_self_attention):
        v, w = route(u_hat, bias, detach)
        grads.append(torch.autograd.grad((v * w_v).sum() + (w * w_c).sum(), (u_hat, bias)))
    for got, expected in zip(*grads, strict=True):
        torch.testing.assert_close(got, expected)


def test_self_attention_weights_are_not_confined_to_0_1():
    # c + b: the bias is added after the softmax, so a weight can be negative.
    u_hat = torch.randn(1, 4, 2, 3)
    _, w = self_attention_routing(u_hat, torch.full((4, 2), -2.0))
    assert (w < 0).all() and torch.allclose(w.sum(2), torch.full((1, 4), 1.0 - 4.0))


def test_efficient_squash_worked_example():
    # |s| = 5: length 1 - e^-5, direction (3, 4)/5; finite gradient at 0.
    v = efficient_squash(torch.tensor([3.0, 4.0]))
    torch.testing.assert_close(v, torch.tensor([0.6, 0.8]) * (1 - math.exp(-5)))
    s = torch.zeros(4, requires_grad=True)
    efficient_squash(s).sum().backward()
    assert torch.isfinite(s.grad).all()


@pytest.mark.parametrize("name", sorted(ROUTINGS))
@pytest.mark.parametrize("children, parents", [(1, 1), (6, 3), (32, 10)])
def test_every_routing_keeps_the_contract(name, children, parents):
    layer = RoutingCaps(children, 8, parents, 16, RoutingSpec(name, iterations=2))
    u = torch.randn(4, children, 8, requires_grad=True)
    poses, activations, weights = layer(u)
    assert poses.shape == (4, parents, 16)
    assert activations.shape == (4, parents) and ((activations >= 0) & (activations <= 1)).all()
    assert weights.shape == (4, children, parents)
    (poses.sum() + activations.sum()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())


def test_dynamic_routing_has_no_learned_tensors_besides_w():
    # So checkpoints of runs from before the routing choice load unchanged.
    assert list(RoutingCaps(6, 8, 3, 16).state_dict()) == ["weight"]


def test_unknown_routing_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown routing 'magic'"):
        get_routing("magic")


@pytest.mark.parametrize("name", sorted(ROUTINGS))
def test_inference_in_blocks_of_the_batch_gives_the_whole_batch_result(name, monkeypatch):
    torch.manual_seed(0)
    layer, u = RoutingCaps(12, 4, 3, 5, RoutingSpec(name)), torch.randn(7, 12, 4)
    whole = layer(u)  # with gradients: one block
    monkeypatch.setattr("capsnet.nn.layers.BLOCK_BYTES", 2 * 12 * 3 * 5 * 4)  # 2 examples a block
    with torch.no_grad():
        blocks = layer(u)
    for a, b in zip(blocks, whole, strict=True):
        torch.testing.assert_close(a, b.detach())

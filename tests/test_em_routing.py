"""EM routing maths (capsnet.nn.em): exact variance, the detach_agreement meaning,
capsule_em's schedule, floor and mass."""

import math
import sys

import pytest
import torch

from capsnet.nn.em import (
    MASS_EPS,
    MIN_VAR,
    centre,
    em_routing,
    inverse_temperatures,
    m_step,
    vote_mean,
)
from capsnet.nn.em_conv import conv_em_routing

D64 = torch.float64


def _inputs(n=5, i=6, j=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    poses = torch.randn(n, i, 4, 4, generator=g, dtype=D64)
    weight = torch.eye(4, dtype=D64) + 0.3 * torch.randn(i, j, 4, 4, generator=g, dtype=D64)
    acts = torch.rand(n, i, generator=g, dtype=D64)
    beta_u = 0.1 * torch.randn(j, generator=g, dtype=D64)
    beta_a = 0.1 * torch.randn(j, generator=g, dtype=D64)
    return [t.requires_grad_() for t in (poses, weight, acts, beta_u, beta_a)]


def _votes(poses, weight):
    """V_ij = M_i W_ij by broadcasting, (N, I, J, 16)."""
    v = (poses.unsqueeze(2).unsqueeze(-1) * weight.unsqueeze(0).unsqueeze(-3)).sum(-2)
    return v.flatten(-2)


def reference_em(votes, acts, beta_u, beta_a, iterations, detach):
    """Procedure 1 written out per iteration with broadcasting (no matmuls), float64.

    ``detach``: every iteration but the last sees detached votes; the last M-step uses the
    votes with the R so computed."""
    n, i, j, d = votes.shape
    a_in = acts.unsqueeze(-1)  # (N, I, 1)
    R = torch.full((n, i, j), 1 / j, dtype=votes.dtype)
    for t, lam in enumerate(inverse_temperatures(iterations, 1.0)):
        v = votes if (t == iterations - 1 or not detach) else votes.detach()
        r = R * a_in  # (N, I, J)
        mass = r.sum(1) + MASS_EPS  # (N, J)
        mu = (r.unsqueeze(-1) * v).sum(1) / mass.unsqueeze(-1)  # (N, J, D)
        var = (r.unsqueeze(-1) * (v - mu.unsqueeze(1)) ** 2).sum(1) / mass.unsqueeze(-1)
        var = var + MIN_VAR
        cost = (beta_u.unsqueeze(-1) + 0.5 * torch.log(var)).sum(-1) * mass
        z = (cost.mean(1, keepdim=True) - cost) / torch.sqrt(
            cost.var(1, unbiased=False, keepdim=True) + 1e-6
        )
        a = torch.sigmoid(lam * (beta_a + z))  # (N, J)
        if t == iterations - 1:
            return mu, a
        log_p = -0.5 * ((v - mu.unsqueeze(1)) ** 2 / var.unsqueeze(1)).sum(-1) - 0.5 * torch.log(
            2 * math.pi * var
        ).sum(-1).unsqueeze(1)  # (N, I, J)
        R = torch.softmax(torch.log(a).unsqueeze(1) + log_p, dim=2)


def test_inverse_temperature_follows_capsule_em():
    assert inverse_temperatures(3, 2.0) == pytest.approx([2 * 0.05, 2 * 0.0975, 2 * 0.142625])


def _variance(votes, r, a):
    """σ² of the M-step with the weights r (N, J, I), on votes shifted by their a-weighted
    mean (a (N, 1, I))."""
    shift = vote_mean(votes, a)
    return m_step(centre(votes, shift), r, shift)[1]


def test_variance_is_exact_for_a_tight_cluster_far_from_the_origin():
    # μ = 100, σ = 0.01: E[V²] - μ² in float32 would be off by about 30× without the shift.
    g = torch.Generator().manual_seed(0)
    votes = 100 + 0.01 * torch.randn(1, 1, 1000, 16, generator=g, dtype=D64)
    r = torch.ones(1, 1, 1000, dtype=D64)
    var64, var32 = _variance(votes, r, r), _variance(votes.float(), r.float(), r.float())
    torch.testing.assert_close(var32.double() - MIN_VAR, var64 - MIN_VAR, rtol=1e-3, atol=0)


def test_variance_error_away_from_the_shift_is_small_against_the_floor():
    # One parent's r picks a tight cluster (σ = 0.01) 2.5 away from the shift (the mean of
    # all votes): E[V'²] - μ'² in float32 is off by about 1e-6 · 2.5², 1% of MIN_VAR.
    g = torch.Generator().manual_seed(0)
    votes = 0.01 * torch.randn(1, 1, 1000, 16, generator=g, dtype=D64)
    votes[..., :500, :] += 5
    r = torch.zeros(1, 1, 1000, dtype=D64)
    r[..., :500] = 1
    a = torch.ones(1, 1, 1000, dtype=D64)
    var64, var32 = _variance(votes, r, a), _variance(votes.float(), r.float(), a.float())
    assert (var32.double() - var64).abs().max() < 0.02 * MIN_VAR


@pytest.mark.parametrize("detach", [False, True])
def test_em_routing_matches_the_written_out_reference(detach):
    poses, weight, acts, bu, ba = _inputs()
    votes = _votes(poses, weight)
    mu, a, _ = em_routing(
        votes, acts, bu, ba, iterations=3, final_beta=1.0, detach_agreement=detach
    )
    ref_mu, ref_a = reference_em(votes, acts, bu, ba, 3, detach)
    torch.testing.assert_close((mu, a), (ref_mu, ref_a))
    g_mu, g_a = torch.randn_like(mu), torch.randn_like(a)
    ins = (poses, weight, acts, bu, ba)
    got = torch.autograd.grad((mu, a), ins, (g_mu, g_a), retain_graph=True)
    want = torch.autograd.grad((ref_mu, ref_a), ins, (g_mu, g_a))
    torch.testing.assert_close(got, want)


def test_detach_agreement_changes_the_gradient_only():
    poses, weight, acts, bu, ba = _inputs()
    votes = _votes(poses, weight)
    (mu0, a0, _), (mu1, a1, _) = (
        em_routing(votes, acts, bu, ba, iterations=3, final_beta=1.0, detach_agreement=d)
        for d in (0, 1)
    )
    torch.testing.assert_close((mu0, a0), (mu1, a1))
    g0 = torch.autograd.grad(mu0.sum() + a0.sum(), votes, retain_graph=True)[0]
    g1 = torch.autograd.grad(mu1.sum() + a1.sum(), votes)[0]
    assert not torch.allclose(g0, g1)


@pytest.mark.parametrize("keep", [0, 1 << 30])  # graphs recomputed, or kept from the forward
@pytest.mark.parametrize("detach", [False, True])
@pytest.mark.parametrize("iterations", [1, 3])
def test_chunked_conv_routing_matches_em_routing_on_stored_votes(
    detach, iterations, keep, monkeypatch
):
    # the PyTorch path: 5 problems in chunks of 2 (the last one short); values and
    # gradients, float64
    monkeypatch.setenv("CAPSNET_NATIVE", "0")
    monkeypatch.setattr(sys.modules["capsnet.nn.em_conv"], "KEEP_BYTES", keep)
    poses, weight, acts, bu, ba = _inputs(n=5, i=6, j=3)
    votes = _votes(poses, weight)
    want = em_routing(
        votes, acts, bu, ba, iterations=iterations, final_beta=1.0, detach_agreement=detach
    )[:2]
    got = conv_em_routing(
        poses,
        weight,
        acts,
        bu,
        ba,
        iterations=iterations,
        final_beta=1.0,
        detach_agreement=detach,
        chunk=2,
    )
    torch.testing.assert_close(got, want)
    g = (torch.randn_like(want[0]), torch.randn_like(want[1]))
    ins = (poses, weight, acts, bu, ba)
    torch.testing.assert_close(torch.autograd.grad(got, ins, g), torch.autograd.grad(want, ins, g))

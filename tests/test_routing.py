import math

import pytest
import torch

from capsnet import capsule_lengths, dynamic_routing, squash
from capsnet.nn.routing import squash_backward


def reference_routing(u_hat: torch.Tensor, iterations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Procedure 1 written out with loops, one example at a time, in float64."""
    batch, n_in, n_out, _ = u_hat.shape
    vs, cs = [], []
    for x in range(batch):
        b = [[0.0] * n_out for _ in range(n_in)]
        for r in range(iterations):
            c = []
            for i in range(n_in):
                z = sum(math.exp(b[i][j]) for j in range(n_out))
                c.append([math.exp(b[i][j]) / z for j in range(n_out)])
            v = []
            for j in range(n_out):
                s = sum(c[i][j] * u_hat[x, i, j] for i in range(n_in))
                n2 = float((s * s).sum())
                v.append(s * (n2 / (1 + n2)) / math.sqrt(n2))
            if r < iterations - 1:
                for i in range(n_in):
                    for j in range(n_out):
                        b[i][j] += float((u_hat[x, i, j] * v[j]).sum())
        vs.append(torch.stack(v))
        cs.append(torch.tensor(c, dtype=torch.float64))
    return torch.stack(vs), torch.stack(cs)


def test_squash_worked_example():
    # |s| = 5: length 25/26, direction (3, 4)/5.
    v = squash(torch.tensor([3.0, 4.0]))
    torch.testing.assert_close(v, torch.tensor([3.0, 4.0]) * (25 / 26) / 5)


def test_squash_length_is_below_one_and_monotone():
    s = torch.linspace(0.1, 20, 50).unsqueeze(1) * torch.tensor([[0.6, 0.8]])
    lengths = squash(s).norm(dim=1)
    assert (lengths < 1).all() and (lengths.diff() > 0).all()


def test_squash_at_zero_has_finite_value_and_gradient():
    s = torch.zeros(2, 16, requires_grad=True)
    v = squash(s)
    v.sum().backward()
    assert torch.equal(v, torch.zeros_like(v))
    assert torch.isfinite(s.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_squash_is_stable_in_half_precision(dtype):
    s = torch.tensor([[300.0] * 16, [1e-4] * 16, [0.0] * 16], dtype=dtype)
    v = squash(s)
    assert v.dtype == dtype and torch.isfinite(v).all()
    assert v[0].float().norm().item() == pytest.approx(1.0, abs=1e-2)


@pytest.mark.parametrize("iterations", [1, 3, 5])
def test_routing_matches_procedure_1(iterations):
    u_hat = torch.randn(2, 7, 4, 5, dtype=torch.float64)
    v, c = dynamic_routing(u_hat, iterations)
    v_ref, c_ref = reference_routing(u_hat, iterations)
    torch.testing.assert_close(v.double(), v_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(c.double(), c_ref, atol=1e-5, rtol=1e-5)


def test_one_iteration_couples_uniformly():
    u_hat = torch.randn(3, 6, 4, 8)
    v, c = dynamic_routing(u_hat, iterations=1)
    torch.testing.assert_close(c, torch.full_like(c, 1 / 4))
    torch.testing.assert_close(v, squash(u_hat.mean(1) * 6 / 4))  # s_j = Σ_i û / J


def test_coupling_sums_to_one_over_parents():
    _, c = dynamic_routing(3 * torch.randn(4, 20, 10, 16), iterations=3)
    torch.testing.assert_close(c.sum(2), torch.ones(4, 20))


def test_routing_is_per_example():
    # b starts at 0 for every example: routing one example alone or in a batch agrees.
    u_hat = torch.randn(5, 12, 3, 4)
    v, c = dynamic_routing(u_hat, 3)
    v1, c1 = dynamic_routing(u_hat[2:3], 3)
    torch.testing.assert_close(v[2:3], v1)
    torch.testing.assert_close(c[2:3], c1)


def test_contiguous_and_transposed_layouts_agree():
    u_bjid = torch.randn(2, 3, 9, 4)
    v1, c1 = dynamic_routing(u_bjid.transpose(1, 2), 3)
    v2, c2 = dynamic_routing(u_bjid.transpose(1, 2).contiguous(), 3)
    torch.testing.assert_close(v1, v2)
    torch.testing.assert_close(c1, c2)


def test_detach_agreement_keeps_values_and_changes_gradients():
    u_hat = torch.randn(2, 8, 3, 4, requires_grad=True)
    grads = []
    for detach in (False, True):
        v, _ = dynamic_routing(u_hat, 3, detach_agreement=detach)
        (g,) = torch.autograd.grad(v.pow(2).sum(), u_hat)
        grads.append((v.detach(), g))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    assert not torch.allclose(grads[0][1], grads[1][1])


def _squash(s: torch.Tensor) -> torch.Tensor:
    n2 = s.pow(2).sum(-1, keepdim=True)
    return n2 / (1 + n2) * s / torch.sqrt(n2 + 1e-8)


def autograd_routing(u_hat: torch.Tensor, iterations: int, detach_agreement: bool):
    """Procedure 1 in broadcast tensor ops, differentiated by autograd (the plain way).

    ``detach_agreement``, as documented: every iteration's coupling coefficients come from
    detached predictions, and the output is the final weighted sum of the real ones."""
    u_route = u_hat.detach() if detach_agreement else u_hat
    b = torch.zeros(u_hat.shape[:3], dtype=u_hat.dtype)  # (B, I, J)
    for r in range(iterations):
        c = torch.softmax(b, dim=2)
        v = _squash((c.unsqueeze(-1) * u_route).sum(1))  # (B, J, D)
        if r < iterations - 1:
            b = b + (u_route * v.unsqueeze(1)).sum(-1)
    if detach_agreement:
        v = _squash((c.unsqueeze(-1) * u_hat).sum(1))
    return v, c


def test_routing_refuses_double_backward():
    u_hat = torch.randn(2, 5, 3, 4, dtype=torch.float64, requires_grad=True)
    v, _ = dynamic_routing(u_hat, 2)
    (g,) = torch.autograd.grad(v.pow(2).sum(), u_hat, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|does not require grad"):
        g.sum().backward()


def test_squash_backward_matches_autograd():
    s = torch.randn(3, 5, 4, dtype=torch.float64, requires_grad=True)
    s.data[0, 0] = 0.0  # the closed form must hold at s = 0 too
    g = torch.randn(3, 5, 4, dtype=torch.float64)
    (expected,) = torch.autograd.grad(squash(s), s, g)
    torch.testing.assert_close(squash_backward(s.detach(), g), expected)


@pytest.mark.parametrize("iterations", [1, 2, 3])
def test_routing_gradient_matches_finite_differences(iterations):
    # Both outputs (v and c) are checked, so every term of the hand-written backward is.
    u_hat = (0.7 * torch.randn(2, 7, 3, 4, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda u: dynamic_routing(u, iterations), (u_hat,))


@pytest.mark.parametrize("detach", [False, True])
def test_routing_gradient_matches_autograd(detach):
    u_hat = torch.randn(3, 9, 4, 5, dtype=torch.float64, requires_grad=True)
    w_v, w_c = torch.randn(3, 4, 5, dtype=torch.float64), torch.randn(3, 9, 4, dtype=torch.float64)
    grads = []
    for route in (dynamic_routing, autograd_routing):
        v, c = route(u_hat, 3, detach)
        grads.append(torch.autograd.grad((v * w_v).sum() + (c * w_c).sum(), u_hat)[0])
    torch.testing.assert_close(grads[0], grads[1], atol=1e-10, rtol=1e-8)


def test_routing_rejects_zero_iterations():
    with pytest.raises(ValueError, match="at least 1"):
        dynamic_routing(torch.randn(1, 2, 3, 4), iterations=0)


def test_capsule_lengths_are_exact_and_have_a_finite_gradient_at_zero():
    v = torch.tensor([[3e-6, 4e-6], [0.0, 0.0]], requires_grad=True)
    lengths = capsule_lengths(v)
    lengths.sum().backward()
    torch.testing.assert_close(lengths, torch.tensor([5e-6, 0.0]), rtol=1e-6, atol=0)
    assert torch.isfinite(v.grad).all()

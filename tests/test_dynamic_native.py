"""The native dynamic routing kernel (nn/csrc/dynamic_routing.cpp through capsnet.nn.native):
votes and routing, and their gradients, equal to the PyTorch path."""

import pytest
import torch

from capsnet.nn import native, routing
from capsnet.nn.layers import RoutingCaps
from capsnet.nn.routing import EPS, RoutingSpec, dynamic_routing, native_dynamic_routing

pytestmark = pytest.mark.usefixtures("native_kernels")


def _kernels():
    kernels = native.dynamic_kernels()
    assert kernels is not None  # with a compiler (CI has one) the build must succeed
    return kernels


def _pytorch(u, weight, iterations):
    votes = torch.einsum("ijdk,bik->bijd", weight, u)  # (B, I, J, D)
    return dynamic_routing(votes, iterations)


# (N, I, K, J, D): the paper's DigitCaps; sizes that leave a partial chunk of children and a
# partial vector of J·D, more examples than threads and fewer
@pytest.mark.parametrize("shape", [(3, 1152, 8, 10, 16), (5, 13, 3, 3, 5), (1, 9, 8, 7, 16)])
@pytest.mark.parametrize("iterations", [1, 2, 3])
def test_native_matches_the_pytorch_routing_in_float64(shape, iterations):
    n, i, k, j, d = shape
    g = torch.Generator().manual_seed(0)
    u = torch.randn(n, i, k, generator=g, dtype=torch.float64)
    weight = torch.randn(i, j, d, k, generator=g, dtype=torch.float64) / k**0.5
    v, c = _kernels().dynamic_forward(u, weight, iterations, EPS)
    want_v, want_c = _pytorch(u, weight, iterations)
    torch.testing.assert_close(v, want_v, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(c, want_c, rtol=1e-10, atol=1e-12)


@pytest.mark.usefixtures("two_threads")
def test_two_threads_route_as_one():
    u, weight = torch.randn(7, 40, 8), 0.3 * torch.randn(40, 10, 16, 8)
    got = _kernels().dynamic_forward(u, weight, 3, EPS)
    torch.set_num_threads(1)
    for a, b in zip(got, _kernels().dynamic_forward(u, weight, 3, EPS), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)  # each example on one thread


def _float64_problem(shape, seed=0):
    n, i, k, j, d = shape
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(n, i, k, generator=g, dtype=torch.float64).requires_grad_()
    weight = (torch.randn(i, j, d, k, generator=g, dtype=torch.float64) / k**0.5).requires_grad_()
    grad_v = torch.randn(n, j, d, generator=g, dtype=torch.float64)
    grad_c = torch.randn(n, i, j, generator=g, dtype=torch.float64)
    return u, weight, grad_v, grad_c


def _gradients(routed, u, weight, grad_v, grad_c):
    v, c = routed
    loss = (v * grad_v).sum() + (0 if grad_c is None else (c * grad_c).sum())
    return torch.autograd.grad(loss, (u, weight))


@pytest.mark.parametrize("shape", [(3, 1152, 8, 10, 16), (5, 13, 3, 3, 5), (1, 9, 8, 7, 16)])
@pytest.mark.parametrize("iterations", [1, 2, 3])
def test_native_gradients_match_the_pytorch_routings_in_float64(shape, iterations):
    u, weight, grad_v, grad_c = _float64_problem(shape)
    routed = native_dynamic_routing(u, weight, iterations)
    for a, b in zip(routed, _pytorch(u, weight, iterations), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    got = _gradients(routed, u, weight, grad_v, grad_c)
    want = _gradients(_pytorch(u, weight, iterations), u, weight, grad_v, grad_c)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_native_gradients_without_a_gradient_for_the_coupling():
    u, weight, grad_v, _ = _float64_problem((4, 40, 8, 10, 16), seed=1)
    got = _gradients(native_dynamic_routing(u, weight, 3), u, weight, grad_v, None)
    want = _gradients(_pytorch(u, weight, 3), u, weight, grad_v, None)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.usefixtures("two_threads")
def test_two_threads_give_the_gradients_of_one():
    u, weight, grad_v, grad_c = _float64_problem((7, 40, 8, 10, 16))
    got = _gradients(native_dynamic_routing(u, weight, 3), u, weight, grad_v, grad_c)
    torch.set_num_threads(1)
    want = _gradients(native_dynamic_routing(u, weight, 3), u, weight, grad_v, grad_c)
    torch.testing.assert_close(got[0], want[0], atol=0, rtol=0)  # each example on one thread
    torch.testing.assert_close(got[1], want[1], rtol=1e-12, atol=1e-14)  # summed per thread


def test_the_layer_routes_natively_with_and_without_gradients_as_pytorch_does():
    _kernels()
    layer, u = RoutingCaps(1152, 8, 10, 16), (0.3 * torch.randn(6, 1152, 8)).requires_grad_()
    want = _pytorch(u, layer.weight, 3)  # float32, exact exponentials
    with torch.no_grad():
        inference = layer(u)
    training = layer(u)
    assert training.poses.grad_fn is not None
    for got in (inference, training):
        torch.testing.assert_close(got.poses, want[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got.weights, want[1], rtol=1e-5, atol=1e-6)
    got = torch.autograd.grad(training.activations.sum(), (u, layer.weight))
    expected = torch.autograd.grad(want[0].norm(dim=-1).sum(), (u, layer.weight))
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_under_bf16_autocast_the_layer_routes_bf16_children_in_float32():
    _kernels()
    layer, u = RoutingCaps(40, 8, 10, 16), (0.3 * torch.randn(3, 40, 8)).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        routed = layer(u.requires_grad_())
    assert routed.poses.dtype == torch.float32
    torch.testing.assert_close(routed.poses, _pytorch(u.float(), layer.weight, 3)[0])
    routed.activations.sum().backward()
    assert u.grad is not None and u.grad.dtype == torch.bfloat16


def test_other_dtypes_routings_and_capsnet_native_0_take_the_pytorch_path(monkeypatch):
    u, w = torch.zeros(2, 3, 4), torch.zeros(3, 2, 4, 4)
    assert not native.dynamic_native_applies(u.long(), w)
    assert not native.dynamic_native_applies(u, w.half())
    assert not native.dynamic_native_applies(u, torch.zeros(3, 65, 4, 4))  # > 64 parents
    routed = RoutingCaps(3, 4, 65, 4)(torch.rand(2, 3, 4))  # routed by PyTorch instead
    assert routed.poses.shape == (2, 65, 4) and routed.poses.grad_fn is not None
    monkeypatch.setattr(routing, "native_dynamic_routing", None)  # called, it would raise
    layer = RoutingCaps(3, 4, 2, 4, RoutingSpec("dynamic", detach_agreement=True))
    assert layer(torch.rand(2, 3, 4)).poses.shape == (2, 2, 4)
    monkeypatch.setenv("CAPSNET_NATIVE", "0")
    assert not native.dynamic_native_applies(u, w)
    layer = RoutingCaps(5, 4, 3, 4, RoutingSpec("em"))
    with torch.no_grad():
        assert layer(torch.rand(2, 5, 4)).poses.shape == (2, 3, 4)

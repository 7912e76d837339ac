"""The native dynamic routing kernel (capsnet/csrc/dynamic_routing.cpp through capsnet.native):
votes and routing without gradients, equal to the PyTorch path."""

import pytest
import torch

from capsnet import native
from capsnet.layers import RoutingCaps
from capsnet.routing import EPS, RoutingSpec, dynamic_routing

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


def test_the_layer_routes_natively_without_gradients_and_agrees_with_training_mode():
    _kernels()
    torch.manual_seed(0)
    layer, u = RoutingCaps(1152, 8, 10, 16), 0.3 * torch.randn(6, 1152, 8)
    with torch.no_grad():
        got = layer(u)  # the native kernel (float32, exponentials by a polynomial)
    want = layer(u)  # gradients on: the PyTorch path
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b.detach(), rtol=1e-5, atol=1e-6)


def test_other_dtypes_routings_and_capsnet_native_0_take_the_pytorch_path(monkeypatch):
    u, w = torch.zeros(2, 3, 4), torch.zeros(3, 2, 4, 4)
    assert not native.dynamic_native_applies(u.double(), w)  # mixed dtypes
    assert not native.dynamic_native_applies(u.half(), w.half())
    monkeypatch.setenv("CAPSNET_NATIVE", "0")
    assert not native.dynamic_native_applies(u, w)
    layer = RoutingCaps(5, 4, 3, 4, RoutingSpec("em"))
    with torch.no_grad():
        assert layer(torch.rand(2, 5, 4)).poses.shape == (2, 3, 4)

"""The convolution with a patch-product weight gradient (capsnet.nn.patchconv) against conv2d."""

import pytest
import torch
from torch.nn import functional as F

from capsnet.nn.layers import Conv2d
from capsnet.nn.patchconv import patch_grad_conv2d

CASES = [  # (B, C, O, H, W, k, stride, padding): the paper's Conv1, stride 2, padding, C > 1
    (2, 1, 6, 28, 28, 9, 1, 0),
    (3, 1, 4, 11, 9, 5, 2, 0),
    (2, 1, 5, 8, 10, 3, 1, 2),
    (2, 3, 4, 9, 9, 3, 2, 1),
]


def _inputs(b, c, o, h, w, k):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, c, h, w, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(o, c, k, k, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(o, generator=g, dtype=torch.float64, requires_grad=True)
    return x, weight, bias


@pytest.mark.parametrize("case", CASES)
def test_forward_and_gradients_equal_conv2d_in_float64(case):
    *dims, s, p = case
    x, w, b = _inputs(*dims)
    gy = torch.randn(F.conv2d(x, w, b, s, p).shape, dtype=torch.float64)
    ours = patch_grad_conv2d(x, w, b, (s, s), (p, p))
    theirs = F.conv2d(x, w, b, s, p)
    torch.testing.assert_close(ours, theirs, atol=1e-12, rtol=0)
    for g1, g2 in zip(
        torch.autograd.grad(ours, (x, w, b), gy),
        torch.autograd.grad(theirs, (x, w, b), gy),
        strict=True,
    ):
        torch.testing.assert_close(g1, g2, atol=1e-10, rtol=0)


def test_gradients_pass_gradcheck():
    x, w, b = _inputs(2, 1, 3, 7, 6, 3)
    assert torch.autograd.gradcheck(lambda *a: patch_grad_conv2d(*a, (2, 2), (1, 1)), (x, w, b))


def test_without_a_bias_or_an_input_gradient():
    x, w, _ = _inputs(2, 1, 3, 8, 8, 3)
    x = x.detach()
    (gw,) = torch.autograd.grad(patch_grad_conv2d(x, w, None, (1, 1), (0, 0)).sum(), (w,))
    (ref,) = torch.autograd.grad(F.conv2d(x, w).sum(), (w,))
    torch.testing.assert_close(gw, ref, atol=1e-10, rtol=0)


def test_layer_takes_the_path_for_one_input_channel_in_float_training_only():
    x = torch.randn(2, 1, 12, 12)
    assert Conv2d(1, 8, 5).patch_grad_pays(x)
    assert not Conv2d(3, 8, 5).patch_grad_pays(torch.randn(2, 3, 12, 12))
    assert not Conv2d(1, 8, 5, dilation=2).patch_grad_pays(x)
    assert not Conv2d(1, 8, 5, padding="same").patch_grad_pays(x)
    assert not Conv2d(1, 8, 5, padding=1, padding_mode="reflect").patch_grad_pays(x)
    with torch.no_grad():
        assert not Conv2d(1, 8, 5).patch_grad_pays(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not Conv2d(1, 8, 5).patch_grad_pays(x)
    frozen = Conv2d(1, 8, 5).requires_grad_(False)
    assert not frozen.patch_grad_pays(x)


def test_layer_convolves_directly_under_compile_and_tracing(monkeypatch):
    x, layer = torch.randn(2, 1, 12, 12), Conv2d(1, 8, 5)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert not layer.patch_grad_pays(x)
    monkeypatch.undo()
    monkeypatch.setattr(torch.jit, "is_tracing", lambda: True)
    assert not layer.patch_grad_pays(x)


def test_layer_trains_like_nn_conv2d():
    torch.manual_seed(0)
    ours = Conv2d(1, 8, 5, stride=2, padding=1)
    theirs = torch.nn.Conv2d(1, 8, 5, stride=2, padding=1)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(4, 1, 16, 16)
    assert ours.patch_grad_pays(x)
    ours(x).square().sum().backward()
    theirs(x).square().sum().backward()
    for p, q in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-4, rtol=1e-5)

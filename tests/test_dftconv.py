"""Convolution through the DFT (capsnet.nn.dftconv) against torch's own conv2d and FFT."""

import pytest
import torch
from torch.nn import functional as F

from capsnet import CapsNet, CapsNetConfig
from capsnet.errors import ConfigError
from capsnet.nn.dftconv import (
    dft_conv2d,
    dft_grid,
    half_spectrum,
    half_spectrum_adjoint,
    kernel_spectrum,
)
from capsnet.nn.layers import Conv2d
from capsnet.training.step import adam

SHAPES = [  # (B, C, O, H, W, kh, kw, stride): odd and even sizes, kernel = input, stride 3
    (3, 4, 5, 11, 9, 3, 4, 2),
    (2, 3, 2, 8, 8, 8, 8, 1),
    (2, 2, 3, 7, 10, 2, 3, 3),
    (2, 6, 4, 20, 20, 9, 9, 2),  # PrimaryCaps' geometry
]


def _inputs(b, c, o, h, w, kh, kw, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, c, h, w, generator=g, dtype=dtype, requires_grad=True)
    weight = torch.randn(o, c, kh, kw, generator=g, dtype=dtype, requires_grad=True)
    bias = torch.randn(o, generator=g, dtype=dtype, requires_grad=True)
    return x, weight, bias


@pytest.mark.parametrize("shape", SHAPES)
def test_matches_conv2d_in_float64(shape):
    *dims, s = shape
    x, w, b = _inputs(*dims)
    torch.testing.assert_close(dft_conv2d(x, w, b, s), F.conv2d(x, w, b, s), atol=1e-12, rtol=0)


@pytest.mark.parametrize("shape", SHAPES[:3])
def test_gradients_pass_gradcheck(shape):
    *dims, s = shape
    assert torch.autograd.gradcheck(lambda *a: dft_conv2d(*a, s), _inputs(*dims))


def test_gradients_match_conv2d_in_float32():
    x, w, b = _inputs(4, 16, 8, 20, 20, 9, 9, dtype=torch.float32)
    g = torch.randn(4, 8, 6, 6)
    grads = [torch.autograd.grad(f(x, w, b, 2), (x, w, b), g) for f in (dft_conv2d, F.conv2d)]
    for a, ref in zip(*grads, strict=True):  # float32 rounding of sums of ~1,300 products
        torch.testing.assert_close(a, ref, atol=1e-4 * ref.abs().max().item(), rtol=0)


@pytest.mark.parametrize("sign", [-1, 1])
def test_half_spectrum_is_rfft2_of_the_zero_padded_array(sign):
    a = torch.randn(3, 5, 4, dtype=torch.float64)
    ref = torch.fft.rfft2(a, s=(7, 6)).reshape(3, -1).t()  # (F, N)
    ref = ref if sign == -1 else ref.conj()  # sign +1: e^{+iθ}, the conjugate
    got = half_spectrum(a, 7, 6, sign)
    torch.testing.assert_close(torch.complex(got[0], got[1]), ref)


def test_half_spectrum_adjoint_is_the_transpose():
    a, g = torch.randn(3, 5, 4, dtype=torch.float64), torch.randn(2, 7 * 4, 3, dtype=torch.float64)
    lhs = (half_spectrum(a, 7, 6) * g).sum()  # <T a, g> = <a, Tᵀ g>
    torch.testing.assert_close(lhs, (a * half_spectrum_adjoint(g, 5, 4, 7, 6)).sum())


def test_grid_is_the_part_of_the_input_the_strided_windows_read():
    assert dft_grid(20, 20, 9, 9, 2) == (19, 19)  # PrimaryCaps: row and column 19 unread
    assert dft_grid(11, 9, 3, 4, 2) == (11, 8)
    assert dft_grid(8, 8, 8, 8, 1) == (8, 8)


def test_a_spectrum_for_another_grid_is_refused():
    x, w = torch.zeros(1, 3, 20, 20), torch.zeros(2, 3, 9, 9)
    with pytest.raises(ValueError, match="19×19 grid"):
        dft_conv2d(x, w, stride=2, spectrum=kernel_spectrum(w, 20, 20))
    dft_conv2d(x, w, stride=2, spectrum=kernel_spectrum(w, 19, 19))


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="do not match"):
        dft_conv2d(torch.zeros(1, 3, 8, 8), torch.zeros(2, 4, 3, 3))
    with pytest.raises(ValueError, match="larger than input"):
        dft_conv2d(torch.zeros(1, 3, 8, 8), torch.zeros(2, 3, 9, 3))


def test_layer_takes_the_dft_only_where_it_is_cheaper():
    # 20×20 → 6×6, 64 → 64 channels: DFT 3·220·64·64 + 440·36·64 + 440·40·64 = 4.84M
    # multiply-adds per image, direct 64·64·81·36 = 11.94M: over twice as many.
    primary, x = Conv2d(64, 64, 9, 2), torch.randn(2, 64, 20, 20)
    assert primary.dft_pays(x)
    assert not Conv2d(16, 64, 9, 2).dft_pays(x[:, :16])  # 1.97M vs 2.99M: under twice
    assert not Conv2d(1, 256, 9).dft_pays(torch.randn(2, 1, 28, 28))  # conv1: the inverse costs
    assert not Conv2d(64, 64, 9, 2, groups=64).dft_pays(x)  # depthwise: direct
    assert not Conv2d(64, 64, 9, 2, dft=False).dft_pays(x)
    assert not primary.dft_pays(x.bfloat16())  # a bfloat16 model: direct


def test_layer_convolves_directly_under_compile_and_tracing(monkeypatch):
    layer, x = Conv2d(64, 64, 9, 2), torch.randn(2, 64, 20, 20)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert not layer.dft_pays(x)
    monkeypatch.undo()
    monkeypatch.setattr(torch.jit, "is_tracing", lambda: True)
    assert not layer.dft_pays(x)


def test_layer_under_autocast_takes_the_dft_with_bfloat16_products():
    layer, x = Conv2d(64, 64, 9, 2), torch.randn(2, 64, 20, 20)
    ref = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer.dft_pays(x.bfloat16())  # training
        low = layer(x.bfloat16())  # what autocast's conv1 hands on
        with torch.no_grad():
            assert layer.dft_pays(x.bfloat16())  # and inference
            assert layer(x.bfloat16()).dtype == torch.float32
            assert layer._spectrum[1].dtype == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.float16), torch.no_grad():
        assert not layer.dft_pays(x.half())  # float16 inference: direct
    assert low.dtype == torch.float32
    # the input's and the products' rounding to bfloat16 (relative 2^-9) differ from float32
    torch.testing.assert_close(low, ref, atol=0.01 * ref.abs().max().item(), rtol=0)


def _rms_error(a: torch.Tensor, ref: torch.Tensor) -> float:
    return ((a.double() - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt()).item()


def test_bfloat16_products_err_like_a_bfloat16_direct_convolution():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 64, 20, 20, generator=g).relu()  # PrimaryCaps' geometry, fewer channels
    w = torch.randn(64, 64, 9, 9, generator=g) * 0.02
    gy = torch.randn(4, 64, 6, 6, generator=g)

    def output_and_grads(conv, x, w, gy):
        x, w = x.clone().requires_grad_(), w.clone().requires_grad_()
        y = conv(x, w)
        return (y, *torch.autograd.grad(y, (x, w), gy.to(y.dtype)))

    def conv(x, w):
        return F.conv2d(x, w, stride=2)

    def bf16(t):
        return t.bfloat16().double()

    ref = output_and_grads(conv, x.double(), w.double(), gy.double())
    # A bfloat16 direct convolution computed exactly, whatever this CPU's bf16 kernels do:
    # operands rounded to bfloat16, products summed in float64, the result rounded to
    # bfloat16 (each about 0.16% RMS: 0.29% in all, what PyTorch's errs with native bf16)
    direct = [bf16(t) for t in output_and_grads(conv, bf16(x), bf16(w), bf16(gy))]
    dft = output_and_grads(
        lambda *a: dft_conv2d(*a, stride=2, product_dtype=torch.bfloat16), x, w, gy
    )
    for a, b, r in zip(dft, direct, ref, strict=True):  # y, dL/dx, dL/dw: 1.21-1.31x measured
        assert _rms_error(a, r) < 1.5 * _rms_error(b, r) < 0.005
        assert a.dtype == torch.float32


def test_layer_agrees_with_nn_conv2d_and_keeps_its_state_dict():
    layer, ref = Conv2d(64, 64, 9, 2), torch.nn.Conv2d(64, 64, 9, 2)
    assert layer.state_dict().keys() == ref.state_dict().keys()
    ref.load_state_dict(layer.state_dict())
    x = torch.randn(2, 64, 20, 20)
    assert layer.dft_pays(x)
    torch.testing.assert_close(layer(x), ref(x), atol=1e-5, rtol=1e-5)


def test_model_config_chooses_the_algorithm():
    assert CapsNet(CapsNetConfig()).primary.conv.dft
    assert not CapsNet(CapsNetConfig(conv_algorithm="direct")).primary.conv.dft
    with pytest.raises(ConfigError, match="conv_algorithm"):
        CapsNetConfig(conv_algorithm="fft").validate()


def test_layer_keeps_the_kernel_spectrum_without_gradients_until_the_weight_changes():
    layer, ref = Conv2d(64, 64, 9, 2), torch.nn.Conv2d(64, 64, 9, 2)
    x = torch.randn(2, 64, 20, 20)
    with torch.no_grad():
        layer(x)
        kept = layer._spectrum[1]
        layer(x)
        assert layer._spectrum[1] is kept
        layer.weight.mul_(-2.0)  # an optimizer step or load_state_dict changes it in place
        ref.load_state_dict(layer.state_dict())
        torch.testing.assert_close(layer(x), ref(x), atol=1e-5, rtol=1e-5)
        assert layer._spectrum[1] is not kept


def _step_then_check_inference(layer, optim, between=lambda: None):
    """Inference (spectrum kept), a training step, ``between``, inference against
    nn.Conv2d with the stepped weight."""
    ref, x = torch.nn.Conv2d(64, 64, 9, 2), torch.randn(2, 64, 20, 20)
    layer.eval()
    with torch.no_grad():
        layer(x)
    assert layer._spectrum is not None
    layer(x).square().sum().backward()
    optim.step()
    between()
    ref.load_state_dict(layer.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(layer(x), ref(x), atol=1e-5, rtol=1e-5)


def test_inference_after_a_step_of_the_trainers_fused_adam_uses_the_new_weight():
    layer = Conv2d(64, 64, 9, 2)
    _step_then_check_inference(layer, adam(layer, 1e-2))


def test_entering_training_mode_drops_the_kept_spectrum_and_eval_keeps_it():
    layer = Conv2d(64, 64, 9, 2)
    optim = torch.optim.Adam(layer.parameters(), lr=1e-2, fused=True)  # no version counting
    _step_then_check_inference(layer, optim, lambda: layer.train().eval())
    kept = layer._spectrum
    layer.eval()  # e.g. another predict() call
    assert layer._spectrum is kept

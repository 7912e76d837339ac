"""The convolution the capsule networks use: ``nn.Conv2d`` with faster CPU paths (through the
DFT, or with a patch-product weight gradient); the same function to float rounding."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from capsnet.nn.dftconv import dft_conv2d, dft_grid, kernel_spectrum
from capsnet.nn.patchconv import patch_grad_conv2d
from capsnet.runtime import tracing


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` with two CPU paths, the same function to float rounding: through the DFT
    (:func:`capsnet.nn.dftconv.dft_conv2d`) where that does less arithmetic, and, for one input
    channel in training, with the weight gradient as a batched matrix product over patches
    (:func:`capsnet.nn.patchconv.patch_grad_conv2d`, see :meth:`patch_grad_pays`).

    The DFT, when: ``dft`` on; no padding, dilation or groups; equal strides; on the CPU; in
    float32/64, under bfloat16 autocast, or training under float16 autocast; not tracing,
    exporting to ONNX or under ``torch.compile`` (which would trace through the cached
    transform matrices); and the DFT's multiply-adds per image at most half the direct
    ones, ``C·O·kh·kw·Mh·Mw``. They are estimated as ``3F·C·O`` (the products, F =
    n·(m//2+1) frequencies of the (n, m) :func:`~capsnet.nn.dftconv.dft_grid`; ``4F·C·O`` in
    bfloat16) + ``2F·Mh·Mw·O`` (the inverse at the outputs) + ``2F·(n+m)·C`` (the input's
    transform); the kernel's transform is shared by the batch and left out. Elsewhere it is
    ``nn.Conv2d``; the parameters and state dict are the same either way.

    Without gradients (inference) the kernel's spectrum is kept between calls until the
    weight changes (for the paper's PrimaryCaps, 149 MB; 50 MB in bfloat16), laid out
    (frequency, in-channel, out-channel) as the forward's products read it. A change is
    seen by the weight's version counter, which PyTorch's fused optimizers do not advance
    (:func:`capsnet.training.step.adam` does it for them), and entering training mode
    (:meth:`train`) drops the spectrum: a loop that switches to training for its steps and
    back for inference is safe with any optimizer, while repeated ``eval()`` calls (one per
    :func:`capsnet.tools.predict.predict` call) keep it.

    Under bfloat16 autocast the input's transform and the output's inverse run in the
    weight's dtype (float32); the kernel's transform, the channel products (four real
    products per frequency; :func:`capsnet.nn.dftconv._complex_bmm4`) and the kernel
    gradient's adjoint run in bfloat16. For the paper's PrimaryCaps the forward then errs
    by 0.372% RMS where bfloat16's direct convolution errs by 0.285% (both gradients alike,
    1.26-1.35x the direct one's; tests/test_dftconv.py); speed in
    benchmarks/dft-bf16-2026-12-04.log. Under float16 autocast the DFT runs in float32 when
    training, and inference convolves directly.
    """

    def __init__(self, *args: Any, dft: bool = True, **kwargs: Any):
        super().__init__(*args, **kwargs)
        plain = self.padding == (0, 0) and self.dilation == (1, 1) and self.groups == 1
        self.dft = dft and plain and self.stride[0] == self.stride[1]
        self._spectrum: tuple[tuple, Tensor] | None = None  # (key, kernel_spectrum)

    def train(self, mode: bool = True) -> Conv2d:
        if mode:
            self._spectrum = None
        return super().train(mode)

    def dft_pays(self, x: Tensor) -> bool:
        """Whether :meth:`forward` takes the DFT path for input ``x``."""
        lowp = _product_dtype()
        if torch.is_autocast_enabled("cpu"):  # float16: training only (inference is faster direct)
            wide = lowp is not None or torch.is_grad_enabled()
        else:
            wide = x.dtype in (torch.float32, torch.float64)
        if not (self.dft and wide and x.device.type == "cpu"):
            return False
        if tracing() or torch.compiler.is_compiling():
            return False
        (h, w), (kh, kw), s = x.shape[-2:], self.kernel_size, self.stride[0]
        c, o, m = self.in_channels, self.out_channels, ((h - kh) // s + 1) * ((w - kw) // s + 1)
        n, k = dft_grid(h, w, kh, kw, s)
        f, products = n * (k // 2 + 1), 3 if lowp is None else 4
        cost = products * f * c * o + 2 * f * m * o + 2 * f * (n + k) * c
        return 2 * cost <= c * o * kh * kw * m

    def patch_grad_pays(self, x: Tensor) -> bool:
        """Whether :meth:`forward` takes the patch-product weight gradient: one input channel
        and one group, no dilation, zero padding given as numbers; the weight trains; float32/64
        on the CPU without autocast; not tracing or under ``torch.compile``."""
        plain = self.groups == 1 and self.dilation == (1, 1) and self.padding_mode == "zeros"
        shape = self.in_channels == 1 and plain and not isinstance(self.padding, str)
        training = torch.is_grad_enabled() and self.weight.requires_grad
        wide = x.dtype in (torch.float32, torch.float64) and not torch.is_autocast_enabled("cpu")
        if not (shape and training and wide and x.device.type == "cpu"):
            return False
        return not (tracing() or torch.compiler.is_compiling())

    def forward(self, x: Tensor) -> Tensor:
        if self.dft_pays(x):
            lowp = _product_dtype()
            with torch.autocast("cpu", enabled=False):
                return self._dft(x.to(self.weight.dtype), lowp)
        if self.patch_grad_pays(x):
            return patch_grad_conv2d(x, self.weight, self.bias, self.stride, self.padding)  # type: ignore[arg-type]
        return super().forward(x)

    def _dft(self, x: Tensor, lowp: torch.dtype | None) -> Tensor:
        spectrum = None
        if not torch.is_grad_enabled():  # the weight cannot change within a gradient step
            w, (n, m) = self.weight, dft_grid(*x.shape[-2:], *self.kernel_size, self.stride[0])
            key = (w.data_ptr(), w._version, n, m, x.dtype, lowp)
            if self._spectrum is None or self._spectrum[0] != key:
                ws = kernel_spectrum(w, n, m, lowp)  # (·, F, O, C)
                self._spectrum = (key, ws.transpose(2, 3).contiguous().transpose(2, 3))
            spectrum = self._spectrum[1]
        return dft_conv2d(
            x, self.weight, self.bias, self.stride[0], spectrum=spectrum, product_dtype=lowp
        )


def _product_dtype() -> torch.dtype | None:
    """bfloat16 under CPU autocast to bfloat16 (the DFT's channel products take it), else None
    (the weight's dtype; float16 autocast too, as its range would not hold the spectra)."""
    on = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    return torch.bfloat16 if on else None

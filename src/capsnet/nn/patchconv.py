"""A convolution whose weight gradient is one batched matrix product over the input's patches.

With a single input channel (the first layer on grey images) oneDNN's weight gradient on the
CPU takes several times its arithmetic: for the paper's Conv1 (1 → 256 channels, 9×9, batch
100, one thread) 277 ms, where the same sum as a batched product of the output gradient with
the input's unfolded 9×9 patches takes 63 ms. With 3 or more input channels oneDNN was the
faster one, so :class:`capsnet.nn.conv.Conv2d` takes this path for one input channel only.
Measured 2026-12-03 on an AVX2 EPYC (``benchmarks/conv_weight_grad.py``, its log
``benchmarks/conv-weight-grad-2026-12-03.jsonl``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable


def patch_grad_conv2d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
) -> Tensor:
    """``F.conv2d(x, weight, bias, stride, padding)`` (one group, no dilation), the same
    forward; its backward computes the weight gradient as

        ∂L/∂W (O, C·kh·kw) = Σ_b  gy_b (O, L) @ unfold(x)_bᵀ (L, C·kh·kw)

    (L output positions), the bias gradient as Σ gy over batch and positions, and the input
    gradient (when ``x`` needs one) by PyTorch's convolution backward. x (B, C, H, W),
    weight (O, C, kh, kw) → (B, O, Mh, Mw). Differentiable once.
    """
    return _PatchGradConv.apply(x, weight, bias, stride, padding)


def patch_weight_grad(
    x: Tensor,
    gy: Tensor,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
) -> Tensor:
    """Σ_b gy_b (O, L) @ unfold(x)_bᵀ (L, C·kh·kw): the weight gradient (O, C, kh, kw) of
    a convolution with input x (B, C, H, W) and output gradient gy (B, O, Mh, Mw)."""
    cols = F.unfold(x, kernel, padding=padding, stride=stride)  # (B, C·kh·kw, L)
    b, o = gy.shape[:2]
    per_image = torch.bmm(gy.reshape(b, o, -1), cols.transpose(1, 2))  # (B, O, C·kh·kw)
    return per_image.sum(0).view(o, x.shape[1], *kernel)


class _PatchGradConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b, stride, padding):  # type: ignore[override]
        ctx.save_for_backward(x, w)
        ctx.conv = (stride, padding)
        return F.conv2d(x, w, b, stride, padding)

    @staticmethod
    @once_differentiable
    def backward(ctx, gy: Tensor):  # type: ignore[override]
        x, w = ctx.saved_tensors
        stride, padding = ctx.conv
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            mask = [True, False, False]
            gx = torch.ops.aten.convolution_backward(
                gy, x, w, None, stride, padding, [1, 1], False, [0, 0], 1, mask
            )[0]
        if ctx.needs_input_grad[1]:
            gw = patch_weight_grad(x, gy, tuple(w.shape[2:]), stride, padding)
        if ctx.needs_input_grad[2]:
            gb = gy.sum((0, 2, 3))
        return gx, gw, gb, None, None

"""Valid 2-D convolution (cross-correlation) through the discrete Fourier transform.

``torch.nn.functional.conv2d(x, w, b, stride)`` with no padding and no groups computes
``y[b,o,i,j] = Σ_{c,p,q} x[b, c, s·i + p, s·j + q] · w[o, c, p, q]`` at a cost of
``kh·kw·Mh·Mw`` multiply-adds per (image, in-channel, out-channel), where (Mh, Mw) is the
output size. On an H×W grid the circular cross-correlation has the spectrum ``X · conj(W)``
(W: the kernel zero-padded to H×W), and it equals the valid one at every output position,
since ``s·i + p ≤ H − 1`` never wraps. Through the half spectrum of the real transform
(F = H·(W//2+1) frequencies) the channel contraction is a complex product per frequency,
done as three real products (Gauss's trick, :func:`_complex_bmm`): ``3·F`` multiply-adds
per (image, in-channel, out-channel) instead of ``kh·kw·Mh·Mw``. The grid is the part of
the input the strided windows read (:func:`dft_grid`): for CapsNet's PrimaryCaps (20×20
input, 9×9 kernel, stride 2, 6×6 output) 19×19, F = 190, so 570 against 2,916: under a
fifth of the arithmetic. The transforms cost
O(channels · H·W·(H + W)) and are done as two small matrix products each (rows, then
columns) that leave the spectra frequency-major, (2, F, channels): every step is then a
matrix product on memory as it lies, and only the two gradients are reordered once at the
end (a transposing copy back to (channels, h, w)).

The result matches the direct convolution to float rounding (about 1e-6 of the largest
output in float32); the gradients are written out by hand (:class:`_DFTConv`): the adjoint
transforms and six batched products, twice the forward's three, as for a direct
convolution. With ``product_dtype`` bfloat16 (what :class:`capsnet.nn.conv.Conv2d` takes
under bfloat16 autocast) the kernel's transform, the products (four per frequency, eight in
the backward) and the kernel gradient's adjoint run in bfloat16, at bfloat16's accuracy.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from capsnet import _deprecated


@functools.cache
def _factors(
    n_in: int, m_in: int, n: int, m: int, sign: int, dtype: torch.dtype, device: torch.device
) -> tuple[Tensor, Tensor]:
    """The 2-D DFT of an (n_in, m_in) array on an (n, m) grid, factored into two real maps.

    ``R`` (2V, m_in), V = m//2 + 1: along rows, the half spectrum ``Σ_q e^{sign·2πi vq/m}``
    as stacked [real; imaginary] rows. ``Q`` (2n, 2·n_in): along columns, multiplication
    by ``e^{sign·2πi uh/n}`` of a complex number stored as (real, imaginary) per row h;
    output rows ordered (real/imaginary, u). ``sign`` −1 is the DFT, +1 its conjugate.
    """
    f64 = torch.float64
    v = torch.arange(m // 2 + 1, dtype=f64)
    a = 2 * math.pi * v[:, None] * torch.arange(m_in, dtype=f64) / m  # (V, m_in)
    r = torch.cat([torch.cos(a), sign * torch.sin(a)])  # (2V, m_in)
    b = 2 * math.pi * torch.arange(n, dtype=f64)[:, None] * torch.arange(n_in, dtype=f64) / n
    c, s = torch.cos(b), sign * torch.sin(b)  # (n, n_in)
    q = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)])  # (2, n, n_in, 2)
    return r.to(dtype=dtype, device=device), q.reshape(2 * n, 2 * n_in).to(
        dtype=dtype, device=device
    )


def half_spectrum(a: Tensor, n: int, m: int, sign: int = -1) -> Tensor:
    """(N, h, w) real arrays → their half spectra on an (n, m) grid, (2, n·(m//2+1), N).

    Entry [0, u·V + v, k] is the real part, [1, ...] the imaginary part of
    ``Σ_{p,q} a[k, p, q] · e^{sign·2πi(up/n + vq/m)}`` (zero-padding to n×m implied).
    """
    k, h, w = a.shape
    r, q = _factors(h, w, n, m, sign, a.dtype, a.device)
    z = torch.matmul(r, a.permute(1, 2, 0))  # (h, 2V, N): rows transformed, a transposed view
    x = q @ z.view(2 * h, -1)  # (2n, V·N): columns transformed
    return x.view(2, -1, k)  # (2, F, N)


def half_spectrum_adjoint(
    g: Tensor, h: int, w: int, n: int, m: int, sign: int = -1, pad_to: tuple[int, int] = (0, 0)
) -> Tensor:
    """The adjoint (transpose) of :func:`half_spectrum`: (2, F, N) → (N, h, w), or, with
    ``pad_to`` (H, W) larger, (N, H, W) with zeros beyond (h, w)."""
    k = g.shape[-1]
    r, q = _factors(h, w, n, m, sign, g.dtype, g.device)
    z = q.t() @ g.reshape(2 * n, -1)  # (2h, V·N)
    a = torch.matmul(z.view(h, -1, k).transpose(1, 2), r)  # (h, N, w)
    big_h, big_w = max(h, pad_to[0]), max(w, pad_to[1])
    out = a.new_empty(k, big_h, big_w)
    out[:, :h, :w] = a.transpose(0, 1)  # copied in rows of w
    out[:, h:].zero_()
    out[:, :h, w:].zero_()
    return out


@functools.cache
def _output_map(
    n: int, m: int, stride: int, mh: int, mw: int, dtype: torch.dtype, device: torch.device
) -> Tensor:
    """E (mh·mw, 2F): half spectrum (real; imaginary) → the real inverse DFT at (s·i, s·j).

    ``y[p, q] = Σ_{u, v} c_v/(n·m) · Re(Y[u, v] · e^{2πi(up/n + vq/m)})`` with c_v = 1 for
    v = 0 and (m even) v = m/2, else 2: the bins the half spectrum leaves out are conjugates.
    """
    f64 = torch.float64
    u, v = torch.arange(n, dtype=f64), torch.arange(m // 2 + 1, dtype=f64)
    p, q = stride * torch.arange(mh, dtype=f64), stride * torch.arange(mw, dtype=f64)
    angle = 2 * math.pi * (u[:, None, None, None] * p[:, None] / n + v[:, None, None] * q / m)
    c = torch.full((m // 2 + 1,), 2.0, dtype=f64)
    c[0] = 1.0
    if m % 2 == 0:
        c[-1] = 1.0
    c = c[:, None, None] / (n * m)  # (V, 1, 1), broadcast over (mh, mw)
    e = torch.stack([c * torch.cos(angle), -c * torch.sin(angle)])  # (2, n, V, mh, mw)
    return e.reshape(2 * n * (m // 2 + 1), mh * mw).t().contiguous().to(dtype=dtype, device=device)


@functools.cache
def _kernel_map(
    kh: int, kw: int, n: int, m: int, dtype: torch.dtype, device: torch.device
) -> Tensor:
    """T (2F, kh·kw): :func:`half_spectrum` with ``sign`` +1 of a (kh, kw) kernel as one
    matrix, ``T @ k.flatten()``; one product with K = kh·kw instead of two with K = kh, kw."""
    eye = torch.eye(kh * kw, dtype=torch.float64).view(kh * kw, kh, kw)
    return half_spectrum(eye, n, m, sign=1).reshape(-1, kh * kw).to(dtype=dtype, device=device)


def dft_grid(h: int, w: int, kh: int, kw: int, stride: int) -> tuple[int, int]:
    """The (n, m) grid :func:`dft_conv2d` transforms for an (h, w) input: the rows and
    columns the valid strided output reads, ``((h − kh) // stride) · stride + kh`` (and so
    for w). For CapsNet's PrimaryCaps, 19×19 of the 20×20 input (the last row and column
    meet no window at stride 2): 190 frequencies instead of 220."""
    return ((h - kh) // stride) * stride + kh, ((w - kw) // stride) * stride + kw


def kernel_spectrum(
    weight: Tensor, n: int, m: int, product_dtype: torch.dtype | None = None
) -> Tensor:
    """conj(W) = (a, b): weight (O, C, kh, kw) → its conjugate half spectrum on an n×m grid,
    in the form the channel products take (:func:`dft_conv2d`'s ``product_dtype``). Full
    precision (``product_dtype`` None): the three factors of the three-product
    multiplication (:func:`_complex_bmm`), (3, n·(m//2+1), O, C) holding a, a + b and
    b − a, in the weight's dtype. Otherwise (a, b), (2, n·(m//2+1), O, C), computed in
    ``product_dtype`` as one product with :func:`_kernel_map` (the weight rounded to it, as
    autocast's direct convolution rounds it), for the four-product form
    (:func:`_complex_bmm4`)."""
    o, c, kh, kw = weight.shape
    if product_dtype is not None:
        t = _kernel_map(kh, kw, n, m, product_dtype, weight.device)
        flat = weight.reshape(o * c, kh * kw).t().to(product_dtype)  # (kh·kw, O·C), a view's copy
        return (t @ flat).view(2, -1, o, c)
    wr, wi = half_spectrum(weight.reshape(o * c, kh, kw), n, m, sign=1).view(2, -1, o, c)
    return torch.stack([wr, wr + wi, wi - wr])


def _complex_bmm(
    a_sum: Tensor,
    ar: Tensor,
    ai: Tensor,
    br: Tensor,
    bp: Tensor,
    bm: Tensor,
    *,
    out: Tensor,
    sign: int = 1,
) -> Tensor:
    """(ar + i·ai) @ (br + i·bi) per frequency in three real batched products, not four
    (Gauss's trick): k = (ar + ai) @ br, real = k − ai @ (br + bi), imaginary =
    k + ar @ (bi − br). Takes ``a_sum`` = ar + ai, and ``bp``, ``bm`` = br + bi, bi − br
    (``sign`` = 1) or their negatives (``sign`` = −1). Writes real, imaginary to out[0], out[1].
    """
    k = torch.bmm(a_sum, br)
    torch.baddbmm(k, ai, bp, alpha=-sign, out=out[0])
    torch.baddbmm(k, ar, bm, alpha=sign, out=out[1])
    return out


def _complex_bmm4(ar: Tensor, ai: Tensor, br: Tensor, bi: Tensor, conj: bool) -> Tensor:
    """(ar + i·ai) @ (br ± i·bi) per frequency (− with ``conj``) in four real batched products,
    for a low-precision dtype: there Gauss's trick (:func:`_complex_bmm`) errs more, as k is
    rounded before the difference that cancels most of it (with float32 spectra, 0.36% RMS
    against 0.30% for the paper's PrimaryCaps in bfloat16, whose direct convolution errs by
    0.28%). Returns (2, ..., rows, columns): real, imaginary, in the inputs' dtype.
    """
    s = -1 if conj else 1
    out = ar.new_empty(2, ar.shape[0], ar.shape[1], br.shape[2])
    torch.baddbmm(torch.bmm(ar, br), ai, bi, alpha=-s, out=out[0])
    torch.baddbmm(torch.bmm(ai, br), ar, bi, alpha=s, out=out[1])
    return out


@_deprecated.keyword_only(4)
def dft_conv2d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int = 1,
    *,
    spectrum: Tensor | None = None,
    product_dtype: torch.dtype | None = None,
) -> Tensor:
    """``conv2d(x, weight, bias, stride)`` (no padding, one group) through the DFT.

    x (B, C, H, W), weight (O, C, kh, kw), bias (O,) or None → (B, O, Mh, Mw) with
    ``M = (size − k) // stride + 1``, in x's dtype. Differentiable in all three.
    ``product_dtype`` (e.g. ``torch.bfloat16``) is the dtype of the per-frequency channel
    products, forward and backward, done in four real products (:func:`_complex_bmm4`); the
    transforms stay in x's dtype. None: x's dtype, three products (:func:`_complex_bmm`).
    The transforms run on the :func:`dft_grid` of the input. ``spectrum``, if given, must be
    ``kernel_spectrum(weight, *dft_grid(H, W, kh, kw, stride), product_dtype)``: a caller
    that convolves many batches with an unchanged weight (inference) computes it once.
    """
    if x.dim() != 4 or weight.dim() != 4 or x.shape[1] != weight.shape[1]:
        raise ValueError(
            f"dft_conv2d: input {tuple(x.shape)} and weight {tuple(weight.shape)} do not match"
        )
    if weight.shape[2] > x.shape[2] or weight.shape[3] > x.shape[3]:
        raise ValueError(
            f"dft_conv2d: kernel {tuple(weight.shape[2:])} larger than input {tuple(x.shape[2:])}"
        )
    if spectrum is not None:
        n, m = dft_grid(*x.shape[2:], *weight.shape[2:], stride)
        if spectrum.shape[1:] != (n * (m // 2 + 1), *weight.shape[:2]):
            raise ValueError(
                f"dft_conv2d: spectrum {tuple(spectrum.shape)} is not the kernel's on the "
                f"{n}×{m} grid"
            )
    y = _DFTConv.apply(x, weight, stride, spectrum, product_dtype)
    return y if bias is None else y + bias[:, None, None]


class _DFTConv(torch.autograd.Function):
    """Forward: spectra of x (on its :func:`dft_grid`) and of conj(w), the batched real
    products per frequency, the inverse at the strided positions. Backward: the same in
    transpose (its adjoints); x's gradient is zero outside the grid."""

    @staticmethod
    def forward(
        ctx, x: Tensor, w: Tensor, stride: int, ws: Tensor | None, lowp: torch.dtype | None
    ) -> Tensor:  # type: ignore[override]
        b, c, h, wd = x.shape
        o, _, kh, kw = w.shape
        mh, mw = (h - kh) // stride + 1, (wd - kw) // stride + 1
        n, m = dft_grid(h, wd, kh, kw, stride)
        x = x[:, :, :n, :m]  # a view; (B, C) still merge into one dimension below
        xs = half_spectrum(x.reshape(b * c, n, m), n, m).view(2, -1, b, c)  # (2, F, B, C)
        ws = kernel_spectrum(w, n, m, lowp) if ws is None else ws  # conj(W): (3 or 2, F, O, C)
        wt = ws.transpose(2, 3)  # (3 or 2, F, C, O); Y = X·conj(W), per frequency (B, C) @ (C, O)
        if lowp is None:
            x_sum, ys = xs[0] + xs[1], x.new_empty(2, xs.shape[1], b, o)
            _complex_bmm(x_sum, xs[0], xs[1], wt[0], wt[1], wt[2], out=ys)
            ctx.save_for_backward(xs, x_sum, ws)
        else:
            xs = xs.to(lowp)
            ys = _complex_bmm4(xs[0], xs[1], wt[0], wt[1], conj=False).to(x.dtype)  # (2, F, B, O)
            ctx.save_for_backward(xs, None, ws)
        e = _output_map(n, m, stride, mh, mw, x.dtype, x.device)
        ctx.dims, ctx.lowp = (b, c, h, wd, n, m, o, kh, kw, stride), lowp
        return torch.mm(ys.view(-1, b * o).t(), e.t()).view(b, o, mh, mw)  # (B, O, Mh, Mw)

    @staticmethod
    def backward(ctx, gy: Tensor) -> tuple[Tensor | None, Tensor | None, None, None, None]:  # type: ignore[override]
        xs, x_sum, ws = ctx.saved_tensors
        b, c, h, wd, n, m, o, kh, kw, stride = ctx.dims
        e = _output_map(n, m, stride, gy.shape[2], gy.shape[3], gy.dtype, gy.device)
        gys = (e.t() @ gy.reshape(b * o, -1).t()).view(2, -1, b, o)  # (2, F, B, O)
        lowp = ctx.lowp
        if lowp is None:
            g_sum = gys[0] + gys[1]  # for the three-product form
        else:
            gys = gys.to(lowp)
        gx = gw = None
        if ctx.needs_input_grad[0]:  # G @ conj(conj(W)) per frequency, (B, O) @ (O, C)
            if lowp is not None:
                gxs = _complex_bmm4(gys[0], gys[1], ws[0], ws[1], conj=True).to(gy.dtype)
            else:
                gxs = gy.new_empty(2, xs.shape[1], b, c)  # (2, F, B, C)
                _complex_bmm(g_sum, gys[0], gys[1], ws[0], ws[2], ws[1], out=gxs, sign=-1)
            gx = half_spectrum_adjoint(gxs.view(2, -1, b * c), n, m, n, m, pad_to=(h, wd))
            gx = gx.view(b, c, h, wd)
        if ctx.needs_input_grad[1]:  # Gᵀ @ conj(X) per frequency, (O, B) @ (B, C)
            gt = gys.transpose(2, 3)  # (2, F, O, B)
            if lowp is not None:  # then the adjoint of kernel_spectrum's product, in lowp too
                gws = _complex_bmm4(gt[0], gt[1], xs[0], xs[1], conj=True)  # (2, F, O, C)
                t = _kernel_map(kh, kw, n, m, gws.dtype, gws.device)  # (2F, kh·kw)
                gw = (gws.view(t.shape[0], o * c).t() @ t).to(gy.dtype).view(o, c, kh, kw)
            else:
                gws = gy.new_empty(2, xs.shape[1], o, c)  # (2, F, O, C)
                gt_sum, (xr, xi) = g_sum.transpose(1, 2), xs
                _complex_bmm(gt_sum, gt[0], gt[1], xr, xi - xr, x_sum, out=gws, sign=-1)
                gw = half_spectrum_adjoint(gws.view(2, -1, o * c), kh, kw, n, m, sign=1)
                gw = gw.view(o, c, kh, kw)
        return gx, gw, None, None, None

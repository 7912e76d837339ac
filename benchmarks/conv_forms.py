"""The PrimaryCaps convolution of the paper network in three forms, timed pass by pass.

    python -m benchmarks.conv_forms [--batch-size 100] [--repeats 5]

The convolution (256 → 256 channels, 9×9, stride 2, on 20×20 maps) is most of the paper
network's training step. Its forward pass, input gradient and weight gradient are timed
(best of ``--repeats``) as PyTorch runs them (NCHW), in channels_last memory format, and as
an explicit im2col copy plus one matrix product (GEMM). capsnet uses whichever form is
fastest on this CPU; this script is how that was decided. Prints one JSON line per form.
"""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmarks.timing import best_ms, parse_and_prepare
from capsnet.training import environment

C, K, S, H = 256, 9, 2, 20  # channels, kernel, stride, input size
OUT = (H - K) // S + 1  # 6


def conv_backward(gy: Tensor, x: Tensor, w: Tensor, mask: list[bool]) -> tuple[Tensor, ...]:
    return torch.ops.aten.convolution_backward(
        gy, x, w, None, [S, S], [0, 0], [1, 1], False, [0, 0], 1, mask
    )


def im2col(x_nhwc: Tensor) -> Tensor:
    """(B, H, W, C) → patches (B·OUT·OUT, K·K·C), ordered (row, column, channel)."""
    b = x_nhwc.shape[0]
    patches = x_nhwc.as_strided(
        (b, OUT, OUT, K, K, C), (H * H * C, S * H * C, S * C, H * C, C, 1)
    )  # (B, OUT, OUT, K, K, C), a view
    return patches.reshape(b * OUT * OUT, K * K * C)  # the copy


def col2im(cols: Tensor, b: int) -> Tensor:
    """Patch gradients (B·OUT·OUT, K·K·C) → input gradient (B, H, W, C), summed."""
    cols = cols.view(b, OUT, OUT, K, K, C)
    out = cols.new_zeros(b, H, H, C)
    for kh in range(K):
        for kw in range(K):
            out[:, kh : kh + S * OUT : S, kw : kw + S * OUT : S] += cols[:, :, :, kh, kw]
    return out


def time_onednn(x: Tensor, w: Tensor, gy: Tensor, repeats: int) -> dict[str, float]:
    """The three passes as PyTorch runs them (oneDNN on CPU) for these memory formats."""
    return {
        "forward_ms": best_ms(lambda: F.conv2d(x, w, stride=S), repeats),
        "grad_input_ms": best_ms(lambda: conv_backward(gy, x, w, [True, False, False]), repeats),
        "grad_weight_ms": best_ms(lambda: conv_backward(gy, x, w, [False, True, False]), repeats),
    }


def main() -> None:
    args = parse_and_prepare(__doc__.splitlines()[0])
    b, r = args.batch_size, args.repeats
    x, w = torch.randn(b, C, H, H), 0.01 * torch.randn(C, C, K, K)
    gy = torch.randn(b, C, OUT, OUT)
    env = environment()
    common = {"batch_size": b, **{k: env[k] for k in ("device_name", "cpu_threads", "date")}}

    for name, fmt in (("nchw", torch.contiguous_format), ("channels_last", torch.channels_last)):
        xx, ww, gg = (t.contiguous(memory_format=fmt) for t in (x, w, gy))
        print(json.dumps({"form": name, **time_onednn(xx, ww, gg, r), **common}))

    x_nhwc = x.permute(0, 2, 3, 1).contiguous()
    w2 = w.permute(0, 2, 3, 1).reshape(C, K * K * C)  # (out, (row, column, in))
    g2 = gy.permute(0, 2, 3, 1).reshape(b * OUT * OUT, C)
    cols = im2col(x_nhwc)
    ref = conv_backward(gy, x, w, [True, True, False])
    torch.testing.assert_close(
        (g2.t() @ cols).view(C, K, K, C).permute(0, 3, 1, 2), ref[1], rtol=1e-4, atol=1e-3
    )
    torch.testing.assert_close(col2im(g2 @ w2, b).permute(0, 3, 1, 2), ref[0], rtol=1e-4, atol=1e-4)
    row = {
        "form": "im2col+gemm",
        "im2col_ms": best_ms(lambda: im2col(x_nhwc), r),
        "forward_ms": best_ms(lambda: cols @ w2.t(), r),  # plus im2col
        "grad_input_ms": best_ms(lambda: col2im(g2 @ w2, b), r),
        "grad_weight_ms": best_ms(lambda: g2.t() @ cols, r),  # plus im2col, unless kept
    }
    print(json.dumps({**row, **common}))


if __name__ == "__main__":
    main()

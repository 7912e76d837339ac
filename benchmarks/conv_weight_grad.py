"""The weight gradient of each model's stem convolutions: oneDNN against a patch product.

    python -m benchmarks.conv_weight_grad [--batch-size 100] [--repeats 5]

For every convolution that sees the input image or a stem map (the paper network's Conv1,
Efficient-CapsNet's four stem layers, the baseline CNN's first two, em-capsnet's Conv1 and a
three-channel Conv1), times the weight gradient as PyTorch computes it (oneDNN on CPU) and
as ``capsnet.nn.patchconv`` does (unfold the input's patches, one batched matrix product with
the output gradient), best of ``--repeats``, and their largest difference relative to the
gradient's largest entry. This is how :class:`capsnet.nn.layers.Conv2d` came to take the patch
product for one input channel only. Prints one JSON line per convolution.
"""

from __future__ import annotations

import json

import torch
from torch import Tensor

from benchmarks.timing import best_ms, parse_and_prepare
from capsnet.nn.patchconv import patch_weight_grad
from capsnet.training import environment

CONVS = {  # name: (in channels, out channels, kernel, stride, padding, input size)
    "capsnet conv1": (1, 256, 9, 1, 0, 28),
    "efficient stem1": (1, 32, 5, 1, 0, 28),
    "efficient stem2": (32, 64, 3, 1, 0, 24),
    "efficient stem3": (64, 64, 3, 1, 0, 22),
    "efficient stem4": (64, 128, 3, 2, 0, 20),
    "baseline conv1": (1, 256, 5, 1, 2, 28),
    "baseline conv2": (256, 256, 5, 1, 2, 28),
    "em-capsnet conv1": (1, 32, 5, 2, 0, 28),
    "cifar conv1": (3, 256, 9, 1, 0, 32),
}


def onednn_grad(x: Tensor, w: Tensor, gy: Tensor, s: int, p: int) -> Tensor:
    mask = [False, True, False]
    return torch.ops.aten.convolution_backward(
        gy, x, w, None, [s, s], [p, p], [1, 1], False, [0, 0], 1, mask
    )[1]


def patch_grad(x: Tensor, w: Tensor, gy: Tensor, s: int, p: int) -> Tensor:
    return patch_weight_grad(x, gy, (w.shape[2], w.shape[3]), (s, s), (p, p))


def time_conv(c: int, o: int, k: int, s: int, p: int, n: int, b: int, r: int) -> dict:
    """Both forms' best times for one convolution's shape, and their relative difference."""
    m = (n + 2 * p - k) // s + 1
    x, w, gy = torch.rand(b, c, n, n), torch.randn(o, c, k, k), torch.randn(b, o, m, m)
    ref = onednn_grad(x, w, gy, s, p)
    err = (patch_grad(x, w, gy, s, p) - ref).abs().max() / ref.abs().max()
    return {
        "shape": f"{c}->{o} {k}x{k} stride {s} padding {p} on {n}x{n}",
        "onednn_ms": best_ms(lambda: onednn_grad(x, w, gy, s, p), r),
        "patch_ms": best_ms(lambda: patch_grad(x, w, gy, s, p), r),
        "relative_difference": float(f"{err.item():.1e}"),
    }


def main() -> None:
    args = parse_and_prepare(__doc__.splitlines()[0])
    env = environment()
    common = {"batch_size": args.batch_size}
    common |= {k: env[k] for k in ("device_name", "cpu_threads", "date")}
    for name, dims in CONVS.items():
        row = time_conv(*dims, args.batch_size, args.repeats)
        print(json.dumps({"conv": name, **row, **common}), flush=True)


if __name__ == "__main__":
    main()

"""The measurements behind the DFT convolution's and the inference blocks' docstrings.

    OMP_NUM_THREADS=1 python -m benchmarks.dft_notes

One thread, batch 100, paper network. Prints one JSON line per measurement: the PrimaryCaps
convolution (forward + backward) under bf16 autocast, direct and through the DFT with
float32 and with bf16 channel products (``product_dtype``), with their forward RMS errors
against float64; bf16 inference of the whole network with PrimaryCaps direct and through the
DFT (bf16 products); the class-capsule layer's inference whole and in blocks.
"""

from __future__ import annotations

import json
from unittest import mock

import torch
import torch.nn.functional as F

from benchmarks.step_parts import forward_backward
from benchmarks.timing import best_ms
from capsnet import create_model
from capsnet.allocator import keep_freed_memory
from capsnet.nn.dftconv import dft_conv2d
from capsnet.nn.layers import Conv2d
from capsnet.tools.bench import ENV_FIELDS
from capsnet.training import environment


def _rms(a: torch.Tensor, ref: torch.Tensor) -> float:
    return ((a.double() - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt()).item()


def _direct_bf16(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return F.conv2d(x, w, stride=2)


def conv_bf16() -> dict:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(100, 256, 20, 20, generator=g).relu().requires_grad_()
    w = (torch.randn(256, 256, 9, 9, generator=g) / 40).requires_grad_()
    forms = {
        "direct": _direct_bf16,
        "dft_fp32_products": lambda a, b: dft_conv2d(a, b, stride=2),
        "dft_bf16_products": lambda a, b: dft_conv2d(a, b, stride=2, product_dtype=torch.bfloat16),
    }
    ref = F.conv2d(x.double(), w.double(), stride=2)
    row = {}
    for name, f in forms.items():
        row[f"bf16_{name}_fwd_bwd_ms"] = best_ms(forward_backward(f, x, w), 8)
        with torch.no_grad():
            row[f"bf16_{name}_forward_rms_error"] = round(_rms(f(x, w), ref), 5)
    return row


def inference() -> dict:
    net, x = create_model("capsnet-mnist").eval(), torch.rand(100, 1, 28, 28)
    row = {}

    @torch.no_grad()
    def infer() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            net(x)

    row["bf16_infer_dft_ms"] = best_ms(infer, 8)
    with mock.patch.object(Conv2d, "dft_pays", lambda self, t: False):
        row["bf16_infer_direct_ms"] = best_ms(infer, 8)
    with torch.no_grad():
        u = net.encode(x)
        row["classes_infer_blocks_ms"] = best_ms(lambda: net.classes(u), 5)
        with mock.patch("capsnet.nn.layers.BLOCK_BYTES", 1 << 40):
            row["classes_infer_whole_ms"] = best_ms(lambda: net.classes(u), 5)
    return row


def main() -> None:
    keep_freed_memory()  # as the CLI does: big blocks stay mapped, not page-faulted per call
    env = environment()
    extra = {k: env.get(k) for k in ENV_FIELDS}
    print(json.dumps({**conv_bf16(), **extra}))
    print(json.dumps({**inference(), **extra}))


if __name__ == "__main__":
    main()

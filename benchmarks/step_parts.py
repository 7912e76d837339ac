"""Where a training step of the paper network spends its time, part by part.

    python -m benchmarks.step_parts [--batch-size 100] [--repeats 5] [--precision fp32|bf16]

Times forward + backward of each part of ``capsnet-mnist`` on its real input shapes (best
of ``--repeats``, tuned allocator), then one whole training step (forward, loss, backward,
Adam). The PrimaryCaps convolution and the whole step are timed twice: as the model runs it
(through the DFT where that is cheaper, ``capsnet.nn.layers.Conv2d``) and as a direct
convolution (``*_direct_ms``). With ``--precision bf16`` every part and the step run under
bf16 autocast, as ``capsnet train --precision bf16`` runs them. Prints one JSON line.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import torch
import torch.nn.functional as F

from benchmarks.timing import best_ms, parse_and_prepare
from capsnet import create_model
from capsnet.nn.routing import squash
from capsnet.runtime import autocast
from capsnet.tools.bench import ENV_FIELDS
from capsnet.training import environment
from capsnet.training.step import adam


def forward_backward(fn: Callable[..., torch.Tensor], *inputs: torch.Tensor) -> Callable[[], None]:
    """A closure running ``fn(*inputs)`` and back-propagating a random output gradient."""
    grad = torch.randn_like(fn(*inputs))

    def run() -> None:
        fn(*inputs).backward(grad)

    return run


def under(precision: str, fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``fn`` run under the CPU autocast that training uses for ``precision``."""

    def run(*inputs: torch.Tensor) -> torch.Tensor:
        with autocast(torch.device("cpu"), precision):
            return fn(*inputs)

    return run


def main() -> None:
    args = parse_and_prepare(__doc__.splitlines()[0])
    b, r, p = args.batch_size, args.repeats, args.precision
    net = create_model("capsnet-mnist")
    x, y = torch.rand(b, 1, 28, 28), torch.randint(0, 10, (b,))
    with torch.no_grad():
        h = F.relu(net.conv1(x))  # (B, 256, 20, 20)
        u = net.encode(x)  # (B, 1152, 8)
        v = net.classes(u).poses  # (B, 10, 16)
    h.requires_grad_()
    u.requires_grad_()
    v.requires_grad_()
    conv_out = net.primary.conv(h).detach()  # (B, 256, 6, 6)
    primary = conv_out.view(b, 32, 8, 6, 6).permute(0, 1, 3, 4, 2).reshape(b, 1152, 8)
    primary.requires_grad_()
    mask = F.one_hot(y, 10).float().unsqueeze(-1)
    optim = adam(net, 1e-3)

    def step() -> None:
        optim.zero_grad(set_to_none=True)
        loss = under(p, lambda: net.loss(net(x, y), x, y)[0])()
        loss.backward()
        optim.step()

    conv = net.primary.conv
    parts = {
        "conv1_ms": forward_backward(under(p, lambda t: F.relu(net.conv1(t))), x),
        "primary_conv_ms": forward_backward(under(p, conv), h),
        "primary_conv_direct_ms": forward_backward(
            under(p, lambda t: F.conv2d(t, conv.weight, conv.bias, conv.stride)), h
        ),
        "primary_squash_ms": forward_backward(under(p, squash), primary),
        "routing_layer_ms": forward_backward(under(p, lambda t: net.classes(t).poses), u),
        "decoder_ms": forward_backward(under(p, lambda t: net.decoder(t * mask)), v),
        "train_step_ms": step,
    }
    row = {name: best_ms(fn, r) for name, fn in parts.items()}
    conv.dft = False
    row["train_step_direct_ms"] = best_ms(step, r)
    env = environment()
    print(
        json.dumps(
            {
                "model": "capsnet-mnist",
                "batch_size": b,
                "precision": p,
                **row,
                **{k: env.get(k) for k in ENV_FIELDS},
            }
        )
    )


if __name__ == "__main__":
    main()

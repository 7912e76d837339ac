"""capsnet on a CUDA GPU against the CPU (issue 35): every registered model's forward and
backward, in float32 and under bfloat16 autocast; training on the GPU; a run trained there,
predicted and exported on the CPU; the trainer's data-parallel path over NCCL.

Marked ``cuda``: where PyTorch sees no GPU these tests are deselected (tests/conftest.py).
``CAPSNET_TEST_DEVICE=cpu`` runs them with the CPU in the GPU's place: every comparison then
holds trivially, which checks the tests' own logic, not the GPU.

Tolerance of a forward and backward: for the class scores, the loss and every parameter's
gradient, ‖GPU − CPU‖ ≤ 4·‖CPU − exact‖ + ε·‖exact‖ (Euclidean norms of each tensor), where
"exact" is the CPU's float64 result, ε = 1e-5 in float32 and 1e-2 (2.5 bfloat16 epsilons)
under bfloat16 autocast. The CPU's own rounding error sets the scale: a gradient that nearly
cancels is far off on either device (in float32, EM routing's β by 3-4%; under bfloat16 a
bias before BatchNorm by 40% and EM's β by 10⁴× its size, measured on 2026-12-06's CPU).
The float32 comparisons run without cuDNN, whose convolutions may take TF32 (10 mantissa
bits; PyTorch's default), in PyTorch's own CUDA kernels; the data-parallel run and the run it
is compared with pick deterministic cuDNN algorithms.
"""

import contextlib
import copy
import dataclasses
import json
import math
import os
import socket
from collections.abc import Iterator

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from tests.conftest import TINY_MODELS
from torch import Tensor, nn

from capsnet import create_model, list_models, load_run
from capsnet.runtime import Distributed, autocast
from capsnet.tools.export import export_run
from capsnet.tools.predict import predict
from capsnet.training import Run, RunDir, train
from capsnet.training import loop as training_loop

DEVICE = torch.device(os.environ.get("CAPSNET_TEST_DEVICE", "cuda"))
CPU = torch.device("cpu")
EPS = {"fp32": 1e-5, "bf16": 1e-2}

pytestmark = pytest.mark.cuda


@contextlib.contextmanager
def _cudnn(**flags: bool) -> Iterator[None]:
    """``torch.backends.cudnn``'s ``flags`` (``enabled``, ``deterministic``) for the block."""
    saved = {name: getattr(torch.backends.cudnn, name) for name in flags}
    for name, value in flags.items():
        setattr(torch.backends.cudnn, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(torch.backends.cudnn, name, value)


def _tiny(name: str) -> nn.Module:
    """The tiny model ``name`` (tests/conftest.py), seeded, without dropout (the devices'
    random numbers differ)."""
    torch.manual_seed(0)
    model = create_model(name, **TINY_MODELS[name])
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    return model


def _forward_backward(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    device: torch.device,
    precision: str,
    dtype: torch.dtype = torch.float32,
) -> dict[str, Tensor]:
    """Scores, loss and parameter gradients of a training-mode forward and backward of a copy
    of ``model`` on ``device`` in ``dtype`` under ``precision``; float64 on the CPU."""
    m = copy.deepcopy(model).to(device, dtype).train()
    x, y = x.to(device, dtype), y.to(device)
    with autocast(device, precision):
        out = m(x, y)
        loss, _ = m.loss(out, x, y)
    loss.backward()
    found = {"scores": out.scores, "loss": loss, **{n: p.grad for n, p in m.named_parameters()}}
    return {k: v.detach().double().cpu() for k, v in found.items()}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("name", list_models())
def test_forward_and_backward_match_the_cpu(name, precision):
    model = _tiny(name)
    c = model.config
    x = torch.rand(8, c.in_channels, *c.input_size)
    y = torch.randint(0, c.num_classes, (8,))
    exact = _forward_backward(model, x, y, CPU, "fp32", torch.float64)
    cpu = _forward_backward(model, x, y, CPU, precision)
    with _cudnn(enabled=precision != "fp32"):  # cuDNN may convolve float32 in TF32
        gpu = _forward_backward(model, x, y, DEVICE, precision)
    assert exact.keys() == gpu.keys()
    for key, t in exact.items():
        error, cpu_error = (gpu[key] - cpu[key]).norm(), (cpu[key] - t).norm()
        bound = 4 * cpu_error + EPS[precision] * t.norm()
        assert error <= bound, f"{key}: {error:.3g} from the CPU's, bound {bound:.3g}"


@pytest.fixture(scope="module")
def cfg(tiny_cfg):
    """Three epochs of a tiny CapsNet on 600 real MNIST digits, on the GPU."""
    overrides = {"conv1_channels": 16, "primary_types": 4, "decoder_hidden": (32,)}
    return dataclasses.replace(
        tiny_cfg,
        model_overrides=overrides,
        epochs=3,
        lr=3e-3,
        train_limit=600,
        val_size=100,
        test_limit=100,
        device=str(DEVICE),
    )


def _losses(run) -> list[float]:
    return [float(row["train_loss"]) for row in RunDir(run).history()]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_on_the_gpu_lowers_the_loss(cfg, precision, tmp_path):
    metrics = train(dataclasses.replace(cfg, precision=precision), tmp_path / "run")
    losses = _losses(tmp_path / "run")
    assert len(losses) == 3 and losses[0] > losses[1] > losses[2]
    assert losses[2] < 0.8 * losses[0]
    assert metrics["device"] == str(DEVICE) and metrics["precision"] == precision


@pytest.mark.parametrize("name", list_models())
def test_every_model_trains_and_tests_on_the_gpu(name, cfg, tmp_path):
    # a run's course, not its progress: tiny models barely learn in two short epochs
    short = dataclasses.replace(
        cfg, model=name, model_overrides=TINY_MODELS[name], epochs=2, train_limit=300
    )
    metrics = train(short, tmp_path / "run")
    assert all(math.isfinite(loss) for loss in _losses(tmp_path / "run"))
    assert metrics["device"] == str(DEVICE) and metrics["test_examples"] == 100


@pytest.fixture(scope="module")
def gpu_run(cfg, tmp_path_factory):
    """One epoch of ``cfg`` on the GPU (four steps of 50 digits)."""
    run = tmp_path_factory.mktemp("gpu-run") / "run"
    with _cudnn(deterministic=True):  # as the data-parallel run it is compared with
        train(dataclasses.replace(cfg, epochs=1, train_limit=200), run)
    return run


def test_a_run_trained_on_the_gpu_predicts_and_exports_on_the_cpu(gpu_run, tmp_path):
    assert json.loads((gpu_run / "metrics.json").read_text())["device"] == str(DEVICE)
    model, _ = load_run(gpu_run)
    assert {p.device for p in model.parameters()} == {CPU}
    x = Run(gpu_run).test_set(limit=50)[0].float() / 255
    on_gpu, _ = load_run(gpu_run, DEVICE)
    with _cudnn(enabled=False):
        on_gpu_scores = predict(on_gpu, x, device=DEVICE)
    torch.testing.assert_close(on_gpu_scores, predict(model, x), atol=1e-5, rtol=1e-4)
    written = export_run(gpu_run, tmp_path / "m.onnx", check_images=20)
    assert [p.name for p in written] == ["m.onnx", "m.decoder.onnx"]


class _OneRank(Distributed):
    """A process group of this one process: the trainer takes its data-parallel path (DDP,
    all-reduced sums and a barrier) as it would with several GPUs."""

    @property
    def enabled(self) -> bool:
        return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_data_parallel_training_over_nccl_matches_one_process(cfg, gpu_run, tmp_path):
    backends = []
    init = dist.init_process_group

    def recording_init(backend, *args, **kwargs):
        backends.append(backend)
        init(backend, *args, **kwargs)

    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    with pytest.MonkeyPatch.context() as mp, _cudnn(deterministic=True):
        for k, v in {**env, "RANK": "0", "WORLD_SIZE": "1"}.items():
            mp.setenv(k, v)
        mp.setattr(dist, "init_process_group", recording_init)
        mp.setattr(training_loop, "distributed_from_env", _OneRank)
        train(dataclasses.replace(cfg, epochs=1, train_limit=200), tmp_path / "ddp")
    assert backends == ["nccl" if DEVICE.type == "cuda" else "gloo"]
    assert not dist.is_initialized()
    one = load_file(str(gpu_run / "last.safetensors"))
    ddp = load_file(str(tmp_path / "ddp" / "last.safetensors"))
    assert one.keys() == ddp.keys()
    for name in one:  # gradients all-reduced over one rank: the same to float rounding
        torch.testing.assert_close(ddp[name], one[name], atol=1e-5, rtol=1e-4)
    (h1,), (h2,) = RunDir(gpu_run).history(), RunDir(tmp_path / "ddp").history()
    assert h2["val_accuracy"] == h1["val_accuracy"]
    assert abs(float(h2["val_loss"]) - float(h1["val_loss"])) < 1e-5

"""ONNX export of a trained CapsNet, checked against PyTorch with onnxruntime.

Two graphs, both with a dynamic batch axis and the routing iterations unrolled:

* the classifier ``FILE``: ``images`` (B, C, H, W) in [0, 1] (after the run's image policy, saved as
  ``image_policy`` metadata, if it has one) → ``lengths`` (B, K),
  ``poses`` (B, K, D), ``coupling`` (B, I, K);
* the decoder ``FILE`` with suffix ``.decoder.onnx``: ``poses`` (B, K, D), ``mask`` (B, K) →
  ``reconstructions`` (B, C, H, W) (models trained without a decoder have none).

It uses PyTorch's TorchScript-based exporter (``dynamo=False``): it needs no extra package and
traces the routing loop into a static graph in about a second, where the torch.export-based
one needs onnxscript and took 30 s here. Each file is written only once onnxruntime
reproduces PyTorch's outputs on real test images to within ``TOLERANCE``.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from capsnet import __version__
from capsnet.checkpoint import atomic_write, load_run
from capsnet.data import custom, load_split
from capsnet.data.tasks import load_test
from capsnet.errors import CheckpointError, ConfigError
from capsnet.predict import class_names, run_data, run_train_config

log = logging.getLogger(__name__)

OPSET = 17
TOLERANCE = 1e-4  # max abs difference allowed between onnxruntime and PyTorch outputs


class _Classifier(nn.Module):
    """images (B, C, H, W) → lengths (B, K), poses (B, K, D), coupling (B, I, K)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out = self.model(images)
        return out.lengths, out.poses, out.coupling


class _Decoder(nn.Module):
    """poses (B, K, D), mask (B, K) → reconstructions (B, C, H, W)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, poses: Tensor, mask: Tensor) -> Tensor:
        return self.model.decode(poses, mask)


def decoder_path(path: str | Path) -> Path:
    """Where the decoder goes next to the classifier: ``x.onnx`` → ``x.decoder.onnx``."""
    path = Path(path)
    return path.with_name(f"{path.name.removesuffix('.onnx')}.decoder.onnx")


def _onnx_file(
    module: nn.Module,
    inputs: dict[str, Tensor],
    outputs: Sequence[str],
    path: Path,
    metadata: dict[str, str],
) -> dict[str, float]:
    """Export ``module`` to ``path``, check it with onnxruntime on ``inputs``; max abs diffs.

    The file appears (atomically) only if every output is within TOLERANCE of PyTorch's.
    """
    import onnx
    import onnxruntime

    module.eval()
    with torch.no_grad():
        expected = module(*inputs.values())
    expected = expected if isinstance(expected, tuple) else (expected,)
    diffs: dict[str, float] = {}

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():  # the exporter announces its own deprecation
            warnings.filterwarnings("ignore", "You are using the legacy TorchScript", Warning)
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
            with torch.no_grad():  # the plain forward: the training fast paths are autograd nodes
                torch.onnx.export(
                    module,
                    tuple(v[:2] for v in inputs.values()),  # traced on 2, checked on all
                    str(tmp),
                    input_names=list(inputs),
                    output_names=list(outputs),
                    dynamic_axes={name: {0: "batch"} for name in [*inputs, *outputs]},
                    opset_version=OPSET,
                    dynamo=False,
                )
        proto = onnx.load(str(tmp))
        onnx.helper.set_model_props(proto, metadata)
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        got = session.run(None, {k: v.numpy() for k, v in inputs.items()})
        for name, a, b in zip(outputs, got, expected, strict=True):
            diffs[name] = float((torch.from_numpy(a) - b).abs().max())
        if max(diffs.values()) > TOLERANCE:
            raise CheckpointError(
                f"{path}: onnxruntime differs from PyTorch by up to "
                f"{max(diffs.values()):.2e} (> {TOLERANCE:g}); not written"
            )

    atomic_write(path, write)
    return diffs


def export_run(
    run_dir: str | Path,
    path: str | Path,
    dataset: str | None = None,
    data_dir: str | None = None,
    check_images: int = 100,
) -> dict[Path, dict[str, float]]:
    """Export a run's classifier (and decoder, if any) to ONNX, checked on real test images.

    ``dataset`` and ``data_dir`` default to the run's. Returns, per written file, the max abs
    difference of each output to PyTorch.
    """
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise ConfigError(
            "export needs onnx and onnxruntime: pip install 'capsnet[onnx]'"
        ) from None
    model, config = load_run(run_dir)
    train_config = run_train_config(run_dir)
    dataset = dataset or train_config.get("dataset")
    data_dir = data_dir or train_config.get("data_dir")
    if dataset is None:
        raise ConfigError(f"{run_dir}: the run's dataset is unknown; pass --dataset")
    if custom.task(dataset) is not None:  # folder:, npz:, …: test images as in training
        images, _ = load_test(dataset, data_dir, options=train_config.get("dataset_options"))
    else:
        images, _ = load_split(dataset, "test", data_dir)
    saved = run_data(run_dir)  # class names and image policy saved by training
    if images.shape[1:] != (config.in_channels, *config.input_size):
        raise ConfigError(
            f"{dataset} images are {tuple(images.shape[1:])} but the model expects "
            f"{(config.in_channels, *config.input_size)}"
        )
    x = images[:check_images].float() / 255  # (N, C, H, W), as in training
    log.info("checking against PyTorch on %d %s test images", len(x), dataset)
    metadata = {
        "capsnet_version": __version__,
        "dataset": dataset,
        "class_names": json.dumps(
            class_names(dataset, config.num_classes, saved.get("class_names"))
        ),
        "image_policy": json.dumps(saved.get("image_policy")),
        "config": json.dumps(config.to_dict()),
    }
    path = Path(path)
    diffs = {
        path: _onnx_file(
            _Classifier(model), {"images": x}, ("lengths", "poses", "coupling"), path, metadata
        )
    }
    if getattr(model, "decoder", None) is None:
        log.info("the model has no decoder: exported the classifier only")
        return diffs
    with torch.no_grad():
        out = model(x)
    mask = torch.nn.functional.one_hot(out.lengths.argmax(1), config.num_classes).float()
    inputs = {"poses": out.poses, "mask": mask}
    diffs[decoder_path(path)] = _onnx_file(
        _Decoder(model), inputs, ("reconstructions",), decoder_path(path), metadata
    )
    return diffs

"""ONNX export of a trained run, checked against PyTorch with onnxruntime.

Up to two graphs, both with a dynamic batch axis and the routing iterations unrolled:

* the classifier ``FILE``: ``images`` (B, C, H, W) in [0, 1] → ``scores`` (B, K) for every
  model (:class:`~capsnet.models.contract.Classifier`), and for a capsule model
  (:class:`~capsnet.models.contract.CapsuleClassifier`) also ``poses`` (B, K, D) and
  ``routing_weights`` (B, I, K) (the output's ``coupling``; the file keeps the name of 0.1
  that readers of it use); images are those after the run's image policy (resize,
  normalisation; saved as ``image_policy`` metadata) if it has one;
* for a model with a decoder (:class:`~capsnet.models.contract.PoseDecoder`), the decoder
  ``FILE`` with suffix ``.decoder.onnx``: ``poses`` (B, K, D), ``mask`` (B, K) →
  ``reconstructions`` (B, C, H, W).

It uses PyTorch's TorchScript-based exporter (``dynamo=False``): it needs no extra package and
traces the routing loop into a static graph in about a second, where the torch.export-based
one needs onnxscript and took 30 s here. The check uses the run's own test images (its task,
with its options, from its data directory), or random images where there are none (a shipped
model without its dataset on disk) or none are asked for. Each file is written only once onnxruntime
reproduces PyTorch's outputs on them to within ``TOLERANCE``, or to within twice PyTorch's
own float32 rounding error where that is larger (EM routing: ~1e-3 on its weights). The
exporter prints nothing: an operator ONNX cannot express is reported in one line.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import re
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from capsnet import __version__, _deprecated
from capsnet.errors import CheckpointError, ConfigError, DataError
from capsnet.files import atomic_write, check_new_file
from capsnet.models.config import ModelConfig
from capsnet.models.contract import CapsuleClassifier, Classifier, PoseDecoder, provides, require
from capsnet.models.contract import model_name as name_of
from capsnet.training.run import Run
from capsnet.training.rundir import RUN_FILES

log = logging.getLogger(__name__)

OPSET = 17
ATTRIBUTES = {"routing_weights": "coupling"}  # an output's name in the file → in the output
TOLERANCE = 1e-4  # max abs difference allowed between onnxruntime and PyTorch outputs
SYNTHETIC_IMAGES = 32  # random images the export is checked on without a test set


class _Classifier(nn.Module):
    """images (B, C, H, W) → the model's outputs named ``outputs`` in the file, in that order
    (each the output's attribute of that name, or the one :data:`ATTRIBUTES` gives)."""

    def __init__(self, model: nn.Module, outputs: Sequence[str]):
        super().__init__()
        self.model, self.outputs = model, tuple(outputs)

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        out = self.model(images)
        return tuple(getattr(out, ATTRIBUTES.get(name, name)) for name in self.outputs)


class _Decoder(nn.Module):
    """poses (B, K, D), mask (B, K) → reconstructions (B, C, H, W)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, poses: Tensor, mask: Tensor) -> Tensor:
        return self.model.decode(poses, mask)


def classifier_outputs(model: nn.Module) -> tuple[str, ...]:
    """The classifier graph's outputs for ``model``: what it provides of the contract."""
    require(model, "export", Classifier)
    if provides(model, CapsuleClassifier):
        return ("scores", "poses", "routing_weights")
    return ("scores",)


def decoder_path(path: str | Path) -> Path:
    """Where the decoder goes next to the classifier: ``x.onnx`` → ``x.decoder.onnx``."""
    path = Path(path)
    return path.with_name(f"{path.name.removesuffix('.onnx')}.decoder.onnx")


def _tolerances(module: nn.Module, inputs: dict[str, Tensor], expected: Sequence[Tensor]):
    """Per output: TOLERANCE, or twice PyTorch's own float32 rounding error (its distance
    to a float64 forward) where that is larger, as in ill-conditioned routing."""
    with torch.no_grad():
        exact = copy.deepcopy(module).double()(*(v.double() for v in inputs.values()))
    exact = exact if isinstance(exact, tuple) else (exact,)
    return [
        max(TOLERANCE, 2 * float((e.double() - x).abs().max()))
        for e, x in zip(expected, exact, strict=True)
    ]


def _onnx_file(
    module: nn.Module,
    inputs: dict[str, Tensor],
    outputs: Sequence[str],
    path: Path,
    metadata: dict[str, str],
) -> dict[str, float]:
    """Export ``module`` to ``path``, check it with onnxruntime on ``inputs``; max abs diffs.

    The file appears (atomically) only if every output is within its tolerance (see
    ``_tolerances``) of PyTorch's.
    """
    import onnx
    import onnxruntime

    module.eval()
    with torch.no_grad():
        expected = module(*inputs.values())
    expected = expected if isinstance(expected, tuple) else (expected,)
    limits = _tolerances(module, inputs, expected)
    diffs: dict[str, float] = {}

    def write(tmp: Path) -> None:
        _export_quietly(module, inputs, outputs, tmp, path)
        proto = onnx.load(str(tmp))
        onnx.helper.set_model_props(proto, metadata)
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        got = session.run(None, {k: v.numpy() for k, v in inputs.items()})
        for name, a, b in zip(outputs, got, expected, strict=True):
            diffs[name] = float((torch.from_numpy(a) - b).abs().max())
        for (name, diff), limit in zip(diffs.items(), limits, strict=True):
            if diff > limit:
                raise CheckpointError(
                    f"{path}: onnxruntime's {name} differs from PyTorch's by up to "
                    f"{diff:.2e} (> {limit:.2g}); not written"
                )

    atomic_write(path, write)
    return diffs


@contextlib.contextmanager
def _silenced() -> Iterator[None]:
    """Nothing reaches stdout or stderr, from Python or C++ (the exporter prints graph IR
    from C++ on failure): file descriptors 1 and 2 point to /dev/null meanwhile."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with (
        open(os.devnull, "w") as null,
        contextlib.redirect_stdout(null),
        contextlib.redirect_stderr(null),
    ):
        try:
            os.dup2(null.fileno(), 1)
            os.dup2(null.fileno(), 2)
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def _export_quietly(
    module: nn.Module, inputs: dict[str, Tensor], outputs: Sequence[str], tmp: Path, path: Path
) -> None:
    """torch.onnx.export with nothing on stdout/stderr; ConfigError naming the operator
    when ONNX cannot express one."""
    with (
        warnings.catch_warnings(),
        _silenced(),
        torch.no_grad(),  # the plain forward: the training fast paths are autograd nodes
    ):
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes
        try:
            torch.onnx.export(
                module,
                tuple(v[:2] for v in inputs.values()),  # traced on 2, checked on all
                str(tmp),
                input_names=list(inputs),
                output_names=list(outputs),
                dynamic_axes={name: {0: "batch"} for name in [*inputs, *outputs]},
                opset_version=OPSET,
                dynamo=False,
                verbose=False,
            )
        except Exception as e:  # the exporter's errors carry pages of graph IR: keep one line
            text = str(e)
            op = re.search(r"operator '?([\w:]+)", text) or re.search(r"(aten::\w+)", text)
            what = f"the operator {op.group(1)}" if op else text.strip().splitlines()[0][:200]
            raise ConfigError(
                f"{path}: ONNX opset {OPSET} cannot express {what}; use the PyTorch model "
                "instead (capsnet predict, or capsnet.load_run in Python)"
            ) from None


def _synthetic(config: ModelConfig) -> Tensor:
    """SYNTHETIC_IMAGES images of the model's input shape, every pixel uniform in [0, 1]
    (seeded: the same images every time)."""
    generator = torch.Generator().manual_seed(0)
    shape = (SYNTHETIC_IMAGES, *config.input_shape)
    return torch.rand(shape, generator=generator)


def _check_images(
    run: Run, config: ModelConfig, data_dir: str | None, check_images: int, dataset: str | None
) -> Tensor:
    """The images (N, C, H, W) in [0, 1] the export is checked on: ``check_images`` of the
    test set (see :func:`export_run`), or synthetic ones (:func:`_synthetic`) if that is 0 or
    if, with no ``data_dir`` given, the test set is not on disk. Nothing is downloaded."""
    if check_images == 0:
        log.info("checking against PyTorch on %d synthetic images", SYNTHETIC_IMAGES)
        return _synthetic(config)
    name = dataset or run.dataset
    if name is None:
        raise ConfigError(f"{run.name}: no config.json says the run's dataset; pass --dataset")
    try:
        images, _ = run.test_set(data_dir, limit=check_images, download=False, dataset=dataset)
    except DataError:
        if data_dir is not None:
            raise
        log.warning(
            "no %s test images on disk: checking against PyTorch on %d synthetic images "
            "instead (--data-dir DIR checks on real ones)",
            name,
            SYNTHETIC_IMAGES,
        )
        return _synthetic(config)
    config.check_images(images, name)
    log.info("checking against PyTorch on %d %s test images", len(images), name)
    return images.float() / 255  # as in training


def _require_onnx() -> None:
    """ConfigError unless the optional packages onnx and onnxruntime import."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise ConfigError(
            "export needs onnx and onnxruntime: pip install 'capsnet[onnx]'"
        ) from None


def _check_not_own(run: Run, path: Path) -> None:
    """ConfigError if ``path`` or its decoder file is one of the run's own files, even
    with overwrite: the run would be lost."""
    own = {run.checkpoint.resolve(), *((run.path / f).resolve() for f in RUN_FILES)}
    for p in (path, decoder_path(path)):
        if p.resolve() in own:
            raise ConfigError(f"{p}: is the run's own {p.name}; export to another file")


@_deprecated.keyword_only(2)
def export_run(
    run_dir: str | Path,
    path: str | Path,
    *,
    data_dir: str | None = None,
    check_images: int = 100,
    dataset: str | None = None,
    overwrite: bool = False,
    overrides: Mapping[str, Any] | None = None,
) -> dict[Path, dict[str, float]]:
    """Export a run's classifier (and decoder, if any) to ONNX, checked on ``check_images``
    of the run's own test images (from ``data_dir``, else where the run found its data), or
    on those of the task ``dataset`` (for a bare checkpoint, whose task is unknown). With
    ``check_images`` 0, or without ``data_dir`` when the test set is not on disk (a shipped
    model on a machine without its dataset), it is checked on SYNTHETIC_IMAGES random
    images instead, and the log says so; a ``data_dir`` without the test set is a DataError.
    Nothing is downloaded.

    ``path`` and its decoder file must not exist unless ``overwrite`` (checked before any
    work), and are never one of the run's own files (its checkpoint, config, …);
    overwriting with a model that has no decoder removes an old decoder file.
    ``overrides`` replace fields of the saved model config (see :meth:`Run.load_model`):
    the ``config`` metadata is the model's as exported, and ``overrides`` says which.
    Returns, per written file, the max abs difference of each output to PyTorch.
    """
    path = Path(path)
    for p in (path, decoder_path(path)):
        check_new_file(p, overwrite)
    _require_onnx()
    run = Run(run_dir)
    _check_not_own(run, path)
    model = run.load_model(overrides=overrides)
    outputs = classifier_outputs(model)
    config = model.config
    x = _check_images(run, config, data_dir, check_images, dataset)
    metadata = {
        "capsnet_version": __version__,
        "model": name_of(model),
        "dataset": dataset or run.dataset or "",
        "class_names": json.dumps(run.class_names_for(config.num_classes, dataset)),
        "image_policy": json.dumps(run.data.get("image_policy")),
        "config": json.dumps(config.to_dict()),
        **({"overrides": json.dumps(dict(overrides))} if overrides else {}),
    }
    classifier = _Classifier(model, outputs)
    diffs = {path: _onnx_file(classifier, {"images": x}, outputs, path, metadata)}
    if not provides(model, PoseDecoder):
        log.info("%s has no decoder: exported the classifier only", name_of(model))
        decoder_path(path).unlink(missing_ok=True)  # an old one would not belong to it
        return diffs
    with torch.no_grad():
        out = model(x)
    mask = torch.nn.functional.one_hot(out.scores.argmax(1), config.num_classes).float()
    inputs = {"poses": out.poses, "mask": mask}
    diffs[decoder_path(path)] = _onnx_file(
        _Decoder(model), inputs, ("reconstructions",), decoder_path(path), metadata
    )
    return diffs

"""Use a trained run: read pictures (PNG, JPEG, …) and .npy arrays the way training reads
data, predict in batches.

Inputs are white-on-black like MNIST and must already have the model's input size: they are
rejected, not resized, because a plain resize is not the preprocessing the dataset had (MNIST
digits are fitted into a 20×20 box and centred by mass), so it would predict on images unlike
any the model was trained on. ``fit="mnist"`` (``--fit mnist``) applies that preprocessing
instead (:func:`capsnet.data.digits.fit_digit`): pictures of any size and polarity are read.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor, nn

from capsnet.data.digits import MNIST_SIZE, check_fit, fit_digit
from capsnet.data.images import ImagePolicy, eight_bit, fit_batch, open_picture
from capsnet.errors import DataError
from capsnet.models.contract import Classifier, require

log = logging.getLogger(__name__)

PIL_MODES = {1: "L", 3: "RGB"}  # model channels -> Pillow mode pictures are converted to
MAX_PIXELS = 4096 * 4096  # larger pictures are refused from their header, before decoding


@dataclass(frozen=True)
class Inputs:
    """Images (N, C, H, W) float32 in [0, 1] and, per image, its file, its index in that file
    and a display name (``file``, or ``file[i]`` for an image of a file holding several)."""

    images: Tensor
    files: list[str]
    indices: list[int]
    names: list[str]


def _ink_from_alpha(rgba: Image.Image, channels: int) -> np.ndarray:
    """An RGBA picture as uint8 (H, W, C) on the black background the models were trained
    on: a 1-channel model sees the opacity as the ink (so black ink on a transparent
    background is a white digit on black); a colour model sees the colours scaled by
    opacity (composited over black)."""
    a = np.asarray(rgba, dtype=np.float32)  # (H, W, 4)
    alpha = a[..., 3:] / 255.0
    ink = alpha * 255.0 if channels == 1 else a[..., :3] * alpha
    return ink.round().astype(np.uint8)


def _transparent(im: Image.Image) -> Image.Image | None:
    """The picture as RGBA if it has an alpha channel (or transparent colour) that is not
    opaque everywhere, else None."""
    if im.mode not in ("RGBA", "LA", "PA") and "transparency" not in im.info:
        return None
    rgba = im.convert("RGBA")
    return rgba if rgba.getextrema()[3] != (255, 255) else None


def _read_picture(path: Path, channels: int, photo: bool = False) -> np.ndarray:
    """A picture file (PICTURE_FORMATS; of several frames, the first) as uint8 (1, C, H, W),
    converted to ``channels`` channels (16-bit and float pictures as in eight_bit).

    The size is read from the header and checked before the image
    is decoded (at most MAX_PIXELS). Transparent pictures are composited as in _ink_from_alpha;
    an alpha channel opaque everywhere is ignored (the colours are the picture). ``photo``:
    turned upright by its EXIF orientation (as phones save pictures).
    """
    if channels not in PIL_MODES:
        raise DataError(f"{path}: a {channels}-channel model takes .npy input, not pictures")
    with open_picture(path) as im:
        width, height = im.size  # from the header; nothing decoded yet
        if width * height > MAX_PIXELS:
            to = "" if photo else " to the model's input size"
            raise DataError(
                f"{path}: image is {width}×{height}, larger than the {MAX_PIXELS:,} pixels "
                f"capsnet decodes; resize it{to} first"
            )
        if photo:
            im = ImageOps.exif_transpose(im)
        im = eight_bit(path, im)
        if (rgba := _transparent(im)) is not None:
            a = _ink_from_alpha(rgba, channels)
            log.info("%s: transparent picture; its opacity is read as the ink", path)
        else:
            a = np.asarray(im.convert(PIL_MODES[channels]))  # (H, W) or (H, W, 3)
    return a.reshape(*a.shape[:2], channels).transpose(2, 0, 1)[None]


def _read_array(path: Path, channels: int) -> np.ndarray:
    """An .npy array as (N, C, H, W): (H, W) is one image; (N, H, W) a batch for a 1-channel
    model, one (C, H, W) image otherwise; (N, C, H, W) a batch."""
    try:
        a = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{path}: not a readable .npy array ({e})") from None
    if not isinstance(a, np.ndarray):  # np.load opens .npz archives whatever the name
        a.close()
        raise DataError(f"{path}: is an .npz archive, not an .npy array; save one array")
    a = a.astype(a.dtype.newbyteorder("="), copy=False)  # big-endian files: native order
    if a.ndim == 3 and a.shape[-1] in (1, 3, 4) and min(a.shape[:2]) > 4:
        raise DataError(
            f"{path}: an array of shape {a.shape} looks like one (H, W, C) picture; give "
            f"(C, H, W) or (N, C, H, W) with C = {channels} channels, or save it as a PNG"
        )
    if a.ndim == 2:
        a = a[None, None]
    elif a.ndim == 3:
        a = a[:, None] if channels == 1 else a[None]
    elif a.ndim != 4:
        raise DataError(f"{path}: expected (H, W), (N, H, W) or (N, C, H, W), got {a.shape}")
    if len(a) == 0:
        raise DataError(f"{path}: holds no images")
    if a.dtype == np.uint8:
        return a
    if a.dtype.kind != "f":
        raise DataError(f"{path}: expected uint8 (0–255) or float (0–1) values, got {a.dtype}")
    if not np.isfinite(a).all():
        raise DataError(f"{path}: holds non-finite values (NaN or infinity)")
    if a.min() < 0 or a.max() > 1:
        raise DataError(f"{path}: float values must lie in [0, 1], got {a.min():g}…{a.max():g}")
    return a


def _fit_mnist(a: np.ndarray, path: Path, size: tuple[int, int]) -> np.ndarray:
    """Images (N, 1, H, W), uint8 or float in [0, 1], each fitted: float32 (N, 1, *size)."""
    if a.shape[1] != 1:
        raise DataError(f"{path}: holds {a.shape[1]}-channel images; --fit mnist takes grey ones")
    x = torch.from_numpy(a[:, 0].astype(np.float32))  # (N, H, W)
    if a.dtype == np.uint8:
        x = x.div_(255.0)
    try:
        return torch.stack([fit_digit(image, size) for image in x])[:, None].numpy()
    except DataError as e:
        raise DataError(f"{path}: {e}") from None


def read_inputs(
    paths: Sequence[str | Path],
    in_channels: int,
    input_size: tuple[int, int],
    policy: ImagePolicy | None = None,
    *,
    fit: str | None = None,
) -> Inputs:
    """Read pictures (PICTURE_FORMATS) and .npy arrays into one float32 batch (N, C, H, W) in
    [0, 1].

    A run's ``policy`` (resize rule, normalisation) is applied as in training; without one
    every input must already have the model's size. uint8 values are divided by 255, as in
    training; float arrays must lie in [0, 1]. ``fit="mnist"`` first brings every image, of
    any size, to MNIST's preprocessing (:func:`capsnet.data.digits.fit_digit`: the paper's
    lighting removed, the digit's strokes found, made white on black, fitted into a 20×20
    box, centred by mass in 28×28, which larger inputs get in their middle); it is for
    1-channel models of at least 28×28 only (ConfigError before any file is read), and a
    picture without ink is a DataError. Raises
    DataError naming the file for anything unreadable, non-finite, out of range or not of
    the model's shape (C, H, W).
    """
    if fit is not None:
        check_fit(fit, in_channels, input_size)
    expected = (in_channels, *input_size)
    arrays, files, indices, names = [], [], [], []
    for p in map(Path, paths):
        if p.suffix.lower() == ".npy":
            a = _read_array(p, in_channels)
        else:
            a = _read_picture(p, in_channels, photo=fit is not None)
        if fit is not None:
            a = _fit_mnist(a, p, tuple(input_size))
        if policy is not None:  # the run's resize rule and normalisation
            a = fit_batch(a, policy, str(p))
        if a.shape[1:] != expected:
            c, h, w = a.shape[1:]
            digit = c == in_channels == 1 and min(input_size) >= MNIST_SIZE  # a digit, maybe
            raise DataError(
                f"{p}: image is {c}×{h}×{w} (channels×height×width) but the model expects "
                f"{'×'.join(map(str, expected))}; resize it first"
                + (" (or pass --fit mnist for a picture of a digit)" if digit else "")
            )
        x = torch.tensor(a, dtype=torch.float32)
        if a.dtype == np.uint8:
            x = x.div_(255.0)
        if x.mean() > 0.5 and policy is None and fit is None:
            log.warning("%s: looks dark-on-light; the model expects white-on-black", p)
        blank = (x.flatten(1).amax(1) - x.flatten(1).amin(1)) < 1 / 255  # (N,) uniform images
        if blank.any():
            log.warning("%s: %d of %d images are blank (one uniform value)", p, blank.sum(), len(x))
        arrays.append(x)
        files += [str(p)] * len(a)
        indices += range(len(a))
        names += [f"{p}[{i}]" for i in range(len(a))] if len(a) > 1 else [str(p)]
    return Inputs(torch.cat(arrays), files, indices, names)


@torch.no_grad()
def predict(
    model: nn.Module, images: Tensor, batch_size: int = 500, device: str | torch.device = "cpu"
) -> Tensor:
    """Class scores (N, K) of images (N, C, H, W) in [0, 1], computed in batches: capsule
    lengths (EM: activations) or, for a plain classifier, probabilities."""
    require(model, "predict", Classifier)
    model.eval()
    return torch.cat([model(x.to(device)).scores.float().cpu() for x in images.split(batch_size)])

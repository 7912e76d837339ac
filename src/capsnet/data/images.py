"""How images of any size and colour become the model's input: one explicit, saved policy.

A run trained on a folder or array dataset records its :class:`ImagePolicy` (in
``config.json``, under ``train.dataset_options``); ``capsnet predict`` and ``capsnet
explore`` apply the same policy to new images. Nothing is resized unless the policy says so:

* ``pad``: centre the image on a zero canvas of ``input_size`` (it must not be larger);
* ``crop``: cut the centre ``input_size`` out of it (it must not be smaller);
* ``stretch``: bilinear resize to ``input_size`` (the aspect ratio may change).

``normalize="per-image"`` stretches each image's values linearly to span 0–255 (a constant
image becomes 0): a per-image contrast normalisation that keeps pixels in [0, 1], so the
sigmoid decoder can still reconstruct them.

:func:`capsnet.data.digits.fit_digit` (``capsnet predict --fit mnist``) brings a user's picture
of a digit, of any size and either polarity, to MNIST's own preprocessing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from capsnet.errors import ConfigError, DataError
from capsnet.names import NORMALIZE, RESIZE

CHANNELS = (1, 3)
PICTURE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP")  # Pillow's names, read by content
PICTURE_NAMES = "PNG, JPEG, BMP, GIF, TIFF or WebP"


@dataclass(frozen=True)
class ImagePolicy:
    """Input size, resize rule, channel count and normalisation of a dataset's images.

    ``input_size`` None: every image must have the same size, which becomes the model's.
    ``input_size`` without ``resize``: every image must already have that size.
    ``channels`` None: decided from the data (greyscale → 1, colour → 3).
    """

    input_size: tuple[int, int] | None = None
    resize: str | None = None
    channels: int | None = None
    normalize: str = "none"

    def __post_init__(self) -> None:
        if self.input_size is not None:
            size = tuple(self.input_size)
            if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
                raise ConfigError(f"input size must be two positive integers, got {size}")
            object.__setattr__(self, "input_size", size)
        if self.resize is not None and self.resize not in RESIZE:
            raise ConfigError(f"unknown resize '{self.resize}'; choose from: {', '.join(RESIZE)}")
        if self.resize is not None and self.input_size is None:
            raise ConfigError(f"--resize {self.resize} needs --input-size H W")
        if self.channels is not None and self.channels not in CHANNELS:
            raise ConfigError(f"channels must be 1 or 3, got {self.channels}")
        if self.normalize not in NORMALIZE:
            raise ConfigError(
                f"unknown normalize '{self.normalize}'; choose from: {', '.join(NORMALIZE)}"
            )


def _size_error(where: str, h: int, w: int, policy: ImagePolicy) -> DataError:
    th, tw = policy.input_size or (h, w)
    if policy.resize is None:
        hint = "pass --resize pad|crop|stretch"
    else:
        hint = f"{'larger' if policy.resize == 'pad' else 'smaller'} than {th}×{tw}"
        hint = f"cannot {policy.resize}: {hint}; use another --resize or --input-size"
    return DataError(f"{where}: image is {h}×{w}, expected {th}×{tw} ({hint})")


def fit_image(a: np.ndarray, policy: ImagePolicy, where: str) -> np.ndarray:
    """One uint8 image (C, H, W) brought to ``policy.input_size`` by its resize rule.

    Raises DataError naming ``where`` if the rule cannot give that size (or there is none).
    """
    c, h, w = a.shape
    if policy.input_size is None or (h, w) == policy.input_size:
        return a
    th, tw = policy.input_size
    if policy.resize == "pad" and h <= th and w <= tw:
        out = np.zeros((c, th, tw), np.uint8)
        top, left = (th - h) // 2, (tw - w) // 2
        out[:, top : top + h, left : left + w] = a
        return out
    if policy.resize == "crop" and h >= th and w >= tw:
        top, left = (h - th) // 2, (w - tw) // 2
        return np.ascontiguousarray(a[:, top : top + th, left : left + tw])
    if policy.resize == "stretch":
        return np.stack(
            [np.asarray(Image.fromarray(ch).resize((tw, th), Image.BILINEAR)) for ch in a]
        )
    raise _size_error(where, h, w, policy)


def fit_batch(a: np.ndarray, policy: ImagePolicy, where: str) -> np.ndarray:
    """Images (N, C, H, W), uint8 or float in [0, 1], as the policy makes a dataset's:
    uint8 (N, C, H', W') brought to its size, then normalised."""
    if a.dtype != np.uint8:
        a = (a.astype(np.float32) * 255).round().astype(np.uint8)
    fitted = torch.from_numpy(np.stack([fit_image(image, policy, where) for image in a]))
    return normalize_images(fitted, policy.normalize).numpy()


def normalize_images(x: Tensor, mode: str) -> Tensor:
    """uint8 images (N, C, H, W), each stretched to span 0–255 if ``mode`` is "per-image"."""
    if mode == "none" or len(x) == 0:
        return x
    flat = x.flatten(1).float()  # (N, C·H·W)
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    scaled = (flat - low) * (255.0 / (high - low).clamp_min(1.0))
    return scaled.round_().to(torch.uint8).view_as(x)


def convert_channels(x: Tensor, channels: int | None, where: str) -> Tensor:
    """uint8 images (N, C, H, W) with ``channels`` channels: 3 → 1 by Pillow's luminance
    (L = 0.299 R + 0.587 G + 0.114 B), 1 → 3 by repetition; DataError for other changes."""
    c = x.shape[1]
    if channels is None or channels == c:
        return x
    if (c, channels) == (1, 3):
        return x.expand(-1, 3, -1, -1).contiguous()
    if (c, channels) == (3, 1):
        weights = torch.tensor([299, 587, 114], dtype=torch.int32).view(1, 3, 1, 1)
        return (
            ((x.int() * weights).sum(1, keepdim=True) + 500)
            .div(1000, rounding_mode="floor")
            .to(torch.uint8)
        )
    raise DataError(f"{where}: holds {c}-channel images; cannot convert them to {channels}")


def eight_bit(path: Path, im: Image.Image) -> Image.Image:
    """A picture of more than 8 bits a sample as 8-bit grey ("L"): 16-bit integers (modes
    I;16*, and I as Pillow reads 16-bit PNGs) scaled by 255/65535, floats (F) read as
    [0, 1] and scaled by 255; DataError if the values are outside that range. Other
    pictures are returned unchanged."""
    if im.mode not in ("I", "F") and not im.mode.startswith("I;16"):
        return im
    a = np.asarray(im, dtype=np.float64)  # (H, W)
    top = 1.0 if im.mode == "F" else 65535.0
    if not np.isfinite(a).all() or a.min() < 0 or a.max() > top:
        raise DataError(f"{path}: a {im.mode} picture with values outside [0, {top:g}]")
    return Image.fromarray(np.round(a * (255.0 / top)).astype(np.uint8), "L")


def read_picture(path: Path, channels: int | None) -> np.ndarray:
    """A picture file (PICTURE_FORMATS; of several frames, the first) as uint8 (C, H, W);
    converted to ``channels`` if given, else 1 for greyscale files and 3 for colour ones
    (16-bit and float pictures as in :func:`eight_bit`). DataError naming the file if it is
    unreadable."""
    with open_picture(path) as im:
        mode = "L" if (channels or picture_channels(im)) == 1 else "RGB"
        a = np.asarray(eight_bit(path, im).convert(mode))  # (H, W) or (H, W, 3)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


@contextmanager
def open_picture(path: Path) -> Iterator[Image.Image]:
    """``with open_picture(path) as im``: the file opened by Pillow as one of PICTURE_FORMATS
    (recognised by content; nothing decoded yet). A missing file, or one Pillow cannot open or
    decode within the block, is a one-line DataError naming it."""
    try:
        with Image.open(path, formats=PICTURE_FORMATS) as im:
            yield im
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not a picture") from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: not a readable {PICTURE_NAMES} image ({e})") from None


def picture_channels(im: Image.Image) -> int:
    """1 for a greyscale Pillow image (modes 1, L, LA, I, F, I;16…, or a palette of greys, as
    GIF stores greyscale pictures), 3 for colour. A palette picture is decoded to read its
    palette: Pillow before 13 keeps a GIF's as raw file data until then."""
    if im.mode in ("P", "PA"):
        if im.palette is None or im.palette.mode != "RGB":
            return 3
        rgb = np.array(im.getpalette("RGB"), np.uint8)[: 3 * 256].reshape(-1, 3)
        return 1 if (rgb == rgb[:, :1]).all() else 3
    return 1 if im.mode in ("1", "L", "LA", "I", "F") or im.mode.startswith("I;") else 3


__all__ = [
    "CHANNELS",
    "convert_channels",
    "eight_bit",
    "fit_batch",
    "NORMALIZE",
    "RESIZE",
    "ImagePolicy",
    "fit_image",
    "normalize_images",
    "open_picture",
    "picture_channels",
    "read_picture",
]

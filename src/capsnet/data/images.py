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

:func:`fit_digit` (``capsnet predict --fit mnist``) brings a user's picture of a digit, of any
size and either polarity, to MNIST's own preprocessing.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from capsnet.errors import ConfigError, DataError
from capsnet.names import FITS, NORMALIZE, RESIZE

CHANNELS = (1, 3)
PICTURE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP")  # Pillow's names, read by content
PICTURE_NAMES = "PNG, JPEG, BMP, GIF, TIFF or WebP"
MNIST_SIZE = 28  # MNIST's canvas, MNIST_SIZE × MNIST_SIZE
MNIST_BOX = 20  # the longer side of a digit's ink box in MNIST
MNIST_CENTRE = 14.0  # where MNIST's centres of mass lie (±0.5), in pixel-index coordinates
INK_THRESHOLD = 0.2  # of the ink's range: fainter pixels are noise (paper grain, JPEG ringing)
MIN_CONTRAST = 0.05  # an ink range below this (≈13 of 255 grey levels) is a blank picture


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


def _ink(image: Tensor) -> Tensor:
    """The ink of a picture (H, W) in [0, 1]: white on black, spanning 0..1, faint noise 0."""
    border = torch.cat([image[0], image[-1], image[1:-1, 0], image[1:-1, -1]])
    background = border.median()
    dark, light = background - image.min(), image.max() - background
    ink = (background - image if dark > light else image - background).clamp_min(0)
    contrast = float(ink.max())
    if contrast < MIN_CONTRAST:
        raise DataError(
            f"blank picture: no ink (the largest difference from the background is "
            f"{contrast * 255:.0f} of 255 grey levels)"
        )
    ink = ink / contrast
    return torch.where(ink >= INK_THRESHOLD, ink, 0.0)


def _centre_by_mass(digit: Tensor) -> Tensor:
    """``digit`` (h, w), h, w ≤ MNIST_BOX, pasted on a black MNIST canvas, shifted by whole
    pixels so that its centre of mass lies within half a pixel of (MNIST_CENTRE, MNIST_CENTRE)."""
    h, w = digit.shape
    mass = digit.sum()
    cy = (digit.sum(1) * torch.arange(h, dtype=digit.dtype)).sum() / mass
    cx = (digit.sum(0) * torch.arange(w, dtype=digit.dtype)).sum() / mass
    top = math.floor(MNIST_CENTRE - float(cy) + 0.5)
    left = math.floor(MNIST_CENTRE - float(cx) + 0.5)
    # Negative padding crops: ink shifted past the canvas edge is cut off, as in MNIST.
    return F.pad(digit, (left, MNIST_SIZE - left - w, top, MNIST_SIZE - top - h))


def fit_digit(image: Tensor) -> Tensor:
    """A picture of one digit brought to MNIST's preprocessing (LeCun et al., 1998).

    ``image`` (H, W) float in [0, 1], grey levels: a digit in ink of either polarity (dark on
    light paper or light on dark) on a plain background that fills the picture's border.
    Returns (28, 28) float32 in [0, 1], the digit white on black:

    1. The background level is the median of the outermost pixels (the picture's border).
       The ink is the picture's difference from it on the side that reaches farther (dark ink
       if the darkest pixel lies farther below the background than the brightest lies above
       it), negative differences clamped to 0; it is divided by its maximum to span 0..1, and
       values below INK_THRESHOLD (0.2) are set to 0 as noise. A maximum difference below
       MIN_CONTRAST (0.05) raises DataError: the picture is blank.
    2. It is cropped to the bounding box of the non-zero ink and resized, keeping the aspect
       ratio, so that the longer side is 20 px (the shorter round(side · 20 / longer), at
       least 1), by bilinear interpolation with anti-aliasing
       (``F.interpolate(..., antialias=True)``); then divided by its maximum again, so that
       thin strokes thinned further by the resize still reach 1.
    3. It is pasted on a black 28×28 canvas, translated by whole pixels (as MNIST was) so that
       its centre of mass (row, column) lies within half a pixel of (14, 14) in pixel-index
       coordinates (pixel i at coordinate i): the rounded shift MNIST's digits show (the centres
       of mass of its 10,000 test digits all lie in [13.5, 14.5]). Ink shifted past the canvas
       edge (a digit whose mass sits far from its box's middle) is cut off, as in MNIST.
    """
    if image.ndim != 2:
        raise ValueError(f"expected one image (H, W), got shape {tuple(image.shape)}")
    ink = _ink(image.float())
    rows, cols = ink.any(1).nonzero()[:, 0], ink.any(0).nonzero()[:, 0]
    crop = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    scale = MNIST_BOX / max(crop.shape)
    size = tuple(max(1, round(side * scale)) for side in crop.shape)
    digit = F.interpolate(crop[None, None], size, mode="bilinear", antialias=True)[0, 0]
    return _centre_by_mass(digit / digit.max())


def check_fit(fit: str, in_channels: int, input_size: tuple[int, int]) -> None:
    """ConfigError unless ``fit`` is a known fit (FITS) for a model of that input."""
    if fit not in FITS:
        raise ConfigError(f"unknown fit '{fit}'; choose from: {', '.join(FITS)}")
    if (in_channels, tuple(input_size)) != (1, (MNIST_SIZE, MNIST_SIZE)):
        h, w = input_size
        raise ConfigError(
            f"--fit {fit} is for 1-channel {MNIST_SIZE}×{MNIST_SIZE} models; "
            f"this one takes {in_channels}×{h}×{w} (channels×height×width)"
        )


def policy_of(options: object) -> ImagePolicy | None:
    """The ImagePolicy a task's options are (or None for tasks without one)."""
    return options if isinstance(options, ImagePolicy) else None


__all__ = [
    "CHANNELS",
    "FITS",
    "check_fit",
    "convert_channels",
    "eight_bit",
    "fit_batch",
    "fit_digit",
    "NORMALIZE",
    "RESIZE",
    "ImagePolicy",
    "fit_image",
    "normalize_images",
    "open_picture",
    "picture_channels",
    "read_picture",
]

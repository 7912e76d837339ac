"""A user's picture of one digit brought to MNIST's preprocessing (``capsnet predict --fit
mnist``): a photo or scan of paper, of any size and either polarity, with uneven lighting,
sensor noise and specks of dust, as a white-on-black digit the way MNIST has its digits.

:func:`fit_digit` finds the digit as a person would: it removes the lighting (a smooth
background surface fitted to the paper), thresholds the rest (Otsu), keeps the digit's
strokes (the largest connected piece of ink and the pieces of meaningful size near it, not
specks) and then applies MNIST's own normalisation (LeCun et al., 1998). numpy and torch
only (no scipy).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from capsnet.errors import ConfigError, DataError
from capsnet.names import FITS

MNIST_SIZE = 28  # MNIST's canvas, MNIST_SIZE × MNIST_SIZE
MNIST_BOX = 20  # the longer side of a digit's ink box in MNIST
MNIST_CENTRE = 14.0  # where MNIST's centres of mass lie (±0.5), in pixel-index coordinates
WORK_SIDE = 256  # the digit is found on a copy averaged down to at most this many px a side
BACKGROUND_ROUNDS = 8  # fits of the background surface, each to the pixels the last one kept
TRIM_SIGMAS = 3.0  # pixels farther than this many noise σ from the surface are not paper
MAD_SIGMA = 1.4826  # σ of Gaussian noise per median absolute deviation
BLANK_SIGMAS = 6.0  # ink must stand this many σ (of the smoothed noise) above the paper
MIN_CONTRAST = 0.05  # a picture whose strongest mark has less contrast is blank
MIN_PAPER = 0.05  # paper darker than this (under the lighting fitted) is taken as this
OTSU_BINS = 256
PIECE_MASS = 0.05  # a piece of ink with less than this share of the largest one's is a speck
PIECE_GAP = 0.3  # pieces at most this × the digit's longer side away belong to the digit
INK_THRESHOLD = 0.2  # of the ink's level: fainter pixels are noise (paper grain, JPEG ringing)
LEVEL_QUANTILE = 0.98  # the ink's level: this quantile of the strokes' pixels
HALO = 2  # pixels (working copy) around the strokes whose fainter ink is kept: their edges


def _surface_terms(rows: Tensor, cols: Tensor, scale: float) -> Tensor:
    """The quadratic surface's terms (1, y, x, y², xy, x²) at every (row, col) of the grid
    (len(rows) · len(cols), 6), coordinates divided by ``scale``."""
    y, x = torch.meshgrid(rows.double() / scale, cols.double() / scale, indexing="ij")
    y, x = y.flatten(), x.flatten()
    return torch.stack([torch.ones_like(y), y, x, y * y, x * y, x * x], 1)


def _paper(work: Tensor, terms: Tensor) -> tuple[Tensor, float]:
    """The paper under the ink: coefficients (6,) of a quadratic surface over ``terms`` fitted
    to the working copy ``work`` (h, w), and the noise σ of the pixels it fits.

    It starts as the median of the picture's border; then, BACKGROUND_ROUNDS times, the
    pixels within TRIM_SIGMAS σ (σ = MAD_SIGMA · the median absolute residual of the pixels
    kept, plus half a grey level) of the surface are kept and the surface is refitted to them
    by least squares, so that ink, dust and shadows of strokes drop out of the fit.
    """
    border = torch.cat([work[0], work[-1], work[1:-1, 0], work[1:-1, -1]]).double()
    values = work.flatten().double()
    coef = torch.zeros(terms.shape[1], dtype=torch.float64)
    coef[0] = torch.quantile(border, 0.5)
    keep = torch.ones_like(values, dtype=torch.bool)
    for _ in range(BACKGROUND_ROUNDS):
        residual = values - terms @ coef
        sigma = MAD_SIGMA * float(residual[keep].abs().median())
        keep = residual.abs() <= TRIM_SIGMAS * sigma + 0.5 / 255
        coef = torch.linalg.lstsq(terms[keep], values[keep, None]).solution[:, 0]
    residual = (values - terms @ coef)[keep]
    return coef, MAD_SIGMA * float(residual.abs().median())


def _otsu(values: Tensor, top: float) -> float:
    """Otsu's threshold of ``values`` in [0, top]: the bin edge that maximises the variance
    between the values below and above it (OTSU_BINS bins)."""
    hist = torch.histc(values.double(), OTSU_BINS, 0.0, top)
    centres = (torch.arange(OTSU_BINS, dtype=torch.float64) + 0.5) * (top / OTSU_BINS)
    below, mass = hist.cumsum(0), (hist * centres).cumsum(0)
    above = below[-1] - below
    between = below * above * (mass / below - (mass[-1] - mass) / above) ** 2
    k = int(torch.nan_to_num(between, nan=0.0).argmax())
    return (k + 1) * top / OTSU_BINS


def _root(parent: list[int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The runs of True in each row of ``mask`` (h, w): their rows, first columns, ends
    (exclusive) and component labels (0, 1, …; runs of one 8-connected component share
    one)."""
    edges = np.diff(np.pad(mask.astype(np.int8), ((0, 0), (1, 1))), axis=1)
    rows, starts = np.nonzero(edges == 1)
    ends = np.nonzero(edges == -1)[1]
    parent = list(range(len(rows)))
    first = np.searchsorted(rows, np.arange(mask.shape[0] + 1))  # runs of row r: first[r]…
    for i in range(len(rows)):
        r = rows[i]
        for j in range(first[r - 1] if r else 0, first[r] if r else 0):
            if starts[j] <= ends[i] and ends[j] >= starts[i]:  # touching, diagonals included
                parent[_root(parent, i)] = _root(parent, j)
    roots = [_root(parent, i) for i in range(len(rows))]
    labels = np.unique(roots, return_inverse=True)[1].reshape(-1)
    return rows, starts, ends, labels


def _group(mass: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Which pieces of ink (masses (n,), boxes (n, 4): top, bottom, left, right, ends
    exclusive) make the digit: the heaviest, and every piece of at least PIECE_MASS of its
    mass whose box lies within PIECE_GAP × the longer side of the digit's box so far (grown
    piece by piece). Boolean (n,)."""
    main = int(mass.argmax())
    chosen = np.arange(len(mass)) == main
    candidates = mass >= PIECE_MASS * mass[main]
    while True:
        top, left = boxes[chosen, 0].min(), boxes[chosen, 2].min()
        bottom, right = boxes[chosen, 1].max(), boxes[chosen, 3].max()
        gap = np.maximum.reduce(
            [boxes[:, 0] - bottom, top - boxes[:, 1], boxes[:, 2] - right, left - boxes[:, 3]]
        )
        near = candidates & ~chosen & (gap <= PIECE_GAP * max(bottom - top, right - left))
        if not near.any():
            return chosen
        chosen |= near


def _strokes(ink: Tensor, mask: np.ndarray) -> Tensor:
    """The digit's strokes: the pieces (8-connected components) of ``mask`` (h, w) that
    :func:`_group` keeps, weighed by ``ink`` (h, w). Boolean (h, w)."""
    rows, starts, ends, labels = _runs(mask)
    prefix = np.pad(ink.double().numpy().cumsum(1), ((0, 0), (1, 0)))
    mass = np.bincount(labels, prefix[rows, ends] - prefix[rows, starts])
    boxes = np.zeros((len(mass), 4), np.int64)
    boxes[:, 0], boxes[:, 2] = mask.shape
    np.minimum.at(boxes[:, 0], labels, rows)
    np.maximum.at(boxes[:, 1], labels, rows + 1)
    np.minimum.at(boxes[:, 2], labels, starts)
    np.maximum.at(boxes[:, 3], labels, ends)
    chosen = _group(mass, boxes)[labels]
    strokes = np.zeros_like(mask)
    for r, s, e in zip(rows[chosen], starts[chosen], ends[chosen], strict=True):
        strokes[r, s:e] = True
    return torch.from_numpy(strokes)


def _surface(coef: Tensor, rows: Tensor, cols: Tensor, scale: float) -> Tensor:
    """The quadratic surface ``coef`` (as :func:`_surface_terms` orders its terms) at every
    (row, col) of the grid: float32 (len(rows), len(cols))."""
    y, x = rows.double()[:, None] / scale, cols.double()[None, :] / scale
    c = coef.tolist()
    return (c[0] + c[1] * y + c[2] * x + c[3] * y * y + c[4] * x * y + c[5] * x * x).float()


def _upsample(mask: Tensor, f: int, height: int, width: int) -> Tensor:
    """A mask of the working copy (cells of f × f pixels) at the picture's (height, width)."""
    return mask.repeat_interleave(f, 0).repeat_interleave(f, 1)[:height, :width]


def _ink_of(values: Tensor, paper: Tensor, dark: bool) -> Tensor:
    """The ink's contrast to the paper under it, 0 where negative: dark ink as the share of
    the paper's light it absorbs, 1 - values / paper (the lighting divides out), light ink
    (on a dark ground: a screen, a board) as values - paper."""
    ink = 1 - values / paper.clamp_min(MIN_PAPER) if dark else values - paper
    return ink.clamp_min(0)


def _ink(image: Tensor) -> Tensor:
    """The digit's ink in a picture (H, W) in [0, 1]: white on black, 1 at its level, other
    marks and the paper 0 (the steps are :func:`fit_digit`'s 1–3)."""
    height, width = image.shape
    f = math.ceil(max(height, width) / WORK_SIDE)
    padded = F.pad(image[None, None], (0, -width % f, 0, -height % f), mode="replicate")
    work = F.avg_pool2d(padded, f)[0, 0]  # the working copy: means of f × f cells
    rows, cols = (torch.arange(n) * f + (f - 1) / 2 for n in work.shape)  # cells' centres
    scale = float(max(height, width))
    coef, sigma = _paper(work, _surface_terms(rows, cols, scale))
    paper = _surface(coef, rows, cols, scale)
    excess = ((work - paper).abs() - TRIM_SIGMAS * sigma).clamp_min(0)
    dark = bool(excess[work < paper].sum() > excess[work > paper].sum())
    # the noise of the ink's 3 × 3 means: a third of a pixel's (over the paper's level if dark)
    noise = sigma / 3 / (max(float(paper.median()), MIN_PAPER) if dark else 1.0)
    smooth = F.avg_pool2d(_ink_of(work, paper, dark)[None], 3, 1, 1, count_include_pad=False)[0]
    peak, needed = float(smooth.max()), max(MIN_CONTRAST, BLANK_SIGMAS * noise)
    if peak < needed:
        raise DataError(
            f"blank picture: no ink (the strongest mark's contrast to the paper is {peak:.0%}; "
            f"a digit needs {needed:.0%})"
        )
    threshold = max(_otsu(smooth.flatten(), peak), TRIM_SIGMAS * noise)
    strokes = _strokes(smooth, (smooth > threshold).numpy())
    halo = F.max_pool2d(strokes[None].float(), 2 * HALO + 1, 1, HALO)[0] > 0
    full = _surface(coef, torch.arange(height), torch.arange(width), scale)
    ink = _ink_of(image, full, dark)
    inside = ink[_upsample(strokes, f, height, width)]
    level = float(inside.kthvalue(math.ceil(LEVEL_QUANTILE * len(inside))).values)
    ink = (ink / level).clamp_max(1)
    return torch.where(_upsample(halo, f, height, width) & (ink >= INK_THRESHOLD), ink, 0.0)


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


def fit_digit(image: Tensor, size: tuple[int, int] = (MNIST_SIZE, MNIST_SIZE)) -> Tensor:
    """A picture of one digit brought to MNIST's preprocessing (LeCun et al., 1998).

    ``image`` (H, W) float in [0, 1], grey levels: a digit in ink of either polarity (dark on
    light paper or light on dark) on paper that covers most of the picture, lit unevenly or
    not, with noise and specks. Returns float32 ``size`` in [0, 1], the digit white on black:

    1. The paper: a working copy is made by averaging f × f cells, f = ⌈max(H, W) / 256⌉.
       A quadratic surface in the pixel coordinates is fitted to it by least squares, robustly
       (starting from the median of the border, refitted 8 times to the pixels within 3 σ of
       the last fit, σ the noise from their median absolute deviation): the lighting. The ink
       lies on the side of the surface holding more mass beyond 3 σ: dark ink if more lies
       below it than above. Dark ink is the share of the paper's light it absorbs,
       1 - picture / surface (so uneven lighting divides out), light ink the difference
       picture - surface; negative values are 0.
    2. The strokes: the ink of the working copy is averaged over 3 × 3 pixels. If its peak is
       below a contrast of 0.05, or 6 σ of that average's noise (σ / 3, over the paper's
       median level for dark ink), the picture is blank (DataError). Pixels above Otsu's
       threshold of it (at least 3 σ) are ink; of their 8-connected pieces the digit is the
       heaviest (by ink) and every piece of at least 5% of its mass within 0.3 × the digit's
       longer side of its box (grown piece by piece); other pieces (dust, specks, the
       paper's edge) are dropped.
    3. The ink at full resolution within 2 working pixels of the strokes is divided by its
       level (the 98th percentile of the strokes' pixels) and clipped to 1; values below 0.2
       are set to 0.
    4. MNIST's normalisation: the ink's bounding box is resized, keeping the aspect ratio, so
       that the longer side is 20 px (the shorter round(side · 20 / longer), at least 1), by
       bilinear interpolation with anti-aliasing, and divided by its maximum again (thin
       strokes thinned further by the resize still reach 1). It is pasted on a black 28×28
       canvas, shifted by whole pixels (as MNIST was) so that its centre of mass (row, column)
       lies within half a pixel of (14, 14) in pixel-index coordinates: the rounded shift
       MNIST's digits show (the centres of mass of its 10,000 test digits all lie in
       [13.5, 14.5]). Ink shifted past the canvas edge is cut off, as in MNIST.
    5. A larger ``size`` (H', W' ≥ 28) gets that 28×28 digit in its middle, (H' - 28) // 2
       rows from the top and (W' - 28) // 2 columns from the left, as expanded MNIST pads
       MNIST's digits to 40×40 (6 px a side) and ``--resize pad`` pads pictures.
    """
    if image.ndim != 2:
        raise ValueError(f"expected one image (H, W), got shape {tuple(image.shape)}")
    ink = _ink(image.float())
    rows, cols = ink.any(1).nonzero()[:, 0], ink.any(0).nonzero()[:, 0]
    crop = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    scale = MNIST_BOX / max(crop.shape)
    box = tuple(max(1, round(side * scale)) for side in crop.shape)
    digit = F.interpolate(crop[None, None], box, mode="bilinear", antialias=True)[0, 0]
    canvas = _centre_by_mass(digit / digit.max())
    top, left = ((side - MNIST_SIZE) // 2 for side in size)
    return F.pad(canvas, (left, size[1] - MNIST_SIZE - left, top, size[0] - MNIST_SIZE - top))


def check_fit(fit: str, in_channels: int, input_size: tuple[int, int]) -> None:
    """ConfigError unless ``fit`` is a known fit (FITS) for a model of that input: one
    channel, at least 28×28."""
    if fit not in FITS:
        raise ConfigError(f"unknown fit '{fit}'; choose from: {', '.join(FITS)}")
    h, w = input_size
    if in_channels != 1 or min(h, w) < MNIST_SIZE:
        raise ConfigError(
            f"--fit {fit} is for 1-channel models of at least {MNIST_SIZE}×{MNIST_SIZE}; "
            f"this one takes {in_channels}×{h}×{w} (channels×height×width)"
        )


__all__ = ["FITS", "check_fit", "fit_digit"]

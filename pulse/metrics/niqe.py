"""NIQE (Mittal, Soundararajan, Bovik 2013): a no-reference naturalness score, lower is better.

A batched torch port of LIVE's reference MATLAB code (``computequality.m``): the luminance (rounded to
8 bits) is cropped to whole 96x96 blocks; MSCN coefficients use a 7x7 Gaussian window (sigma 7/6) with
``C = 1`` on the [0, 255] scale; each block gives 18 features (AGGD fits of the MSCN coefficients and of
their horizontal, vertical and two diagonal neighbour products, circular within the block) at two
scales, the second made by MATLAB's ``imresize(im, 0.5)`` (antialiased Keys bicubic, ``a = -0.5``,
symmetric edges). Every block is used (sharpness threshold 0). The score is the Mahalanobis-like
distance between the image's block features (``nanmean``, ``nancov``) and LIVE's pristine model::

    sqrt((mu_p - mu_d) pinv((cov_p + cov_d) / 2) (mu_p - mu_d)^T)

Deliberate differences from MATLAB, each documented where it acts: where a 7x7 window is exactly
constant its MSCN coefficients are exactly 0, and a centre that equals its local mean up to float
residue (|x - mu| < 1e-9) counts as equal (MATLAB keeps ~1e-14 residue there, whose sign, which depends
on the order of floating-point sums, then decides the left/right split of the AGGD fits); and images
need two blocks per side (192 px), where MATLAB would score a single block.

Published reference (BasicSR's test): ``baboon.png``, Y channel, MATLAB NIQE 5.72957338. The image
cannot be shipped here; ``tests/test_niqe.py`` checks it when ``PULSE_NIQE_BABOON`` names the file.

The pristine parameters are LIVE's (``data/niqe_pris_params.npz``; notice and citation in
``data/NIQE_NOTICE.md``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
import torchmetrics

from pulse.data import Problem
from pulse.device_cache import cached
from pulse.downscale import keys_cubic
from pulse.metrics.base import MetricValues, SolvedBatch, ground_truth, nan_where

if TYPE_CHECKING:
    from pulse.losses import LossInputs

log = logging.getLogger(__name__)

BLOCK = 96
MIN_SIZE = 2 * BLOCK
PARAMS_PATH = Path(__file__).with_name("data") / "niqe_pris_params.npz"

# Luminance weights of [R, G, B] on the [0, 255] scale, and the offset.
CONVENTIONS: dict[str, tuple[tuple[float, float, float], float]] = {
    # MATLAB rgb2gray computes with the first row of inv(YIQ matrix), not its rounded documented 0.2989/0.5870/0.1140.
    "gray": ((0.298936021293775, 0.587043074451121, 0.114020904255103), 0.0),
    "y": ((65.481 / 255, 128.553 / 255, 24.966 / 255), 16.0),  # Y of MATLAB rgb2ycbcr, as BasicSR uses it
}

# The MATLAB code's shape-parameter grid, 0.2:0.001:10 (9801 values).
_GRID_SIZE = 9801
# |x - mu| below this (on the [0, 255] scale) is float residue of an exact cancellation, not signal.
_CANCELLED = 1e-9
# Keeps square roots and divisions differentiable in the loss path; far below any real statistic.
_TINY = 1e-12


def too_small_reason(height: int, width: int) -> str:
    """The one-line reason an image of ``height x width`` px cannot be scored."""
    return (
        f"NIQE needs at least {MIN_SIZE}x{MIN_SIZE} px (two {BLOCK}-px blocks per side); outputs are {height}x{width}"
    )


@lru_cache(maxsize=1)
def pristine_model() -> dict[str, np.ndarray]:
    """LIVE's pristine model: ``mu_pris_param`` ``[1, 36]``, ``cov_pris_param`` ``[36, 36]``, ``gaussian_window``."""
    with np.load(PARAMS_PATH, allow_pickle=False) as data:
        return {key: np.asarray(data[key], dtype=np.float64) for key in data.files}


@lru_cache(maxsize=1)
def _gamma_tables() -> np.ndarray:
    """``[4, 9801]`` float64: shape grid, its moment ratio, and the two gamma ratios the fit needs."""
    alpha = (200 + np.arange(_GRID_SIZE)) / 1000.0
    g1 = np.array([math.gamma(1 / a) for a in alpha])
    g2 = np.array([math.gamma(2 / a) for a in alpha])
    g3 = np.array([math.gamma(3 / a) for a in alpha])
    ratio = g2**2 / (g1 * g3)  # strictly increasing in alpha, so a sorted lookup finds the nearest entry
    return np.stack([alpha, ratio, np.sqrt(g1 / g3), g2 / g1])


def _tables(device: torch.device) -> torch.Tensor:
    return cached(("niqe-gamma", device), lambda: torch.from_numpy(_gamma_tables()).to(device))


def _gaussian_1d(device: torch.device) -> torch.Tensor:
    """``[7]``: the separable factor of LIVE's 7x7 window (its row sums; the window is their outer product)."""
    window = pristine_model()["gaussian_window"]
    window = window / window.sum()
    return cached(("niqe-window", device), lambda: torch.from_numpy(window.sum(1)).to(device))


def luminance(images: torch.Tensor, convention: str = "gray", quantize: bool = True) -> torch.Tensor:
    """``[B, 3 or 1, H, W]`` in [0, 1] -> ``[B, H, W]`` float64 luminance on [0, 255].

    With ``quantize`` the RGB values are first rounded to 8 bits and the luminance rounded again, as
    MATLAB does for uint8 images (``round`` half away from zero). One-channel images are used as they are.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown NIQE colour convention {convention!r}; valid: {sorted(CONVENTIONS)}")
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"NIQE expects images [B, 3, H, W] or [B, 1, H, W] in [0, 1], got {list(images.shape)}")
    x = images.double().clamp(0, 1) * 255.0
    if quantize:
        x = round_half_up(x)
    if x.shape[1] == 1:
        return x[:, 0]
    (wr, wg, wb), offset = CONVENTIONS[convention]
    y = wr * x[:, 0] + wg * x[:, 1] + wb * x[:, 2] + offset
    return round_half_up(y) if quantize else y


def round_half_up(x: torch.Tensor) -> torch.Tensor:
    """MATLAB's ``round`` (half away from zero) of non-negative values, in ``x``'s dtype."""
    # Truncating an integer conversion: much faster than torch.floor on float64 CPU tensors.
    return (x + 0.5).to(torch.int32).to(x.dtype)


def resize_weights(in_len: int, scale: float, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """MATLAB ``imresize`` contributions along one dimension: ``(indices [out, P], weights [out, P])``.

    Keys bicubic (``a = -0.5``), widened by ``1 / scale`` when shrinking (antialiasing), weights
    normalised per output pixel, indices mirrored symmetrically (the edge pixel repeated); zero-weight
    columns dropped. ``out = ceil(in_len * scale)``.
    """
    out_len = math.ceil(in_len * scale)
    shrink = scale < 1
    width = 4.0 / scale if shrink else 4.0
    u = torch.arange(1, out_len + 1, dtype=torch.float64) / scale + 0.5 * (1 - 1 / scale)
    left = torch.floor(u - width / 2)
    indices = left[:, None] + torch.arange(math.ceil(width) + 2, dtype=torch.float64)  # 1-based, as in MATLAB
    distance = u[:, None] - indices
    weights = scale * keys_cubic(scale * distance) if shrink else keys_cubic(distance)
    weights = weights / weights.sum(1, keepdim=True)
    mirror = torch.cat([torch.arange(in_len), torch.arange(in_len - 1, -1, -1)])
    indices = mirror[(indices.long() - 1) % (2 * in_len)]
    keep = weights.ne(0).any(0)
    return indices[:, keep].to(device), weights[:, keep].to(device)


def _resize_rows(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Resize ``[B, H, W]`` along ``H``."""
    key = ("niqe-resize", x.shape[-2], scale, x.device)  # once per size: not rebuilt at every search step
    indices, weights = cached(key, lambda: resize_weights(x.shape[-2], scale, x.device))
    out_len, taps = indices.shape
    gathered = x.index_select(-2, indices.flatten()).unflatten(-2, (out_len, taps))  # [B, out, P, W]
    weights = weights.to(x.dtype)
    out = gathered[..., 0, :] * weights[:, 0, None]
    # One tap at a time, so every output pixel sums its taps in the same order: a constant region stays
    # exactly constant, and exactly-constant windows are found again at the second scale.
    for p in range(1, taps):
        out = out + gathered[..., p, :] * weights[:, p, None]
    return out


def matlab_resize(images: torch.Tensor, scale: float) -> torch.Tensor:
    """MATLAB ``imresize(images, scale)`` (bicubic, antialiased when shrinking) of ``[B, H, W]``, rows first."""
    rows = _resize_rows(images, scale)
    return _resize_rows(rows.transpose(-1, -2), scale).transpose(-1, -2).contiguous()


def _pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Replicate-pad ``[B, H, W]`` by ``pad`` on every side."""
    return F.pad(x[:, None], (pad, pad, pad, pad), mode="replicate")[:, 0]


def _filter(x: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """Separable correlation of ``[B, H, W]`` with ``taps`` ``[k]`` on both axes, replicate edges (imfilter)."""
    k = taps.numel()
    height, width = x.shape[-2:]
    padded = _pad(x, k // 2)
    taps = taps.to(x.dtype)
    # Shifted slices rather than conv2d: float64 convolution is slow on the CPU, and this is exact enough.
    rows = sum(taps[i] * padded[:, i : i + height, :] for i in range(k))
    return sum(taps[i] * rows[:, :, i : i + width] for i in range(k))


def constant_windows(x: torch.Tensor, size: int = 7) -> torch.Tensor:
    """``[B, H, W]`` bool: whether the ``size x size`` window (replicate edges) around each pixel is constant.

    Exact comparison: on 8-bit luminance this is integer arithmetic.
    """
    height, width = x.shape[-2:]
    padded = _pad(x, size // 2)
    high = low = padded[:, :height, :]
    for i in range(1, size):
        high, low = torch.maximum(high, padded[:, i : i + height, :]), torch.minimum(low, padded[:, i : i + height, :])
    row_high, row_low = high, low
    high, low = row_high[:, :, :width], row_low[:, :, :width]
    for i in range(1, size):
        high = torch.maximum(high, row_high[:, :, i : i + width])
        low = torch.minimum(low, row_low[:, :, i : i + width])
    return high == low


def mscn(lum: torch.Tensor, differentiable: bool = False) -> torch.Tensor:
    """Mean-subtracted contrast-normalised coefficients ``(x - mu) / (sigma + 1)`` of ``[B, H, W]`` on [0, 255].

    ``sigma = sqrt(|E[x^2] - mu^2|)`` over the Gaussian window. The coefficients of exactly constant
    windows, and of centres within 1e-9 of their local mean, are exactly 0 (float residue would otherwise
    leave ~1e-14 values whose signs decide the AGGD fits); both are masks, so they pass no gradient. The
    differentiable path uses ``sqrt(max(var, 0) + 1e-12)``, whose gradient is finite at 0.
    """
    taps = _gaussian_1d(lum.device)
    mu = _filter(lum, taps)
    var = _filter(lum * lum, taps) - mu * mu
    sigma = torch.sqrt(var.clamp(min=0) + _TINY) if differentiable else torch.sqrt(var.abs())
    centred = lum - mu
    # An exact cancellation (e.g. a symmetric neighbourhood) leaves float residue whose sign depends on the
    # order of the sums; counted as 0, the AGGD's left/right split does not.
    with torch.no_grad():
        zero = (centred.abs() < _CANCELLED) | constant_windows(lum)
    return (centred / (sigma + 1.0)).masked_fill(zero, 0.0)


def _blocks(x: torch.Tensor, size: int) -> torch.Tensor:
    """``[B, nh * size, nw * size] -> [B, nh * nw, size, size]``."""
    batch, height, width = x.shape
    nh, nw = height // size, width // size
    return x.reshape(batch, nh, size, nw, size).transpose(2, 3).reshape(batch, nh * nw, size, size)


@dataclass
class _AGGDFit:
    """Fitted asymmetric generalised Gaussian per block, with which parameters MATLAB would find defined.

    MATLAB's fit of a block with no negative (or no positive) value has ``NaN`` for that side's scale,
    and its ``gammahat`` is ``NaN`` so the grid lookup falls back to the first shape, 0.2. ``left_ok``
    and ``right_ok`` carry that; the values themselves are kept finite so gradients stay finite.
    """

    alpha: torch.Tensor
    beta_left: torch.Tensor
    beta_right: torch.Tensor
    mean: torch.Tensor
    left_ok: torch.Tensor
    right_ok: torch.Tensor


def fit_aggd(values: torch.Tensor) -> _AGGDFit:
    """Moment-matching AGGD fit (LIVE's ``estimateaggdparam``) of each row of ``[..., n]``; fields ``[...]``.

    The shape ``alpha`` is the grid entry (0.2:0.001:10) whose moment ratio is nearest to the estimate;
    it is piecewise constant in the data, so it carries no gradient. The scales and the mean carry
    gradient through the left and right second moments.
    """
    tables = _tables(values.device)
    grid, ratio, scale_factor, mean_factor = tables
    negative, positive = values < 0, values > 0
    n_left, n_right = negative.sum(-1), positive.sum(-1)
    left_ok, right_ok = n_left > 0, n_right > 0
    square = values * values
    left_ms = (square * negative).sum(-1) / n_left.clamp(min=1)
    right_ms = (square * positive).sum(-1) / n_right.clamp(min=1)
    left_std = torch.sqrt(torch.where(left_ok, left_ms, torch.ones_like(left_ms)))
    right_std = torch.sqrt(torch.where(right_ok, right_ms, torch.ones_like(right_ms)))
    both = left_ok & right_ok
    mean_sq = square.mean(-1)
    r_hat = values.abs().mean(-1) ** 2 / torch.where(both, mean_sq, torch.ones_like(mean_sq))
    g = left_std / right_std
    r_norm = r_hat * (g**3 + 1) * (g + 1) / (g**2 + 1) ** 2
    with torch.no_grad():
        target = r_norm.detach().contiguous()
        upper = torch.searchsorted(ratio, target).clamp(1, _GRID_SIZE - 1)
        lower = upper - 1
        # Ties go to the smaller shape, as MATLAB's min returns the first minimum.
        pick_upper = (ratio[upper] - target) ** 2 < (ratio[lower] - target) ** 2
        index = torch.where(pick_upper, upper, lower)
        index = torch.where(both, index, torch.zeros_like(index))
    beta_left = left_std * scale_factor[index]
    beta_right = right_std * scale_factor[index]
    return _AGGDFit(
        alpha=grid[index],
        beta_left=beta_left,
        beta_right=beta_right,
        mean=(beta_right - beta_left) * mean_factor[index],
        left_ok=left_ok,
        right_ok=right_ok,
    )


# Neighbour offsets of the four pairwise products (MATLAB circshift [rows, cols]): horizontal,
# vertical, main diagonal, anti-diagonal.
_SHIFTS = ((0, 1), (1, 0), (1, 1), (1, -1))


def block_features(coefficients: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """LIVE's ``computefeature`` for every ``size``-px block of ``[B, H, W]`` MSCN coefficients.

    Returns ``(features [B, N, 18], defined [B, N, 18] bool)``: per block the AGGD shape and mean scale
    of the coefficients, then (shape, mean, left scale, right scale) of each neighbour product;
    ``defined`` is False where MATLAB's value would be NaN.
    """
    blocks = _blocks(coefficients, size)
    flat = blocks.flatten(2)
    fit = fit_aggd(flat)
    always = torch.ones_like(fit.left_ok)
    features = [fit.alpha, (fit.beta_left + fit.beta_right) / 2]
    defined = [always, fit.left_ok & fit.right_ok]
    for shift in _SHIFTS:
        product = flat * torch.roll(blocks, shift, dims=(-2, -1)).flatten(2)
        fit = fit_aggd(product)
        features += [fit.alpha, fit.mean, fit.beta_left, fit.beta_right]
        defined += [always, fit.left_ok & fit.right_ok, fit.left_ok, fit.right_ok]
    return torch.stack(features, -1), torch.stack(defined, -1)


def image_features(lum: torch.Tensor, differentiable: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Both scales' block features of ``[B, H, W]`` luminance: ``([B, N, 36], defined [B, N, 36])``.

    The image is cropped to whole 96-px blocks first (top-left kept, as MATLAB does).
    """
    height, width = (lum.shape[-2] // BLOCK) * BLOCK, (lum.shape[-1] // BLOCK) * BLOCK
    lum = lum[:, :height, :width]
    first, first_defined = block_features(mscn(lum, differentiable), BLOCK)
    half = matlab_resize(lum, 0.5)
    second, second_defined = block_features(mscn(half, differentiable), BLOCK // 2)
    return torch.cat([first, second], -1), torch.cat([first_defined, second_defined], -1)


def model_distance(features: torch.Tensor, defined: torch.Tensor, differentiable: bool = False) -> torch.Tensor:
    """NIQE from block features ``[B, N, 36]``: ``[B]`` float64.

    ``mu_d`` is the mean of the defined values per feature (``nanmean``), ``cov_d`` the sample covariance
    of the blocks whose features are all defined (``nancov``). Scoring uses ``pinv`` like MATLAB and gives
    NaN where a feature has no defined value or fewer than two blocks are complete; the differentiable
    path solves with a Cholesky factor instead (the pristine covariance is positive definite, so the
    matrix is too and the two agree) and needs no NaN handling.
    """
    mu_p, cov_p = cached(("niqe-pristine", features.device, features.dtype), lambda: _pristine_tensors(features))
    weights = defined.to(features.dtype)
    features = torch.where(defined, features, torch.zeros_like(features))
    counts = weights.sum(1)  # [B, 36]
    mu_d = (features * weights).sum(1) / counts.clamp(min=1)
    complete = defined.all(-1).to(features.dtype)[..., None]  # [B, N, 1]
    rows = complete.sum(1, keepdim=True)  # [B, 1, 1]
    centred = (features - (features * complete).sum(1, keepdim=True) / rows.clamp(min=1)) * complete
    cov_d = centred.transpose(1, 2) @ centred / (rows - 1).clamp(min=1)
    matrix = (cov_p + cov_d) / 2
    diff = (mu_p - mu_d)[..., None]  # [B, 36, 1]
    if differentiable:
        solved = torch.cholesky_solve(diff, torch.linalg.cholesky(matrix))
        return torch.sqrt((diff * solved).sum((1, 2)).clamp(min=_TINY))
    quality = (diff.transpose(1, 2) @ torch.linalg.pinv(matrix) @ diff)[:, 0, 0]
    score = torch.sqrt(quality.clamp(min=0))
    undefined = (counts == 0).any(-1) | (rows[:, 0, 0] < 2)
    return score.masked_fill(undefined, math.nan)


def _pristine_tensors(like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """LIVE's pristine mean ``[36]`` and covariance ``[36, 36]`` on ``like``'s device and dtype."""
    model = pristine_model()
    return torch.from_numpy(model["mu_pris_param"][0]).to(like), torch.from_numpy(model["cov_pris_param"]).to(like)


def _score(lum: torch.Tensor, differentiable: bool = False) -> torch.Tensor:
    return model_distance(*image_features(lum, differentiable), differentiable=differentiable)


def niqe(images: torch.Tensor, convention: str = "gray") -> torch.Tensor:
    """NIQE of each image, lower is better: ``[B, 3 or 1, H, W]`` in [0, 1] -> ``[B]`` float64 (input's device).

    ``convention`` picks the luminance: ``gray`` (MATLAB ``rgb2gray``) or ``y`` (Y of YCbCr, as BasicSR).
    Images smaller than 192 px on a side give NaN and one logged warning; :func:`niqe_scores` with
    ``upsample_small=True`` scores an upsampled copy instead and records that it did.
    """
    lum = luminance(images, convention)
    height, width = lum.shape[-2:]
    if height < MIN_SIZE or width < MIN_SIZE:
        log.warning(
            "%s: NIQE is NaN (niqe_scores(..., upsample_small=True) scores an upsampled copy)",
            too_small_reason(height, width).replace("outputs are", "got"),
        )
        return torch.full((lum.shape[0],), math.nan, dtype=torch.float64, device=lum.device)
    with torch.no_grad():
        return _score(lum)


@dataclass(frozen=True)
class NIQEScore:
    """One NIQE score with how it was computed.

    Attributes:
        score: NIQE (lower is better); NaN when the image could not be scored (``note`` says why).
        convention: the luminance used: ``gray``, ``y``, or ``channel`` for a one-channel input.
        upsample_factor: 1 when the image was scored as given; ``k > 1`` when a copy upsampled ``k`` times
            (MATLAB bicubic) was scored because ``upsample_small=True`` was asked for.
        height, width: the size of the image as given.
        note: why the score is NaN or that an upsampled copy was scored; empty otherwise.
    """

    score: float
    convention: str
    upsample_factor: int
    height: int
    width: int
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready record (NaN scores become ``None``)."""
        record = asdict(self)
        if math.isnan(self.score):
            record["score"] = None
        return record


def niqe_scores(images: torch.Tensor, convention: str = "gray", *, upsample_small: bool = False) -> list[NIQEScore]:
    """:func:`niqe` of ``[B, 3 or 1, H, W]`` images as records that carry the convention and any upsampling.

    Args:
        upsample_small: score images smaller than 192 px on a side by an upsampled copy: the 8-bit
            luminance resized by the smallest integer factor that reaches 192 px (MATLAB ``imresize``
            bicubic) and rounded to 8 bits again; the records say so. Off by default: the
            score of an upsampled copy is not the score of the image.
    """
    height, width = images.shape[-2:]
    used = "channel" if images.shape[1] == 1 else convention
    factor, note = 1, ""
    if min(height, width) < MIN_SIZE and upsample_small:
        factor = math.ceil(MIN_SIZE / min(height, width))
        lum = matlab_resize(luminance(images, convention), factor)
        with torch.no_grad():
            scores = _score(round_half_up(lum.clamp(0, 255)))  # a uint8 copy, as MATLAB's imresize returns
        note = f"scored a copy upsampled x{factor} (bicubic) because upsample_small=True; the image is {height}x{width}"
    else:
        scores = niqe(images, convention)
        if min(height, width) < MIN_SIZE:
            note = too_small_reason(height, width).replace("outputs are", "the image is")
    return [NIQEScore(float(s), used, factor, int(height), int(width), note) for s in scores.tolist()]


def niqe_loss(images: torch.Tensor, convention: str = "gray") -> torch.Tensor:
    """Differentiable NIQE of ``[B, 3, H, W]`` images in [0, 1]: ``[B]`` in the images' dtype.

    Differences from :func:`niqe`: no 8-bit rounding (skipped, not straight-through: the luminance is
    the exact weighted sum), variance floored at 0 plus 1e-12 under the square root, a Cholesky solve
    instead of ``pinv``, and never NaN (too few complete blocks leave ``cov_d`` at 0). As in the metric,
    features MATLAB would leave NaN are masked out of the mean and covariance, with finite stand-ins so
    that gradients stay finite. The fitted shapes (grid lookup) carry no gradient; the scales and means
    do, through the moment statistics.

    Raises:
        ValueError: images smaller than 192 px on a side.
    """
    height, width = images.shape[-2:]
    if height < MIN_SIZE or width < MIN_SIZE:
        raise ValueError(
            f"the niqe loss term: {too_small_reason(height, width)}; use a generator with at least "
            f"{MIN_SIZE} px outputs (e.g. generator=stylegan_ffhq) or drop the term"
        )
    return _score(luminance(images, convention, quantize=False), differentiable=True).to(images.dtype)


def niqe_term(inputs: LossInputs) -> torch.Tensor:
    """Loss term ``niqe``: differentiable NIQE (gray) of the generated images ``inputs.hr_gen``, ``[B]``."""
    return niqe_loss(inputs.hr_gen, "gray")


class NIQEMetric:
    """``niqe`` of each sample's output and ``niqe_hr`` of its input's ground truth, when known.

    Columns are ``niqe`` / ``niqe_hr`` for the default ``gray`` convention and ``niqe_y`` / ``niqe_y_hr``
    for ``y``, so the convention is recorded in the column name. Outputs smaller than 192 px give null
    values and a note saying so.
    """

    def __init__(self, convention: str = "gray", device: torch.device | str | None = None) -> None:
        self.device = torch.device(device or "cpu")  # where it is computed; the runner sets the search's device
        if convention not in CONVENTIONS:
            raise ValueError(f"unknown NIQE colour convention {convention!r}; valid: {sorted(CONVENTIONS)}")
        self.convention = convention
        prefix = "niqe" if convention == "gray" else f"niqe_{convention}"
        self.names = (prefix, f"{prefix}_hr")

    def __call__(self, result: SolvedBatch, problems: Sequence[Problem]) -> MetricValues:
        sr_name, hr_name = self.names
        samples = len(result.seeds)
        height, width = result.hr.shape[-2:]
        if height < MIN_SIZE or width < MIN_SIZE:
            nan = torch.full((samples,), math.nan, dtype=torch.float64)
            reason = too_small_reason(height, width)
            return MetricValues(values={sr_name: nan, hr_name: nan.clone()}, notes={sr_name: reason, hr_name: reason})
        out = MetricValues(values={sr_name: niqe(result.hr.to(self.device), self.convention).cpu()})
        hr, known = ground_truth(result, problems)
        if not known.any():
            out.notes[hr_name] = "no ground truth for these inputs (data=folder without data.factor)"
            return out
        # Duplicates share their input's ground truth: score each input once.
        inputs, first = _first_of_each(result.input_index, known)
        truth_scores = torch.full((samples,), math.nan, dtype=torch.float64)
        scored = niqe(hr[first].to(self.device), self.convention).cpu()
        for value, index in zip(scored.tolist(), inputs.tolist(), strict=True):
            truth_scores[result.input_index == index] = value
        out.values[hr_name] = nan_where(truth_scores, known)
        return out


def _first_of_each(input_index: torch.Tensor, known: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct inputs with known truth and, for each, the position of its first sample."""
    inputs = input_index[known].unique()
    first = torch.stack([torch.nonzero(input_index == i)[0, 0] for i in inputs])
    return inputs, first


class NIQE(torchmetrics.Metric):
    """torchmetrics-style NIQE over batches: ``update(images [B, 3 or 1, H, W] in [0, 1])``, then ``compute()``.

    ``compute`` returns ``{"mean", "std", "count", "unscored"}`` (float64 / long tensors) over every scored
    image; images below 192 px are counted in ``unscored``, never averaged in (mean and std are NaN when
    nothing could be scored).
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, convention: str = "gray", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if convention not in CONVENTIONS:
            raise ValueError(f"unknown NIQE colour convention {convention!r}; valid: {sorted(CONVENTIONS)}")
        self.convention = convention
        for name in ("total", "total_sq"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        for name in ("count", "unscored"):
            self.add_state(name, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, images: torch.Tensor) -> None:
        """Score one batch and add it to the running sums."""
        scores = niqe(images, self.convention).to(self.total.device)
        finite = torch.isfinite(scores)
        self.total += scores[finite].sum()
        self.total_sq += scores[finite].square().sum()
        self.count += int(finite.sum())
        self.unscored += int((~finite).sum())

    def compute(self) -> dict[str, torch.Tensor]:
        nan = torch.tensor(math.nan, dtype=torch.float64, device=self.total.device)
        mean = self.total / self.count if self.count > 0 else nan
        # Sample standard deviation, like the tables (n - 1); NaN below two scores.
        var = (self.total_sq - self.count * mean.square()) / (self.count - 1) if self.count > 1 else nan
        return {"mean": mean, "std": var.clamp(min=0).sqrt(), "count": self.count, "unscored": self.unscored}

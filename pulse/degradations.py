"""Forward models beyond the paper's bicubic: other resampling kernels, blur, noise, JPEG, masks, gray.

Every operator is an ``nn.Module`` built as ``Operator(factor, **options)`` (so a Hydra config with
``_partial_: true`` makes a factory ``factor -> module``) that maps high-resolution images
``[batch, 3, H, W]`` in [0, 1] to their degraded version ``[batch, 3, H / factor, W / factor]``.
The solver applies ``forward`` during the search; data sources make their inputs with
:func:`degrade`, which uses an operator's ``degrade`` method when it has one (the noisy operator adds
its noise there only, so the search fits the clean model; see :class:`NoisyDownscale`).

Conventions (all documented per class): samples sit at pixel centres, output pixel ``i`` covers input
pixels ``[i * factor, (i + 1) * factor)`` and is centred on that block; separable kernels are truncated
at the border and renormalised (as PIL does), so a constant image stays constant.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pulse.downscale import AreaDownscale, BicubicDownscale, check_factor
from pulse.io.safe_pickle import load_torch_weights

# ITU-R BT.601 luma weights (what PIL's convert("L") uses).
LUMA_WEIGHTS = (0.299, 0.587, 0.114)

# The standard JPEG luminance quantisation table (ITU-T T.81, Annex K.1), row-major 8x8, for quality 50.
JPEG_LUMINANCE_TABLE = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)

# The standard JPEG chrominance quantisation table (ITU-T T.81, Annex K.2), quality 50.
JPEG_CHROMINANCE_TABLE = (
    (17, 18, 24, 47, 99, 99, 99, 99),
    (18, 21, 26, 66, 99, 99, 99, 99),
    (24, 26, 56, 99, 99, 99, 99, 99),
    (47, 66, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
)

# JFIF's full-range RGB -> YCbCr (rows Y, Cb, Cr; Cb and Cr are offset by 128 levels).
JFIF_RGB_TO_YCBCR = (
    (0.299, 0.587, 0.114),
    (-0.168735892, -0.331264108, 0.5),
    (0.5, -0.418687589, -0.081312411),
)
JPEG_SUBSAMPLING = ("4:2:0", "4:4:4")


# ---------------------------------------------------------------------------------------------------
# Pure helpers


def resampling_matrix(size: int, factor: int, weight: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """The ``[size / factor, size]`` matrix of a separable integer downscale, rows summing to one.

    ``weight`` receives the signed distance (in input pixels) from each input pixel centre to the output
    pixel's centre, ``[size / factor, size]``, and returns unnormalised weights. Rows are normalised
    after truncation at the border, like PIL's resampling, so constants are preserved.
    """
    centres = (torch.arange(size // factor, dtype=torch.float64) + 0.5) * factor
    distance = (torch.arange(size, dtype=torch.float64) + 0.5)[None, :] - centres[:, None]
    weights = weight(distance)
    return weights / weights.sum(dim=1, keepdim=True)


def apply_separable(images: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``rows @ image @ cols.T`` for every channel: ``[B, C, H, W] -> [B, C, h, w]``."""
    rows = rows.to(device=images.device, dtype=images.dtype)
    cols = cols.to(device=images.device, dtype=images.dtype)
    return torch.einsum("ih,bchw,jw->bcij", rows, images, cols)


def jpeg_quantisation_table(quality: int, chroma: bool = False) -> torch.Tensor:
    """The IJG quality-scaled table ``[8, 8]`` (luminance, or chrominance with ``chroma``).

    Quality 50 is the standard table, 100 all ones (libjpeg's ``jpeg_quality_scaling``, baseline clamp 1..255).
    """
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"JPEG quality must be an integer in 1..100, got {quality!r}")
    quality = int(quality)
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    table = torch.tensor(JPEG_CHROMINANCE_TABLE if chroma else JPEG_LUMINANCE_TABLE, dtype=torch.float64)
    return ((table * scale + 50) // 100).clamp(1, 255).float()


def quantise_blocks(plane: torch.Tensor, table: torch.Tensor, dct: torch.Tensor) -> torch.Tensor:
    """JPEG's lossy step on ``[B, C, H, W]`` levels (0..255, sides multiples of 8): 8x8 DCT, quantise, inverse.

    Rounding uses a straight-through estimator (exact forward values, identity gradient).
    """
    batch, channels, height, width = plane.shape
    by, bx = height // 8, width // 8
    blocks = plane.reshape(batch, channels, by, 8, bx, 8).permute(0, 1, 2, 4, 3, 5)  # [B, C, by, bx, 8, 8]
    coefficients = dct @ (blocks - 128.0) @ dct.T
    restored = dct.T @ (round_ste(coefficients / table) * table) @ dct + 128.0
    return restored.permute(0, 1, 2, 4, 3, 5).reshape(batch, channels, height, width)


def dct_matrix(n: int = 8) -> torch.Tensor:
    """The orthonormal DCT-II matrix ``[n, n]`` (JPEG's transform): ``coefficients = D @ block @ D.T``."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    x = torch.arange(n, dtype=torch.float64)[None, :]
    matrix = torch.cos(math.pi * (2 * x + 1) * k / (2 * n)) * math.sqrt(2 / n)
    matrix[0] /= math.sqrt(2)
    return matrix.float()


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round in the forward pass, identity gradient in the backward pass (straight-through estimator)."""
    return x + (x.round() - x).detach()


def load_array(path: str | Path, what: str) -> np.ndarray:
    """Read a 2-D float array from ``.npy`` (no pickles), ``.pt`` (a tensor, weights only) or an image file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist; give a .npy, .pt or image file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        elif suffix in (".pt", ".pth"):
            loaded = load_torch_weights(path)
            if not isinstance(loaded, torch.Tensor):
                raise ValueError(f"expected a single tensor, found {type(loaded).__name__}")
            array = loaded.detach().double().numpy()
        else:
            from PIL import Image

            with Image.open(path) as image:
                array = np.asarray(image.convert("F"), dtype=np.float64) / 255.0
    except (OSError, ValueError, RuntimeError) as error:
        raise ValueError(f"cannot read {what} file {path}: {error}") from error
    array = np.asarray(array, dtype=np.float64)
    if array.ndim != 2 or min(array.shape) == 0:
        raise ValueError(f"{what} file {path} must hold a non-empty 2-D array, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{what} file {path} contains NaN or inf values")
    return array


def degrade(operator: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Make data with ``operator``: its ``degrade`` method (stochastic parts included) or its forward.

    ``[B, 3, H, W] -> [B, 3, H / factor, W / factor]``, no gradient.
    """
    with torch.no_grad():
        method = getattr(operator, "degrade", None)
        return method(images) if callable(method) else operator(images)


def _require_factor_one(name: str, factor: int) -> None:
    if factor != 1:
        raise ValueError(
            f"the {name} operator keeps the image size, so its factor must be 1 (LR the same size as HR), "
            f"got {factor}; use data.factors=[1] (generated faces) or data.factor=1 (folders)"
        )


# ---------------------------------------------------------------------------------------------------
# Resampling kernels


class SeparableDownscale(nn.Module):
    """A separable integer downscale by a kernel of the signed distance to each block centre.

    Subclasses define :meth:`weight`; the ``[h, H]`` and ``[w, W]`` matrices are built once per image
    size, device and dtype (the search applies the operator at every step to same-sized images).
    """

    def __init__(self, factor: int) -> None:
        super().__init__()
        check_factor(factor, factor, factor)
        self.factor = int(factor)
        self._matrices: dict[tuple[int, int, torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def weight(self, distance: torch.Tensor) -> torch.Tensor:
        """Unnormalised weights for signed distances ``[h, H]`` (input pixels) to the output pixel centres."""
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W] -> [B, C, H / factor, W / factor]``."""
        height, width = images.shape[-2:]
        check_factor(height, width, self.factor)
        key = (height, width, images.device, images.dtype)
        if key not in self._matrices:
            rows = resampling_matrix(height, self.factor, self.weight)
            cols = rows if width == height else resampling_matrix(width, self.factor, self.weight)
            self._matrices[key] = (
                rows.to(device=images.device, dtype=images.dtype),
                cols.to(device=images.device, dtype=images.dtype),
            )
        return apply_separable(images, *self._matrices[key])


class BilinearDownscale(SeparableDownscale):
    """Antialiased bilinear, as PIL's ``resize(BILINEAR)`` and MATLAB's ``imresize(..., 'bilinear')``.

    The triangle kernel is widened by ``factor`` (support ``2 * factor`` input pixels), centred on each
    output pixel's block, truncated and renormalised at the border.
    """

    def weight(self, distance: torch.Tensor) -> torch.Tensor:
        return (1 - distance.abs() / self.factor).clamp(min=0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W] -> [B, C, H / factor, W / factor]``."""
        if self.factor == 1:
            check_factor(*images.shape[-2:], 1)
            return images
        return super().forward(images)

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


class NearestDownscale(nn.Module):
    """Decimation without filtering: pixel ``factor // 2`` of each block in each direction.

    For odd factors that is the block's centre; for even factors the lower/right of the two central
    pixels, which is what PIL's ``resize(NEAREST)`` picks (source ``floor((i + 0.5) * factor)``).
    """

    def __init__(self, factor: int) -> None:
        super().__init__()
        check_factor(factor, factor, factor)
        self.factor = int(factor)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W] -> [B, C, H / factor, W / factor]``."""
        check_factor(images.shape[-2], images.shape[-1], self.factor)
        offset = self.factor // 2
        return images[..., offset :: self.factor, offset :: self.factor]

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


class GaussianDownscale(SeparableDownscale):
    """Gaussian blur of standard deviation ``sigma`` (HR pixels) centred on each block, then decimation.

    ``sigma`` defaults to ``0.5 * factor``: a moderate antialiasing blur, wider than the box filter
    (whose standard deviation is ``factor / sqrt(12) ~ 0.29 * factor``), as in the blur-downsample
    degradations of the SR literature. Weights are computed over the whole row (no truncation radius)
    and renormalised at the border. As ``sigma -> 0`` the weight concentrates on the pixels nearest the
    block centre: the centre pixel for odd factors, the mean of the central 2x2 for even factors.
    """

    def __init__(self, factor: int, sigma: float | None = None) -> None:
        super().__init__(factor)
        self.sigma = 0.5 * self.factor if sigma is None else float(sigma)
        if not self.sigma > 0:
            raise ValueError(f"gaussian sigma must be positive, got {sigma!r}")

    def weight(self, distance: torch.Tensor) -> torch.Tensor:
        """Blurs even when ``factor`` is 1. Softmax of the log-weights stays finite for tiny sigma."""
        return torch.softmax(-(distance**2) / (2 * self.sigma**2), dim=1)

    def extra_repr(self) -> str:
        return f"factor={self.factor}, sigma={self.sigma:g}"


class KernelDownscale(nn.Module):
    """An arbitrary 2-D blur kernel read from a file, normalised to sum one, then decimation by ``factor``.

    The file holds a 2-D array: ``.npy`` (read without pickles), ``.pt`` (one tensor, weights only) or
    an image (gray levels / 255). The kernel is applied as a correlation (not flipped) centred on each
    output pixel's block; when ``size - factor`` is odd the centre falls half a pixel up/left. Borders
    are padded by replication so a constant image stays constant.
    """

    def __init__(self, factor: int, path: str | Path) -> None:
        super().__init__()
        check_factor(factor, factor, factor)
        self.factor = int(factor)
        self.path = str(path)
        array = load_array(path, "blur kernel")
        total = array.sum()
        if not total > 0:
            raise ValueError(f"blur kernel file {path} sums to {total:g}; a blur kernel must sum to a positive value")
        kernel = torch.from_numpy(array / total).float()
        # A kernel narrower than the block is zero-padded (keeping its centre) so every input pixel
        # lands in some output's window arithmetic; it does not change the result.
        grow_y = max(0, math.ceil((self.factor - kernel.shape[0]) / 2))
        grow_x = max(0, math.ceil((self.factor - kernel.shape[1]) / 2))
        kernel = F.pad(kernel, (grow_x, grow_x, grow_y, grow_y))
        self.register_buffer("kernel", kernel, persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W] -> [B, C, H / factor, W / factor]``."""
        _, channels, height, width = images.shape
        check_factor(height, width, self.factor)
        ky, kx = self.kernel.shape
        top, left = (ky - self.factor) // 2, (kx - self.factor) // 2
        padding = (left, kx - self.factor - left, top, ky - self.factor - top)
        weight = self.kernel.to(dtype=images.dtype)[None, None].expand(channels, 1, ky, kx)
        padded = F.pad(images, padding, mode="replicate")
        return F.conv2d(padded, weight, stride=self.factor, groups=channels)

    def extra_repr(self) -> str:
        return f"factor={self.factor}, path={self.path!r}, kernel={tuple(self.kernel.shape)}"


# ---------------------------------------------------------------------------------------------------
# Composite degradations


class NoisyDownscale(nn.Module):
    """A base operator plus additive Gaussian noise of standard deviation ``sigma`` at the LR side.

    Choice: only :meth:`degrade` (what the data sources call to make inputs) adds noise; ``forward``
    (what the search calls) is the clean base operator. PULSE explains the noisy input by a clean
    image, so the search must not chase a noise sample of its own: the best it can reach is the
    noise's variance, ``sigma**2`` in downscale error (MSE), which :attr:`noise_floor` reports. Set
    ``solver.eps`` above it (e.g. ``eps + sigma**2``), otherwise no sample counts as a success.
    The noise is reproducible and differs between images: each image's noise is drawn from a seed
    made of ``seed`` and a hash of its clean LR, so a data source yields the same inputs each time it
    is iterated, whatever the order or batching.
    """

    def __init__(
        self,
        factor: int,
        sigma: float = 0.02,
        base: str = "bicubic",
        seed: int = 0,
        base_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not sigma >= 0:
            raise ValueError(f"noise sigma must be non-negative, got {sigma!r}")
        self.factor = int(factor)
        self.sigma = float(sigma)
        self.seed = int(seed)
        self.base = make_operator(base, factor, **dict(base_options or {}))

    @property
    def noise_floor(self) -> float:
        """Expected downscale error (MSE) of the clean LR against the noisy one: ``sigma**2``."""
        return self.sigma**2

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The clean model used in the search: ``[B, C, H, W] -> [B, C, H / factor, W / factor]``."""
        return self.base(images)

    def degrade(self, images: torch.Tensor) -> torch.Tensor:
        """The base operator's output plus seeded noise ``[B, C, H / factor, W / factor]``."""
        clean = self.base(images)
        noise = torch.stack([self._noise_for(image) for image in clean])
        return clean + self.sigma * noise.to(device=clean.device, dtype=clean.dtype)

    def _noise_for(self, clean: torch.Tensor) -> torch.Tensor:
        """Standard normal noise ``[C, h, w]`` seeded by ``seed`` and the image's own content."""
        content = hashlib.sha256(clean.detach().float().cpu().numpy().tobytes()).digest()
        key = int.from_bytes(
            hashlib.sha256(self.seed.to_bytes(8, "little", signed=True) + content).digest()[:8], "little"
        )
        return torch.randn(clean.shape, generator=torch.Generator().manual_seed(key), dtype=torch.float32)

    def extra_repr(self) -> str:
        return f"factor={self.factor}, sigma={self.sigma:g}, seed={self.seed}"


class JpegDownscale(nn.Module):
    """A base operator followed by a differentiable model of baseline JPEG at the LR side.

    Default (``color="ycbcr"``, ``subsampling="4:2:0"``: what PIL and libjpeg write by default): RGB
    levels go to JFIF YCbCr; the chroma planes are averaged over 2x2 pixels; every plane is cut into 8x8
    blocks (the image padded by edge replication to whole 16x16 units, then cropped back), transformed by
    the orthonormal DCT-II, divided by the IJG quality-scaled table (luminance for Y, chrominance for Cb
    and Cr), rounded and transformed back; chroma is upsampled with libjpeg's default triangle filter
    (bilinear, half-pixel centres) and YCbCr goes back to RGB. ``subsampling="4:4:4"`` keeps full-size
    chroma; ``color="rgb"`` quantises each RGB channel with the luminance table (the earlier, cruder model).
    Rounding uses a straight-through estimator so the search gets gradients. Unlike a real codec, levels
    are not rounded to integers between stages and the DCT is exact (libjpeg uses integer arithmetic).
    """

    def __init__(
        self,
        factor: int,
        quality: int = 75,
        base: str = "bicubic",
        base_options: Mapping[str, Any] | None = None,
        color: str = "ycbcr",
        subsampling: str = "4:2:0",
    ) -> None:
        super().__init__()
        if color not in ("ycbcr", "rgb"):
            raise ValueError(f"JPEG color must be 'ycbcr' or 'rgb', got {color!r}")
        if subsampling not in JPEG_SUBSAMPLING:
            raise ValueError(f"JPEG subsampling must be one of {list(JPEG_SUBSAMPLING)}, got {subsampling!r}")
        self.factor = int(factor)
        self.quality = int(quality)
        self.color, self.subsampling = color, subsampling
        self.base = make_operator(base, factor, **dict(base_options or {}))
        self.register_buffer("table", jpeg_quantisation_table(quality), persistent=False)
        self.register_buffer("chroma_table", jpeg_quantisation_table(quality, chroma=True), persistent=False)
        self.register_buffer("dct", dct_matrix(8), persistent=False)
        to_ycbcr = torch.tensor(JFIF_RGB_TO_YCBCR, dtype=torch.float64)
        self.register_buffer("to_ycbcr", to_ycbcr, persistent=False)
        self.register_buffer("to_rgb", torch.linalg.inv(to_ycbcr), persistent=False)
        self.register_buffer("offset", torch.tensor([0.0, 128.0, 128.0]).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W] -> [B, 3, H / factor, W / factor]`` in [0, 1] scale, JPEG-compressed."""
        lr = self.base(images)
        height, width = lr.shape[-2:]
        dct, table = self.dct.to(lr.dtype), self.table.to(lr.dtype)
        unit = 16 if self.color == "ycbcr" and self.subsampling == "4:2:0" else 8
        pad_y, pad_x = -height % unit, -width % unit
        x = F.pad(lr, (0, pad_x, 0, pad_y), mode="replicate") if pad_y or pad_x else lr
        if self.color == "rgb":
            return quantise_blocks(x * 255.0, table, dct)[..., :height, :width] / 255.0
        if lr.shape[1] != 3:
            raise ValueError(f"JPEG's YCbCr model needs RGB images [B, 3, H, W], got {list(lr.shape)}")
        matrix = self.to_ycbcr.to(lr.dtype)
        offset = self.offset.to(lr.dtype)
        ycbcr = torch.einsum("oc,bchw->bohw", matrix, x * 255.0) + offset
        luma, chroma = ycbcr[:, :1], ycbcr[:, 1:]
        chroma_table = self.chroma_table.to(lr.dtype)
        if self.subsampling == "4:2:0":
            chroma = quantise_blocks(F.avg_pool2d(chroma, 2), chroma_table, dct)
            chroma = F.interpolate(chroma, scale_factor=2, mode="bilinear", align_corners=False)
        else:
            chroma = quantise_blocks(chroma, chroma_table, dct)
        decoded = torch.cat([quantise_blocks(luma, table, dct), chroma], dim=1) - offset
        rgb = torch.einsum("oc,bchw->bohw", self.to_rgb.to(lr.dtype), decoded) / 255.0
        return rgb[..., :height, :width]

    def extra_repr(self) -> str:
        return f"factor={self.factor}, quality={self.quality}, color={self.color}, subsampling={self.subsampling}"


# ---------------------------------------------------------------------------------------------------
# Same-size problems: inpainting and colourisation (factor 1)


def box_mask(height: int, width: int, box: tuple[float, float, float, float]) -> torch.Tensor:
    """``[H, W]`` ones with zeros in ``box = (y0, x0, y1, x1)`` given as fractions of the size.

    Box edges are rounded to the nearest pixel boundary: rows ``round(y0 * H) .. round(y1 * H) - 1``.
    """
    y0, x0, y1, x1 = (float(v) for v in box)
    if not (0 <= y0 < y1 <= 1 and 0 <= x0 < x1 <= 1):
        raise ValueError(f"box must be [y0, x0, y1, x1] fractions with 0 <= y0 < y1 <= 1, 0 <= x0 < x1 <= 1, got {box}")
    mask = torch.ones(height, width)
    mask[round(y0 * height) : round(y1 * height), round(x0 * width) : round(x1 * width)] = 0
    return mask


class InpaintMask(nn.Module):
    """Inpainting: multiply by a mask (1 keeps a pixel, 0 removes it); the output has the input's size.

    The mask comes from ``mask`` (a file read like :class:`KernelDownscale`'s kernel, values in [0, 1],
    ``[H, W]`` matching the generator's resolution) or, without a file, from ``box`` (fractions
    ``[y0, x0, y1, x1]``; default the centre quarter of the area). ``factor`` must be 1.
    """

    def __init__(
        self,
        factor: int = 1,
        box: tuple[float, float, float, float] = (0.25, 0.25, 0.75, 0.75),
        mask: str | None = None,
    ) -> None:
        super().__init__()
        _require_factor_one("inpainting", factor)
        self.factor = 1
        self.box = tuple(float(v) for v in box)
        self.mask_path = None if mask is None else str(mask)
        file_mask = None
        if mask is not None:
            array = load_array(mask, "inpainting mask")
            if array.min() < 0 or array.max() > 1:
                raise ValueError(
                    f"inpainting mask {mask} must hold values in [0, 1], got [{array.min()}, {array.max()}]"
                )
            file_mask = torch.from_numpy(array).float()
        self.register_buffer("file_mask", file_mask, persistent=False)
        self._masks: dict[tuple[int, int, torch.device, torch.dtype], torch.Tensor] = {}

    def mask_for(self, height: int, width: int) -> torch.Tensor:
        """The ``[H, W]`` mask for images of that size (a clear error when a file mask does not fit)."""
        if self.file_mask is None:
            return box_mask(height, width, self.box)
        if tuple(self.file_mask.shape) != (height, width):
            raise ValueError(
                f"inpainting mask {self.mask_path} is {tuple(self.file_mask.shape)}, images are {(height, width)}; "
                "make the mask the generator's resolution"
            )
        return self.file_mask

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W] -> [B, C, H, W]`` with removed pixels set to zero."""
        key = (*images.shape[-2:], images.device, images.dtype)
        mask = self._masks.get(key)
        if mask is None:  # once per size, device and dtype, not at every search step
            mask = self._masks[key] = self.mask_for(*images.shape[-2:]).to(device=images.device, dtype=images.dtype)
        return images * mask

    def extra_repr(self) -> str:
        return f"mask={self.mask_path!r}" if self.mask_path else f"box={list(self.box)}"


class GrayDownscale(nn.Module):
    """Colourisation: BT.601 luma ``0.299 R + 0.587 G + 0.114 B`` replicated to 3 channels, same size.

    The output keeps three channels so that the solver (which expects ``[N, 3, h, w]`` inputs) and
    the loss compare like with like; the data sources make their gray inputs with this same operator.
    ``factor`` must be 1.
    """

    def __init__(self, factor: int = 1) -> None:
        super().__init__()
        _require_factor_one("gray (colourisation)", factor)
        self.factor = 1
        self.register_buffer("weights", torch.tensor(LUMA_WEIGHTS).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W] -> [B, 3, H, W]`` with three equal channels."""
        if images.shape[1] != 3:
            raise ValueError(f"the gray operator needs RGB images [B, 3, H, W], got {tuple(images.shape)}")
        luma = (images * self.weights.to(dtype=images.dtype)).sum(dim=1, keepdim=True)
        return luma.expand(-1, 3, -1, -1)


# ---------------------------------------------------------------------------------------------------
# Lookup for users without Hydra

OPERATORS: dict[str, type[nn.Module]] = {
    "bicubic": BicubicDownscale,
    "area": AreaDownscale,
    "bilinear": BilinearDownscale,
    "nearest": NearestDownscale,
    "gaussian": GaussianDownscale,
    "kernel": KernelDownscale,
    "noisy": NoisyDownscale,
    "jpeg": JpegDownscale,
    "inpaint": InpaintMask,
    "gray": GrayDownscale,
}


def make_operator(name: str, factor: int, **options: Any) -> nn.Module:
    """Build the operator ``name`` for ``factor``: ``make_operator("gaussian", 4, sigma=1.5)``.

    Names: bicubic, area, bilinear, nearest, gaussian, kernel, noisy, jpeg, inpaint, gray.
    """
    if name not in OPERATORS:
        raise ValueError(f"unknown degradation {name!r}; valid names: {', '.join(OPERATORS)}")
    return OPERATORS[name](factor, **options)


def operator_factory(spec: str | Callable[[int], nn.Module] | None) -> Callable[[int], nn.Module]:
    """A factory ``factor -> module`` from a name, a factory, or ``None`` (the paper's bicubic)."""
    if spec is None:
        return BicubicDownscale
    if isinstance(spec, str):
        if spec not in OPERATORS:
            raise ValueError(f"unknown degradation {spec!r}; valid names: {', '.join(OPERATORS)}")
        return lambda factor: make_operator(spec, factor)
    if not callable(spec):
        raise TypeError(
            f"degradation must be a name, a factory factor -> nn.Module, or None; got {type(spec).__name__}"
        )
    return spec

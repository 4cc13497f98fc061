"""Inputs for a run: low-resolution images from a folder, or faces sampled from the generator itself.

Every source yields :class:`Problem` items: a name, the low-resolution input ``[3, h, w]`` in [0, 1]
and, when known, the high-resolution ground truth ``[3, H, W]``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import nn

from pulse.degradations import degrade, operator_factory
from pulse.downscale import integer_factor
from pulse.generators.base import Generator, sample_images

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")


class ImageError(ValueError):
    """An input image that cannot be used; the message names the file and the reason."""


@dataclass
class Problem:
    """One super-resolution problem.

    Attributes:
        name: unique, filesystem-safe identifier (file stem or ``face_0003_x4``).
        lr: ``[3, h, w]`` float32 in [0, 1].
        hr: ``[3, H, W]`` ground truth in [0, 1], or ``None`` when unknown.
    """

    name: str
    lr: torch.Tensor
    hr: torch.Tensor | None = None


def _to_rgb_array(image: Image.Image, path: Path) -> np.ndarray:
    """Decode any PIL mode to ``[H, W, 3]`` float32 in [0, 1], saying what was converted."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float32)
        peak = 65535.0 if mode.startswith("I;16") or array.max() > 255 else 255.0
        array = np.repeat((array / peak)[..., None], 3, axis=2)
        warnings.warn(f"{path.name}: {mode} grayscale image read as RGB (scaled by 1/{peak:g})", stacklevel=3)
        return np.clip(array, 0.0, 1.0)
    if mode == "F":
        raise ImageError(f"{path}: floating-point images (mode F) are not supported; save as 8/16-bit PNG")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
        if (rgba[..., 3] < 1).any():
            warnings.warn(f"{path.name}: transparency composited over black", stacklevel=3)
        return rgba[..., :3] * rgba[..., 3:]
    if mode in ("L", "1"):
        warnings.warn(f"{path.name}: grayscale image replicated to RGB", stacklevel=3)
    if mode == "RGB" and image.info.get("bits", 8) == 8:
        return np.asarray(image, dtype=np.float32) / 255.0
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def load_image(path: str | Path) -> torch.Tensor:
    """Read an image file as ``[3, H, W]`` float32 in [0, 1].

    Grayscale is replicated to RGB, transparency composited over black, 16-bit data scaled to [0, 1];
    an EXIF orientation tag (phone and camera photos) is applied, so the image is upright as viewers
    show it; unreadable or truncated files raise :class:`ImageError` naming the file.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            array = _to_rgb_array(ImageOps.exif_transpose(image), path)
    except ImageError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"{path}: cannot read image ({error})") from error
    if array.ndim != 3 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageError(f"{path}: empty image")
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).contiguous()


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """``[3, H, W]`` in [0, 1] -> ``[H, W, 3]`` uint8 (rounded), as written to PNG."""
    return (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0).round().astype(np.uint8)


def save_image(image: torch.Tensor, path: str | Path) -> None:
    """Write ``[3, H, W]`` in [0, 1] as an 8-bit PNG, atomically (a crash never leaves half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    array = to_uint8(image)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")  # per process: DDP ranks share the folder
    Image.fromarray(array).save(tmp)
    tmp.replace(path)


def image_files(folder: str | Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted; a clear error if there are none."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"input folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in input folder {folder}")
    return files


class ImageFolder:
    """Images from a folder, as low-resolution inputs or as ground truth to downscale.

    Args:
        path: folder of images.
        resolution: the generator's output size ``H``.
        factor: if given, the files are ground-truth images of size ``H`` that are degraded by this
            factor (``degradation``) to make the inputs; otherwise the files are the inputs, and their
            size must divide ``H``.
        strict: raise on the first unusable file instead of skipping it with a warning.
        degradation: how inputs are made from ground truth when ``factor`` is given: a factory
            ``factor -> nn.Module``, an operator name of :func:`pulse.degradations.make_operator`,
            or ``None`` for the paper's bicubic.
    """

    def __init__(
        self,
        path: str | Path,
        resolution: int,
        factor: int | None = None,
        strict: bool = False,
        degradation: str | Callable[[int], nn.Module] | None = None,
    ) -> None:
        self.files = image_files(path)
        self.resolution = resolution
        self.factor = factor
        self.strict = strict
        self.skipped: dict[str, str] = {}
        self.operator: nn.Module | None = None
        if factor is not None:
            integer_factor(resolution, resolution // factor if factor > 0 else 0)
            self.operator = operator_factory(degradation)(factor)
        elif degradation is not None:
            raise ValueError(
                "data.degradation makes inputs from ground truth, so it needs data.factor; without a factor the "
                "files are used as they are (set data.factor=N, or drop data.degradation)"
            )

    def _problem(self, path: Path) -> Problem:
        image = load_image(path)
        height, width = image.shape[-2:]
        if height != width:
            raise ImageError(f"{path}: non-square image {width}x{height}; crop it to a square first")
        if self.factor is None:
            try:
                integer_factor(self.resolution, height)
            except ValueError as error:
                raise ImageError(f"{path}: {error}") from None
            return Problem(path.stem, image)
        if height != self.resolution:
            raise ImageError(
                f"{path}: ground-truth images must be {self.resolution}x{self.resolution}, got {width}x{height}"
            )
        lr = degrade(self.operator, image[None])[0].clamp(0, 1)
        return Problem(path.stem, lr, image)

    def __iter__(self) -> Iterator[Problem]:
        for path in self.files:
            try:
                yield self._problem(path)
            except ImageError as error:
                if self.strict:
                    raise
                self.skipped[path.name] = str(error)
                warnings.warn(f"skipping {error}", stacklevel=2)

    def __len__(self) -> int:
        return len(self.files)


class GeneratedFaces:
    """A realisable benchmark: faces sampled from the generator, downscaled by the paper's bicubic.

    Ground truth exists, and a perfect search can reach zero downscale error (when it searches with
    the operator that made the inputs, and the inputs are neither quantised nor noisy).

    Args:
        generator: the :class:`pulse.generators.base.Generator` to sample from.
        num: faces per factor.
        factors: downscaling factors; each face appears once per factor.
        seed: seed of the sampled faces (independent of the search seed).
        quantize: round the inputs to 8 bits, as if read from PNG files.
        degradation: the operator that makes the inputs: a factory ``factor -> nn.Module``, an
            operator name of :func:`pulse.degradations.make_operator`, or ``None`` for the paper's
            bicubic. It may differ from the solver's ``downscale`` (model mismatch experiments).
    """

    def __init__(
        self,
        generator: Generator,
        num: int = 8,
        factors: Sequence[int] = (4, 8),
        seed: int = 1234,
        quantize: bool = True,
        degradation: str | Callable[[int], nn.Module] | None = None,
    ) -> None:
        self.generator = generator
        self.num = num
        self.factors = [int(f) for f in factors]
        self.seed = seed
        self.quantize = quantize
        self.degradation = operator_factory(degradation)
        for factor in self.factors:
            integer_factor(generator.resolution, generator.resolution // factor if factor > 0 else 0)
        # Built once, here, so a bad option (factor 1 only, missing kernel file) fails before sampling.
        self.operators = {factor: self.degradation(factor) for factor in self.factors}

    def __iter__(self) -> Iterator[Problem]:
        faces = sample_images(self.generator, self.num, seed=self.seed)
        for factor in self.factors:
            lr = degrade(self.operators[factor], faces).clamp(0, 1)
            if self.quantize:
                lr = (lr * 255).round() / 255
            for index in range(self.num):
                yield Problem(f"face{index:03d}_x{factor}", lr[index], faces[index])

    def __len__(self) -> int:
        return self.num * len(self.factors)

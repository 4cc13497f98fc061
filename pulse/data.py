"""Inputs for a run: images from a folder, faces sampled from the generator itself, or real CelebA faces.

Every source yields :class:`Problem` items: a name, the low-resolution input ``[C, h, w]`` in [0, 1]
and, when known, the high-resolution ground truth ``[C, H, W]``; ``C`` is the generator's ``channels``
(3 for RGB, 1 for heightmaps and other single-channel data).
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

# Raster formats PIL reads that photographs come in (GIF and multi-page TIFF: the first frame).
IMAGE_SUFFIXES = (
    ".png", ".apng", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".dib", ".tif", ".tiff", ".webp", ".gif",
    ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".qoi", ".jp2", ".j2k", ".avif",
)  # fmt: skip


class ImageError(ValueError):
    """An input image that cannot be used; the message names the file and the reason."""


@dataclass
class Problem:
    """One super-resolution problem.

    Attributes:
        name: unique identifier, used in output file names: the file's stem (its whole name when two
            files share a stem, e.g. ``photo.webp`` and ``photo.bmp``), or ``face003_x4``.
        lr: ``[C, h, w]`` float32 in [0, 1].
        hr: ``[C, H, W]`` ground truth in [0, 1], or ``None`` when unknown.
        source: the file it was read from (its name in the folder), or ``None``.
    """

    name: str
    lr: torch.Tensor
    hr: torch.Tensor | None = None
    source: str | None = None


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
    if mode == "CMYK":
        warnings.warn(f"{path.name}: CMYK image converted to RGB without a colour profile", stacklevel=3)
    if mode == "RGB" and image.info.get("bits", 8) == 8:
        return np.asarray(image, dtype=np.float32) / 255.0
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


# BT.601 luma, the weights PIL's convert("L") uses; for colour files read as one channel.
LUMA_601 = (0.299, 0.587, 0.114)


def _to_gray_array(image: Image.Image, path: Path) -> np.ndarray:
    """Decode any PIL mode to ``[H, W, 1]`` float32 in [0, 1]: gray as it is (16 bits kept), colour as BT.601 luma."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float32)
        peak = 65535.0 if mode.startswith("I;16") or array.max() > 255 else 255.0
        return np.clip(array / peak, 0.0, 1.0)[..., None]
    if mode in ("L", "1"):
        return (np.asarray(image.convert("L"), dtype=np.float32) / 255.0)[..., None]
    rgb = _to_rgb_array(image, path)
    warnings.warn(f"{path.name}: {mode} image read as one channel (BT.601 luma)", stacklevel=3)
    return (rgb @ np.asarray(LUMA_601, dtype=np.float32))[..., None]


def load_image(path: str | Path, channels: int = 3) -> torch.Tensor:
    """Read an image file as ``[channels, H, W]`` float32 in [0, 1] (``channels`` 3 or 1).

    For 3 channels, grayscale is replicated to RGB, transparency composited over black, 16-bit data scaled to [0, 1];
    for 1 channel, gray files (8 or 16 bits) are read as they are and colour ones as BT.601 luma (with a warning);
    an EXIF orientation tag (phone and camera photos) is applied, so the image is upright as viewers
    show it; unreadable or truncated files raise :class:`ImageError` naming the file.
    """
    if channels not in (1, 3):
        raise ValueError(f"images can be read with 1 or 3 channels, not {channels}")
    path = Path(path)
    decode = _to_rgb_array if channels == 3 else _to_gray_array
    try:
        with Image.open(path) as image:
            image.load()
            frames = getattr(image, "n_frames", 1)
            if frames > 1:
                warnings.warn(f"{path.name}: the first of its {frames} frames is used", stacklevel=2)
            array = decode(ImageOps.exif_transpose(image), path)
    except ImageError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"{path}: cannot read image ({error})") from error
    if array.ndim != 3 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageError(f"{path}: empty image")
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).contiguous()


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """``[3, H, W]`` in [0, 1] -> ``[H, W, 3]`` uint8 (rounded), as written to PNG; ``[1, H, W]`` -> ``[H, W]``."""
    array = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0).round().astype(np.uint8)
    return array[..., 0] if image.shape[0] == 1 else array


# zlib level of written PNGs. Lossless at any level; 1 instead of PIL's 6 wrote a 2048x1024 run grid in 0.42 s
# instead of 1.22 s on a 2-core CPU (22% larger file): seconds of a short 1024 px run's end.
PNG_COMPRESS_LEVEL = 1


def save_image(image: torch.Tensor, path: str | Path, bits: int = 8) -> None:
    """Write ``[3, H, W]`` (RGB) or ``[1, H, W]`` (mode L) in [0, 1] as a PNG, atomically.

    ``bits=16`` writes a 16-bit grayscale PNG (1 channel only), for data such as elevation whose 256
    levels would lose it. The write is atomic: a crash never leaves half a file.
    """
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"save_image takes [3, H, W] or [1, H, W] images, got {tuple(image.shape)}")
    if bits not in (8, 16) or (bits == 16 and image.shape[0] != 1):
        raise ValueError(f"PNGs are written with 8 bits, or 16 bits for 1-channel images; got {bits} bits")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if bits == 8:
        picture = Image.fromarray(to_uint8(image))
    else:
        levels = (image[0].detach().double().clamp(0, 1).cpu().numpy() * 65535.0).round().astype(np.uint16)
        picture = Image.fromarray(levels)  # PIL stores uint16 arrays as mode I;16
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")  # per process: DDP ranks share the folder
    picture.save(tmp, compress_level=PNG_COMPRESS_LEVEL)
    tmp.replace(path)


def save_array(image: torch.Tensor, path: str | Path) -> None:
    """Write ``[C, H, W]`` in [0, 1] as float32 ``.npy`` (no quantisation at all), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npy")
    np.save(tmp, image.detach().float().cpu().numpy())
    tmp.replace(path)


def quantize_levels(images: torch.Tensor, quantize: bool | int) -> torch.Tensor:
    """Round ``images`` in [0, 1] as a file would: ``True`` or 8 -> 8 bits, 16 -> 16 bits, ``False``/0 -> unchanged."""
    bits = 8 if quantize is True else int(quantize)
    if bits == 0:
        return images
    if bits not in (8, 16):
        raise ValueError(f"quantize must be true/false, 8 or 16 (bits), got {quantize!r}")
    peak = 2**bits - 1
    return (images * peak).round() / peak


def scan_folder(folder: str | Path) -> tuple[list[Path], dict[str, str]]:
    """The image files directly inside ``folder`` (sorted), and ``{entry: why not taken}`` for every other entry.

    Images are recognised by extension (:data:`IMAGE_SUFFIXES`); sub-folders are not entered.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"input folder {folder} does not exist")
    images, others = [], {}
    for entry in sorted(folder.iterdir()):
        if entry.is_dir():
            others[entry.name] = f"{entry.name}: a folder (sub-folders are not read; point data.path at it)"
        elif not entry.is_file():
            others[entry.name] = f"{entry.name}: not a regular file (a broken link?)"
        elif entry.suffix.lower() not in IMAGE_SUFFIXES:
            kind = f"extension {entry.suffix!r}" if entry.suffix else "no extension"
            others[entry.name] = f"{entry.name}: not an image file ({kind})"
        else:
            images.append(entry)
    return images, others


def image_files(folder: str | Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted; a clear error if there are none."""
    files, others = scan_folder(folder)
    _require_images(folder, files, others)
    return files


def _require_images(folder: str | Path, files: Sequence[Path], others: dict[str, str]) -> None:
    if not files:
        found = f"; found only: {'; '.join(others.values())}" if others else ""
        raise FileNotFoundError(f"no images ({' '.join(IMAGE_SUFFIXES)}) in input folder {folder}{found}")


def unique_names(files: Sequence[Path]) -> tuple[dict[Path, str], dict[str, str]]:
    """``{file: name}`` with distinct names, and ``{file name: why skipped}`` for a name still taken.

    A name is the file's stem, or its whole file name when another file has the same stem
    (``photo.webp`` and ``photo.bmp``). Only a pathological folder (``a.png``, ``a.jpg`` and
    ``a.png.jpg``) is left with a clash: the later file in sorted order is skipped.
    """
    stems: dict[str, int] = {}
    for path in files:
        stems[path.stem] = stems.get(path.stem, 0) + 1
    names: dict[Path, str] = {}
    taken: dict[str, Path] = {}
    clashes: dict[str, str] = {}
    for path in files:
        name = path.stem if stems[path.stem] == 1 else path.name
        if name in taken:
            clashes[path.name] = (
                f"{path.name}: its output name {name!r} is already {taken[name].name}'s; rename one of them"
            )
            continue
        names[path] = name
        taken[name] = path
    return names, clashes


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
        channels: the generator's channels: 3 reads every file as RGB, 1 as one gray channel
            (see :func:`load_image`).
    """

    def __init__(
        self,
        path: str | Path,
        resolution: int,
        factor: int | None = None,
        strict: bool = False,
        degradation: str | Callable[[int], nn.Module] | None = None,
        channels: int = 3,
    ) -> None:
        if channels not in (1, 3):
            raise ValueError(f"data=folder reads images with 1 or 3 channels; this generator has {channels}")
        self.channels = channels
        files, others = scan_folder(path)
        _require_images(path, files, others)
        self.names, clashes = unique_names(files)
        self.files = list(self.names)
        self.resolution = resolution
        self.factor = factor
        self.strict = strict
        # Every entry of the folder that yields no problem, with why: not an image, a name clash, or
        # (added while iterating) an image that cannot be used.
        self.skipped: dict[str, str] = {**others, **clashes}
        for reason in self.skipped.values():
            warnings.warn(f"not taken: {reason}", stacklevel=2)
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
        image = load_image(path, self.channels)
        height, width = image.shape[-2:]
        if height != width:
            raise ImageError(f"{path}: non-square image {width}x{height}; crop it to a square first")
        if self.factor is None:
            try:
                integer_factor(self.resolution, height)
            except ValueError as error:
                raise ImageError(f"{path}: {error}") from None
            return Problem(self.names[path], image, source=path.name)
        if height != self.resolution:
            raise ImageError(
                f"{path}: ground-truth images must be {self.resolution}x{self.resolution}, got {width}x{height}"
            )
        lr = degrade(self.operator, image[None])[0].clamp(0, 1)
        return Problem(self.names[path], lr, image, source=path.name)

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
        quantize: round the inputs to 8 bits, as if read from PNG files (or 16: 16 bits; false: not at all).
        degradation: the operator that makes the inputs: a factory ``factor -> nn.Module``, an
            operator name of :func:`pulse.degradations.make_operator`, or ``None`` for the paper's
            bicubic. It may differ from the solver's ``downscale`` (model mismatch experiments).
        prefix: start of each input's name (``face003_x4``); e.g. ``terrain`` for a terrain generator.
    """

    def __init__(
        self,
        generator: Generator,
        num: int = 8,
        factors: Sequence[int] = (4, 8),
        seed: int = 1234,
        quantize: bool | int = True,
        degradation: str | Callable[[int], nn.Module] | None = None,
        prefix: str = "face",
    ) -> None:
        quantize_levels(torch.zeros(1), quantize)  # a bad value fails here, not mid-run
        self.prefix = prefix
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
            lr = quantize_levels(degrade(self.operators[factor], faces).clamp(0, 1), self.quantize)
            for index in range(self.num):
                yield Problem(f"{self.prefix}{index:03d}_x{factor}", lr[index], faces[index])

    def __len__(self) -> int:
        return self.num * len(self.factors)


# Where the face is in an aligned 178x218 CelebA photo: a 128 px square around (89, 121), the usual
# crop before resizing to a face model's size.
CELEBA_SIZE = (178, 218)
CELEBA_FACE_BOX = (25, 57, 153, 185)


def celeba_face(path: str | Path, resolution: int, box: Sequence[int] = CELEBA_FACE_BOX) -> torch.Tensor:
    """The face of an aligned CelebA photo: ``box`` (left, top, right, bottom) resized to ``resolution``.

    Lanczos (antialiased) resampling of the 8-bit photo, rounded to 8 bits again, like an image saved
    at that size. Returns ``[3, resolution, resolution]`` float32 in [0, 1].

    Raises:
        ImageError: unreadable file, or not the aligned 178x218 layout the box is meant for.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            if image.size != CELEBA_SIZE:
                raise ImageError(
                    f"{path}: {image.size[0]}x{image.size[1]}, expected an aligned CelebA photo "
                    f"({CELEBA_SIZE[0]}x{CELEBA_SIZE[1]})"
                )
            face = image.convert("RGB").resize(
                (resolution, resolution), Image.Resampling.LANCZOS, box=tuple(float(v) for v in box)
            )
    except ImageError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"{path}: cannot read image ({error})") from error
    array = np.asarray(face, dtype=np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).contiguous()


class CelebAFaces:
    """Real faces with ground truth: aligned CelebA photos (``pulse-fetch celeba``), cropped and degraded.

    The HR image is each photo's face crop (:data:`CELEBA_FACE_BOX`) resized with antialiasing to the
    generator's resolution; the inputs are made from it as in :class:`GeneratedFaces` (the configured
    operator at each factor, rounded to 8 bits). Unlike generated faces, nothing guarantees the
    generator can produce the HR image, so this is the problem users actually bring.
    CelebA is for non-commercial research use only.

    Args:
        resolution: the generator's output size ``H``.
        count: photos used (each once per factor), or ``None`` for all from ``start``.
        start: index of the first photo in name order (``000007.jpg`` is 0).
        factors: downscaling factors.
        quantize: round the inputs to 8 bits, as if read from PNG files.
        degradation: as in :class:`GeneratedFaces` (``None``: the paper's bicubic).
        path: folder with the fetched photos and their ``manifest.json`` (default ``$PULSE_CACHE/celeba``).
        box: face crop ``(left, top, right, bottom)`` in the 178x218 photo.

    Raises:
        pulse.io.celeba.CelebAUnavailable: the photos are not fetched (one line naming ``pulse-fetch celeba``).
    """

    def __init__(
        self,
        resolution: int,
        count: int | None = 16,
        start: int = 0,
        factors: Sequence[int] = (4, 8),
        quantize: bool = True,
        degradation: str | Callable[[int], nn.Module] | None = None,
        path: str | Path | None = None,
        box: Sequence[int] = CELEBA_FACE_BOX,
    ) -> None:
        from pulse.io.celeba import celeba_photos

        photos = celeba_photos(path)
        if start < 0 or start >= len(photos):
            raise ValueError(
                f"data.start={start} is outside the {len(photos)} fetched CelebA photos (0..{len(photos) - 1})"
            )
        if count is not None and (count < 1 or start + count > len(photos)):
            raise ValueError(
                f"data.count={count} from data.start={start} needs photos up to index {start + count - 1}, "
                f"but {len(photos)} are fetched (count 1..{len(photos) - start}, or null for all)"
            )
        self.files = photos[start : None if count is None else start + count]
        self.resolution = resolution
        self.factors = [int(f) for f in factors]
        self.quantize = quantize
        self.box = tuple(int(v) for v in box)
        for factor in self.factors:
            integer_factor(resolution, resolution // factor if factor > 0 else 0)
        if resolution > self.box[2] - self.box[0]:
            warnings.warn(
                f"CelebA face crops are {self.box[2] - self.box[0]} px; upsampled to {resolution} px the ground "
                "truth is blurrier than the generator's outputs",
                stacklevel=2,
            )
        degradation_factory = operator_factory(degradation)
        self.operators = {factor: degradation_factory(factor) for factor in self.factors}

    def __iter__(self) -> Iterator[Problem]:
        faces = torch.stack([celeba_face(path, self.resolution, self.box) for path in self.files])
        for factor in self.factors:
            lr = degrade(self.operators[factor], faces).clamp(0, 1)
            if self.quantize:
                lr = (lr * 255).round() / 255
            for path, low, high in zip(self.files, lr, faces, strict=True):
                yield Problem(f"celeba{path.stem}_x{factor}", low, high)

    def __len__(self) -> int:
        return len(self.files) * len(self.factors)


class ElevationPatches:
    """Real terrain with ground truth: square patches of a digital elevation model, for ``generator=terrain``.

    The default DEM is matplotlib's sample ``jacksboro_fault_dem.npz`` (344x403 int16 metres, 3-arc-second
    grid, about 90 x 75 m per pixel, 236-1076 m). Its kilometre-scale relief is far from the terrain model's
    metre-scale heightmaps (each of its samples spans about 0-22 m), so each patch is scaled vertically on
    its own: ``h' = (h - min) / (max - min) * HEIGHT_RANGE`` (its lowest point at 0 m, its highest at the
    model's 22.17 m; a ~400 m relief is divided by ~20), then asinh-compressed to the model's unit scale
    (:func:`pulse.generators.terrain.metres_to_unit`). Horizontally the pixels are used as they are. The
    inputs are made from the patch as in :class:`GeneratedFaces`, rounded to ``quantize`` bits (16 default).

    Args:
        resolution: patch side (the generator's, 128).
        count: patches used, in row-major order of a grid with step ``stride`` (``None``: all).
        stride: step between patch corners in DEM pixels (``resolution``: no overlap).
        factors: downscaling factors.
        quantize: bits of the inputs (8, 16, or false).
        degradation: as in :class:`GeneratedFaces` (``None``: the paper's bicubic).
        path: an ``.npz`` with an ``elevation`` array (metres); default matplotlib's sample.
    """

    def __init__(
        self,
        resolution: int,
        count: int | None = 4,
        stride: int | None = None,
        factors: Sequence[int] = (4, 8),
        quantize: bool | int = 16,
        degradation: str | Callable[[int], nn.Module] | None = None,
        path: str | Path | None = None,
    ) -> None:
        from pulse.generators.terrain import HEIGHT_RANGE, metres_to_unit

        quantize_levels(torch.zeros(1), quantize)
        if path is None:
            try:
                from matplotlib import cbook
            except ImportError as error:
                raise ImportError("data=dem reads matplotlib's sample DEM: pip install matplotlib") from error
            archive = cbook.get_sample_data("jacksboro_fault_dem.npz")
        else:
            archive = np.load(Path(path).expanduser())
        elevation = np.asarray(archive["elevation"], dtype=np.float64)
        if elevation.ndim != 2 or min(elevation.shape) < resolution:
            raise ValueError(f"the DEM is {elevation.shape}, smaller than one {resolution} px patch")
        stride = stride or resolution
        corners = [
            (top, left)
            for top in range(0, elevation.shape[0] - resolution + 1, stride)
            for left in range(0, elevation.shape[1] - resolution + 1, stride)
        ]
        if count is not None:
            if not 1 <= count <= len(corners):
                raise ValueError(f"data.count={count}: the DEM holds {len(corners)} patches at stride {stride}")
            corners = corners[:count]
        self.corners = corners
        self.relief_m: list[float] = []
        patches = []
        for top, left in corners:
            patch = elevation[top : top + resolution, left : left + resolution]
            relief = float(patch.max() - patch.min())
            if relief <= 0:
                raise ValueError(f"the DEM patch at ({top}, {left}) is flat")
            self.relief_m.append(relief)
            metres = torch.from_numpy((patch - patch.min()) / relief * HEIGHT_RANGE)
            patches.append(metres_to_unit(metres).float()[None])
        self.patches = torch.stack(patches)
        self.factors = [int(f) for f in factors]
        self.quantize = quantize
        for factor in self.factors:
            integer_factor(resolution, resolution // factor if factor > 0 else 0)
        degradation_factory = operator_factory(degradation)
        self.operators = {factor: degradation_factory(factor) for factor in self.factors}

    def __iter__(self) -> Iterator[Problem]:
        for factor in self.factors:
            lr = quantize_levels(degrade(self.operators[factor], self.patches).clamp(0, 1), self.quantize)
            for (top, left), low, high in zip(self.corners, lr, self.patches, strict=True):
                yield Problem(f"dem{top:03d}_{left:03d}_x{factor}", low, high)

    def __len__(self) -> int:
        return len(self.corners) * len(self.factors)

"""Whole photographs in and out: find every face, super-resolve it, paste it back into the upscaled photo.

The pipeline of GFPGAN/CodeFormer-style restorers, with a PULSE-family solver in place of the feed-forward net:

1. detect every face and its 68 landmarks (dlib, as official PULSE; :mod:`pulse.faces`), or take given landmarks;
2. align each face with the FFHQ recipe (:mod:`pulse.align`) at the generator's resolution ``R``, keeping its
   *quad* (the oriented square it was cut from), and downscale it by ``face_factor`` with the paper's bicubic
   operator: that ``[3, R / face_factor, R / face_factor]`` image is the solver's low-resolution input;
3. super-resolve all faces of the photo in one batch with any :class:`pulse.solvers.base.Solver`;
4. upscale the whole photo by ``scale`` with a background method (``bicubic``, or ``realesrgan``: Real-ESRGAN
   x4plus in tiles, after ``pulse-fetch realesrgan``; any callable ``[3, H, W] -> [3, H', W']`` can be passed);
5. warp each result back with the inverse of its alignment transform (``grid_sample``, bilinear) and blend it in
   with a mask that fades to zero over the outer ``feather`` fraction of the quad.

The output has the input's aspect ratio (``round(H * scale) x round(W * scale)``). A photo with no face is
upscaled and reported as such. Nothing here needs Hydra; ``pulse.cli_restore`` is the command line.

Inverting the alignment is exact up to one approximation of FFHQ's recipe that :func:`pulse.align.align_face` keeps
for bit-compatibility: a face wider than ``4 R`` px is aligned from a photo shrunk by an integer ``k`` with the quad
divided by ``k`` (not mapped pixel centre to pixel centre), which shifts the crop by under ``k / 2`` photo pixels,
well under one aligned pixel.

Coordinates follow :mod:`pulse.align`: pixel centres at integers. Output pixel ``p`` of the upscaled photo
looks at source position ``(p + 0.5) / scale - 0.5``; aligned pixel ``u`` of a quad with corners
``q0 (top-left), q1 (bottom-left), q3 (top-right)`` samples source ``q0 + (u + 0.5) / R * (q3 - q0, q1 - q0)``.
"""

from __future__ import annotations

import functools
import json
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pulse.align import LandmarkError, align_face, ffhq_quad, keypoints_from_landmarks
from pulse.data import IMAGE_SUFFIXES, ImageError, load_image, save_image, scan_folder, to_uint8, unique_names
from pulse.downscale import BicubicDownscale, check_factor
from pulse.solvers.base import Solver

BackgroundUpscaler = Callable[[torch.Tensor, tuple[int, int]], torch.Tensor]
"""``(photo [3, H, W] in [0, 1], (height, width)) -> [3, height, width]`` in [0, 1]."""


def bicubic_upscale(photo: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[3, H, W]`` -> ``[3, *size]`` by bicubic interpolation (Keys a=-0.75, torch's), clamped to [0, 1]."""
    return F.interpolate(photo[None].float(), size=size, mode="bicubic", align_corners=False)[0].clamp(0, 1)


def tiled_upscale(
    network: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, scale: int, tile: int = 256, overlap: int = 16
) -> torch.Tensor:
    """``[N, C, H, W]`` -> ``[N, C, H * scale, W * scale]`` through ``network``, ``tile`` px at a time.

    Each tile is run with ``overlap`` px of its neighbours around it and only its own part of the output is kept,
    so memory stays bounded for whole photos; the result equals one full pass wherever the network's receptive
    field is within ``overlap`` (for deep restorers, whose field is wider, it is the usual tiling approximation).
    """
    height, width = image.shape[-2:]
    out = image.new_zeros(*image.shape[:-2], height * scale, width * scale)
    for top in range(0, height, tile):
        for left in range(0, width, tile):
            bottom, right = min(top + tile, height), min(left + tile, width)
            t0, l0 = max(top - overlap, 0), max(left - overlap, 0)
            piece = network(image[..., t0 : min(bottom + overlap, height), l0 : min(right + overlap, width)])
            out[..., top * scale : bottom * scale, left * scale : right * scale] = piece[
                ..., (top - t0) * scale : (bottom - t0) * scale, (left - l0) * scale : (right - l0) * scale
            ]
    return out


@functools.lru_cache(maxsize=1)
def _realesrgan_network() -> tuple[torch.nn.Module, int, int]:
    from pulse.io.realesrgan import realesrgan_weights
    from pulse.solvers.baselines import load_restorer

    network, scale, multiple, _ = load_restorer(realesrgan_weights())
    return network.eval().requires_grad_(False), scale, multiple


@torch.no_grad()
def realesrgan_upscale(photo: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[3, H, W]`` -> ``[3, *size]``: Real-ESRGAN x4plus (``pulse-fetch realesrgan``; the ``solver=realesrgan``
    weights), run in tiles and repeated until both sides reach ``size``, then resized to it (antialiased bicubic).

    Raises:
        pulse.io.realesrgan.RealESRGANUnavailable: the weights are not fetched (the message says how).
    """
    network, scale, multiple = _realesrgan_network()
    network = network.to(photo.device)
    image = photo[None].float()
    while image.shape[-2] < size[0] or image.shape[-1] < size[1]:
        height, width = image.shape[-2:]
        padded = F.pad(image, (0, -width % multiple, 0, -height % multiple), mode="replicate")
        image = tiled_upscale(network, padded, scale)[..., : height * scale, : width * scale].clamp(0, 1)
    return F.interpolate(image, size=size, mode="bicubic", align_corners=False, antialias=True)[0].clamp(0, 1)


BACKGROUND_UPSCALERS: dict[str, BackgroundUpscaler] = {"bicubic": bicubic_upscale, "realesrgan": realesrgan_upscale}


def background_upscaler(method: str | BackgroundUpscaler) -> BackgroundUpscaler:
    """The upscaler a name stands for (see :data:`BACKGROUND_UPSCALERS`), or the callable itself."""
    if callable(method):
        return method
    if method not in BACKGROUND_UPSCALERS:
        raise ValueError(f"unknown background method {method!r}; available: {', '.join(BACKGROUND_UPSCALERS)}")
    return BACKGROUND_UPSCALERS[method]


@dataclass(frozen=True)
class DetectedFace:
    """A face in a photo: ``box`` ``(left, top, right, bottom)`` pixels (or ``None``), ``landmarks`` ``[n, 2]``,
    the detector's ``score`` (or ``None``)."""

    box: tuple[int, int, int, int] | None
    landmarks: np.ndarray
    score: float | None = None


FaceDetector = Callable[[np.ndarray], list[DetectedFace]]
"""``[H, W, 3]`` uint8 RGB -> every face found (possibly none)."""


class DlibFaceDetector:
    """dlib's frontal detector + 68-point predictor (:class:`pulse.faces.DlibLandmarks`), with boxes and scores.

    ``min_score`` 0 keeps what ``dlib.get_frontal_face_detector()(image, upsample)`` finds (official PULSE's
    faces); on ``skimage.data.astronaut()`` that is the face (score 1.16) and a false one on the suit (0.12),
    which ``min_score=0.5`` drops (30 CelebA faces scored 0.81 to 3, median 2.1).
    """

    def __init__(self, upsample: int = 1, min_score: float = 0.0) -> None:
        from pulse.faces import DlibLandmarks  # noqa: PLC0415 - dlib is optional; loaded only when detecting

        self._dlib = DlibLandmarks(upsample=upsample)
        self.min_score = float(min_score)

    def __call__(self, image: np.ndarray) -> list[DetectedFace]:
        image = np.ascontiguousarray(image)
        rects, scores, _ = self._dlib.detector.run(image, self._dlib.upsample, 0.0)
        faces = []
        for rect, score in zip(rects, scores, strict=True):
            if score < self.min_score:
                continue
            shape = self._dlib.predictor(image, rect)
            points = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)
            box = (rect.left(), rect.top(), rect.right(), rect.bottom())
            faces.append(DetectedFace(box, points, round(float(score), 4)))
        return faces


NATIVE = "native"


def native_face_factor(resolution: int, face_sides: Sequence[float]) -> int:
    """The divisor ``f`` of ``resolution`` for which ``resolution / f`` is closest (in ratio) to the median side.

    ``face_sides``: the side of each face's alignment crop in photo pixels. Faces larger than ``resolution``
    give 1 (the solver then only projects the face onto the generator's faces, no super-resolution).
    """
    if not face_sides:
        raise ValueError("native_face_factor needs at least one face")
    target = max(float(np.median(face_sides)), 1.0)
    divisors = [f for f in range(1, resolution + 1) if resolution % f == 0]
    return min(divisors, key=lambda f: abs(math.log(resolution / f / target)))


def output_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """The restored photo's ``(height, width)``: the input's times ``scale``, rounded."""
    return max(round(height * scale), 1), max(round(width * scale), 1)


def feather_mask(unit: torch.Tensor, feather: float) -> torch.Tensor:
    """Blend weight at aligned-frame positions ``unit`` ``[..., 2]`` (0..1 across the quad): 1 inside, 0 outside.

    It rises from 0 at the quad's edge to 1 at ``feather`` (a fraction of the side) inside it, with a
    smoothstep so that no seam shows in the blend.
    """
    distance = torch.minimum(unit, 1.0 - unit).amin(dim=-1)
    if feather <= 0:
        return (distance >= 0).to(unit.dtype)
    ramp = (distance / feather).clamp(0.0, 1.0)
    return ramp * ramp * (3.0 - 2.0 * ramp)


def paste_face(
    canvas: torch.Tensor,
    face: torch.Tensor,
    quad: np.ndarray,
    source_size: tuple[int, int],
    feather: float = 0.1,
) -> torch.Tensor:
    """Warp an aligned face back into the upscaled photo and blend it in (returns a new canvas).

    Args:
        canvas: ``[3, H', W']`` the photo upscaled from ``source_size`` ``(H, W)``.
        face: ``[3, S, S]`` an image of the aligned frame of ``quad`` (any ``S``).
        quad: ``[4, 2]`` the face's corners in source pixels (top-left, bottom-left, bottom-right, top-right).
        feather: fraction of the quad's side over which the face fades into the canvas.

    Only the pixels inside the quad's bounding box are touched.
    """
    out_h, out_w = canvas.shape[-2:]
    src_h, src_w = source_size
    scale_y, scale_x = out_h / src_h, out_w / src_w
    quad = np.asarray(quad, dtype=np.float64)
    corners_out = (quad + 0.5) * np.array([scale_x, scale_y]) - 0.5
    left = max(math.floor(corners_out[:, 0].min()), 0)
    top = max(math.floor(corners_out[:, 1].min()), 0)
    right = min(math.ceil(corners_out[:, 0].max()) + 1, out_w)
    bottom = min(math.ceil(corners_out[:, 1].max()) + 1, out_h)
    result = canvas.clone()
    if left >= right or top >= bottom:
        return result  # the quad lies outside the photo
    ys = torch.arange(top, bottom, dtype=torch.float64)
    xs = torch.arange(left, right, dtype=torch.float64)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    source = torch.stack([(grid_x + 0.5) / scale_x - 0.5, (grid_y + 0.5) / scale_y - 0.5], dim=-1)
    # Solve source = q0 + unit_x * (q3 - q0) + unit_y * (q1 - q0) for unit (the quad is a square: invertible).
    basis = torch.from_numpy(np.stack([quad[3] - quad[0], quad[1] - quad[0]], axis=1))
    unit = (source - torch.from_numpy(quad[0])) @ torch.linalg.inv(basis).T
    grid = (unit * 2.0 - 1.0).to(torch.float32)[None]  # grid_sample, align_corners=False: -1/1 are the edges
    warped = F.grid_sample(face[None].float().to(canvas.device), grid.to(canvas.device), mode="bilinear",
                           padding_mode="border", align_corners=False)[0]  # fmt: skip
    mask = feather_mask(unit, feather).to(torch.float32).to(canvas.device)
    region = result[:, top:bottom, left:right]
    result[:, top:bottom, left:right] = region * (1.0 - mask) + warped * mask
    return result


@dataclass
class FaceResult:
    """One face of a photo.

    Attributes:
        box: dlib's detection box ``(left, top, right, bottom)`` in input pixels (``None`` for given landmarks).
        score: dlib's detection score (``None`` for given landmarks).
        landmarks: ``[n, 2]`` in input pixels.
        quad: ``[4, 2]`` the alignment's crop in input pixels.
        aligned: ``[3, R, R]`` the face aligned from the photo (the solver's output size).
        lr: ``[3, R / face_factor, R / face_factor]`` the solver's input.
        samples: ``[D, 3, R, R]`` every sample the solver returned for this face.
        chosen: index of the sample pasted into the photo (the lowest downscale error).
        metrics: per sample ``downscale_error``, ``lr_psnr`` (dB), ``success``, ``best_step``, ``status`` and
            ``id_dist`` (dlib's identity distance to the aligned photo face; ``None`` without dlib), lists of ``D``.
    """

    box: tuple[int, int, int, int] | None
    score: float | None
    landmarks: np.ndarray
    quad: np.ndarray
    aligned: torch.Tensor
    lr: torch.Tensor
    samples: torch.Tensor
    chosen: int
    metrics: dict[str, list]


@dataclass
class PhotoResult:
    """A restored photo: ``restored`` and ``background`` ``[3, H', W']``, ``photo`` ``[3, H, W]``, its faces."""

    name: str
    photo: torch.Tensor
    background: torch.Tensor
    restored: torch.Tensor
    faces: list[FaceResult]
    scale: float
    seconds: float
    status: str
    notes: list[str] = field(default_factory=list)
    face_factor: int | None = None  # the solver's factor used (None: no face searched)

    def summary(self) -> dict[str, Any]:
        """JSON-ready description: sizes, status, each face's box, landmarks, quad and metrics."""
        return {
            "name": self.name,
            "status": self.status,
            "input_size": list(self.photo.shape[-2:][::-1]),  # width, height
            "output_size": list(self.restored.shape[-2:][::-1]),
            "scale": self.scale,
            "face_factor": self.face_factor,
            "seconds": round(self.seconds, 3),
            "notes": self.notes,
            "faces": [
                {
                    "index": index,
                    "box": list(face.box) if face.box is not None else None,
                    "detection_score": face.score,
                    "landmarks": np.round(face.landmarks, 2).tolist(),
                    "quad": np.round(face.quad, 3).tolist(),
                    "lr_size": int(face.lr.shape[-1]),
                    "sr_size": int(face.samples.shape[-1]),
                    "chosen_sample": face.chosen,
                    **face.metrics,
                }
                for index, face in enumerate(self.faces)
            ],
        }


class PhotoRestorer:
    """Restore whole photos with a solver (see the module docstring for the steps).

    Args:
        solver: any :class:`pulse.solvers.base.Solver`; its generator's ``resolution`` ``R`` is the aligned size.
        scale: output size over input size (any positive number; the aspect ratio is kept).
        face_factor: the solver's super-resolution factor: faces are aligned at ``R`` and downscaled by it
            (must divide ``R``). Default: ``scale`` when it is an integer dividing ``R``, else the smallest
            factor >= 2 dividing ``R``. ``"native"``: per photo, the factor that makes the LR face about as large
            as the faces are in the photo (:func:`native_face_factor`), so that the solver sees the photo's own
            detail, neither blurred by upsampling nor thrown away (e.g. 16 for 64 px faces and a 1024 px StyleGAN).
        detector: a :data:`FaceDetector`; default dlib (:class:`DlibFaceDetector`), built on first use.
        background: ``"bicubic"``, ``"realesrgan"`` or a :data:`BackgroundUpscaler`.
        feather: fraction of each quad's side over which the face fades into the background.
        supersample, padding: the FFHQ alignment's (:func:`pulse.align.align_face`).
        identity: compute ``id_dist`` (dlib's face descriptors, about 0.1 s per sample on a CPU); off: ``None``.
    """

    def __init__(
        self,
        solver: Solver,
        scale: float = 4,
        face_factor: int | str | None = None,
        detector: FaceDetector | None = None,
        background: str | BackgroundUpscaler = "bicubic",
        feather: float = 0.1,
        supersample: int = 4,
        padding: str = "ffhq",
        identity: bool = True,
    ) -> None:
        if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a positive number, got {scale!r}")
        if not 0 <= feather < 0.5:
            raise ValueError(f"feather must be in [0, 0.5), got {feather}")
        self.solver = solver
        self.resolution = int(solver.generator.resolution)
        self.scale = float(scale)
        self.face_factor = self._face_factor(face_factor)
        self._detector = detector
        self.background = background_upscaler(background)
        self.feather = float(feather)
        self.supersample = int(supersample)
        self.padding = padding
        self.identity = bool(identity)
        if self.face_factor != NATIVE:
            self._check_factor(self.face_factor)  # fail now, not after the first detection

    def _check_factor(self, factor: int) -> None:
        check_factor(self.resolution, self.resolution, factor)
        check_input_size = getattr(self.solver, "check_input_size", None)
        if check_input_size is not None:
            check_input_size(self.resolution // factor, self.resolution // factor)

    def _face_factor(self, face_factor: int | str | None) -> int | str:
        if face_factor == NATIVE:
            return NATIVE
        if isinstance(face_factor, str):
            raise ValueError(f"face_factor must be a positive integer or {NATIVE!r}, got {face_factor!r}")
        if face_factor is not None:
            if int(face_factor) != face_factor or face_factor < 1:
                raise ValueError(f"face_factor must be a positive integer, got {face_factor!r}")
            return int(face_factor)
        if self.scale == int(self.scale) and self.scale >= 1 and self.resolution % int(self.scale) == 0:
            return int(self.scale)
        return next(f for f in range(2, self.resolution + 1) if self.resolution % f == 0)

    @property
    def detector(self) -> FaceDetector:
        if self._detector is None:
            self._detector = DlibFaceDetector()
        return self._detector

    def restore(
        self,
        photo: torch.Tensor,
        name: str = "photo",
        faces: Sequence[DetectedFace] | None = None,
        callback: Callable[[Any], None] | None = None,
    ) -> PhotoResult:
        """Restore one photo ``[3, H, W]`` in [0, 1]; ``faces`` skips detection; ``callback`` sees each step."""
        if photo.ndim != 3 or photo.shape[0] != 3:
            raise ValueError(f"photo must be [3, H, W], got shape {list(photo.shape)}")
        start = time.perf_counter()
        height, width = photo.shape[-2:]
        pixels = to_uint8(photo)
        found = list(self.detector(pixels) if faces is None else faces)
        background = self.background(photo.float(), output_size(height, width, self.scale))
        notes: list[str] = []
        aligned_faces, kept = [], []
        for index, face in enumerate(found):
            try:
                quad = ffhq_quad(keypoints_from_landmarks(face.landmarks))
            except LandmarkError as error:
                notes.append(f"face {index}: {error}")
                continue
            inside = (quad[:, 0].max() > 0) & (quad[:, 0].min() < width - 1) & (quad[:, 1].max() > 0)
            if not inside or quad[:, 1].min() >= height - 1:
                notes.append(f"face {index}: its alignment crop lies outside the {width}x{height} photo; skipped")
                continue
            try:
                array = align_face(pixels, quad, self.resolution, supersample=self.supersample, padding=self.padding)
            except ValueError as error:  # e.g. a crop PIL cannot make from a tiny photo; the other faces go on
                notes.append(f"face {index}: cannot be aligned ({error}); skipped")
                continue
            aligned_faces.append(torch.from_numpy(array.astype(np.float32) / 255.0).permute(2, 0, 1))
            kept.append((face, quad))
        if not kept:
            status = "no face found: upscaled only" if not found else "no usable face: upscaled only"
            return PhotoResult(name, photo, background, background.clone(), [], self.scale,
                               time.perf_counter() - start, status, notes)  # fmt: skip

        aligned = torch.stack(aligned_faces)
        factor = self.face_factor
        if factor == NATIVE:
            factor = native_face_factor(self.resolution, [math.dist(quad[0], quad[3]) for _, quad in kept])
            self._check_factor(factor)
        lr = BicubicDownscale(factor)(aligned).clamp(0, 1)
        lr = torch.round(lr * 255.0) / 255.0  # what an 8-bit LR file would hold, as the folder inputs are
        device = _module_device(self.solver.generator)
        search = self.solver.solve(lr.to(device), callback=callback)
        duplicates = len(search.hr) // len(kept)
        restored = background
        results = []
        for index, (face, quad) in enumerate(kept):
            rows = [i for i in range(len(search.hr)) if int(search.input_index[i]) == index]
            rows = rows or list(range(index * duplicates, (index + 1) * duplicates))
            errors = [float(search.downscale_error[i]) for i in rows]
            chosen = int(np.argmin(errors))
            samples = search.hr[rows].detach().float().cpu().clamp(0, 1)
            restored = paste_face(restored, samples[chosen], quad, (height, width), self.feather)
            metrics = {
                "downscale_error": [round(e, 6) for e in errors],
                # PSNR of the sample's downscale against the LR face: how well it explains the input.
                "lr_psnr": [round(-10 * math.log10(e), 2) if e > 0 else None for e in errors],
                "success": [bool(search.success[i]) for i in rows],
                "best_step": [int(search.best_step[i]) for i in rows],
                "status": [search.status[i] for i in rows],
                # dlib's identity distance of each sample to the face in the photo (same person: <= 0.6).
                "id_dist": identity_distances(aligned[index], samples, notes) if self.identity else [None] * len(rows),
            }
            landmarks = np.asarray(face.landmarks)
            results.append(
                FaceResult(face.box, face.score, landmarks, quad, aligned[index], lr[index], samples, chosen, metrics)
            )
        status = f"restored {len(results)} face{'s' if len(results) != 1 else ''}"
        return PhotoResult(name, photo, background, restored, results, self.scale,
                           time.perf_counter() - start, status, notes, factor)  # fmt: skip


def identity_distances(reference: torch.Tensor, samples: torch.Tensor, notes: list[str]) -> list[float | None]:
    """dlib descriptor distance of each sample ``[D, 3, R, R]`` to ``reference`` ``[3, R, R]``, rounded.

    ``None`` each (and a note, once) when dlib's face models are not installed.
    """
    from pulse.metrics.faces import identity_distance, unavailable_reason  # noqa: PLC0415 - dlib is optional

    reason = unavailable_reason()
    if reason is not None:
        note = f"id_dist unavailable: {reason}"
        if note not in notes:
            notes.append(note)
        return [None] * len(samples)
    distances = identity_distance(reference[None].expand_as(samples).contiguous(), samples)
    return [round(float(d), 4) for d in distances]


def _module_device(module: torch.nn.Module) -> torch.device:
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


def face_strip(face: FaceResult) -> torch.Tensor:
    """``[3, R, (2 + D) R]``: LR (nearest-upsampled) | the aligned input face | each sample."""
    size = face.samples.shape[-1]
    lr = F.interpolate(face.lr[None], size=(size, size), mode="nearest")[0]
    return torch.cat([lr, face.aligned, *face.samples], dim=-1)


def write_result(result: PhotoResult, out_dir: str | Path) -> dict[str, Any]:
    """Write ``NAME.png`` (restored), ``NAME_background.png`` (upscaled only), ``NAME_faces/face_<i>.png``
    (LR | aligned | samples) and ``NAME.json``; returns the JSON's content."""
    out_dir = Path(out_dir)
    save_image(result.restored, out_dir / f"{result.name}.png")
    save_image(result.background, out_dir / f"{result.name}_background.png")
    for index, face in enumerate(result.faces):
        save_image(face_strip(face), out_dir / f"{result.name}_faces" / f"face_{index}.png")
    summary = result.summary()
    (out_dir / f"{result.name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def photo_files(inputs: Sequence[str | Path]) -> tuple[list[Path], dict[str, str]]:
    """Image files named by ``inputs`` (files or folders) and ``{name: why skipped}`` for what is not one."""
    files: list[Path] = []
    skipped: dict[str, str] = {}
    for item in map(Path, inputs):
        if item.is_dir():
            found, others = scan_folder(item)
            files += found
            skipped.update(others)
        elif not item.exists():
            skipped[str(item)] = f"{item}: no such file"
        elif item.suffix.lower() not in IMAGE_SUFFIXES:
            skipped[str(item)] = f"{item}: not an image file ({item.suffix or 'no suffix'})"
        else:
            files.append(item)
    return files, skipped


def restore_files(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    restorer: PhotoRestorer,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Restore every photo named by ``inputs`` into ``out_dir``; bad files are reported and skipped.

    Writes what :func:`write_result` writes per photo, plus ``summary.json`` (``photos``, ``skipped``).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files, skipped = photo_files(inputs)
    for reason in skipped.values():
        log(f"skipped {reason}")
    names, clashes = unique_names(files)  # the folder inputs' rule: the stem, or the file name if stems clash
    skipped.update(clashes)
    for reason in clashes.values():
        log(f"skipped {reason}")
    photos: list[dict[str, Any]] = []
    for path, name in names.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a multi-frame GIF's note; the first frame is used
                photo = load_image(path)
            result = restorer.restore(photo, name=name)
        except (ImageError, LandmarkError, ValueError) as error:
            reason = str(error) if str(path) in str(error) else f"{path}: {error}"
            skipped[str(path)] = reason
            log(f"skipped {reason}")
            continue
        photos.append(write_result(result, out_dir))
        errors = [f"{min(face['downscale_error']):.4g}" for face in photos[-1]["faces"]]
        detail = f" (downscale error {', '.join(errors)})" if errors else ""
        log(f"{path}: {result.status}{detail} -> {out_dir / (name + '.png')} in {result.seconds:.1f} s")
    summary = {"photos": photos, "skipped": skipped}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary

"""FFHQ-style face alignment: facial landmarks -> oriented square crop -> ``size x size`` image.

Follows the recipe NVIDIA used to build FFHQ (``recreate_aligned_images`` in NVlabs/ffhq-dataset), which
the PULSE StyleGAN was trained on and official PULSE's ``align_face.py`` copies: from the eye centres and mouth
corners it chooses an oriented square (the *quad*), shrinks very large photos first, crops around the quad, pads
with reflections where it leaves the photo (optionally blurred and faded to the median colour, as FFHQ did),
resamples the quad to a square of ``supersample * size`` pixels and reduces that to ``size`` with a Lanczos
filter (antialiasing). With dlib's 68 landmarks (:mod:`pulse.faces`) the output equals official PULSE's pixel
for pixel (``tests/test_align_dlib.py``).

Coordinates: landmarks are ``[n, 2]`` arrays of ``(x, y)`` pixel positions with pixel centres at integers
(dlib's convention; ``(0, 0)`` is the centre of the top-left pixel). "Left" and "right" mean the image's
left and right, so the subject's right eye is the image's left eye.

Landmark layouts accepted by :func:`keypoints_from_landmarks`:

* 68 points, dlib / iBUG 300-W order: eyes are points 36-41 and 42-47 (their means), mouth corners 48, 54.
* 5 points: left eye, right eye, nose tip, left mouth corner, right mouth corner (the nose is not used).
* 468 or 478 points, MediaPipe FaceMesh order (means of the eye contours, mouth corners 61 and 291).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pulse.data import to_uint8
from pulse.downscale import BicubicDownscale, check_factor

PADDING_MODES = ("ffhq", "reflect", "black")

# MediaPipe FaceMesh contour indices (mediapipe/python/solutions/face_mesh_connections.py). Its "RIGHT_EYE" is
# the subject's right eye, i.e. the one on the image's left.
FACEMESH_IMAGE_LEFT_EYE = (33, 7, 163, 144, 145, 153, 154, 155, 133, 246, 161, 160, 159, 158, 157, 173)
FACEMESH_IMAGE_RIGHT_EYE = (263, 249, 390, 373, 374, 380, 381, 382, 362, 466, 388, 387, 386, 385, 384, 398)
FACEMESH_MOUTH_CORNERS = (61, 291)


class LandmarkError(ValueError):
    """Landmarks that cannot be used (wrong count, missing, degenerate); the message says which and why."""


@dataclass(frozen=True)
class FaceKeypoints:
    """The four points FFHQ alignment uses, each ``[2]`` as ``(x, y)`` pixels (image left/right)."""

    eye_left: np.ndarray
    eye_right: np.ndarray
    mouth_left: np.ndarray
    mouth_right: np.ndarray


def keypoints_from_landmarks(landmarks: np.ndarray | list) -> FaceKeypoints:
    """Eye centres and mouth corners from ``[68, 2]`` (dlib), ``[5, 2]`` or ``[468|478, 2]`` (FaceMesh) landmarks."""
    points = np.asarray(landmarks, dtype=np.float64)
    if points.ndim == 1 and points.size % 2 == 0:
        points = points.reshape(-1, 2)
    if points.ndim != 2 or points.shape[1] != 2:
        raise LandmarkError(f"landmarks must be (x, y) pairs, got an array of shape {list(points.shape)}")
    if not np.isfinite(points).all():
        raise LandmarkError("landmarks contain NaN or infinite coordinates")
    count = len(points)
    if count == 68:
        return FaceKeypoints(points[36:42].mean(0), points[42:48].mean(0), points[48], points[54])
    if count == 5:
        return FaceKeypoints(points[0], points[1], points[3], points[4])
    if count in (468, 478):
        return FaceKeypoints(
            points[list(FACEMESH_IMAGE_LEFT_EYE)].mean(0),
            points[list(FACEMESH_IMAGE_RIGHT_EYE)].mean(0),
            points[FACEMESH_MOUTH_CORNERS[0]],
            points[FACEMESH_MOUTH_CORNERS[1]],
        )
    raise LandmarkError(
        f"got {count} landmarks; expected 68 (dlib order), 5 (left eye, right eye, nose, left mouth, right mouth) "
        "or 468/478 (MediaPipe FaceMesh)"
    )


def ffhq_quad(keypoints: FaceKeypoints) -> np.ndarray:
    """The FFHQ crop: corners ``[4, 2]`` in order top-left, bottom-left, bottom-right, top-right (output frame).

    ``x`` points along the eye line, tilted by the eye-to-mouth direction so that both define the roll;
    its half-length is ``max(2 |eye_to_eye|, 1.8 |eye_to_mouth|)``; ``y`` is ``x`` turned by 90 degrees.
    The centre sits 10% of the way from the eyes to the mouth.
    """
    eye_avg = (keypoints.eye_left + keypoints.eye_right) * 0.5
    eye_to_eye = keypoints.eye_right - keypoints.eye_left
    mouth_avg = (keypoints.mouth_left + keypoints.mouth_right) * 0.5
    eye_to_mouth = mouth_avg - eye_avg
    # Rotating eye_to_mouth by -90 degrees makes it parallel to the eye line of an upright face.
    x = eye_to_eye - np.flipud(eye_to_mouth) * np.array([-1.0, 1.0])
    length = math.hypot(*x)
    half_side = max(math.hypot(*eye_to_eye) * 2.0, math.hypot(*eye_to_mouth) * 1.8)
    if length < 1e-6 or half_side < 1e-6:
        raise LandmarkError("degenerate landmarks: eyes and mouth coincide, no face orientation can be derived")
    x = x / length * half_side
    y = np.flipud(x) * np.array([-1.0, 1.0])
    c = eye_avg + eye_to_mouth * 0.1
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


def quad_to_output(points: np.ndarray, quad: np.ndarray, size: int) -> np.ndarray:
    """Where source pixels ``[n, 2]`` land in the ``size x size`` aligned image (pixel centres at integers).

    The quad is a square, so the map is a similarity: output pixel ``u`` samples the source at
    ``quad_tl + (u + 0.5) / size * edge``.
    """
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    origin = quad[0]
    basis = np.stack([quad[3] - quad[0], quad[1] - quad[0]], axis=1)  # columns: output x and y edges
    unit = np.linalg.solve(basis, (points - origin).T).T
    return unit * size - 0.5


def _bounds(quad: np.ndarray) -> tuple[int, int, int, int]:
    """Integer bounding box ``(left, top, right, bottom)`` of a quad."""
    return (
        math.floor(quad[:, 0].min()),
        math.floor(quad[:, 1].min()),
        math.ceil(quad[:, 0].max()),
        math.ceil(quad[:, 1].max()),
    )


def _edge_fade(height: int, width: int, pad: tuple[int, int, int, int]) -> np.ndarray:
    """``[H, W, 1]``: 0 at the original image's edge rising to 1 at the padded border, negative inside.

    ``pad`` is ``(left, top, right, bottom)``.
    """
    left, top, right, bottom = (max(p, 1) for p in pad)
    ys, xs = np.ogrid[:height, :width]
    xs, ys = xs.astype(np.float32), ys.astype(np.float32)
    horizontal = 1.0 - np.minimum(xs / left, (width - 1 - xs) / right)
    vertical = 1.0 - np.minimum(ys / top, (height - 1 - ys) / bottom)
    return np.maximum(horizontal, vertical)[..., None]


def _pad(image: Image.Image, pad: tuple[int, int, int, int], qsize: float, blur_fade: bool) -> Image.Image:
    """Reflect-pad by ``(left, top, right, bottom)``; with ``blur_fade`` blur and fade the padding like FFHQ.

    Plain reflections show mirrored features (a second chin, half faces) at the border; FFHQ hides them by
    blurring the padding and fading it towards the median colour with the distance from the photo. As in
    FFHQ's script everything is float32 until the one final rounding, and the blur is SciPy's Gaussian
    (sigma 2% of the crop, reflect mode, truncated at 4 sigma).
    """
    left, top, right, bottom = pad
    array = np.pad(np.asarray(image, dtype=np.float32), ((top, bottom), (left, right), (0, 0)), mode="reflect")
    if blur_fade:
        from scipy.ndimage import gaussian_filter  # noqa: PLC0415 - only this padding mode needs SciPy

        height, width, _ = array.shape
        mask = _edge_fade(height, width, pad)
        blur = qsize * 0.02
        array += (gaussian_filter(array, [blur, blur, 0]) - array) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
        array += (np.median(array, axis=(0, 1)) - array) * np.clip(mask, 0.0, 1.0)
    return Image.fromarray(np.uint8(np.clip(np.rint(array), 0, 255)))


def align_face(
    image: np.ndarray,
    quad: np.ndarray,
    size: int,
    supersample: int = 4,
    padding: str = "ffhq",
) -> np.ndarray:
    """Resample the ``quad`` of an RGB photo to a ``size x size`` image, FFHQ's way.

    Args:
        image: ``[H, W, 3]`` uint8 photo.
        quad: ``[4, 2]`` corners from :func:`ffhq_quad` (source pixel coordinates).
        size: output side in pixels.
        supersample: the quad is first resampled (bilinear) to ``supersample * size`` and then reduced with
            Lanczos, which antialiases; FFHQ used 4 (4096 for 1024).
        padding: where the quad leaves the photo: ``ffhq`` (reflect, blurred and faded to the median colour),
            ``reflect`` (plain reflection) or ``black``.

    Returns:
        ``[size, size, 3]`` uint8.
    """
    if padding not in PADDING_MODES:
        raise ValueError(f"padding must be one of {', '.join(PADDING_MODES)}, got {padding!r}")
    if size < 1 or supersample < 1:
        raise ValueError(f"size and supersample must be positive, got size={size}, supersample={supersample}")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be [H, W, 3] uint8, got {image.dtype} of shape {list(image.shape)}")
    quad = np.asarray(quad, dtype=np.float64).copy()
    photo = Image.fromarray(image)
    qsize = math.hypot(*(quad[3] - quad[0]))

    # Bilinear sampling does not antialias, so very large faces are first reduced to 2-4x the output.
    shrink = math.floor(qsize / size * 0.5)
    if shrink > 1:
        photo = photo.resize((round(photo.width / shrink), round(photo.height / shrink)), Image.Resampling.LANCZOS)
        # As FFHQ and official PULSE do; mapping pixel centres ((p + 0.5) / shrink - 0.5) would be exact, but
        # then the output would no longer match theirs (it moves the crop by up to half a shrunk pixel).
        quad /= shrink
        qsize /= shrink

    # Crop to the quad plus a border, so that padding and resampling touch only what is needed.
    border = max(round(qsize * 0.1), 3)
    left, top, right, bottom = _bounds(quad)
    crop = (
        max(left - border, 0),
        max(top - border, 0),
        min(right + border, photo.width),
        min(bottom + border, photo.height),
    )
    if crop[2] - crop[0] < photo.width or crop[3] - crop[1] < photo.height:
        photo = photo.crop(crop)
        quad -= np.array(crop[:2], dtype=np.float64)

    if padding != "black":
        left, top, right, bottom = _bounds(quad)
        pad = (
            max(-left + border, 0),
            max(-top + border, 0),
            max(right - photo.width + border, 0),
            max(bottom - photo.height + border, 0),
        )
        if max(pad) > border - 4:
            wide = round(qsize * 0.3)
            pad = tuple(max(p, wide) for p in pad)
            photo = _pad(photo, pad, qsize, blur_fade=padding == "ffhq")
            quad += np.array(pad[:2], dtype=np.float64)

    big = supersample * size
    # PIL's continuous coordinates put pixel centres at +0.5.
    aligned = photo.transform(
        (big, big), Image.Transform.QUAD, (quad + 0.5).flatten().tolist(), Image.Resampling.BILINEAR
    )
    if big != size:
        aligned = aligned.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(aligned.convert("RGB"), dtype=np.uint8)


@dataclass
class AlignedFace:
    """One aligned face.

    Attributes:
        hr: ``[3, size, size]`` float32 in [0, 1], exactly representable in 8 bits (what the PNG holds).
        lr: ``[3, size / factor, size / factor]``: ``BicubicDownscale(factor)(hr)``, or ``None`` without a factor.
        quad: ``[4, 2]`` the crop in the source photo's pixel coordinates.
    """

    hr: torch.Tensor
    lr: torch.Tensor | None
    quad: np.ndarray


def align_image(
    image: torch.Tensor | np.ndarray,
    landmarks: np.ndarray | list,
    size: int = 1024,
    factor: int | None = None,
    supersample: int = 4,
    padding: str = "ffhq",
) -> AlignedFace:
    """Align one face and optionally make its PULSE input.

    Args:
        image: ``[3, H, W]`` float in [0, 1] (as :func:`pulse.data.load_image` returns) or ``[H, W, 3]`` uint8.
        landmarks: ``[68|5|468|478, 2]`` in that image's pixel coordinates (see the module docstring).
        size: output side; the paper's StyleGAN wants 1024.
        factor: if given, also return the low-resolution input ``[3, size / factor, size / factor]`` made with the
            paper's bicubic operator from the 8-bit HR image.
        supersample, padding: see :func:`align_face`.
    """
    if factor is not None:
        check_factor(size, size, factor)
    array = to_uint8(image) if isinstance(image, torch.Tensor) else np.asarray(image)
    quad = ffhq_quad(keypoints_from_landmarks(landmarks))
    aligned = align_face(array, quad, size, supersample=supersample, padding=padding)
    hr = torch.from_numpy(aligned.astype(np.float32) / 255.0).permute(2, 0, 1).contiguous()
    lr = BicubicDownscale(factor)(hr[None])[0].clamp(0, 1) if factor is not None else None
    return AlignedFace(hr, lr, quad)


def _parse_numbers(values: list, where: str) -> np.ndarray:
    try:
        points = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise LandmarkError(f"{where}: landmarks must be numbers ({error})") from None
    if points.ndim == 1:
        if points.size % 2:
            raise LandmarkError(f"{where}: an odd number of coordinates ({points.size}); expected x, y pairs")
        points = points.reshape(-1, 2)
    try:
        keypoints_from_landmarks(points)  # validates the count now, so a bad file fails before any image is read
    except LandmarkError as error:
        raise LandmarkError(f"{where}: {error}") from None
    return points


def read_landmarks_file(path: str | Path) -> dict[str, np.ndarray]:
    """Read a landmarks file: image name -> ``[n, 2]`` with n in 68, 5, 468, 478.

    JSON: ``{"photo.jpg": [[x, y], ...]}`` (flat ``[x0, y0, x1, ...]`` lists and ``{"landmarks": [...]}`` values
    also work). CSV: one row per image, ``name,x0,y0,x1,y1,...``; an optional header row is skipped.
    Names are file names (``photo.jpg``) or stems (``photo``).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"landmarks file {path} does not exist")
    table: dict[str, np.ndarray] = {}
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise LandmarkError(f"{path}: not valid JSON ({error})") from None
        if not isinstance(data, dict):
            raise LandmarkError(f"{path}: expected an object mapping image names to landmark lists")
        for name, value in data.items():
            if isinstance(value, dict):
                value = value.get("landmarks")
            table[str(name)] = _parse_numbers(value, f"{path}: {name}")
    elif path.suffix.lower() == ".csv":
        with path.open(newline="") as handle:
            for line, row in enumerate(csv.reader(handle), start=1):
                row = [cell.strip() for cell in row]
                if not row or not any(row):
                    continue
                if line == 1 and len(row) > 1 and not _is_number(row[1]):
                    continue  # header
                table[row[0]] = _parse_numbers([cell for cell in row[1:] if cell], f"{path}:{line} ({row[0]})")
    else:
        raise LandmarkError(f"{path}: unknown landmarks format {path.suffix!r}; use .json or .csv")
    if not table:
        raise LandmarkError(f"{path}: no landmarks in the file")
    return table


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def lookup_landmarks(table: dict[str, np.ndarray], image_path: str | Path) -> np.ndarray:
    """The landmarks of one image, by file name then by stem; a :class:`LandmarkError` if absent."""
    image_path = Path(image_path)
    for key in (image_path.name, image_path.stem):
        if key in table:
            return table[key]
    raise LandmarkError(f"no landmarks for {image_path.name} in the landmarks file (looked up by name and by stem)")


class DetectorUnavailable(RuntimeError):
    """No landmark detector can run here; the message says how to get one or to pass a landmarks file."""


NO_DETECTOR = (
    "no landmark detector available: pip install -e '.[faces]' (dlib, as official PULSE) or pass --landmarks FILE"
)


class MediaPipeLandmarks:
    """FaceMesh landmarks ``[468, 2]`` (pixels) from MediaPipe's legacy ``solutions.face_mesh``, fully offline.

    MediaPipe releases up to 0.10.21 ship the face detector and FaceMesh ``.tflite`` models inside the wheel;
    later releases dropped ``solutions`` and need a model downloaded at run time, which we never do.
    """

    def __init__(self, min_confidence: float = 0.5) -> None:
        try:
            import mediapipe  # noqa: PLC0415 - optional dependency, imported only when asked for
        except ImportError:
            raise DetectorUnavailable(
                "mediapipe not installed: pip install -e '.[align]', use --detector dlib "
                "(pip install -e '.[faces]') or pass --landmarks FILE"
            ) from None
        face_mesh = getattr(getattr(mediapipe, "solutions", None), "face_mesh", None)
        if face_mesh is None:
            version = getattr(mediapipe, "__version__", "?")
            raise DetectorUnavailable(
                f"mediapipe {version} has no bundled face landmark model (mediapipe.solutions.face_mesh is gone); "
                "pip install 'mediapipe<=0.10.21' or pass --landmarks FILE"
            )
        self._mesh = face_mesh.FaceMesh(
            static_image_mode=True, max_num_faces=1, refine_landmarks=False, min_detection_confidence=min_confidence
        )

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """``[H, W, 3]`` uint8 RGB -> ``[468, 2]`` pixel coordinates; a :class:`LandmarkError` if no face."""
        height, width = image.shape[:2]
        result = self._mesh.process(np.ascontiguousarray(image))
        faces = result.multi_face_landmarks
        if not faces:
            raise LandmarkError("no face found")
        normalised = np.array([(point.x, point.y) for point in faces[0].landmark], dtype=np.float64)
        # MediaPipe's normalised coordinates span pixel edges; ours put pixel centres at integers.
        return normalised * np.array([width, height]) - 0.5

    def close(self) -> None:
        self._mesh.close()

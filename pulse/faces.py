"""dlib face detection and landmarks, offline: the models official PULSE uses, from pip packages.

``pip install -e ".[faces]"`` installs ``dlib-bin`` (prebuilt dlib) and ``face-recognition-models``, whose
``face_recognition_models/models/`` folder holds dlib's model files:

* ``shape_predictor_68_face_landmarks.dat``: the 68-point (iBUG 300-W) predictor official PULSE's
  ``align_face.py`` downloads;
* ``shape_predictor_5_face_landmarks.dat``, ``mmod_human_face_detector.dat`` (CNN detector);
* ``dlib_face_recognition_resnet_model_v1.dat``: 128-d face descriptors (same person below distance 0.6).

Only the files are used: that package's ``__init__`` is never imported (it needs ``pkg_resources``, gone from
current setuptools, and holds nothing but path helpers). :func:`model_path` finds the folder through the import
system without executing it. Anything here that cannot run raises :class:`FacesUnavailable` with one line
naming the fix.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image

FACES_INSTALL = "pip install -e '.[faces]'"

SHAPE_PREDICTOR_68 = "shape_predictor_68_face_landmarks.dat"
SHAPE_PREDICTOR_5 = "shape_predictor_5_face_landmarks.dat"
FACE_RECOGNITION_MODEL = "dlib_face_recognition_resnet_model_v1.dat"
CNN_FACE_DETECTOR = "mmod_human_face_detector.dat"
EXIF_ORIENTATION = 0x0112


class FacesUnavailable(RuntimeError):
    """dlib or its model files are missing; the message is one line saying how to install them."""


def require_dlib() -> ModuleType:
    """The ``dlib`` module, or :class:`FacesUnavailable` naming the extra to install."""
    try:
        import dlib  # noqa: PLC0415 - optional dependency, imported only when asked for
    except ImportError as error:
        raise FacesUnavailable(f"dlib unavailable ({error}): {FACES_INSTALL}") from None
    return dlib


def model_path(name: str) -> Path:
    """Path of one of dlib's model files shipped by ``face-recognition-models`` (e.g. :data:`SHAPE_PREDICTOR_68`)."""
    spec = importlib.util.find_spec("face_recognition_models")  # locates the package without running it
    if spec is None or not spec.submodule_search_locations:
        raise FacesUnavailable(f"dlib model files unavailable (face-recognition-models not installed): {FACES_INSTALL}")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / name
    if not path.is_file():
        raise FacesUnavailable(f"dlib model file {path} is missing; reinstall face-recognition-models: {FACES_INSTALL}")
    return path


def dlib_available() -> bool:
    """Whether dlib and the 68-point model can be loaded here (nothing is imported or loaded to find out)."""
    if importlib.util.find_spec("dlib") is None:
        return False
    try:
        model_path(SHAPE_PREDICTOR_68)
    except FacesUnavailable:
        return False
    return True


def load_rgb_for_dlib(path: str | Path) -> np.ndarray:
    """``[H, W, 3]`` uint8 as ``dlib.load_rgb_image`` decodes the file (what official PULSE detects on).

    dlib's JPEG decoder is not Pillow's: on CelebA JPEGs they differ by 0.3-0.5 levels on average (up to
    40 levels at sharp colour edges, chroma upsampling), which moves dlib's landmarks by 1-2 px.
    """
    return np.asarray(require_dlib().load_rgb_image(str(path)))


def detection_pixels(path: str | Path, pixels: np.ndarray) -> np.ndarray:
    """What to run dlib on for the photo at ``path`` whose upright pixels are ``pixels`` ``[H, W, 3]`` uint8.

    dlib's own decode of the file (:func:`load_rgb_for_dlib`), as official PULSE does, unless the photo carries
    an EXIF rotation (dlib ignores it; the landmarks must refer to the upright pixels that are aligned) or dlib
    cannot read the file or reads another size; then ``pixels`` themselves.
    """
    try:
        with Image.open(path) as image:
            if image.getexif().get(EXIF_ORIENTATION, 1) != 1:
                return pixels
        decoded = load_rgb_for_dlib(path)
    except (OSError, RuntimeError, ValueError):
        return pixels
    return decoded if decoded.shape == pixels.shape else pixels


class DlibLandmarks:
    """Every frontal face in a photo with its 68 landmarks, as official PULSE finds them.

    ``dlib.get_frontal_face_detector()`` (HOG) run with the photo upsampled ``upsample`` times (official: 1),
    then the 68-point shape predictor in each detected box. Faces come in dlib's order (by detection score).
    """

    def __init__(self, upsample: int = 1) -> None:
        dlib = require_dlib()
        self.upsample = int(upsample)
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(str(model_path(SHAPE_PREDICTOR_68)))

    def detect(self, image: np.ndarray) -> list:
        """``[H, W, 3]`` uint8 RGB -> the ``dlib.rectangle`` of every face found (possibly none)."""
        return list(self.detector(np.ascontiguousarray(image), self.upsample))

    def shapes(self, image: np.ndarray) -> list:
        """The ``dlib.full_object_detection`` (68 parts) of every face found, e.g. for face descriptors."""
        image = np.ascontiguousarray(image)
        return [self.predictor(image, box) for box in self.detect(image)]

    def __call__(self, image: np.ndarray) -> list[np.ndarray]:
        """``[H, W, 3]`` uint8 RGB -> one ``[68, 2]`` float64 array of ``(x, y)`` pixels per face found."""
        return [np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64) for shape in self.shapes(image)]

    def close(self) -> None:
        """Nothing to release; present so that every landmark source has the same interface."""

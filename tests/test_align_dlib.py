"""Official PULSE alignment on real photographs: dlib's detector and 68-point model, then the FFHQ recipe.

``scripts/align_faces.py --detector dlib`` is compared pixel by pixel with :func:`official_recipe`, an
independent transcription of official PULSE's ``align_face`` (detect on ``dlib.load_rgb_image``, resample
``PIL.Image.open``), on ``skimage.data.astronaut()`` (a whole photo, one cropped so that the recipe must pad)
and on real CelebA photos when ``pulse-fetch celeba`` has put them in ``$PULSE_CACHE/celeba``.
Needs ``pip install -e ".[faces]"``; skipped otherwise. No CelebA photo is ever committed.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pulse.data import load_image
from pulse.downscale import BicubicDownscale
from pulse.faces import (
    FACE_RECOGNITION_MODEL,
    SHAPE_PREDICTOR_68,
    DlibLandmarks,
    FacesUnavailable,
    dlib_available,
    model_path,
)
from pulse.io.cache import cache_dir

ROOT = Path(__file__).parents[1]

needs_dlib = pytest.mark.skipif(
    not dlib_available(), reason="dlib or its 68-point model not installed: pip install -e '.[faces]'"
)

# The astronaut's face: dlib's box on skimage.data.astronaut() is (175, 76)-(265, 166).
ASTRONAUT_FACE = (175, 76, 265, 166)


# The first real CelebA JPEGs of the user's cache (put there by ``pulse-fetch celeba``), or none. Looked up at import,
# read only: during each test conftest points $PULSE_CACHE to an empty folder.
CELEBA = sorted((cache_dir() / "celeba").rglob("*.jpg"))[:3]


# --------------------------------------------------------------------------- the reference


@functools.cache
def _official_models():
    import dlib

    return dlib.get_frontal_face_detector(), dlib.shape_predictor(str(model_path(SHAPE_PREDICTOR_68)))


def official_landmarks(path: Path) -> list[np.ndarray]:
    """Official PULSE's landmarks of every face: dlib's decode, frontal detector upsampling once, 68 points."""
    import dlib

    detector, predictor = _official_models()
    image = dlib.load_rgb_image(str(path))
    boxes = detector(image, 1)
    return [np.array([[p.x, p.y] for p in predictor(image, box).parts()], dtype=np.float64) for box in boxes]


def official_recipe(path: Path, landmarks: np.ndarray, output_size: int) -> np.ndarray:
    """``[S, S, 3]`` uint8: one face aligned step by step as official PULSE's ``align_face`` does.

    Official PULSE fixes ``output_size = 1024`` and resamples at 4096; here both scale with ``output_size``.
    """
    photo = Image.open(path).convert("RGB")

    # 1. Eye centres, mouth corners, and the oriented square around them.
    eye_left, eye_right = landmarks[36:42].mean(axis=0), landmarks[42:48].mean(axis=0)
    eyes = (eye_left + eye_right) / 2
    eye_to_eye = eye_right - eye_left
    eye_to_mouth = (landmarks[48] + landmarks[54]) / 2 - eyes
    along = eye_to_eye - np.array([-eye_to_mouth[1], eye_to_mouth[0]])  # eye_to_mouth turned onto the eye line
    half = max(2.0 * np.hypot(*eye_to_eye), 1.8 * np.hypot(*eye_to_mouth))
    along = along / np.hypot(*along) * half
    down = np.array([-along[1], along[0]])
    centre = eyes + 0.1 * eye_to_mouth
    quad = np.array([centre - along - down, centre - along + down, centre + along + down, centre + along - down])
    side = 2.0 * np.hypot(*along)

    # 2. Shrink big faces by an integer factor.
    factor = math.floor(side / output_size / 2.0)
    if factor > 1:
        width, height = photo.size
        photo = photo.resize((int(np.rint(width / factor)), int(np.rint(height / factor))), Image.LANCZOS)
        quad, side = quad / factor, side / factor

    # 3. Crop to the square plus a border.
    border = max(int(np.rint(0.1 * side)), 3)
    low, high = np.floor(quad.min(axis=0)).astype(int), np.ceil(quad.max(axis=0)).astype(int)
    left, top = max(low[0] - border, 0), max(low[1] - border, 0)
    right, bottom = min(high[0] + border, photo.width), min(high[1] + border, photo.height)
    if right - left < photo.width or bottom - top < photo.height:
        photo = photo.crop((left, top, right, bottom))
        quad = quad - [left, top]

    # 4. Where the square (plus border) leaves the photo: reflect, blur, fade to the median colour.
    low, high = np.floor(quad.min(axis=0)).astype(int), np.ceil(quad.max(axis=0)).astype(int)
    need = [border - low[0], border - low[1], high[0] - photo.width + border, high[1] - photo.height + border]
    need = [max(n, 0) for n in need]
    if max(need) > border - 4:
        from scipy.ndimage import gaussian_filter

        pad_l, pad_t, pad_r, pad_b = (max(n, int(np.rint(0.3 * side))) for n in need)
        pixels = np.pad(np.asarray(photo, np.float32), ((pad_t, pad_b), (pad_l, pad_r), (0, 0)), mode="reflect")
        rows, cols = pixels.shape[:2]
        col = np.arange(cols, dtype=np.float32)[None, :, None]
        row = np.arange(rows, dtype=np.float32)[:, None, None]
        outside = np.maximum(
            1.0 - np.minimum(col / pad_l, (cols - 1 - col) / pad_r),
            1.0 - np.minimum(row / pad_t, (rows - 1 - row) / pad_b),
        )
        sigma = 0.02 * side
        pixels = pixels + (gaussian_filter(pixels, [sigma, sigma, 0]) - pixels) * np.clip(3.0 * outside + 1.0, 0, 1)
        pixels = pixels + (np.median(pixels, axis=(0, 1)) - pixels) * np.clip(outside, 0, 1)
        photo = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))
        quad = quad + [pad_l, pad_t]

    # 5. Bilinear resampling of the square at 4x, then Lanczos down to the output size.
    big = photo.transform((4 * output_size, 4 * output_size), Image.QUAD, (quad + 0.5).flatten(), Image.BILINEAR)
    return np.asarray(big.resize((output_size, output_size), Image.LANCZOS))


def official_lr(hr: np.ndarray, factor: int) -> np.ndarray:
    """Official PULSE's LR file: the bicubic downscale of the aligned face, stored by ``ToPILImage`` (truncating)."""
    tensor = torch.from_numpy(hr.astype(np.float32) / 255).permute(2, 0, 1)[None]
    lr = BicubicDownscale(factor)(tensor)[0].clamp(0, 1)
    return (lr * 255).to(torch.uint8).permute(1, 2, 0).numpy()


# --------------------------------------------------------------------------- tests


def test_missing_dlib_or_models_say_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "dlib", None)  # import dlib now raises ImportError
    with pytest.raises(FacesUnavailable, match=r"^dlib unavailable .*: pip install -e '\.\[faces\]'$"):
        DlibLandmarks()
    assert not dlib_available()
    monkeypatch.setitem(sys.modules, "face_recognition_models", None)
    with pytest.raises(FacesUnavailable, match=r"face-recognition-models not installed\): pip install -e '\.\[faces"):
        model_path(FACE_RECOGNITION_MODEL)


@pytest.fixture(scope="module")
def detector() -> DlibLandmarks:
    return DlibLandmarks()


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    skimage_data = pytest.importorskip("skimage.data")
    return skimage_data.astronaut()


@needs_dlib
def test_dlib_finds_the_astronaut_and_her_mission_patch(detector, astronaut):
    faces = detector(astronaut)
    assert len(faces) == 2 and all(f.shape == (68, 2) for f in faces)  # the second is a false detection
    left, top, right, bottom = ASTRONAUT_FACE
    eyes_left, eyes_right = faces[0][36:42].mean(0), faces[0][42:48].mean(0)
    assert left < eyes_left[0] < eyes_right[0] < right and top < eyes_left[1] < faces[0][48, 1] < bottom
    assert detector(np.full((200, 200, 3), 128, np.uint8)) == []


def _script():
    spec = importlib.util.spec_from_file_location("align_faces", ROOT / "scripts" / "align_faces.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _assert_matches_official(photos: list[Path], out: Path, size: int, factor: int) -> int:
    """Every face official PULSE would align is written, equal to the recipe within one level; returns how many."""
    total = 0
    for path in photos:
        expected = official_landmarks(path)
        written = sorted(p.name for p in (out / "hr").glob(f"{path.stem}_*.png"))
        assert written == [f"{path.stem}_{i}.png" for i in range(len(expected))], path.name
        for i, landmarks in enumerate(expected):
            reference = official_recipe(path, landmarks, size).astype(int)
            hr = np.asarray(Image.open(out / "hr" / f"{path.stem}_{i}.png"), dtype=int)
            lr = np.asarray(Image.open(out / "lr" / f"{path.stem}_{i}.png"), dtype=int)
            assert hr.shape == (size, size, 3) and np.abs(hr - reference).max() <= 1, (path.name, i)
            # Official stores LR by truncation, pulse rounds: at most one level apart.
            assert np.abs(lr - official_lr(reference.astype(np.uint8), factor)).max() <= 1, (path.name, i)
            total += 1
    return total


@needs_dlib
@pytest.mark.parametrize("size", [128, 32])  # 32: the astronaut's square (174 px) is shrunk first
def test_cli_aligns_every_face_like_official_pulse(astronaut, tmp_path, capsys, size):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(astronaut).save(folder / "astronaut.png")
    Image.fromarray(astronaut[40:300, 140:420]).save(folder / "top.png")  # the square leaves the photo: padded
    Image.fromarray(np.full((120, 160, 3), 90, np.uint8)).save(folder / "wall.png")  # no face
    celeba = CELEBA
    for path in celeba:  # real CelebA JPEGs, as fetched (dlib and Pillow decode them differently)
        (folder / path.name).write_bytes(path.read_bytes())
    out = tmp_path / "out"

    assert _script().main([str(folder), str(out), "--size", str(size), "--factor", "4", "--quiet"]) == 0

    photos = sorted(p for p in folder.iterdir() if p.name != "wall.png")
    faces = _assert_matches_official(photos, out, size, 4)
    assert faces == 3 + len(celeba)
    captured = capsys.readouterr()
    assert "wall.png: no face found" in captured.err
    assert f"align_faces: {faces} faces from {len(photos)}/{len(photos) + 1} photos" in captured.out


@needs_dlib
@pytest.mark.slow
def test_official_size_on_real_photos(astronaut, tmp_path):
    """At official PULSE's own size (1024, resampled at 4096): the padded astronaut and one CelebA photo."""
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(astronaut[40:300, 140:420]).save(folder / "top.png")
    for path in CELEBA[:1]:
        (folder / path.name).write_bytes(path.read_bytes())
    out = tmp_path / "out"
    assert _script().main([str(folder), str(out), "--size", "1024", "--factor", "64", "--quiet"]) == 0
    assert _assert_matches_official(sorted(folder.iterdir()), out, 1024, 64) == len(list(folder.iterdir()))
    assert load_image(out / "lr" / "top_0.png").shape == (3, 16, 16)


@needs_dlib
@pytest.mark.skipif(not CELEBA, reason="no CelebA photos in $PULSE_CACHE/celeba (run: pulse-fetch celeba)")
def test_celeba_photos_have_one_face_each(detector):
    for path in CELEBA:
        faces = detector(np.asarray(Image.open(path).convert("RGB")))
        assert len(faces) == 1, path.name


@needs_dlib
def test_exif_rotated_photo_is_detected_upright(astronaut, tmp_path):
    """dlib ignores the EXIF orientation; the faces are found and aligned on the upright photo instead."""
    folder = tmp_path / "in"
    folder.mkdir()
    upright = Image.fromarray(astronaut)
    upright.save(folder / "upright.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned a quarter to the left; viewers turn it back
    upright.transpose(Image.Transpose.ROTATE_90).save(folder / "sideways.png", exif=exif)
    out = tmp_path / "out"
    assert _script().main([str(folder), str(out), "--size", "32", "--quiet"]) == 0
    for i in (0, 1):
        sideways = np.asarray(Image.open(out / "hr" / f"sideways_{i}.png"))
        np.testing.assert_array_equal(sideways, np.asarray(Image.open(out / "hr" / f"upright_{i}.png")))

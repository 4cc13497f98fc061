"""Identity distance (dlib descriptors), skin tone (ITA) and the face run columns, on real photos.

Real faces: ``skimage.data.astronaut()`` always; real CelebA crops when ``pulse-fetch celeba`` has put them
in ``$PULSE_CACHE/celeba/`` (CI fetches them; skipped otherwise). Everything that needs dlib skips cleanly
without the ``faces`` extra.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pulse.data import CELEBA_FACE_BOX, Problem, celeba_face
from pulse.io.celeba import CelebAUnavailable, celeba_photos
from pulse.metrics import FaceMetrics, count_identities, faces_available, ita_group, srgb_to_lab
from pulse.metrics import face_metrics as face_metrics_module
from pulse.metrics.skin import ita_of_lab
from tests.helpers import fake_result


def fetched_celeba() -> list[Path]:
    """The fetched CelebA photos; read at collection, before conftest points PULSE_CACHE at an empty folder."""
    try:
        return celeba_photos()
    except CelebAUnavailable:
        return []


CELEBA = fetched_celeba()

needs_faces = pytest.mark.skipif(not faces_available(), reason='needs the faces extra (pip install -e ".[faces]")')
needs_celeba = pytest.mark.skipif(len(CELEBA) < 4, reason="needs real CelebA crops: run `pulse-fetch celeba`")


def to_tensor(image: Image.Image, size: int) -> torch.Tensor:
    """``[3, size, size]`` in [0, 1] from a PIL image (antialiased resize)."""
    array = np.asarray(image.convert("RGB").resize((size, size), Image.LANCZOS), dtype=np.float32) / 255
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue()))


def astronaut_face() -> Image.Image:
    """Eileen Collins' face from ``skimage.data.astronaut()``, framed like an aligned CelebA crop."""
    skdata = pytest.importorskip("skimage.data")
    return Image.fromarray(skdata.astronaut()).crop((158, 50, 282, 174))


def darker(image: torch.Tensor, factor: float = 0.6) -> torch.Tensor:
    """The same photo with less light: linear-light intensities times ``factor``, back to sRGB."""
    linear = torch.where(image > 0.04045, ((image + 0.055) / 1.055) ** 2.4, image / 12.92) * factor
    return torch.where(linear > 0.0031308, 1.055 * linear.clamp_min(1e-12) ** (1 / 2.4) - 0.055, 12.92 * linear)


def test_srgb_to_lab_matches_scikit_image():
    color = pytest.importorskip("skimage.color")
    rng = np.random.default_rng(0)
    rgb = rng.random((2, 3, 8, 8))
    rgb[0, :, 0, 0] = 0.0  # black and white ends of the curve
    rgb[0, :, 0, 1] = 1.0
    ours = srgb_to_lab(torch.from_numpy(rgb)).numpy()
    theirs = np.stack([color.rgb2lab(image.transpose(1, 2, 0)).transpose(2, 0, 1) for image in rgb])
    # scikit-image rounds the CIE constants (0.008856, 7.787); ours are exact ((6/29)^3, 841/108).
    np.testing.assert_allclose(ours, theirs, atol=1e-3)


def test_ita_formula_and_groups():
    angle = ita_of_lab(torch.tensor([50.0, 100.0, 0.0, 70.0]), torch.tensor([10.0, 0.0, 0.0001, 20.0]))
    np.testing.assert_allclose(angle.numpy(), [0.0, 90.0, -90.0, 45.0], atol=1e-3)
    expected = {60: "very light", 55: "light", 41.5: "light", 30: "intermediate", 28: "tan", 0: "brown", -31: "dark"}
    assert {value: ita_group(value) for value in expected} == expected
    assert ita_group(math.nan) is None


def test_count_identities_links_faces_within_the_threshold():
    descriptors = torch.zeros(5, 128, dtype=torch.float64)
    descriptors[1, 0] = 0.5  # same person as 0
    descriptors[2, 0] = 1.0  # same as 1 (0.5 away), not as 0: one chain, one identity
    descriptors[3, 1] = 2.0  # someone else
    descriptors[4, 1] = 2.0
    descriptors[4, 2] = 0.7  # 0.7 from 3: a third person
    assert count_identities(descriptors) == 3
    assert count_identities(descriptors, threshold=0.75) == 2
    assert count_identities(descriptors[:1]) == 1


@needs_faces
def test_identity_distance_on_a_real_photo():
    from pulse.metrics import identity_distance

    face = astronaut_face()
    for size in (64, 128):
        photo = to_tensor(face, size)[None]
        assert identity_distance(photo, photo).tolist() == [0.0]
        assert identity_distance(photo, to_tensor(jpeg(face, 40), size)[None]).item() < 0.3
    with pytest.raises(ValueError, match="as many images"):
        identity_distance(photo.expand(2, -1, -1, -1), photo)


@needs_faces
def test_ita_is_lower_for_a_darkened_face_and_the_region_is_skin():
    from pulse.metrics import face_landmarks, ita, skin_mask

    photo = to_tensor(astronaut_face(), 128)[None]
    shade = darker(photo)
    landmarks = face_landmarks(photo)
    assert ita(shade, landmarks) < ita(photo, landmarks) - 10
    assert ita(shade) < ita(photo) - 10  # with each image's own landmarks
    gray = photo.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
    assert ita(gray, landmarks).isnan().all()  # a grayscale photo has no skin colour to measure
    mask = skin_mask(landmarks.points, 128, 128)[0]
    assert mask.sum() > 200
    # No pixel of the region lies inside the eyes, brows or lips (their landmark polygons).
    features = Image.new("L", (128, 128), 0)
    from PIL import ImageDraw

    draw = ImageDraw.Draw(features)
    points = landmarks.points[0].numpy()
    for indices in (range(36, 42), range(42, 48), range(48, 60), range(17, 22), range(22, 27)):
        draw.polygon([tuple(points[i]) for i in indices], fill=1)
    assert not (mask & torch.from_numpy(np.asarray(features, dtype=bool).copy())).any()


@needs_faces
@needs_celeba
def test_identity_and_skin_tone_on_real_celeba_crops():
    from pulse.metrics import face_descriptors, identity_distance, ita

    faces = torch.stack([celeba_face(path, 64) for path in CELEBA[:4]])  # HR of data=celeba
    compressed = torch.stack([to_tensor(jpeg(Image.open(path), 40).crop(CELEBA_FACE_BOX), 64) for path in CELEBA[:4]])
    assert identity_distance(faces[:2], faces[:2]).abs().max() == 0
    people, jpegs = face_descriptors(faces), face_descriptors(compressed)
    assert (people - jpegs).norm(dim=1).max() < 0.3
    assert (people - people[[1, 2, 3, 0]]).norm(dim=1).min() > 0.5  # four different people
    assert (ita(darker(faces)) < ita(faces) - 5).all()


@needs_faces
def test_face_columns_of_a_run():
    truth = to_tensor(astronaut_face(), 64)
    other = torch.flip(truth, dims=[1])  # upside down: still a face image, landmarks far off
    sr = torch.stack([truth, darker(truth), truth, truth])
    problems = [Problem("a", truth[:, ::4, ::4], truth), Problem("b", truth[:, ::4, ::4], None)]
    values = FaceMetrics()(fake_result(sr, [0, 0, 1, 1], [0, 1, 0, 1]), problems)
    columns = values.values
    assert columns["id_dist_hr"][0] == 0 and columns["id_match_hr"][0] == 1
    assert columns["ita_shift"][0] == 0 and columns["ita_shift"][1] < -10  # darker output: negative shift
    assert all(math.isnan(columns[name][2]) for name in ("id_dist_hr", "id_match_hr", "ita_hr", "ita_shift"))
    assert math.isfinite(columns["ita_sr"][2])
    assert columns["id_distinct"].tolist()[2:] == [1.0, 1.0] and columns["id_diversity"][2] == 0
    single = FaceMetrics()(fake_result(torch.stack([truth, other]), [0, 1], [0, 0]), problems)
    assert "solver.duplicates >= 2" in single.notes["id_diversity, id_distinct"]


def test_face_columns_are_null_with_one_line_without_the_extra(monkeypatch):
    monkeypatch.setattr(face_metrics_module, "unavailable_reason", lambda: "dlib is not installed; pip install x")
    truth = torch.rand(3, 16, 16)
    values = FaceMetrics()(fake_result(torch.stack([truth, truth]), [0, 0], [0, 1]), [Problem("a", truth, truth)])
    assert all(torch.isnan(column).all() for column in values.values.values())
    assert len(values.values) == 7 and list(values.notes.values()) == ["dlib is not installed; pip install x"]


@needs_faces
def test_skin_tone_alone_loads_no_recognition_network(monkeypatch):
    """No ground truth and one search per input: only ita_sr applies, so no identity descriptor is computed."""
    from pulse.metrics import faces as faces_module

    truth = to_tensor(astronaut_face(), 64)
    expected = FaceMetrics()(fake_result(truth[None], [0], [0]), [Problem("a", truth[:, ::4, ::4], truth)])

    def refuse():
        raise AssertionError("the recognition network was asked for")

    monkeypatch.setattr(faces_module, "_recognition_model", refuse)
    values = FaceMetrics()(fake_result(truth[None], [0], [0]), [Problem("a", truth[:, ::4, ::4], None)])
    assert values.values["ita_sr"][0] == expected.values["ita_sr"][0]  # the same landmarks, the same tone
    assert math.isnan(values.values["id_dist_hr"][0]) and math.isnan(values.values["id_distinct"][0])
    with pytest.raises(AssertionError, match="recognition network"):  # with ground truth it is needed
        FaceMetrics()(fake_result(truth[None], [0], [0]), [Problem("a", truth[:, ::4, ::4], truth)])


@needs_faces
def test_ita_converts_only_the_skin_box_and_gives_the_whole_image_value():
    from pulse.metrics.faces import face_landmarks
    from pulse.metrics.skin import skin_mask

    faces = torch.stack([to_tensor(astronaut_face(), 256), darker(to_tensor(astronaut_face(), 256))])
    landmarks = face_landmarks(faces)
    lab = srgb_to_lab(faces)  # the definition: CIELAB of every pixel, averaged over the skin mask
    weight = skin_mask(landmarks.points, 256, 256).double().unsqueeze(1)
    mean = (lab * weight).flatten(2).sum(2) / weight.flatten(1).sum(1, keepdim=True)
    expected = ita_of_lab(mean[:, 0], mean[:, 2])
    from pulse.metrics import ita

    assert torch.allclose(ita(faces, landmarks), expected, rtol=0, atol=1e-9)

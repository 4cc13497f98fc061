"""Skin tone as the Individual Typology Angle (ITA) of a landmark-defined facial skin region.

ITA (Chardon et al. 1991) is ``atan2(L* - 50, b*)`` in degrees, from CIELAB lightness ``L*`` and the
yellow-blue axis ``b*``; darker skin gives a lower angle. The standard skin-tone groups are
:data:`ITA_GROUPS` (very light > 55, light 41-55, intermediate 28-41, tan 10-28, brown -30-10, dark < -30).

The skin region (:func:`skin_mask`) is built from dlib's 68 landmarks (:mod:`pulse.metrics.faces`):

- each **cheek**: the polygon jaw point 1, 2, 3 (or 15, 14, 13), mouth corner 48 (54), nose wing 31 (35)
  and the lower eyelid 41, 40 (46, 47), shrunk to 70 % around its centroid so that the eye, nose, mouth
  and jaw edges (and the background beyond the jaw) stay outside;
- the **forehead**: a band above the inner halves of the brows (from the middle of the image-left brow, point 19,
  to the middle of the image-right one, 24), from 0.15 to 0.45 interocular distances above the brows' top,
  along the face's vertical axis. Bangs falling over the forehead do enter it (choose
  ``regions=("cheeks",)`` to avoid them).

Eyes, brows, lips, nostrils, hair above the forehead band and background lie outside. ITA is computed
from the region's **mean** ``L*`` and mean ``b*`` (the colour averaged over the region, then its angle):
averaging per-pixel angles instead would let dark pixels with ``b*`` near 0, where the angle swings by
up to 180 degrees, dominate. Skin is yellowish (``b*`` typically 10-25); a region whose mean ``b*`` is
below :data:`MIN_B_STAR` (1) is near-neutral or bluish (a grayscale photo, whose ``b*`` is ~0 and whose angle
would sit at +-90 degrees whatever the lightness, or a strong colour cast), so its ITA is NaN.

ITA measures the photo, not only the person: on uncalibrated photos it moves with exposure and lighting as
well as with skin (see ``experiments/bias_audit``: in CelebA most faces with ITA < -30 are underexposed or
shadowed photos). A shift within one photo (``ita_shift``) compares two images of the same exposure.

sRGB -> CIELAB uses the sRGB transfer function, the sRGB/Rec.709 primaries and the D65 white
(``Xn, Yn, Zn = 0.95047, 1, 1.08883``), as ``skimage.color.rgb2lab`` does by default.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from pulse.metrics.faces import FaceLandmarks, face_landmarks

# ITA skin-colour categories (Del Bino et al. 2006, the usual ones in dermatology and skin-tone audits),
# as (name, lower bound, upper bound) in degrees: lower < ITA <= upper.
ITA_GROUPS: tuple[tuple[str, float, float], ...] = (
    ("very light", 55.0, math.inf),
    ("light", 41.0, 55.0),
    ("intermediate", 28.0, 41.0),
    ("tan", 10.0, 28.0),
    ("brown", -30.0, 10.0),
    ("dark", -math.inf, -30.0),
)
REGIONS = ("cheeks", "forehead")

_SRGB_TO_XYZ = torch.tensor(
    [
        [0.412453, 0.357580, 0.180423],
        [0.212671, 0.715160, 0.072169],
        [0.019334, 0.119193, 0.950227],
    ],
    dtype=torch.float64,
)
D65_WHITE = (0.95047, 1.0, 1.08883)

# Landmark polygons of the cheeks (image left, image right) before shrinking.
_CHEEKS = ((1, 2, 3, 48, 31, 40, 41), (15, 14, 13, 54, 35, 47, 46))
CHEEK_SHRINK = 0.7
FOREHEAD_BAND = (0.15, 0.45)  # interocular distances above the brows
MIN_B_STAR = 1.0  # below this mean b* the region is near-neutral (grayscale photo): no ITA


def srgb_to_lab(images: torch.Tensor) -> torch.Tensor:
    """CIELAB (D65) ``[B, 3, H, W]`` float64 (``L*`` in [0, 100]) of sRGB images ``[B, 3, H, W]`` in [0, 1]."""
    rgb = images.double().clamp(0, 1)
    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = torch.einsum("ij,bjhw->bihw", _SRGB_TO_XYZ.to(linear.device), linear)
    xyz = xyz / torch.tensor(D65_WHITE, dtype=torch.float64, device=xyz.device).view(1, 3, 1, 1)
    epsilon = (6 / 29) ** 3
    f = torch.where(xyz > epsilon, xyz.clamp_min(epsilon) ** (1 / 3), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    fx, fy, fz = f.unbind(1)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=1)


def ita_of_lab(lightness: torch.Tensor, b_star: torch.Tensor) -> torch.Tensor:
    """ITA in degrees, ``atan2(L* - 50, b*)``, elementwise."""
    return torch.rad2deg(torch.atan2(lightness - 50, b_star))


def _shrink(polygon: np.ndarray, factor: float) -> np.ndarray:
    centre = polygon.mean(axis=0)
    return centre + factor * (polygon - centre)


def skin_polygons(points: np.ndarray, regions: Sequence[str] = REGIONS) -> list[np.ndarray]:
    """The skin polygons ``[N, 2]`` (x, y) of one face's ``[68, 2]`` landmarks (see the module notes)."""
    unknown = set(regions) - set(REGIONS)
    if unknown or not regions:
        raise ValueError(f"unknown skin regions {sorted(unknown)}; choose from {list(REGIONS)}")
    polygons = []
    if "cheeks" in regions:
        polygons += [_shrink(points[list(indices)], CHEEK_SHRINK) for indices in _CHEEKS]
    if "forehead" in regions:
        left_eye, right_eye = points[36:42].mean(axis=0), points[42:48].mean(axis=0)
        interocular = float(np.linalg.norm(right_eye - left_eye))
        # "Up" is perpendicular to the eye line (towards the brows), so tilted faces are handled.
        across = (right_eye - left_eye) / max(interocular, 1e-9)
        up = np.array([across[1], -across[0]])
        brows = points[17:27]
        top = brows[np.argmax((brows - left_eye) @ up)]  # the brows' highest point along "up"
        base = [points[19], points[24]]
        lift = [float((top - p) @ up) for p in base]  # raise each end to the brows' top first
        low, high = FOREHEAD_BAND
        polygons.append(
            np.array(
                [
                    base[0] + up * (lift[0] + low * interocular),
                    base[1] + up * (lift[1] + low * interocular),
                    base[1] + up * (lift[1] + high * interocular),
                    base[0] + up * (lift[0] + high * interocular),
                ]
            )
        )
    return polygons


def skin_mask(landmarks: torch.Tensor, height: int, width: int, regions: Sequence[str] = REGIONS) -> torch.Tensor:
    """``[B, H, W]`` bool: the pixels (centres) inside each face's skin polygons, from ``[B, 68, 2]`` landmarks."""
    masks = []
    for points in landmarks.detach().double().cpu().numpy():
        canvas = Image.new("L", (width, height), 0)
        draw = ImageDraw.Draw(canvas)
        for polygon in skin_polygons(points, regions):
            draw.polygon([(float(x), float(y)) for x, y in polygon], fill=1)
        masks.append(torch.from_numpy(np.asarray(canvas, dtype=bool).copy()))
    return torch.stack(masks)


def ita(images: torch.Tensor, landmarks: FaceLandmarks | None = None, regions: Sequence[str] = REGIONS) -> torch.Tensor:
    """Individual Typology Angle in degrees ``[B]`` (float64) of the facial skin of ``[B, 3, H, W]`` in [0, 1].

    ITA of the mean ``L*`` and mean ``b*`` over the landmark-defined skin region (cheeks and forehead by
    default; see the module notes); lower is darker. NaN where the region holds no pixel (a face too
    small) or its mean ``b*`` is below 1 (grayscale photo or colour cast: ITA undefined). ``landmarks``
    (from :func:`pulse.metrics.faces.face_landmarks`) are computed when not given; that needs the ``faces`` extra.
    """
    if landmarks is None:
        landmarks = face_landmarks(images)
    mask = skin_mask(landmarks.points, *images.shape[-2:], regions=regions).to(images.device)
    means, counts = [], []
    for image, skin in zip(images, mask, strict=True):
        # Only this face's skin box is converted (at 1024 px the rest is most of the image); per image, so a
        # face's value does not depend on the other images of the batch.
        rows, columns = torch.nonzero(skin.any(dim=1)), torch.nonzero(skin.any(dim=0))
        if len(rows):
            box = (slice(int(rows[0]), int(rows[-1]) + 1), slice(int(columns[0]), int(columns[-1]) + 1))
            image, skin = image[:, box[0], box[1]], skin[box[0], box[1]]
        weight = skin.double()[None, None]
        counts.append(weight.sum())
        means.append((srgb_to_lab(image[None]) * weight).flatten(2).sum(2)[0] / counts[-1].clamp_min(1))
    mean, count = torch.stack(means), torch.stack(counts)
    angle = ita_of_lab(mean[:, 0], mean[:, 2]).cpu()
    defined = (count > 0) & (mean[:, 2] >= MIN_B_STAR)  # no pixels, or no skin colour to measure
    return torch.where(defined.cpu(), angle, torch.full_like(angle, math.nan))


def ita_group(value: float) -> str | None:
    """The ITA skin-tone group name of a value in degrees (``None`` for NaN)."""
    if math.isnan(value):
        return None
    for name, low, high in ITA_GROUPS:
        if low < value <= high:
            return name
    raise AssertionError(f"ITA groups do not cover {value}")

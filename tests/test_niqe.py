"""NIQE against an independent, slow numpy port of LIVE's MATLAB code (loops over blocks).

The published reference value (BasicSR's test: ``baboon.png``, Y channel, MATLAB NIQE 5.72957338) needs
an image we cannot ship: set ``PULSE_NIQE_BABOON`` to the file's path to check it.
"""

from __future__ import annotations

import logging
import math
import os
import warnings

import numpy as np
import pytest
import torch

from pulse.data import Problem
from pulse.losses import LossInputs
from pulse.metrics.niqe import (
    NIQEMetric,
    constant_windows,
    image_features,
    luminance,
    matlab_resize,
    mscn,
    niqe,
    niqe_loss,
    niqe_scores,
    niqe_term,
    pristine_model,
    round_half_up,
)
from tests.helpers import fake_result

ndimage = pytest.importorskip("scipy.ndimage")
special = pytest.importorskip("scipy.special")
skdata = pytest.importorskip("skimage.data")


@pytest.fixture(autouse=True)
def one_thread():
    """These images are small and NIQE is hundreds of small ops: one thread avoids stalls on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------- the reference, written from the MATLAB code


def ref_luminance(rgb: np.ndarray, convention: str) -> np.ndarray:
    """uint8 ``[H, W, 3]`` (or ``[H, W]``) -> rounded float64 luminance, MATLAB rgb2gray / rgb2ycbcr."""
    x = rgb.astype(np.float64)
    if x.ndim == 2:
        return x
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    if convention == "gray":
        # MATLAB's rgb2gray: the first row of the inverse of its NTSC (YIQ -> RGB) matrix.
        wr, wg, wb = np.linalg.inv([[1.0, 0.956, 0.621], [1.0, -0.272, -0.647], [1.0, -1.106, 1.703]])[0]
        y = wr * r + wg * g + wb * b
    else:
        y = (65.481 * r + 128.553 * g + 24.966 * b) / 255.0 + 16.0
    return np.floor(y + 0.5)


def ref_cubic(x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    return (1.5 * ax**3 - 2.5 * ax**2 + 1) * (ax <= 1) + (-0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2) * (
        (ax > 1) & (ax <= 2)
    )


def ref_contributions(n: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """MATLAB imresize's contributions(), one output pixel at a time."""
    width = 4.0 / scale if scale < 1 else 4.0
    taps = int(math.ceil(width)) + 2
    out = int(math.ceil(n * scale))
    indices = np.zeros((out, taps), dtype=np.int64)
    weights = np.zeros((out, taps))
    for i in range(out):
        u = (i + 1) / scale + 0.5 * (1 - 1 / scale)
        left = math.floor(u - width / 2)
        for p in range(taps):
            j = left + p  # 1-based
            d = u - j
            weights[i, p] = scale * ref_cubic(np.array(scale * d)) if scale < 1 else ref_cubic(np.array(d))
            m = (j - 1) % (2 * n)
            indices[i, p] = m if m < n else 2 * n - 1 - m
        weights[i] /= weights[i].sum()
    return indices, weights


def ref_resize_rows(img: np.ndarray, scale: float) -> np.ndarray:
    indices, weights = ref_contributions(img.shape[0], scale)
    out = np.zeros((indices.shape[0], img.shape[1]))
    for p in range(indices.shape[1]):  # tap by tap: a flat region stays exactly flat
        out = out + weights[:, p, None] * img[indices[:, p], :]
    return out


def ref_resize(img: np.ndarray, scale: float) -> np.ndarray:
    return ref_resize_rows(ref_resize_rows(img, scale).T, scale).T


def ref_mscn(img: np.ndarray) -> np.ndarray:
    window = pristine_model()["gaussian_window"]
    window = window / window.sum()
    mu = ndimage.correlate(img, window, mode="nearest")
    sigma = np.sqrt(np.abs(ndimage.correlate(img * img, window, mode="nearest") - mu * mu))
    centred = img - mu
    centred[np.abs(centred) < 1e-9] = 0.0  # the documented deviation: exact cancellations count as 0
    out = centred / (sigma + 1)
    flat = ndimage.maximum_filter(img, 7, mode="nearest") == ndimage.minimum_filter(img, 7, mode="nearest")
    out[flat] = 0.0
    return out


GAM = np.arange(200, 10001) / 1000.0
R_GAM = special.gamma(2 / GAM) ** 2 / (special.gamma(1 / GAM) * special.gamma(3 / GAM))


def ref_aggd(vec: np.ndarray) -> tuple[float, float, float]:
    """estimateaggdparam.m, NaN semantics included (empty sides give NaN, argmin of all-NaN is the first)."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        left = np.sqrt(np.mean(vec[vec < 0] ** 2))
        right = np.sqrt(np.mean(vec[vec > 0] ** 2))
        gammahat = left / right
        rhat = np.mean(np.abs(vec)) ** 2 / np.mean(vec**2)
        rhatnorm = rhat * (gammahat**3 + 1) * (gammahat + 1) / (gammahat**2 + 1) ** 2
        alpha = GAM[np.argmin((R_GAM - rhatnorm) ** 2)]
        factor = np.sqrt(special.gamma(1 / alpha) / special.gamma(3 / alpha))
    return alpha, left * factor, right * factor


def ref_block_features(block: np.ndarray) -> list[float]:
    """computefeature.m."""
    alpha, bl, br = ref_aggd(block.ravel())
    feat = [alpha, (bl + br) / 2]
    for shift in ((0, 1), (1, 0), (1, 1), (1, -1)):
        pair = block.ravel() * np.roll(block, shift, axis=(0, 1)).ravel()
        alpha, bl, br = ref_aggd(pair)
        feat += [alpha, (br - bl) * special.gamma(2 / alpha) / special.gamma(1 / alpha), bl, br]
    return feat


def ref_niqe(lum: np.ndarray) -> float:
    """computequality.m with 96x96 blocks, no overlap, all blocks used."""
    rows, cols = lum.shape[0] // 96, lum.shape[1] // 96
    img = lum[: rows * 96, : cols * 96]
    per_scale = []
    for scale in (1, 2):
        size = 96 // scale
        structdis = ref_mscn(img)
        feats = [
            ref_block_features(structdis[r * size : (r + 1) * size, c * size : (c + 1) * size])
            for c in range(cols)
            for r in range(rows)
        ]
        per_scale.append(np.array(feats))
        img = ref_resize(img, 0.5)
    feat = np.concatenate(per_scale, axis=1)
    mu_d = np.nanmean(feat, axis=0)
    cov_d = np.cov(feat[~np.isnan(feat).any(axis=1)], rowvar=False)
    model = pristine_model()
    diff = model["mu_pris_param"][0] - mu_d
    return float(np.sqrt(diff @ np.linalg.pinv((model["cov_pris_param"] + cov_d) / 2) @ diff))


# ---------------------------------------------------------------- helpers


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """uint8 ``[H, W, 3]`` or ``[H, W]`` -> ``[1, C, H, W]`` float64 in [0, 1]."""
    x = torch.from_numpy(rgb.astype(np.float64) / 255.0)
    return (x[None, None] if x.dim() == 2 else x.permute(2, 0, 1)[None]).contiguous()


IMAGES = {
    "astronaut": lambda: skdata.astronaut()[:384, :512],
    "coffee": lambda: skdata.coffee(),  # 400x600: cropped to 384x576 inside, like MATLAB
    "chelsea": lambda: skdata.chelsea()[:, :400],  # 300x400 -> 288x384
    "camera": lambda: skdata.camera()[64:320, 32:480],  # one channel
}


# ---------------------------------------------------------------- parity


@pytest.mark.parametrize(
    ("name", "convention"),
    [
        (name, convention)
        for name in sorted(IMAGES)
        for convention in ("gray", "y")
        if name != "camera" or convention == "gray"
    ],
)
def test_matches_the_reference_on_natural_images(name, convention):
    rgb = IMAGES[name]()
    ours = niqe(to_tensor(rgb), convention)
    assert ours.dtype == torch.float64 and ours.shape == (1,)
    expected = ref_niqe(ref_luminance(rgb, convention))
    assert 1.0 < expected < 20.0
    assert ours.item() == pytest.approx(expected, abs=1e-3)


def test_conventions_differ_and_are_recorded():
    rgb = IMAGES["astronaut"]()
    gray, y = niqe_scores(to_tensor(rgb), "gray")[0], niqe_scores(to_tensor(rgb), "y")[0]
    assert (gray.convention, y.convention) == ("gray", "y")
    assert gray.score != y.score
    assert gray.as_dict()["convention"] == "gray" and gray.upsample_factor == 1 and gray.note == ""
    assert niqe_scores(to_tensor(skdata.camera()[:192, :192]))[0].convention == "channel"
    with pytest.raises(ValueError, match=r"valid: \['gray', 'y'\]"):
        niqe(to_tensor(rgb), "ycbcr")


def test_luminance_rounds_like_matlab():
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]]], dtype=np.uint8)
    np.testing.assert_array_equal(luminance(to_tensor(rgb), "gray")[0].numpy(), ref_luminance(rgb, "gray"))
    np.testing.assert_array_equal(luminance(to_tensor(rgb), "y")[0].numpy(), ref_luminance(rgb, "y"))
    # MATLAB's round goes half away from zero (torch.round would give 126 and 128 here).
    halves = torch.tensor([126.5, 127.5, 0.49, 254.5], dtype=torch.float64)
    assert round_half_up(halves).tolist() == [127.0, 128.0, 0.0, 255.0]


def test_resize_matches_matlab_contributions_and_reproduces_ramps():
    rng = np.random.default_rng(0)
    img = rng.random((50, 37)) * 255
    ours = matlab_resize(torch.from_numpy(img)[None], 0.5)[0].numpy()
    assert ours.shape == (25, 19)
    np.testing.assert_allclose(ours, ref_resize(img, 0.5), atol=1e-10)
    up = matlab_resize(torch.from_numpy(img)[None], 3)[0].numpy()
    np.testing.assert_allclose(up, ref_resize(img, 3), atol=1e-10)
    # Keys' cubic reproduces linear functions: output pixel o samples input coordinate 2o + 0.5 (0-based).
    ramp = np.tile(np.arange(40, dtype=np.float64), (8, 1))
    half = matlab_resize(torch.from_numpy(ramp)[None], 0.5)[0].numpy()
    np.testing.assert_allclose(half[:, 2:-2], np.tile(2 * np.arange(2, 18) + 0.5, (4, 1)), atol=1e-12)


@pytest.mark.skipif(not os.environ.get("PULSE_NIQE_BABOON"), reason="set PULSE_NIQE_BABOON to baboon.png to check")
def test_published_baboon_value():
    from PIL import Image

    rgb = np.asarray(Image.open(os.environ["PULSE_NIQE_BABOON"]).convert("RGB"))
    assert niqe(to_tensor(rgb), "y").item() == pytest.approx(5.72957338, abs=2e-3)


# ---------------------------------------------------------------- flat regions, sizes, batches


def test_constant_windows_have_exactly_zero_mscn_and_match_the_reference():
    rgb = IMAGES["chelsea"]().copy()
    rgb[:150, :200] = 100  # one whole flat 96-px block, and flat windows at both scales
    lum = luminance(to_tensor(rgb))
    flat = constant_windows(lum)
    assert flat[0, :140, :190].all() and not flat[0, 200:, 300:].all()
    coefficients = mscn(lum)
    assert (coefficients[flat] == 0).all()
    assert (coefficients[~flat] != 0).float().mean() > 0.9
    half = matlab_resize(lum[:, :288, :384], 0.5)
    assert (mscn(half)[constant_windows(half)] == 0).all() and constant_windows(half)[0, :60, :80].all()
    features, defined = image_features(lum)
    # The flat block's fits are undefined (no negative or positive value), as MATLAB's NaN.
    assert not defined[0, 0, 1] and defined[0, -1].all()
    expected = ref_niqe(ref_luminance(rgb, "gray"))
    assert niqe(to_tensor(rgb)).item() == pytest.approx(expected, abs=1e-3)


def test_small_images_give_nan_and_one_warning(caplog):
    small = to_tensor(IMAGES["astronaut"]()[:64, :200])
    with caplog.at_level(logging.WARNING, logger="pulse.metrics.niqe"):
        scores = niqe(small)
    assert torch.isnan(scores).all()
    warning = [r.getMessage() for r in caplog.records]
    assert len(warning) == 1 and "192x192" in warning[0] and "64x200" in warning[0]
    record = niqe_scores(small)[0]
    assert math.isnan(record.score) and record.as_dict()["score"] is None and "192x192" in record.note


def test_upsample_small_scores_an_upsampled_copy_and_says_so():
    small = to_tensor(IMAGES["astronaut"]()[100:164, 100:164])
    record = niqe_scores(small, upsample_small=True)[0]
    assert record.upsample_factor == 3 and (record.height, record.width) == (64, 64)
    assert math.isfinite(record.score) and "upsampled x3" in record.note
    expected = ref_niqe(
        np.floor(np.clip(ref_resize(ref_luminance(IMAGES["astronaut"]()[100:164, 100:164], "gray"), 3), 0, 255) + 0.5)
    )
    assert record.score == pytest.approx(expected, abs=1e-3)


def test_batch_equals_single_images():
    a = to_tensor(IMAGES["astronaut"]()[:192, :288])
    b = to_tensor(IMAGES["coffee"]()[100:292, 200:488])
    batch = niqe(torch.cat([a, b]))
    torch.testing.assert_close(batch, torch.cat([niqe(a), niqe(b)]), rtol=1e-12, atol=1e-12)
    assert batch[0] != batch[1]


def test_blurred_copy_scores_worse():
    rgb = IMAGES["astronaut"]()
    sharp = to_tensor(rgb).float()
    blurred = torch.nn.functional.interpolate(
        torch.nn.functional.avg_pool2d(sharp, 4), scale_factor=4, mode="bicubic", align_corners=False
    ).clamp(0, 1)
    assert niqe(blurred).item() > niqe(sharp).item() + 1.0


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    images = to_tensor(IMAGES["astronaut"]())
    on_gpu = niqe(images.cuda())
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), niqe(images), rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------- loss term


def loss_inputs(hr: torch.Tensor) -> LossInputs:
    lr = torch.nn.functional.avg_pool2d(hr, 8)
    return LossInputs(lr_gen=lr, lr_ref=lr.detach(), style=torch.zeros(len(hr), 1, 4), hr_gen=hr, eps=2e-3)


def test_loss_term_has_finite_gradients_and_tracks_the_metric():
    images = torch.cat([to_tensor(IMAGES["astronaut"]()[:192, :192]), to_tensor(IMAGES["coffee"]()[:192, :192])])
    images = images.float()
    images[1, :, :100, :100] = 0.5  # a flat patch: the differentiable path must not produce NaN there
    hr = images.clone().requires_grad_(True)
    values = niqe_term(loss_inputs(hr))
    assert values.shape == (2,) and values.dtype == torch.float32
    values.sum().backward()
    assert torch.isfinite(hr.grad).all() and hr.grad.abs().sum() > 0
    torch.testing.assert_close(values.detach().double(), niqe(images), atol=0.1, rtol=0.0)


def test_flat_images_are_nan_as_a_metric_and_finite_as_a_loss():
    flat = torch.full((1, 3, 192, 192), 0.4)
    assert torch.isnan(niqe(flat)).all()  # every fit but the shapes is undefined, as MATLAB's NaN
    hr = flat.clone().requires_grad_(True)
    value = niqe_loss(hr)
    value.sum().backward()
    assert torch.isfinite(value).all() and torch.isfinite(hr.grad).all()


def test_loss_term_refuses_small_outputs():
    with pytest.raises(ValueError, match=r"192x192 px .* outputs are 64x64"):
        niqe_loss(torch.rand(1, 3, 64, 64))


# ---------------------------------------------------------------- run metric


def test_metric_scores_outputs_and_known_ground_truth():
    truth = to_tensor(IMAGES["astronaut"]()[:192, :192])[0].float()
    other = to_tensor(IMAGES["coffee"]()[:192, :192])[0].float()
    sr = torch.stack([truth.flip(-1), other, truth * 0.8])
    problems = [Problem("a", truth[:, ::8, ::8], truth), Problem("b", other[:, ::8, ::8], None)]
    values = NIQEMetric()(fake_result(sr, [0, 1, 0], [0, 0, 1], factor=8), problems)
    torch.testing.assert_close(values.values["niqe"], niqe(sr))
    truth_score = niqe(truth[None]).item()
    hr = values.values["niqe_hr"]
    assert hr[0] == hr[2] == pytest.approx(truth_score) and math.isnan(hr[1])
    assert values.notes == {}
    y = NIQEMetric("y")(fake_result(sr, [0, 1, 0], [0, 0, 1], factor=8), problems)
    assert set(y.values) == {"niqe_y", "niqe_y_hr"}


def test_metric_is_null_with_the_reason_on_small_outputs():
    sr = torch.rand(2, 3, 64, 64)
    values = NIQEMetric()(fake_result(sr, [0, 0], [0, 1], factor=8), [Problem("a", sr[0, :, ::4, ::4], sr[0])])
    reason = "NIQE needs at least 192x192 px (two 96-px blocks per side); outputs are 64x64"
    assert values.notes == {"niqe": reason, "niqe_hr": reason}
    assert all(torch.isnan(v).all() for v in values.values.values())


def test_metric_notes_missing_ground_truth():
    sr = to_tensor(IMAGES["coffee"]()[:192, :192]).float()
    values = NIQEMetric()(fake_result(sr, [0], [0], factor=8), [Problem("a", sr[0, :, ::8, ::8], None)])
    assert torch.isfinite(values.values["niqe"]).all() and "niqe_hr" not in values.values
    assert "no ground truth" in values.notes["niqe_hr"]


def test_torchmetrics_niqe_aggregates_batches_and_counts_unscorable_images():
    from pulse.metrics import NIQE

    astronaut = to_tensor(IMAGES["astronaut"]()).float()  # [1, 3, 384, 512]
    top, bottom = astronaut[..., :192, :384], astronaut[..., 192:, :384]
    noise = torch.rand(1, 3, 192, 384, generator=torch.Generator().manual_seed(0))
    metric = NIQE()
    metric.update(top)
    metric.update(torch.cat([bottom, noise]))
    metric.update(torch.rand(2, 3, 64, 64))  # too small: counted, not averaged
    scores = torch.cat([niqe(top), niqe(bottom), niqe(noise)])
    out = metric.compute()
    assert int(out["count"]) == 3 and int(out["unscored"]) == 2
    assert float(out["mean"]) == pytest.approx(float(scores.mean()), abs=1e-9)
    assert float(out["std"]) == pytest.approx(float(scores.std()), abs=1e-9)
    with pytest.warns(UserWarning, match="before the ``update`` method"):  # torchmetrics' own warning
        empty = NIQE().compute()
    assert math.isnan(float(empty["mean"])) and int(empty["count"]) == 0

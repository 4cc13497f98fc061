"""Fidelity and diversity metrics against independent computations."""

import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from pulse.data import Problem
from pulse.metrics import Diversity, GroundTruthFidelity, downscale_error, mean_pairwise, pixel_mse, psnr, ssim
from tests.helpers import fake_result


def test_psnr_and_downscale_error_formulas():
    a = torch.zeros(2, 3, 4, 4)
    b = torch.full((2, 3, 4, 4), 0.1)
    b[1] = 0.2
    torch.testing.assert_close(downscale_error(a, b), torch.tensor([0.01, 0.04]))
    torch.testing.assert_close(psnr(a, b), torch.tensor([20.0, 10 * math.log10(1 / 0.04)], dtype=torch.float64))
    assert psnr(a, a)[0] == math.inf


def test_ssim_matches_scikit_image():
    rng = np.random.default_rng(0)
    x = rng.random((2, 3, 48, 48)).astype(np.float32)
    y = np.clip(x + 0.1 * rng.standard_normal(x.shape).astype(np.float32), 0, 1)
    ours = ssim(torch.from_numpy(x), torch.from_numpy(y))
    theirs = [
        structural_similarity(
            x[i].transpose(1, 2, 0),
            y[i].transpose(1, 2, 0),
            data_range=1.0,
            channel_axis=2,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
        for i in range(2)
    ]
    np.testing.assert_allclose(ours.numpy(), theirs, atol=2e-3)
    assert ssim(torch.from_numpy(x), torch.from_numpy(x)).min() > 0.9999


def test_ground_truth_fidelity_is_null_where_truth_is_unknown():
    torch.manual_seed(0)
    truth = torch.rand(3, 16, 16)
    sr = torch.stack([truth, truth * 0.5])
    problems = [Problem("a", truth[:, ::4, ::4], truth), Problem("b", truth[:, ::4, ::4], None)]
    values = GroundTruthFidelity()(fake_result(sr, [0, 1], [0, 0]), problems)
    assert values.values["psnr_hr"][0] == math.inf and math.isnan(values.values["psnr_hr"][1])
    assert values.values["ssim_hr"][0] == pytest.approx(1.0, abs=1e-5)
    no_truth = GroundTruthFidelity()(fake_result(sr, [0, 0], [0, 1]), [problems[1]])
    assert no_truth.values == {} and "no ground truth" in no_truth.notes["psnr_hr"]


def test_diversity_is_mean_pairwise_distance_per_input():
    images = torch.stack([torch.full((3, 4, 4), v) for v in (0.0, 0.2, 0.6, 0.5, 0.5)])
    result = fake_result(images, [0, 0, 0, 1, 1], [0, 1, 2, 0, 1])
    values = Diversity()(result, [None, None]).values["diversity_l2"]
    expected_first = (0.2**2 + 0.6**2 + 0.4**2) / 3
    torch.testing.assert_close(values, torch.tensor([expected_first] * 3 + [0.0, 0.0], dtype=torch.float64))
    assert mean_pairwise(images[:2], pixel_mse) == pytest.approx(0.04)
    single = Diversity()(fake_result(images[:2], [0, 1], [0, 0]), [None, None])
    assert single.values == {} and "solver.duplicates >= 2" in single.notes["diversity_l2"]


def test_lpips_columns_are_null_with_the_fix_when_weights_are_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # PULSE_CACHE is already an empty temp dir
    truth = torch.rand(3, 64, 64)
    result = fake_result(torch.stack([truth, truth]), [0, 0], [0, 1])
    problems = [Problem("a", truth[:, ::4, ::4], truth)]
    fidelity = GroundTruthFidelity("alex")(result, problems)
    assert "lpips_hr" not in fidelity.values and "fetch_weights.py lpips" in fidelity.notes["lpips_hr"]
    diversity = Diversity("alex")(result, problems)
    assert "diversity_lpips" not in diversity.values and "fetch_weights.py lpips" in diversity.notes["diversity_lpips"]

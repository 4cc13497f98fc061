import math

import pytest
import torch

from pulse.losses import LossInputs, PulseLoss, geocross, l1, l2


def official_l2_sum(gen, ref, eps):
    return (gen - ref).pow(2).mean((1, 2, 3)).clamp(min=eps).sum()


def test_l2_l1_per_sample_sum_to_official_terms():
    torch.manual_seed(0)
    gen, ref = torch.rand(4, 3, 8, 8), torch.rand(4, 3, 8, 8)
    ref[0] = gen[0] + 0.001  # below eps: clamped
    eps = 2e-3
    per_sample = l2(gen, ref, eps)
    assert per_sample.shape == (4,)
    assert per_sample[0].item() == pytest.approx(eps)
    torch.testing.assert_close(per_sample.sum(), official_l2_sum(gen, ref, eps))
    expected_l1 = 10 * (gen - ref).abs().mean((1, 2, 3)).clamp(min=eps)
    torch.testing.assert_close(l1(gen, ref, eps), expected_l1)


def direct_geocross(latent: torch.Tensor) -> torch.Tensor:
    """Mean over ordered pairs of the squared angle arccos(<x, y> / |x||y|), times D / 8."""
    batch, layers, dim = latent.shape
    out = torch.zeros(batch, dtype=torch.float64)
    for b in range(batch):
        total = 0.0
        for i in range(layers):
            for j in range(layers):
                x, y = latent[b, i].double(), latent[b, j].double()
                cos = (x @ y / (x.norm() * y.norm())).clamp(-1, 1)
                total += math.acos(cos.item()) ** 2 if i != j else 0.0
        out[b] = total / layers**2 * dim / 8
    return out


def test_geocross_equals_direct_geodesic_computation():
    torch.manual_seed(1)
    # Equal-norm rows: the chord formula gives the true angle exactly then.
    latent = torch.nn.functional.normalize(torch.randn(3, 6, 16), dim=-1) * 4.0
    torch.testing.assert_close(geocross(latent).double(), direct_geocross(latent), rtol=1e-4, atol=1e-4)


def test_geocross_zero_for_identical_or_single_rows():
    row = torch.randn(2, 1, 32)
    assert geocross(row).abs().max() == 0
    assert geocross(row.expand(-1, 5, -1)).abs().max() < 1e-4


def test_geocross_gradient_is_finite_on_identical_rows():
    latent = torch.randn(1, 1, 8).expand(1, 4, 8).clone().requires_grad_(True)
    geocross(latent).sum().backward()
    assert torch.isfinite(latent.grad).all()


def inputs(batch=2, layers=3):
    torch.manual_seed(2)
    return LossInputs(
        lr_gen=torch.rand(batch, 3, 4, 4),
        lr_ref=torch.rand(batch, 3, 4, 4),
        style=torch.randn(batch, layers, 8),
        hr_gen=torch.rand(batch, 3, 16, 16),
        eps=1e-3,
    )


def test_pulse_loss_weighted_sum_and_zero_weight_is_logged_only():
    x = inputs()
    total, terms = PulseLoss({"l2": {"weight": 100}, "geocross": 0.05}, eps=1e-3)(x)
    torch.testing.assert_close(total, 100 * l2(x.lr_gen, x.lr_ref, 1e-3) + 0.05 * geocross(x.style))
    total0, terms0 = PulseLoss({"l2": 100, "geocross": 0})(x)
    assert "geocross" in terms0 and terms0["geocross"].abs().sum() > 0
    torch.testing.assert_close(total0, 100 * terms0["l2"])


def test_official_loss_string():
    loss = PulseLoss.from_string("100*L2+0.05*GEOCROSS", eps=2e-3)
    assert loss.weights == {"l2": 100.0, "geocross": 0.05}


def test_unknown_term_lists_valid_ones():
    import pulse.perceptual_terms  # noqa: F401  (registers lpips_lr and niqe)

    with pytest.raises(
        ValueError,
        match=r"unknown loss term.*'perceptual'.*valid terms: "
        r"\['diversity', 'geocross', 'l1', 'l2', 'lpips_lr', 'niqe'\]",
    ):
        PulseLoss({"perceptual": 1.0})
    with pytest.raises(ValueError, match="unknown option"):
        PulseLoss({"l2": {"weight": 1, "wieght": 2}})


def test_duplicate_diversity_is_minus_mean_distance_within_each_input():
    from pulse.losses import duplicate_diversity

    images = torch.stack([torch.full((3, 2, 2), v) for v in (0.0, 0.5, 1.0, 0.3)])
    groups = torch.tensor([0, 0, 0, 1])
    got = duplicate_diversity(images, groups)
    expected = torch.tensor([-(0.25 + 1.0) / 2, -(0.25 + 0.25) / 2, -(1.0 + 0.25) / 2, 0.0])
    torch.testing.assert_close(got, expected)
    assert duplicate_diversity(images, None).abs().sum() == 0


def test_lpips_term_needs_its_weights_before_the_run_starts(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # PULSE_CACHE already points to an empty folder
    from pulse.metrics.lpips import LPIPSUnavailable
    from pulse.perceptual_terms import perceptual_loss

    with pytest.raises(LPIPSUnavailable, match="fetch_weights.py lpips"):
        perceptual_loss({"l2": 100, "lpips_lr": 1})


def test_perceptual_loss_configs_register_their_terms_explicitly():
    from pathlib import Path

    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    configs = str(Path(__file__).resolve().parents[1] / "configs")
    with initialize_config_dir(config_dir=configs, version_base="1.3"):
        niqe = compose(config_name="config", overrides=["loss=l2+geocross+niqe"])
        lpips = compose(config_name="config", overrides=["loss=l2+geocross+lpips"])
    assert niqe.loss._target_ == lpips.loss._target_ == "pulse.perceptual_terms.perceptual_loss"
    loss = instantiate(niqe.loss)
    assert isinstance(loss, PulseLoss) and loss.weights == {"l2": 100.0, "geocross": 0.05, "niqe": 0.01}

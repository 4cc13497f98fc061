"""The Hydra CLI: configs compose, options are validated with clear messages, and run.py runs end to end."""

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from hydra.utils import instantiate
from omegaconf import OmegaConf

import run as cli
from pulse.losses import PulseLoss
from pulse.optim import SphericalOptimizer

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = str(ROOT / "configs")


def make_cfg(*overrides: str):
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (ROOT / "configs" / group).glob("*.yaml"))


def test_paper_setup_by_name():
    cfg = make_cfg("loss=l2+geocross", "optimizer=spherical_adam")
    loss = instantiate(cfg.loss)
    assert isinstance(loss, PulseLoss) and loss.weights == {"l2": 100.0, "geocross": 0.05}
    assert loss.eps == 2e-3 == cfg.solver.eps
    factory = instantiate(cfg.optimizer)
    opt = factory(params=[torch.zeros(1, 1, 4, requires_grad=True)])
    assert isinstance(opt, SphericalOptimizer) and isinstance(opt.optimizer, torch.optim.Adam)
    assert opt.param_groups[0]["lr"] == 0.4
    assert cfg.solver.steps == 100 and cfg.schedule.name == "linear1cycledrop"


def test_weights_and_eps_are_overridable():
    cfg = make_cfg("loss=l1+geocross", "loss.terms.l1.weight=50", "solver.eps=1e-3")
    loss = instantiate(cfg.loss)
    assert loss.weights["l1"] == 50.0 and loss.eps == 1e-3


def test_unknown_option_lists_the_valid_ones():
    with pytest.raises(HydraException, match=r"(?s)Could not find 'loss/perceptual'.*l2\+geocross"):
        make_cfg("loss=perceptual")
    with pytest.raises(HydraException, match="solver.stpes"):
        make_cfg("solver.stpes=10")
    cfg = make_cfg("+loss.terms.lpips_hr.weight=1")
    with pytest.raises(Exception, match=r"unknown loss term.*valid terms"):
        instantiate(cfg.loss)


# Options that need more than their defaults to build: extra overrides, and the factor they accept.
NEEDS_FILE = {"kernel"}
SAME_SIZE_OPERATORS = {"gray", "inpaint"}


@pytest.mark.parametrize("group", ["loss", "optimizer", "downscale", "schedule"])
def test_every_option_of_a_group_builds(group, tmp_path):
    from pulse.metrics.lpips import lpips_available

    kernel = tmp_path / "kernel.npy"
    np.save(kernel, np.ones((3, 3)))
    for option in options(group):
        extra = [f"downscale.path={kernel}"] if group == "downscale" and option in NEEDS_FILE else []
        cfg = make_cfg(f"{group}={option}", *extra)
        if "lpips" in option and not lpips_available("alex"):
            with pytest.raises(Exception, match="fetch_weights.py lpips"):  # fails at build time, naming the fix
                instantiate(cfg[group])
            continue
        built = instantiate(cfg[group])
        if group == "optimizer":
            built(params=[torch.zeros(1, 1, 4, requires_grad=True)])
        if group == "downscale":
            factor = 1 if option in SAME_SIZE_OPERATORS else 4
            assert built(factor)(torch.rand(1, 3, 16, 16)).shape == (1, 3, 16 // factor, 16 // factor)


def test_run_writes_results(tmp_path):
    cfg = make_cfg("solver.steps=5", "data.num=2", "data.factors=[8]", "progress=false", f"out_dir={tmp_path}")
    summary = cli.run(cfg)
    assert summary.samples == 2
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert [r["name"] for r in rows] == ["face000_x8", "face001_x8"]
    assert OmegaConf.load(tmp_path / "config.yaml").solver.steps == 5
    assert len(list((tmp_path / "sr").glob("*.png"))) == 2 and (tmp_path / "grid.png").is_file()


def test_runs_are_float32_on_gpus_unless_tf32_is_asked_for(tmp_path, monkeypatch):
    # torch's own default lets cuDNN convolutions use TF32; run.py must switch it off (and on when asked).
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    base = ("solver.steps=1", "data.num=1", "data.factors=[8]", "progress=false")
    cli.run(make_cfg(*base, f"out_dir={tmp_path / 'fp32'}"))
    assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    cli.run(make_cfg(*base, "tf32=true", f"out_dir={tmp_path / 'tf32'}"))
    assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False


def test_stylegan_ffhq_without_weights_fails_clearly(tmp_path, monkeypatch):
    cfg = make_cfg("generator=stylegan_ffhq", f"generator.cache_dir={tmp_path}")
    # Hydra wraps the error; the message must still name the file, the folder and the fix.
    with pytest.raises(Exception, match=r"(?s)synthesis\.pt.*fetch_weights\.py ffhq") as error:
        instantiate(cfg.generator)
    assert str(tmp_path) in str(error.value)


def test_command_line_end_to_end(tmp_path):
    """The real entry point, as a user types it (Hydra run folder, summary line)."""
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "run.py", "solver.steps=3", "data.num=1", "progress=false", f"hydra.run.dir={out}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "pulse: 2 samples, success" in proc.stdout
    assert (out / "results.csv").is_file() and (out / ".hydra" / "config.yaml").is_file()
    tags = OmegaConf.load(out / "config.yaml").tags
    assert "loss=l2+geocross" in tags and "generator=dcgan_faces" in tags

    bad = subprocess.run(
        [sys.executable, "run.py", "optimizer=lbfgs", f"hydra.run.dir={out}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode != 0
    assert "Could not find 'optimizer/lbfgs'" in bad.stderr and "spherical_adam" in bad.stderr


def test_every_solver_config_names_a_factory_and_builds():
    from pulse.solvers.base import Solver

    for name in options("solver"):
        short = {"langevin": "solver.burn_in=2"}.get(name, "solver.steps=2")  # samplers count burn-in, not steps
        cfg = make_cfg(f"solver={name}", "generator=stylegan_synthetic", short)
        assert "_target_" in cfg.solver, f"configs/solver/{name}.yaml names no _target_"
        if name in ("restorer",):  # needs a user's file
            continue
        _, solver = cli.build_solver(cfg)
        assert isinstance(solver, Solver)


def test_ilo_wraps_the_pulse_search_through_config():
    from pulse.solvers.ilo import ILOSolver
    from pulse.solvers.pulse import PulseSolver

    cfg = make_cfg("solver=ilo", "solver.steps=7", "solver.ilo.blocks=[1]", "seed=3", "schedule=fixed")
    _, solver = cli.build_solver(cfg)
    assert isinstance(solver, ILOSolver) and isinstance(solver.base, PulseSolver)
    assert solver.settings.steps == 7 and solver.settings.seed == 3 and solver.settings.schedule == "fixed"
    assert list(solver.ilo.blocks) == [1] and solver.total_steps == 7 + 50


class EchoSolver:
    """A solver defined outside pulse: nearest-neighbour upsampling, to show that config alone adds a solver."""

    def __init__(self, generator, loss=None, optimizer=None, downscale=None, schedule=None, seed=0, eps=0, scale=1.0):
        from types import SimpleNamespace

        self.generator = generator
        self.settings = SimpleNamespace(duplicates=1, seed=seed, steps=1)
        self.scale = scale

    def solve(self, lr_images, seeds=None, callback=None, frames_every=0):
        from tests.helpers import fake_result

        factor = self.generator.resolution // lr_images.shape[-1]
        hr = torch.nn.functional.interpolate(lr_images, scale_factor=factor, mode="nearest") * self.scale
        return fake_result(hr, list(range(len(hr))), [0] * len(hr), factor)


def test_a_solver_is_added_by_config_alone(tmp_path):
    cfg = make_cfg("data.num=2", "data.factors=[8]", "progress=false")
    cfg.solver = OmegaConf.create({"_target_": "tests.test_cli.EchoSolver", "scale": 0.5, "eps": 2e-3})
    cfg.out_dir = str(tmp_path)
    summary = cli.run(cfg)
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert summary.samples == 2 and len(rows) == 2 and (tmp_path / "sr" / f"{rows[0]['name']}_0.png").is_file()


def test_a_solver_config_without_target_is_refused():
    cfg = make_cfg()
    cfg.solver = OmegaConf.create({"steps": 3})
    with pytest.raises(ValueError, match="names no _target_"):
        cli.build_solver(cfg)

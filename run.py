"""Command-line entry point: `python run.py [GROUP=OPTION ...] [key=value ...]`, `python run.py -m ...` for sweeps.

Hydra composes `configs/`; :func:`run` builds the library objects from the composed config and runs them.
Tests call :func:`run` on configs made with Hydra's compose API.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from pulse.generators.base import check_generator
from pulse.runner import Runner, RunSummary
from pulse.solver import PulseSolver, SearchSettings

log = logging.getLogger("pulse")


def pick_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={name} requested but CUDA is not available; use device=cpu")
    return device


def build_data(cfg: DictConfig, generator):
    """The data source; folder sources need the generator's resolution, generated ones the generator."""
    target = cfg.data.get("_target_", "")
    if target.endswith("GeneratedFaces"):
        return instantiate(cfg.data, generator=generator)
    if target.endswith("ImageFolder"):
        return instantiate(cfg.data, resolution=generator.resolution)
    return instantiate(cfg.data)


def run(cfg: DictConfig) -> RunSummary:
    """Run PULSE as configured; returns the run's summary (also written to ``out_dir/summary.json``)."""
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, out_dir / "config.yaml", resolve=True)
    device = pick_device(cfg.device)

    generator = check_generator(instantiate(cfg.generator)).to(device)
    settings = SearchSettings(**cfg.solver, schedule=cfg.schedule.name, seed=cfg.seed)
    solver = PulseSolver(
        generator,
        loss=instantiate(cfg.loss),
        optimizer=instantiate(cfg.optimizer),
        downscale=instantiate(cfg.downscale),
        settings=settings,
    )
    data = build_data(cfg, generator)
    problems = list(data)
    skipped = getattr(data, "skipped", {})
    if not problems:
        raise RuntimeError(f"no usable input images; skipped: {skipped}")
    log.info("%d inputs, %s, generator %s, device %s", len(problems), solver.loss, type(generator).__name__, device)

    runner = Runner(solver, out_dir, batch_size=cfg.batch_size, progress=cfg.progress)
    summary = runner.run(problems, skipped_inputs=skipped)
    print(summary.line(), flush=True)
    return summary


@hydra.main(version_base="1.3", config_path="configs", config_name="config")
def main(cfg: DictConfig) -> float:
    summary = run(cfg)
    return summary.success_rate  # the value Hydra sweepers (Optuna) optimise


if __name__ == "__main__":
    main()

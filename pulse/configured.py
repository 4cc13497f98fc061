"""Objects from a composed Hydra config: the one place the command lines (``run.py``, ``pulse-restore``,
``pulse-demo``, ``scripts/benchmark.py``) turn ``configs/`` into a generator and a solver.

The library never needs this module (``from pulse import PulseSolver, ...`` builds the same objects by hand);
Hydra is imported only inside these functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def compose_config(overrides: Sequence[str] = (), config_dir: str | Path | None = None) -> Any:
    """``configs/config.yaml`` composed with Hydra ``overrides`` (a ``DictConfig``); Hydra's message if one is bad."""
    from hydra import compose, initialize_config_dir  # noqa: PLC0415 - only the command lines need Hydra

    config_dir = Path(config_dir or CONFIG_DIR).resolve()
    if not (config_dir / "config.yaml").is_file():
        raise FileNotFoundError(
            f"no config.yaml in {config_dir}: run from a source checkout of pulse or pass --config-dir"
        )
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir)):
        return compose(config_name="config", overrides=list(overrides))


def build_solver(cfg: Any, generator: Any = None) -> tuple[Any, Any]:
    """The generator and the solver the config names (``configs/solver/*.yaml`` give the solver's factory).

    The factory gets the run's components as keyword arguments (see :mod:`pulse.solvers`), so a new solver
    needs its module and its config, not a change here. ``generator``: search this one instead of building
    the config's (``scripts/benchmark.py`` times the run's step on the eager port and its fast path).
    """
    from hydra.utils import instantiate  # noqa: PLC0415

    from pulse.generators.base import check_generator
    from pulse.solvers.base import check_solver

    if "_target_" not in cfg.solver:
        raise ValueError("the solver config names no _target_ (its factory); see configs/solver/pulse.yaml")
    generator = check_generator(instantiate(cfg.generator) if generator is None else generator)
    solver = instantiate(
        cfg.solver,
        _convert_="all",
        generator=generator,
        loss=instantiate(cfg.loss),
        optimizer=instantiate(cfg.optimizer),
        downscale=instantiate(cfg.downscale),
        schedule=cfg.schedule.name,
        seed=cfg.seed,
    )
    return generator, check_solver(solver)

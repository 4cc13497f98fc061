"""Command-line entry point: `python run.py [GROUP=OPTION ...] [key=value ...]`, `python run.py -m ...` for sweeps.

Hydra composes `configs/`; :func:`run` builds the library objects from the composed config and runs them.
Tests call :func:`run` on configs made with Hydra's compose API.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from pulse.configured import build_solver  # also reached as run.build_solver by scripts/benchmark.py

if TYPE_CHECKING:
    from pulse.outputs import RunSummary

log = logging.getLogger("pulse")

TAGGED_GROUPS = ("generator", "data", "loss", "downscale", "optimizer", "schedule", "solver", "experiment")


def choice_tags(cfg: DictConfig) -> list[str]:
    """``group=option`` for the chosen config options (when run through Hydra), plus ``cfg.tags``."""
    tags = list(cfg.get("tags") or [])
    if HydraConfig.initialized():
        choices = HydraConfig.get().runtime.choices
        tags += [f"{group}={choices[group]}" for group in TAGGED_GROUPS if choices.get(group)]
    return tags


def check_multirun_strategy(trainer: dict[str, Any], multirun: bool, environ: dict[str, str]) -> None:
    """Refuse Lightning DDP inside a Hydra multirun job unless the launcher started one process per device.

    Lightning's ``ddp`` strategy starts its extra processes by re-running ``sys.argv``: inside ``-m`` that would
    re-run the whole sweep from every job. Under Slurm with one task per GPU (``submitit_slurm`` with
    ``tasks_per_node`` = GPUs) the processes already exist and Lightning joins them instead.
    """
    strategy = str(trainer.get("strategy") or "auto")
    if not multirun or not strategy.startswith("ddp") or strategy in ("ddp_spawn", "ddp_fork", "ddp_notebook"):
        return
    if int(environ.get("SLURM_NTASKS", "1")) > 1:
        return
    raise ValueError(
        f"trainer.strategy={strategy} inside a multirun would make Lightning re-run the whole sweep from each job; "
        "use one device per job (trainer=gpu with hydra/launcher=joblib or submitit_slurm), or run the DDP job "
        "without -m, or launch it with submitit_slurm and tasks_per_node equal to the GPUs per node"
    )


def spread_jobs_over_gpus(trainer: dict[str, Any], launcher: str, job_num: int, gpu_count: int) -> dict[str, Any]:
    """Give each parallel joblib job its own GPU: ``devices: 1`` becomes ``devices: [job_num % gpu_count]``.

    Lightning reads ``devices: 1`` as "the first GPU", so jobs running side by side under
    ``hydra/launcher=joblib`` would all share GPU 0. Other launchers are left alone (Slurm gives each
    task its own ``CUDA_VISIBLE_DEVICES``; the basic launcher runs one job at a time), as are explicit
    device lists and several devices per job.
    """
    if "joblib" not in launcher or trainer.get("accelerator") not in ("gpu", "cuda", "auto") or gpu_count < 2:
        return trainer
    if trainer.get("devices") not in (1, "1"):
        return trainer
    return {**trainer, "devices": [job_num % gpu_count]}


def build_data(cfg: DictConfig, generator: Any) -> Any:
    """The data source; folder and CelebA sources need the generator's resolution, generated ones the generator."""
    target = cfg.data.get("_target_", "")
    if target.endswith("GeneratedFaces"):
        return instantiate(cfg.data, generator=generator)
    if target.endswith("ImageFolder"):  # grey files load as one channel for a 1-channel generator
        from pulse.generators.base import generator_channels

        return instantiate(cfg.data, resolution=generator.resolution, channels=generator_channels(generator))
    if target.endswith(("CelebAFaces", "ElevationPatches")):
        return instantiate(cfg.data, resolution=generator.resolution)
    return instantiate(cfg.data)


def objective_value(summary: RunSummary, objective: str) -> float | None:
    """The number a sweeper optimises: a summary field or the mean of a metric column."""
    if objective in ("success_rate", "mean_downscale_error"):
        return getattr(summary, objective)
    if objective in summary.metrics:
        return summary.metrics[objective]
    valid = ["success_rate", "mean_downscale_error", *summary.metrics]
    raise ValueError(f"unknown objective {objective!r}; valid for this run: {valid}")


def run(cfg: DictConfig) -> RunSummary:
    """Run PULSE as configured; returns the run's summary (also written to ``out_dir/summary.json``)."""
    # Imported here, not at the top: torch and Lightning take seconds to import, which `--help`, `--cfg job`
    # and a mistyped option (Hydra answers before calling this) need not wait for.
    from pulse.runner import check_batch_size, run_search
    from pulse.runtime import set_tf32, tune_cpu_allocator

    if cfg.get("tune_cpu_allocator", True):
        tune_cpu_allocator()  # large CPU feature maps reuse freed memory instead of page-faulting anew
    set_tf32(bool(cfg.get("tf32", False)))  # torch's default lets cuDNN convolutions round to TF32
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open_dict(cfg):
        cfg.tags = choice_tags(cfg)
    OmegaConf.save(cfg, out_dir / "config.yaml", resolve=True)

    check_batch_size(cfg.batch_size)  # before anything is loaded
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    check_multirun_strategy(trainer, multirun, dict(os.environ))
    if multirun:
        import torch

        hydra_cfg = HydraConfig.get()
        launcher = str(hydra_cfg.launcher.get("_target_", ""))
        trainer = spread_jobs_over_gpus(trainer, launcher, int(hydra_cfg.job.num), torch.cuda.device_count())

    generator, solver = build_solver(cfg)
    data = build_data(cfg, generator)
    problems = list(data)
    skipped = getattr(data, "skipped", {})
    if not problems:
        raise RuntimeError(f"no usable input images ({len(skipped)} skipped):\n  " + "\n  ".join(skipped.values()))
    log.info(
        "%d inputs, solver %s, loss %s, generator %s",
        len(problems), type(solver).__name__, getattr(solver, "loss", None), type(generator).__name__,
    )  # fmt: skip

    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None and "_target_" in c]
    try:
        summary = run_search(
            solver,
            problems,
            out_dir,
            batch_size=cfg.batch_size,
            trainer=trainer,
            loggers=loggers,
            hparams=OmegaConf.to_container(cfg, resolve=True),
            progress=cfg.progress,
            log_steps=cfg.log_steps,
            frames_every=cfg.frame_every if cfg.save_intermediate else 0,
            skipped_inputs=skipped,
            auto_batch_limit=cfg.get("auto_batch_limit", 64),
            save_formats=list(cfg.get("save_formats") or []),
        )
    finally:
        finish_wandb()
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    if rank_zero_only.rank == 0:  # every DDP process returns the summary; one prints it
        print(summary.line(), flush=True)
        for line in summary.note_lines():
            print(line, flush=True)
    return summary


def finish_wandb() -> None:
    """Close the W&B run, if one was started, so the next job of a multirun starts its own."""
    import sys

    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()


@hydra.main(version_base="1.3", config_path="configs", config_name="config")
def main(cfg: DictConfig) -> float | None:
    summary = run(cfg)
    return objective_value(summary, cfg.objective)  # the value Hydra sweepers (Optuna) optimise


if __name__ == "__main__":
    main()
    # Done (Hydra returns after the run or the whole sweep; errors exit before this): skip the interpreter's
    # teardown of torch and Lightning, seconds of a short CPU run (pulse.runtime.exit_without_teardown).
    if os.environ.get("PULSE_FULL_TEARDOWN") != "1":
        from pulse.runtime import exit_without_teardown

        exit_without_teardown(0)

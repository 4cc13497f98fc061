"""A thin Lightning layer that runs the (Lightning-free) PULSE solver over a set of problems.

PULSE trains no weights: each batch of low-resolution inputs is an inner optimisation. Lightning
supplies devices, precision, multi-process prediction, progress bars and loggers; the search itself
stays in :mod:`pulse.solvers.pulse` and the run folder in :mod:`pulse.outputs`.

- ``Trainer.predict`` with ``inference_mode=False``; gradients are re-enabled inside the step.
- The frozen generator is moved to the device, never wrapped for DDP (predict does not wrap).
- With several devices, batches are dealt round-robin to processes (no duplicated work); each
  process writes its own rows, and rank 0 merges them into one table at the end.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter
from pytorch_lightning.loggers import Logger, TensorBoardLogger, WandbLogger
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from pulse.autobatch import choose_batch_size, describe, solver_step_timer
from pulse.data import Problem
from pulse.generators.base import generator_domain
from pulse.metrics import default_metrics
from pulse.metrics.base import RunMetric
from pulse.outputs import RESULT_FIELDS, ResultStore, RunSummary, name_key
from pulse.solvers.base import Solver
from pulse.solvers.pulse import SearchResult, StepInfo, sample_seed

log = logging.getLogger(__name__)


class _NoAdverts(logging.Filter):
    """Drop Lightning's suggestion to install another logging service; keep its other messages."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage().lower()


logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_NoAdverts())
# ShardedBatches returns every index by construction. Set at import, not around predict(): spawned
# workers (ddp_spawn) import this module but do not inherit a caller's warning filters.
warnings.filterwarnings("ignore", message=".*custom batch sampler `ShardedBatches`.*")


class ProblemList(Dataset):
    """A list of :class:`Problem` as a map-style dataset."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)

    def __len__(self) -> int:
        return len(self.problems)

    def __getitem__(self, index: int) -> Problem:
        return self.problems[index]


def size_grouped_batches(problems: Sequence[Problem], batch_size: int) -> list[list[int]]:
    """Indices in batches of at most ``batch_size`` consecutive problems sharing one input size."""
    batches: list[list[int]] = []
    for index, problem in enumerate(problems):
        last = batches[-1] if batches else None
        if last and len(last) < batch_size and problems[last[0]].lr.shape == problem.lr.shape:
            last.append(index)
        else:
            batches.append([index])
    return batches


class ShardedBatches(Sampler[list[int]]):
    """This process's share of the batches: batch ``i`` goes to rank ``i % world_size``.

    With more processes than batches (a small run, or a resumed one with few inputs left) some ranks
    have no batch; they get one empty batch instead, which the module skips. A rank with nothing to
    iterate would fail Lightning's empty-loader check while the others wait for it at the barrier.
    """

    def __init__(self, batches: list[list[int]], rank: int = 0, world_size: int = 1) -> None:
        self.batches = batches[rank::world_size]
        if not self.batches and world_size > 1:
            self.batches = [[]]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def collate_problems(problems: list[Problem]) -> list[Problem]:
    return problems


class PulseModule(pl.LightningModule):
    """Runs one ``solver.solve`` per predict step.

    Args:
        solver: the configured search; its generator becomes a submodule so Lightning places it.
        step_progress: show a progress bar over the optimisation steps (rank 0 only).
        log_steps: send each step's mean loss and count at eps to the loggers.
        frames_every: record intermediate images every this many steps for GIFs (0: off).
        problems, batches: the inputs to solve and their batches (indices into ``problems``). The loader
            is built in :meth:`predict_dataloader`, i.e. in each worker process once its rank is known:
            ``ddp_spawn``/``ddp_fork``/``ddp_notebook`` start the workers after the trainer was made in
            the parent, where every rank would otherwise look like rank 0.
    """

    def __init__(
        self,
        solver: Solver,
        step_progress: bool = True,
        log_steps: bool = False,
        frames_every: int = 0,
        problems: Sequence[Problem] = (),
        batches: Sequence[Sequence[int]] = (),
    ) -> None:
        super().__init__()
        self.solver = solver
        self.generator = solver.generator
        self.step_progress = step_progress
        self.log_steps = log_steps
        self.frames_every = frames_every
        self.problems = list(problems)
        self.batches = [list(b) for b in batches]
        self._steps_logged = 0

    def predict_dataloader(self) -> DataLoader:
        """This process's share of the batches (see :class:`ShardedBatches`)."""
        sampler = ShardedBatches(self.batches, self.trainer.global_rank, self.trainer.world_size)
        return DataLoader(ProblemList(self.problems), batch_sampler=sampler, collate_fn=collate_problems)

    def seeds(self, batch: Sequence[Problem]) -> list[int]:
        """Per-sample seeds from the run seed, the input's name and the duplicate index."""
        settings = self.solver.settings
        return [sample_seed(settings.seed, name_key(p.name), d) for p in batch for d in range(settings.duplicates)]

    def predict_step(self, batch: list[Problem], batch_idx: int) -> SearchResult | None:
        if not batch:  # a rank with no share of the work (see ShardedBatches)
            return None
        steps = getattr(self.solver, "total_steps", getattr(self.solver.settings, "steps", 1))
        show = self.step_progress and self.trainer.is_global_zero
        with tqdm(total=steps, desc="steps", leave=False, disable=not show, dynamic_ncols=True) as bar:

            def report(info: StepInfo) -> None:
                if show and (info.step % 10 == 9 or info.step == info.steps - 1):  # reading values syncs a GPU
                    bar.set_postfix(loss=f"{info.loss:.4g}", at_eps=f"{info.at_eps}/{info.samples}", refresh=False)
                bar.update(1)
                if self.log_steps and self.logger is not None:
                    metrics = {"search/loss": info.loss, "search/at_eps": info.at_eps}
                    metrics.update({f"search/{k}": v for k, v in info.terms.items()})
                    self.logger.log_metrics(metrics, step=self._steps_logged)
                    self._steps_logged += 1

            lr = torch.stack([p.lr for p in batch])
            with torch.enable_grad():
                return self.solver.solve(lr, seeds=self.seeds(batch), callback=report, frames_every=self.frames_every)


class ResultWriter(BasePredictionWriter):
    """Writes images and rows as each batch finishes, and sends per-sample metrics to the loggers."""

    def __init__(
        self, out_dir: str | Path, metrics: Sequence[RunMetric] = (), save_formats: Sequence[str] = ()
    ) -> None:
        super().__init__(write_interval="batch")
        self.out_dir = Path(out_dir)
        self.metrics = list(metrics)
        self.save_formats = list(save_formats)
        self.store: ResultStore | None = None
        self.samples_logged = 0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.store = ResultStore(
            self.out_dir, trainer.global_rank, trainer.world_size, self.metrics, save_formats=self.save_formats
        )
        for metric in self.metrics:  # network metrics (LPIPS) run on this process's device, not the CPU
            if hasattr(metric, "device"):
                metric.device = trainer.strategy.root_device

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: SearchResult | None,
        batch_indices: Sequence[int] | None,
        batch: list[Problem],
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        assert self.store is not None
        if prediction is None:
            return
        for row in self.store.write_batch(batch, prediction):
            # Loggers act on rank 0 only, so with several processes the per-sample series are sent
            # from the merged rows at the end of the run instead (see run_search).
            if trainer.world_size == 1:
                log_samples(trainer.loggers, [row], self.samples_logged)
            self.samples_logged += 1


def log_samples(loggers: Sequence[Logger], rows: Sequence[Mapping[str, str]], first_step: int = 0) -> None:
    """Each row's :func:`sample_metrics` to every logger, at steps ``first_step, first_step + 1, ...``."""
    for offset, row in enumerate(rows):
        for logger in loggers:
            logger.log_metrics(sample_metrics(row), step=first_step + offset)


def sample_metrics(row: Mapping[str, str]) -> dict[str, float]:
    """The numeric per-sample values of a results row, as ``sample/<name>`` (empty cells left out)."""
    keys = ["success", "downscale_error", "downscale_psnr", "first_step_at_eps", "best_loss", "seconds", "step_seconds"]
    keys += [k for k in row if k not in RESULT_FIELDS and k not in keys]
    out = {}
    for key in keys:
        value = row.get(key, "")
        if value in ("", None):
            continue
        out[f"sample/{key}"] = float(value == "True") if key == "success" else float(value)
    return out


def log_run_end(loggers: Sequence[Logger], summary: RunSummary, rows: list[dict[str, str]], grid: Path | None) -> None:
    """Summary metrics to every logger; the per-sample table and the grid where the logger has them."""
    metrics = {"summary/success_rate": summary.success_rate, "summary/samples": float(summary.samples)}
    if summary.mean_downscale_error is not None:
        metrics["summary/mean_downscale_error"] = summary.mean_downscale_error
    metrics.update({f"summary/{k}": v for k, v in summary.metrics.items() if v is not None})
    for logger in loggers:
        logger.log_metrics(metrics, step=summary.samples)
        if isinstance(logger, WandbLogger):
            columns = list(rows[0]) if rows else []
            logger.log_table(key="samples", columns=columns, data=[[r.get(c, "") for c in columns] for r in rows])
            if grid is not None:
                logger.log_image(key="grid", images=[str(grid)])
        elif isinstance(logger, TensorBoardLogger) and grid is not None:
            from pulse.data import load_image

            logger.experiment.add_image("grid", load_image(grid), global_step=summary.samples)
        logger.save()
        logger.finalize("success")


def split_solvable(solver: Solver, problems: Sequence[Problem]) -> tuple[list[Problem], dict[str, str]]:
    """The problems the solver can search, and ``{file or name: why not}`` for the others.

    Asked once per input size, before any search, so an input the downscale option cannot serve
    (gray or inpainting with a smaller input, ...) is skipped with its reason instead of stopping the
    run after earlier batches were written.
    """
    check = getattr(solver, "check_input_size", None)
    if check is None:  # a solver without the check: every input goes to the search
        return list(problems), {}
    reasons: dict[tuple[int, ...], str | None] = {}
    usable, refused = [], {}
    for problem in problems:
        shape = tuple(problem.lr.shape[-2:])
        if shape not in reasons:
            try:
                check(*shape)
                reasons[shape] = None
            except ValueError as error:
                reasons[shape] = str(error)
        if reasons[shape] is None:
            usable.append(problem)
        else:
            key = problem.source or problem.name
            refused[key] = f"{key}: {reasons[shape]}"
            log.warning("skipping %s", refused[key])
    return usable, refused


def check_batch_size(batch_size: int | str) -> int | str:
    """A positive integer or ``"auto"``; anything else is refused with the valid forms."""
    if batch_size == "auto" or (isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size >= 1):
        return batch_size
    raise ValueError(f"batch_size must be a positive integer or 'auto', got {batch_size!r}")


# Half-precision settings the search cannot use. Its per-pixel gradients are ~1e-6, below float16's
# smallest normal number (6e-5): without loss scaling they flush to zero or lose their digits, and
# Lightning's predict loop does no loss scaling. "-true" variants would also store the generator in half.
REFUSED_PRECISIONS = ("16", "16-mixed", "16-true", "bf16-true", "transformer-engine-float16")


def check_precision(precision: Any) -> None:
    """Refuse trainer precisions the search gets wrong, naming the ones that work."""
    if str(precision) in REFUSED_PRECISIONS:
        raise ValueError(
            f"trainer.precision={precision} is not supported: the search's per-pixel gradients (~1e-6) are "
            "subnormal in float16 and the predict loop has no loss scaling; use bf16-mixed (same speed on "
            "Ampere or later GPUs, float32's range) or 32-true"
        )


def _probe_batch_size(
    pl_trainer: pl.Trainer, solver: Solver, pending: Sequence[Problem], out_dir: Path, limit: int
) -> int:
    """``batch_size="auto"`` on the trainer's device and precision (see :mod:`pulse.autobatch`)."""
    if pl_trainer.world_size > 1:
        raise ValueError(
            "batch_size=auto probes one device; with several processes every one must use the same batches: "
            "set batch_size to a number"
        )
    device = pl_trainer.strategy.root_device
    solver.generator.to(device)
    lr_side = max(int(p.lr.shape[-1]) for p in pending)
    timer = solver_step_timer(solver, lr_side, device, context=pl_trainer.precision_plugin.forward_context)
    chosen, trials = choose_batch_size(timer, limit=max(1, min(limit, len(pending))))  # no larger than the run
    for trial in trials:
        speed = "out of memory" if trial.inputs_per_second is None else f"{trial.inputs_per_second:.3g} inputs/s"
        log.info("batch_size=auto: %d per search: %s", trial.batch, speed)
    log.info("batch_size=auto: using %d inputs per search on %s", chosen, device)
    (out_dir / "batch_size.json").write_text(json.dumps(describe(chosen, trials), indent=2) + "\n")
    return chosen


def run_search(
    solver: Solver,
    problems: Sequence[Problem],
    out_dir: str | Path,
    batch_size: int | str = 8,
    trainer: Mapping[str, Any] | None = None,
    loggers: Sequence[Logger] = (),
    hparams: Mapping[str, Any] | None = None,
    metrics: Sequence[RunMetric] | None = None,
    progress: bool = True,
    log_steps: bool = False,
    frames_every: int = 0,
    skipped_inputs: Mapping[str, str] | None = None,
    auto_batch_limit: int = 64,
    save_formats: Sequence[str] = (),
) -> RunSummary:
    """Solve every problem not yet finished in ``out_dir`` and write the run folder.

    Args:
        solver: the configured search.
        problems: all inputs of the run (finished ones are skipped, so a rerun resumes).
        out_dir: the run folder (see :mod:`pulse.outputs`).
        batch_size: inputs per optimisation (each with ``duplicates`` samples), or ``"auto"``: the size with
            the most inputs per second on the run's device and precision, probed with a few real steps at
            1, 2, 4, ... up to ``auto_batch_limit`` (:mod:`pulse.autobatch`; written to ``batch_size.json``).
        auto_batch_limit: the largest size ``batch_size="auto"`` tries.
        save_formats: extra copies of each sample (``png16``, ``npy``; see :class:`pulse.outputs.ResultStore`).
        trainer: ``pl.Trainer`` arguments (``accelerator``, ``devices``, ``precision``, ``strategy``, ...).
        loggers: Lightning loggers (CSV, TensorBoard, W&B, ...).
        hparams: the resolved configuration, sent to the loggers.
        metrics: metrics adding columns to each row; ``None``: :func:`pulse.metrics.default_metrics`.
        progress: progress bars over inputs and over steps.
        log_steps: per-step loss curves to the loggers.
        frames_every: also write ``frames/<name>_<d>.gif`` recorded every this many steps (0: off).
        skipped_inputs: unusable inputs and why, reported in the summary; inputs the solver cannot search
            (:func:`split_solvable`) are added to them.

    Returns:
        The summary of all samples in the folder (on every process).
    """
    out_dir = Path(out_dir)
    batch_size = check_batch_size(batch_size)
    metrics = default_metrics(domain=generator_domain(solver.generator)) if metrics is None else list(metrics)
    problems, refused = split_solvable(solver, problems)
    if refused and not problems:
        raise ValueError(
            f"no input can be searched with this generator and downscale option: {next(iter(refused.values()))}"
        )
    skipped_inputs = {**(skipped_inputs or {}), **refused}
    store = ResultStore(out_dir, metrics=metrics, save_formats=save_formats)
    pending = store.pending(problems, solver.settings.duplicates)
    if len(pending) < len(problems):
        log.info(
            "resuming: %d of %d inputs already finished in %s", len(problems) - len(pending), len(problems), out_dir
        )

    options = {"accelerator": "cpu", "devices": 1, **(trainer or {})}
    check_precision(options.get("precision", "32-true"))
    writer = ResultWriter(out_dir, metrics, save_formats)
    pl_trainer = pl.Trainer(
        **options,
        logger=list(loggers) or False,
        callbacks=[writer],
        inference_mode=False,
        use_distributed_sampler=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=str(out_dir),
    )
    if hparams:
        for logger in pl_trainer.loggers:
            logger.log_hyperparams(dict(hparams))
    if pending and batch_size == "auto":
        batch_size = _probe_batch_size(pl_trainer, solver, pending, out_dir, auto_batch_limit)
    if pending:
        module = PulseModule(
            solver,
            step_progress=progress,
            log_steps=log_steps,
            frames_every=frames_every,
            problems=pending,
            batches=size_grouped_batches(pending, batch_size),
        )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*custom batch sampler `ShardedBatches`.*")  # see above
            warnings.filterwarnings("ignore", message=".*treespec.*")  # Lightning vs newer torch, harmless
            pl_trainer.predict(module, return_predictions=False)
    pl_trainer.strategy.barrier()
    if pl_trainer.is_global_zero:
        rows = store.merge(problems)
        if pl_trainer.world_size > 1:  # every process's new samples, in input order
            solved = {p.name for p in pending}
            log_samples(pl_trainer.loggers, [r for r in rows if r["name"] in solved])
        grid = store.write_grid(problems, rows)
        summary = store.write_summary(rows, dict(skipped_inputs or {}))
        log_run_end(pl_trainer.loggers, summary, rows, grid)
    pl_trainer.strategy.barrier()
    if not pl_trainer.is_global_zero:
        summary = store.read_summary()
    return summary

"""Run a solver over a data source and write everything a researcher needs into one folder.

Outputs (in ``out_dir``):
    ``sr/<name>_<duplicate>.png``  each super-resolved sample
    ``results.csv``                one row per sample (metrics, success, steps, seconds, status)
    ``summary.json``               aggregate metrics of the run
    ``grid.png``                   rows of LR (nearest-upsampled) | SR samples | HR when known

Results are written after every batch (atomically), and a rerun into the same folder skips the
samples that already have a row and an image, so an interrupted run loses at most the batch in flight.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from pulse.data import Problem, load_image, save_image
from pulse.solver import PulseSolver, SearchResult, StepInfo, sample_seed

log = logging.getLogger(__name__)

RESULT_FIELDS = (
    "name",
    "duplicate",
    "scale",
    "lr_size",
    "hr_size",
    "seed",
    "status",
    "success",
    "downscale_error",
    "downscale_psnr",
    "first_step_at_eps",
    "best_step",
    "best_loss",
    "seconds",
    "image",
)


def psnr(mse: torch.Tensor | float, peak: float = 1.0) -> float:
    """PSNR in dB from an MSE on [0, peak] images; ``inf`` for a perfect match, ``nan`` for ``nan``."""
    mse = float(mse)
    if math.isnan(mse):
        return math.nan
    return math.inf if mse == 0 else 10.0 * math.log10(peak**2 / mse)


SampleMetric = Callable[[torch.Tensor, Problem], dict[str, float | None]]


def hr_psnr(sr: torch.Tensor, problem: Problem) -> dict[str, float | None]:
    """PSNR of one sample ``[3, H, W]`` against the ground truth, when there is one."""
    if problem.hr is None:
        return {}
    return {"psnr_hr": psnr(F.mse_loss(sr, problem.hr.to(sr)))}


@dataclass
class RunSummary:
    """Aggregates of a run (all samples in the results file, including earlier resumed ones)."""

    samples: int
    successes: int
    success_rate: float
    mean_downscale_error: float | None
    metrics: dict[str, float | None] = field(default_factory=dict)
    failed: int = 0
    skipped_inputs: dict[str, str] = field(default_factory=dict)
    out_dir: str = ""

    def line(self) -> str:
        parts = [f"{self.samples} samples", f"success {self.successes}/{self.samples} ({100 * self.success_rate:.1f}%)"]
        if self.mean_downscale_error is not None:
            parts.append(f"mean downscale error {self.mean_downscale_error:.3g}")
        for name, value in self.metrics.items():
            parts.append(f"{name} {value:.4g}" if value is not None else f"{name} n/a")
        if self.failed:
            parts.append(f"{self.failed} stopped early (see results.csv status)")
        if self.skipped_inputs:
            parts.append(f"{len(self.skipped_inputs)} input(s) skipped")
        return "pulse: " + ", ".join(parts) + f" -> {self.out_dir}"


def read_results(path: Path) -> list[dict[str, str]]:
    """Rows of an existing ``results.csv`` (empty if there is none)."""
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def write_csv_atomic(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write rows with the union of their keys as columns, via a temporary file and rename."""
    fields = list(RESULT_FIELDS)
    for row in rows:
        fields += [key for key in row if key not in fields]
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def _batches(problems: Iterable[Problem], batch_size: int) -> Iterable[list[Problem]]:
    """Consecutive problems with the same input size, at most ``batch_size`` per batch."""
    for _, group in groupby(problems, key=lambda p: tuple(p.lr.shape)):
        batch: list[Problem] = []
        for problem in group:
            batch.append(problem)
            if len(batch) == batch_size:
                yield batch
                batch = []
        if batch:
            yield batch


def _fmt(value: Any) -> str:
    """CSV text of a value; NaN and None become empty cells (missing, never a made-up number)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


class Runner:
    """Drives a :class:`PulseSolver` over problems, writing results as it goes.

    Args:
        solver: the configured search.
        out_dir: output folder (created).
        batch_size: inputs per optimisation batch (each with ``duplicates`` samples).
        metrics: per-sample metric functions ``(sr [3, H, W], problem) -> {name: value}``.
        progress: show progress bars (over inputs and over steps).
        grid_rows: at most this many inputs in ``grid.png``.
    """

    def __init__(
        self,
        solver: PulseSolver,
        out_dir: str | Path,
        batch_size: int = 8,
        metrics: Sequence[SampleMetric] = (hr_psnr,),
        progress: bool = True,
        grid_rows: int = 16,
    ) -> None:
        self.solver = solver
        self.out_dir = Path(out_dir)
        self.batch_size = batch_size
        self.metrics = list(metrics)
        self.progress = progress
        self.grid_rows = grid_rows

    @property
    def results_path(self) -> Path:
        return self.out_dir / "results.csv"

    def _finished(self, rows: list[dict[str, str]]) -> set[tuple[str, int]]:
        return {
            (row["name"], int(row["duplicate"]))
            for row in rows
            if row.get("image") and (self.out_dir / row["image"]).is_file()
        }

    def run(self, problems: Iterable[Problem], skipped_inputs: dict[str, str] | None = None) -> RunSummary:
        """Solve every problem not already finished in ``out_dir``; return the run's summary."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        settings = self.solver.settings
        rows = read_results(self.results_path)
        finished = self._finished(rows)
        rows = [row for row in rows if (row["name"], int(row["duplicate"])) in finished]
        problems = list(problems)
        todo = [p for p in problems if any((p.name, d) not in finished for d in range(settings.duplicates))]
        # An input is searched as a whole (all its duplicates), so its partial rows are replaced.
        redo = {p.name for p in todo}
        rows = [row for row in rows if row["name"] not in redo]
        if len(todo) < len(problems):
            log.info(
                "resuming: %d of %d inputs already finished in %s",
                len(problems) - len(todo),
                len(problems),
                self.out_dir,
            )
        if len({p.name for p in problems}) != len(problems):
            raise ValueError("input names must be unique (two files with the same stem?)")

        bar = tqdm(total=len(todo), desc="images", unit="img", disable=not self.progress, position=0)
        for batch in _batches(todo, self.batch_size):
            result = self._solve_batch(batch)
            rows += self._write_batch(batch, result)
            write_csv_atomic(self.results_path, rows)
            bar.update(len(batch))
        bar.close()

        self._write_grid(problems, rows)
        summary = summarise(rows, skipped_inputs or {}, str(self.out_dir))
        tmp = self.out_dir / ".summary.json.tmp"
        tmp.write_text(json.dumps(summary.__dict__, indent=2, allow_nan=False, default=str))
        os.replace(tmp, self.out_dir / "summary.json")
        return summary

    def _solve_batch(self, batch: list[Problem]) -> SearchResult:
        settings = self.solver.settings
        seeds = [sample_seed(settings.seed, _name_key(p.name), d) for p in batch for d in range(settings.duplicates)]
        lr = torch.stack([p.lr for p in batch])
        with tqdm(total=settings.steps, desc="steps", leave=False, disable=not self.progress, position=1) as bar:

            def report(info: StepInfo) -> None:
                bar.set_postfix(loss=f"{info.loss:.4g}", at_eps=f"{info.at_eps}/{info.samples}", refresh=False)
                bar.update(1)

            return self.solver.solve(lr, seeds=seeds, callback=report)

    def _write_batch(self, batch: list[Problem], result: SearchResult) -> list[dict[str, Any]]:
        rows = []
        per_sample_seconds = result.seconds / len(result.seeds)
        for s in range(len(result.seeds)):
            problem = batch[int(result.input_index[s])]
            duplicate = int(result.duplicate_index[s])
            image = f"sr/{problem.name}_{duplicate}.png"
            save_image(result.hr[s], self.out_dir / image)
            error = float(result.downscale_error[s])
            row: dict[str, Any] = {
                "name": problem.name,
                "duplicate": duplicate,
                "scale": result.hr.shape[-1] // problem.lr.shape[-1],
                "lr_size": problem.lr.shape[-1],
                "hr_size": result.hr.shape[-1],
                "seed": result.seeds[s],
                "status": result.status[s],
                "success": bool(result.success[s]),
                "downscale_error": error,
                "downscale_psnr": psnr(error),
                "first_step_at_eps": int(result.first_step_at_eps[s]),
                "best_step": int(result.best_step[s]),
                "best_loss": float(result.best_loss[s]),
                "seconds": per_sample_seconds,
                "image": image,
            }
            row.update({f"loss_{name}": float(value[s]) for name, value in result.terms.items()})
            for metric in self.metrics:
                row.update(metric(result.hr[s], problem))
            rows.append({key: _fmt(value) for key, value in row.items()})
        return rows

    def _write_grid(self, problems: list[Problem], rows: list[dict[str, str]]) -> None:
        images_by_name: dict[str, list[str]] = {}
        for row in rows:
            images_by_name.setdefault(row["name"], []).append(row["image"])
        grid_rows = []
        for problem in problems[: self.grid_rows]:
            files = sorted(images_by_name.get(problem.name, []))
            if not files:
                continue
            samples = [load_image(self.out_dir / f) for f in files]
            size = samples[0].shape[-1]
            lr_up = F.interpolate(problem.lr[None], size=(size, size), mode="nearest")[0]
            tiles = [lr_up, *samples] + ([problem.hr] if problem.hr is not None else [])
            grid_rows.append(tiles)
        if not grid_rows:
            return
        width = max(len(r) for r in grid_rows)
        size = grid_rows[0][0].shape[-1]
        canvas = torch.ones(3, size * len(grid_rows), size * width)
        for i, tiles in enumerate(grid_rows):
            for j, tile in enumerate(tiles):
                if tile.shape[-1] != size:
                    tile = F.interpolate(tile[None], size=(size, size), mode="bilinear", antialias=True)[0]
                canvas[:, i * size : (i + 1) * size, j * size : (j + 1) * size] = tile
        save_image(canvas, self.out_dir / "grid.png")


def _name_key(name: str) -> int:
    """A stable integer for a name (Python's ``hash`` is salted per process)."""
    return int(hashlib.sha256(name.encode()).hexdigest()[:15], 16)


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if not math.isnan(v) and not math.isinf(v)]
    return sum(finite) / len(finite) if finite else None


def summarise(rows: list[dict[str, str]], skipped_inputs: dict[str, str], out_dir: str) -> RunSummary:
    """Aggregate the per-sample rows: success rate, mean downscale error and the mean of each metric."""

    def values(key: str) -> list[float]:
        return [float(row[key]) for row in rows if row.get(key) not in (None, "")]

    successes = sum(row["success"] == "True" for row in rows)
    base = set(RESULT_FIELDS) | {"duplicate"}
    extra = [key for key in (rows[0] if rows else {}) if key not in base and not key.startswith("loss_")]
    return RunSummary(
        samples=len(rows),
        successes=successes,
        success_rate=successes / len(rows) if rows else 0.0,
        mean_downscale_error=_mean(values("downscale_error")),
        metrics={key: _mean(values(key)) for key in extra},
        failed=sum(row["status"] != "ok" for row in rows),
        skipped_inputs=skipped_inputs,
        out_dir=out_dir,
    )

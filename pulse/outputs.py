"""The run folder: per-sample images and rows, written batch by batch so nothing finished is lost.

Layout of ``out_dir``:
    ``sr/<name>_<duplicate>.png``  each super-resolved sample
    ``sr/<name>_mean.png``, ``sr/<name>_std.png``  posterior samplers (``solver=langevin``): the samples' mean
                                   and per-pixel standard deviation (gray, white = ``STD_MAP_WHITE``)
    ``results.csv``                one row per sample (metrics, success, steps, seconds, status)
    ``summary.json``               aggregate metrics of the run
    ``grid.png``                   rows of LR (nearest-upsampled) | SR samples | HR when known
    ``frames/<name>_<d>.gif``      the search's intermediate images, when recorded

With several processes (multi-GPU), each writes ``results.rank<r>.csv``; :meth:`ResultStore.merge`
folds them into ``results.csv``. Every file is replaced atomically (write, then rename).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from pulse.data import Problem, load_image, save_array, save_image
from pulse.metrics.base import RunMetric
from pulse.solvers.pulse import SearchResult

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
    "step_seconds",
    "image",
)
# The std map's white level: a per-pixel standard deviation (mean over RGB, [0, 1] units) of 0.25 or more.
STD_MAP_WHITE = 0.25


def psnr(mse: torch.Tensor | float, peak: float = 1.0) -> float:
    """PSNR in dB from an MSE on [0, peak] images; ``inf`` for a perfect match, ``nan`` for ``nan``."""
    mse = float(mse)
    if math.isnan(mse):
        return math.nan
    return math.inf if mse == 0 else 10.0 * math.log10(peak**2 / mse)


def name_key(name: str) -> int:
    """A stable integer for a name (Python's ``hash`` is salted per process)."""
    return int(hashlib.sha256(name.encode()).hexdigest()[:15], 16)


def _fmt(value: Any) -> str:
    """CSV text of a value; NaN and None become empty cells (missing, never a made-up number)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def median_step_seconds(step_seconds: Sequence[float] | None) -> float | None:
    """The median of a search's step durations after its first, in seconds (the whole batch's step).

    The first step is left out: it also pays for growing the heap after start-up, which the steps after it
    reuse. ``None`` (an empty cell) when the solver timed no steps (off the CPU, baselines) or ran only one.
    """
    if not step_seconds or len(step_seconds) < 2:
        return None
    return statistics.median(step_seconds[1:])


def read_rows(path: Path) -> list[dict[str, str]]:
    """Rows of a results CSV (empty if there is none)."""
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def write_rows(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write rows with the union of their keys as columns, via a temporary file and rename."""
    fields = list(RESULT_FIELDS)
    for row in rows:
        fields += [key for key in row if key not in fields]
    tmp = _temporary(path)
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


@dataclass
class RunSummary:
    """Aggregates over every sample in ``results.csv`` (resumed ones included)."""

    samples: int
    successes: int
    success_rate: float
    mean_downscale_error: float | None
    metrics: dict[str, float | None] = field(default_factory=dict)
    failed: int = 0
    skipped_inputs: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    out_dir: str = ""

    def line(self) -> str:
        """The one-line summary printed at the end of a run."""
        rate = f"success {self.successes}/{self.samples} ({100 * self.success_rate:.1f}%)"
        parts = [f"{self.samples} samples", rate]
        if self.mean_downscale_error is not None:
            parts.append(f"mean downscale error {self.mean_downscale_error:.3g}")
        for name, value in self.metrics.items():
            if value is not None:
                parts.append(f"{name} {value:.4g}")
        if self.failed:
            parts.append(f"{self.failed} stopped early (see results.csv status)")
        if self.skipped_inputs:
            parts.append(f"{len(self.skipped_inputs)} input(s) skipped")
        return "pulse: " + ", ".join(parts) + f" -> {self.out_dir}"

    def note_lines(self) -> list[str]:
        """One line per reason, naming the metrics that have no value for it (recorded as null in the results)."""
        names_by_reason: dict[str, list[str]] = {}
        for name, reason in self.notes.items():
            if self.metrics.get(name) is None:
                names_by_reason.setdefault(reason, []).append(name)
        return [f"{', '.join(names)} unavailable: {reason}" for reason, names in names_by_reason.items()]


def _mean(values: Iterable[float]) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


def summarise(
    rows: list[dict[str, str]], skipped_inputs: dict[str, str], out_dir: str, notes: dict[str, str] | None = None
) -> RunSummary:
    """Success rate, mean downscale error and the mean of every extra metric column (empty cells skipped)."""

    def values(key: str) -> list[float]:
        return [float(row[key]) for row in rows if row.get(key) not in (None, "")]

    successes = sum(row["success"] == "True" for row in rows)
    columns = dict.fromkeys(key for row in rows for key in row)
    extra = [key for key in columns if key not in RESULT_FIELDS and not key.startswith("loss_")]
    return RunSummary(
        samples=len(rows),
        successes=successes,
        success_rate=successes / len(rows) if rows else 0.0,
        mean_downscale_error=_mean(values("downscale_error")),
        metrics={key: _mean(values(key)) for key in extra},
        failed=sum(row["status"] != "ok" for row in rows),
        skipped_inputs=skipped_inputs,
        notes=dict(notes or {}),
        out_dir=out_dir,
    )


class ResultStore:
    """Reads and writes one run folder.

    Args:
        out_dir: the run folder (created).
        rank, world_size: this process's place among the processes writing the folder.
        metrics: :class:`pulse.metrics.base.RunMetric` objects adding columns to each row.
        save_formats: extra copies of each sample beside ``sr/<name>_<d>.png`` (always written, 8 bits):
            ``png16`` (16-bit gray PNG, 1-channel generators), ``npy`` (float32 ``[C, R, R]`` on [0, 1]);
            for data such as elevation that 256 levels would lose.
    """

    def __init__(
        self,
        out_dir: str | Path,
        rank: int = 0,
        world_size: int = 1,
        metrics: Sequence[RunMetric] = (),
        save_formats: Sequence[str] = (),
    ) -> None:
        unknown = sorted(set(save_formats) - set(SAVE_FORMATS))
        if unknown:
            raise ValueError(f"unknown save format(s) {', '.join(unknown)}; valid: {', '.join(SAVE_FORMATS)}")
        self.save_formats = [f for f in save_formats if f != "png"]
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.rank = rank
        self.world_size = world_size
        self.metrics = list(metrics)
        self._own_rows: list[dict[str, str]] | None = None
        self._own_notes: dict[str, str] | None = None

    @property
    def results_path(self) -> Path:
        return self.out_dir / "results.csv"

    @property
    def own_path(self) -> Path:
        """The file this process appends to after every batch."""
        return self.results_path if self.world_size == 1 else self.out_dir / f"results.rank{self.rank}.csv"

    @property
    def notes_path(self) -> Path:
        return self.out_dir / "notes.json" if self.world_size == 1 else self.out_dir / f"notes.rank{self.rank}.json"

    def _all_notes(self) -> dict[str, str]:
        notes: dict[str, str] = {}
        for path in [self.out_dir / "notes.json", *sorted(self.out_dir.glob("notes.rank*.json"))]:
            if path.is_file():
                notes.update(json.loads(path.read_text()))
        return notes

    def _all_rows(self) -> list[dict[str, str]]:
        """Rows from ``results.csv`` and from any per-rank files a multi-process run left behind."""
        rows = read_rows(self.results_path)
        for part in sorted(self.out_dir.glob("results.rank*.csv")):
            rows += read_rows(part)
        latest = {(row["name"], row["duplicate"]): row for row in rows}  # later files win
        return list(latest.values())

    def finished(self, duplicates: int) -> set[str]:
        """Names of inputs whose every duplicate has a row and an image on disk."""
        done: dict[str, set[int]] = {}
        for row in self._all_rows():
            if row.get("image") and (self.out_dir / row["image"]).is_file():
                done.setdefault(row["name"], set()).add(int(row["duplicate"]))
        return {name for name, dups in done.items() if dups >= set(range(duplicates))}

    def pending(self, problems: Sequence[Problem], duplicates: int) -> list[Problem]:
        """The problems still to solve; fails on duplicate names, which would overwrite each other."""
        names = [p.name for p in problems]
        if len(set(names)) != len(names):
            raise ValueError("input names must be unique (two files with the same stem?)")
        finished = self.finished(duplicates)
        return [p for p in problems if p.name not in finished]

    def write_batch(self, problems: Sequence[Problem], result: SearchResult) -> list[dict[str, str]]:
        """Save each sample's image (and frames), append its row, rewrite this process's CSV."""
        rows = []
        per_sample_seconds = result.seconds / max(len(result.seeds), 1)
        batch_step_seconds = median_step_seconds(result.step_seconds)
        columns: dict[str, torch.Tensor] = {}
        notes: dict[str, str] = {}
        for metric in self.metrics:
            values = metric(result, problems)
            columns.update(values.values)
            notes.update(values.notes)
        if getattr(result, "chain_index", None) is not None:  # posterior draws: their mean and spread
            self.write_uncertainty(problems, result)
        for s in range(len(result.seeds)):
            problem = problems[int(result.input_index[s])]
            duplicate = int(result.duplicate_index[s])
            image = f"sr/{problem.name}_{duplicate}.png"
            save_image(result.hr[s], self.out_dir / image)
            self._save_extra(result.hr[s], f"{problem.name}_{duplicate}")
            if result.frames is not None:
                write_gif(result.frames[:, s], self.out_dir / "frames" / f"{problem.name}_{duplicate}.gif")
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
                "step_seconds": batch_step_seconds,
                "image": image,
            }
            row.update({f"loss_{name}": float(value[s]) for name, value in result.terms.items()})
            row.update({name: float(value[s]) for name, value in columns.items()})
            rows.append({key: _fmt(value) for key, value in row.items()})
        if self._own_rows is None:
            self._own_rows = read_rows(self.own_path)
        redo = {p.name for p in problems}
        self._own_rows = [r for r in self._own_rows if r["name"] not in redo] + rows
        write_rows(self.own_path, self._own_rows)
        if notes:
            if self._own_notes is None:
                self._own_notes = json.loads(self.notes_path.read_text()) if self.notes_path.is_file() else {}
            self._own_notes.update(notes)
            write_text_atomic(self.notes_path, json.dumps(self._own_notes, indent=2))
        return rows

    def _save_extra(self, image: torch.Tensor, stem: str) -> None:
        """The copies of one sample ``[C, R, R]`` that ``save_formats`` ask for (``sr16/``, ``sr_npy/``)."""
        for fmt in self.save_formats:
            if fmt == "png16":
                if image.shape[0] != 1:
                    raise ValueError(f"save format png16 is for 1-channel images; these have {image.shape[0]}")
                save_image(image, self.out_dir / "sr16" / f"{stem}.png", bits=16)
            elif fmt == "npy":
                save_array(image, self.out_dir / "sr_npy" / f"{stem}.npy")

    def write_uncertainty(self, problems: Sequence[Problem], result: SearchResult) -> None:
        """``sr/<name>_mean.png`` and ``sr/<name>_std.png`` for every input with 2+ samples in ``result``."""
        for index in result.input_index.unique().tolist():
            members = result.input_index == index
            if int(members.sum()) < 2:
                continue
            samples = result.hr[members].double()
            name = problems[index].name
            save_image(samples.mean(0).float(), self.out_dir / "sr" / f"{name}_mean.png")
            spread = samples.std(0, unbiased=True).mean(0, keepdim=True).expand(samples.shape[1], -1, -1)
            save_image((spread / STD_MAP_WHITE).clamp(0, 1).float(), self.out_dir / "sr" / f"{name}_std.png")

    def merge(self, problems: Sequence[Problem]) -> list[dict[str, str]]:
        """Fold all rows into ``results.csv`` in input order and drop the per-rank files."""
        order = {p.name: i for i, p in enumerate(problems)}
        rows = sorted(self._all_rows(), key=lambda r: (order.get(r["name"], len(order)), int(r["duplicate"])))
        write_rows(self.results_path, rows)
        notes = self._all_notes()
        if notes:
            write_text_atomic(self.out_dir / "notes.json", json.dumps(notes, indent=2))
        for part in [*self.out_dir.glob("results.rank*.csv"), *self.out_dir.glob("notes.rank*.json")]:
            part.unlink()
        return rows

    def write_summary(self, rows: list[dict[str, str]], skipped_inputs: dict[str, str]) -> RunSummary:
        summary = summarise(rows, skipped_inputs, str(self.out_dir), self._all_notes())
        write_text_atomic(self.out_dir / "summary.json", json.dumps(asdict(summary), indent=2, allow_nan=False))
        return summary

    def read_summary(self) -> RunSummary:
        return RunSummary(**json.loads((self.out_dir / "summary.json").read_text()))

    def write_grid(self, problems: Sequence[Problem], rows: list[dict[str, str]], max_rows: int = 16) -> Path | None:
        """``grid.png``: one row per input (the first ``max_rows``): LR | SR samples | mean | std | HR (mean and std
        when a posterior sampler wrote them)."""
        images_by_name: dict[str, list[tuple[int, str]]] = {}
        for row in rows:
            images_by_name.setdefault(row["name"], []).append((int(row["duplicate"]), row["image"]))
        grid_rows = []
        for problem in problems:
            # By duplicate number, not file name: "_10" sorts before "_2" as text.
            files = [image for _, image in sorted(images_by_name.get(problem.name, []))]
            if not files:
                continue
            channels = 1 if problem.lr.shape[0] == 1 else 3
            samples = [load_image(self.out_dir / f, channels) for f in files]
            for extra in ("mean", "std"):
                path = self.out_dir / "sr" / f"{problem.name}_{extra}.png"
                if path.is_file():
                    samples.append(load_image(path, channels))
            size = samples[0].shape[-1]
            lr_up = F.interpolate(problem.lr[None], size=(size, size), mode="nearest")[0]
            grid_rows.append([lr_up, *samples] + ([problem.hr] if problem.hr is not None else []))
            if len(grid_rows) == max_rows:
                break
        if not grid_rows:
            return None
        width = max(len(r) for r in grid_rows)
        size = grid_rows[0][0].shape[-1]
        canvas = torch.ones(grid_rows[0][0].shape[0], size * len(grid_rows), size * width)
        for i, tiles in enumerate(grid_rows):
            for j, tile in enumerate(tiles):
                if tile.shape[-1] != size:
                    tile = F.interpolate(tile[None], size=(size, size), mode="bilinear", antialias=True)[0]
                canvas[:, i * size : (i + 1) * size, j * size : (j + 1) * size] = tile
        path = self.out_dir / "grid.png"
        save_image(canvas, path)
        return path


SAVE_FORMATS = ("png", "png16", "npy")


def _temporary(path: Path, suffix: str = "") -> Path:
    """A sibling name for writing ``path`` atomically, unique per process (DDP ranks share the folder)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp{suffix}")


def write_text_atomic(path: Path, text: str) -> None:
    tmp = _temporary(path)
    tmp.write_text(text)
    os.replace(tmp, path)


def write_gif(frames: torch.Tensor, path: Path, milliseconds: int = 80) -> None:
    """An animated GIF of ``[T, 3, H, W]`` frames in [0, 1], written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = (frames.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype("uint8")
    images = [Image.fromarray(a) for a in arrays]
    tmp = _temporary(path, ".gif")  # PIL picks the format from the suffix
    images[0].save(tmp, save_all=True, append_images=images[1:], duration=milliseconds, loop=0)
    os.replace(tmp, path)

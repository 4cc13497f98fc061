"""Paper tables from run folders: find every run under a folder, group runs by their settings, aggregate.

A *run folder* is any folder holding a ``results.csv`` (see :mod:`pulse.outputs`): a single run
(``outputs/...``), one job of a Hydra multirun (``multirun/.../<job num>/``), an Optuna trial or a
W&B agent run. Its settings are read from files, never from Hydra objects, so this module imports
neither Hydra nor torch:

- ``.hydra/overrides.yaml``: the command-line overrides of the job (``loss=l2``, ``optimizer.lr=0.1``);
- ``config.yaml``: the resolved configuration run.py saved, whose ``tags`` name the chosen config
  options (``loss=l2+geocross``) and whose values answer keys that were not overridden.

Groups are the distinct combinations of the ``by`` keys; every sample of every run in a group is
pooled. A cell is ``mean ± std`` (sample std, ddof 1) over the group's samples, or over its runs'
means with ``spread="runs"`` (seed-to-seed variation). Empty and non-finite cells are excluded and
counted as missing, never read as 0.

    runs = find_runs("multirun/ablation")
    table = aggregate(runs, by=["loss", "optimizer"])
    print(to_markdown(table))
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# Columns of results.csv that describe a sample rather than measure it (mirrors the bookkeeping part
# of pulse.outputs.RESULT_FIELDS; kept here so that reading tables needs no torch). Tests check it.
NON_METRIC_COLUMNS = (
    "name",
    "duplicate",
    "scale",
    "lr_size",
    "hr_size",
    "seed",
    "status",
    "success",
    "first_step_at_eps",
    "best_step",
    "best_loss",
    "seconds",
    "step_seconds",
    "image",
)
# Metrics every run has; listed first in a default table.
CORE_METRICS = ("downscale_error", "downscale_psnr")
# Columns where a negative value means "never" (first_step_at_eps is -1 when eps was not reached):
# such cells are excluded like missing ones instead of dragging a mean of step numbers below zero.
NEVER_IS_NEGATIVE = ("first_step_at_eps",)
# Settings that repeat an experiment rather than define it: pooled by default, split with --by seed.
REPLICATE_KEYS = ("seed",)
# Overrides that never define a group (where a run writes, how it prints).
IGNORED_KEYS = ("out_dir", "progress", "tags", "log_steps", "save_intermediate", "frame_every", "task_name")
MISSING = "—"


def _split_top_level(text: str) -> list[str]:
    """``"1, [2, 3], a"`` -> ``["1", "[2, 3]", "a"]``: commas outside brackets only."""
    parts, depth, current = [], 0, ""
    for char in text:
        if char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    if current.strip():
        parts.append(current)
    return parts


def _parse_scalar(text: str) -> Any:
    """A Hydra override value as the Python value it stands for (int, float, bool, None, list, str)."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    if text.startswith("[") and text.endswith("]"):
        return [_parse_scalar(part) for part in _split_top_level(text[1:-1])]
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("null", "none"):
        return None
    if re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    try:
        return float(text)
    except ValueError:
        return text


def canonical(value: Any) -> str:
    """One spelling per value, so ``lr=1e-3`` on a command line and ``lr: 0.001`` in a config group together."""
    if isinstance(value, str):
        parsed = _parse_scalar(value)
        return parsed if isinstance(parsed, str) else canonical(parsed)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(canonical(v) for v in value) + "]"
    return str(value)


def parse_override(line: str) -> tuple[str, str] | None:
    """``"+loss.terms.l1.weight=5"`` -> ``("loss.terms.l1.weight", "5")``; deletions (``~key``) -> None."""
    line = line.strip()
    if not line or line.startswith("~"):
        return None
    key, sep, value = line.lstrip("+").partition("=")
    if not sep:
        return None
    return key.strip(), canonical(value)


@dataclass
class RunFolder:
    """One run folder: its samples and the settings it was run with.

    Attributes:
        path: the folder.
        rows: the rows of ``results.csv``.
        overrides: ``{key: canonical value}`` from ``.hydra/overrides.yaml`` (empty without one).
        config: ``config.yaml`` as plain data (empty without one).
        complete: whether ``summary.json`` exists (the run got to its end).
        has_overrides: whether ``.hydra/overrides.yaml`` exists.
        notes: ``{metric: why it has no value}`` from ``summary.json`` (empty without one).
    """

    path: Path
    rows: list[dict[str, str]]
    overrides: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    complete: bool = True
    has_overrides: bool = False
    notes: dict[str, str] = field(default_factory=dict)

    def value(self, key: str) -> str | None:
        """The run's setting ``key``: its override, else the chosen option (tags), else the config value."""
        if key in self.overrides:
            return self.overrides[key]
        # A config group left at its default (loss=l2+geocross) is not an override; run.py tags it.
        for tag in self.config.get("tags") or []:
            name, sep, option = str(tag).partition("=")
            if sep and name == key:
                return option
        node: Any = self.config
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return None if isinstance(node, dict) else canonical(node)

    @property
    def steps(self) -> int | None:
        """``solver.steps`` of the run, when its config says."""
        value = self.value("solver.steps")
        return int(value) if value is not None and re.fullmatch(r"\d+", value) else None


def read_run(path: str | Path) -> RunFolder:
    """Read the run folder ``path`` (which holds ``results.csv``)."""
    path = Path(path)
    with (path / "results.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    overrides: dict[str, str] = {}
    overrides_file = path / ".hydra" / "overrides.yaml"
    if overrides_file.is_file():
        for line in yaml.safe_load(overrides_file.read_text()) or []:
            parsed = parse_override(str(line))
            if parsed is not None:
                overrides[parsed[0]] = parsed[1]
    config_file = path / "config.yaml"
    config = yaml.safe_load(config_file.read_text()) if config_file.is_file() else {}
    summary_file = path / "summary.json"
    notes: dict[str, str] = {}
    if summary_file.is_file():
        try:
            summary = json.loads(summary_file.read_text())
            notes = {str(k): str(v) for k, v in (summary.get("notes") or {}).items()}
        except (ValueError, AttributeError):  # a half-written or foreign summary: no reasons, still a run
            notes = {}
    return RunFolder(
        path=path,
        rows=rows,
        overrides=overrides,
        config=config if isinstance(config, dict) else {},
        complete=summary_file.is_file(),
        has_overrides=overrides_file.is_file(),
        notes=notes,
    )


def find_runs(*roots: str | Path) -> list[RunFolder]:
    """Every run folder at or below ``roots`` (folders holding a ``results.csv``), in path order."""
    found: dict[Path, None] = {}
    for root in roots:
        root = Path(root)
        if not root.exists():
            raise FileNotFoundError(f"{root} does not exist")
        candidates = [root / "results.csv"] if (root / "results.csv").is_file() else []
        candidates += sorted(root.rglob("results.csv"), key=_natural_key)
        for csv_path in candidates:
            found[csv_path.parent.resolve()] = None
    return [read_run(path) for path in found]


def _natural_key(path: Path) -> list[Any]:
    """Sort ``.../2/...`` before ``.../10/...`` (Hydra numbers jobs without padding)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def varying_keys(runs: Sequence[RunFolder]) -> list[str]:
    """The override keys whose value differs between runs (seeds and output settings excepted)."""
    keys = dict.fromkeys(key for run in runs for key in run.overrides)
    varying = []
    for key in keys:
        if key in REPLICATE_KEYS or key in IGNORED_KEYS or key.startswith("hydra"):
            continue
        if len({run.value(key) for run in runs}) > 1:
            varying.append(key)
    return varying


def metric_columns(runs: Sequence[RunFolder]) -> list[str]:
    """The measured columns of the runs' results (loss terms aside), core metrics first."""
    columns = dict.fromkeys(key for run in runs for row in run.rows for key in row)
    extra = [
        key
        for key in columns
        if key not in NON_METRIC_COLUMNS and key not in CORE_METRICS and not key.startswith("loss_")
    ]
    return [key for key in CORE_METRICS if key in columns] + extra


@dataclass
class Stat:
    """``mean ± std`` of the values used; ``missing`` counts the sample cells left out (empty, NaN, inf)."""

    mean: float | None
    std: float | None
    n: int
    missing: int = 0


def _number(cell: str | None, never_is_negative: bool = False) -> float | None:
    """A cell as a finite float, or None when empty, non-numeric, non-finite or a negative 'never'."""
    if cell is None or cell == "":
        return None
    try:
        value = float(cell)
    except ValueError:
        return None
    if not math.isfinite(value) or (never_is_negative and value < 0):
        return None
    return value


def describe(values: Sequence[float], missing: int = 0) -> Stat:
    """Mean and sample standard deviation (ddof 1; None for fewer than two values)."""
    n = len(values)
    if n == 0:
        return Stat(None, None, 0, missing)
    # statistics computes exactly (fractions), so identical values give std 0, not 1e-16 of rounding noise.
    return Stat(statistics.fmean(values), statistics.stdev(values) if n > 1 else None, n, missing)


@dataclass
class Group:
    """One line of a table: the runs sharing one combination of the ``by`` keys, and their samples.

    Attributes:
        values: ``{key: value}`` of the ``by`` keys (None where a run does not define the key).
        runs: the runs contributing samples.
        rows: ``(run index within `runs`, results row)`` for every pooled sample.
    """

    values: dict[str, str | None]
    runs: list[RunFolder]
    rows: list[tuple[int, dict[str, str]]]

    @property
    def samples(self) -> int:
        return len(self.rows)

    @property
    def successes(self) -> int:
        return sum(row.get("success") == "True" for _, row in self.rows)

    @property
    def steps(self) -> int | None:
        steps = [run.steps for run in self.runs if run.steps is not None]
        return max(steps) if steps else None

    def column(self, name: str, spread: str = "samples") -> Stat:
        """The group's ``mean ± std`` of column ``name``, over samples or over run means."""
        never = name in NEVER_IS_NEGATIVE
        if name == "success":
            cells: list[tuple[int, float | None]] = [(i, float(row.get("success") == "True")) for i, row in self.rows]
        else:
            cells = [(i, _number(row.get(name), never)) for i, row in self.rows]
        missing = sum(value is None for _, value in cells)
        if spread == "samples":
            return describe([v for _, v in cells if v is not None], missing)
        if spread != "runs":
            raise ValueError(f"spread must be 'samples' or 'runs', got {spread!r}")
        per_run: dict[int, list[float]] = {}
        for index, value in cells:
            if value is not None:
                per_run.setdefault(index, []).append(value)
        return describe([sum(v) / len(v) for v in per_run.values()], missing)

    def first_steps(self) -> list[int]:
        """Each sample's first step at eps (-1: never reached; empty cells count as never)."""
        steps = []
        for _, row in self.rows:
            value = _number(row.get("first_step_at_eps"))
            steps.append(int(value) if value is not None else -1)
        return steps


@dataclass
class Table:
    """Aggregated groups plus what a reader must know about them (missing values, unfinished runs)."""

    by: list[str]
    metrics: list[str]
    groups: list[Group]
    spread: str = "samples"
    notes: list[str] = field(default_factory=list)

    def label(self, group: Group) -> str:
        """``"loss=l2, optimizer=adam"`` (or ``"all runs"`` without keys), for notes and plot legends."""
        return group_label(self.by, group)


def _sort_key(value: str | None) -> tuple[int, float, str]:
    if value is None:
        return (2, 0.0, "")
    number = _number(value)
    return (0, number, value) if number is not None else (1, 0.0, value)


def _row_level(runs: Sequence[RunFolder], key: str) -> bool:
    """Whether ``key`` is a results column (``scale``, ``lr_size``) rather than a run setting."""
    if any(run.value(key) is not None for run in runs):
        return False
    return any(key in row for run in runs for row in run.rows)


def aggregate(
    runs: Sequence[RunFolder],
    by: Sequence[str] | None = None,
    metrics: Sequence[str] | None = None,
    spread: str = "samples",
) -> Table:
    """Group ``runs`` by the ``by`` keys and summarise each group.

    Args:
        runs: run folders, e.g. from :func:`find_runs`.
        by: keys defining a group: override keys (``loss``, ``optimizer.lr``), other config keys
            (``solver.steps``) or results columns (``scale``: then one run feeds several groups).
            ``None``: the override keys that vary between runs (:func:`varying_keys`).
        metrics: results columns to report; ``None``: :func:`metric_columns`.
        spread: ``"samples"`` (std over the pooled samples) or ``"runs"`` (std of per-run means).

    Raises:
        ValueError: no runs, an unknown key or metric, or an unknown spread.
    """
    if not runs:
        raise ValueError("no run folders (folders holding a results.csv) found")
    if spread not in ("samples", "runs"):
        raise ValueError(f"spread must be 'samples' or 'runs', got {spread!r}")
    by = list(varying_keys(runs) if by is None else by)
    available = metric_columns(runs)
    all_columns = dict.fromkeys(key for run in runs for row in run.rows for key in row)
    requested = metrics is not None
    metrics = list(available if metrics is None else metrics)
    unknown = [m for m in metrics if m not in all_columns]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; columns of these results: {list(all_columns)}")
    row_keys = {key for key in by if _row_level(runs, key)}
    for key in by:
        if key not in row_keys and all(run.value(key) is None for run in runs):
            known = sorted({k for run in runs for k in run.overrides} | set(all_columns))
            raise ValueError(f"no run defines {key!r}; override keys and results columns: {known}")

    groups: dict[tuple[str | None, ...], Group] = {}
    for run in runs:
        for row in run.rows:
            values = {key: (row.get(key) if key in row_keys else run.value(key)) for key in by}
            group = groups.setdefault(tuple(values.values()), Group(values, [], []))
            if not group.runs or group.runs[-1] is not run:
                group.runs.append(run)
            group.rows.append((len(group.runs) - 1, row))
    ordered = [groups[key] for key in sorted(groups, key=lambda k: [_sort_key(v) for v in k])]

    notes = []
    unfinished = [run.path for run in runs if not run.complete]
    if unfinished:
        notes.append(f"{len(unfinished)} run(s) have no summary.json (unfinished or still running): {unfinished}")
    empty = [run.path for run in runs if not run.rows]
    if empty:
        notes.append(f"{len(empty)} run(s) have no result rows: {empty}")
    # A column with no value in any run gets one note, not one per group (and is left out unless asked for).
    empty = [m for m in metrics if all(group.column(m, spread).n == 0 for group in ordered)]
    if empty:
        reasons = dict.fromkeys(run.notes[m] for run in runs for m in empty if run.notes.get(m))
        why = f" ({'; '.join(list(reasons)[:2])})" if reasons else ""
        fate = f"shown as {MISSING}" if requested else "column left out"
        notes.append(f"{', '.join(empty)}: no value in any of the {len(runs)} run(s){why}; {fate}")
        if not requested:
            metrics = [m for m in metrics if m not in empty]
    for group in ordered:
        for metric in metrics:
            stat = group.column(metric, spread)
            if stat.missing and metric not in empty:
                reason = "empty, non-finite or never reached" if metric in NEVER_IS_NEGATIVE else "empty or non-finite"
                notes.append(
                    f"{group_label(by, group)}: {metric} missing for {stat.missing} of {group.samples} samples"
                    f" ({reason}; excluded from the mean)"
                )
    return Table(by=by, metrics=metrics, groups=ordered, spread=spread, notes=notes)


def group_label(by: Sequence[str], group: Group) -> str:
    return ", ".join(f"{k}={display_value(group.values[k])}" for k in by) or "all runs"


def display_value(value: str | None) -> str:
    """A group value for a table cell: long floats (Optuna's) shortened, undefined as a dash."""
    if value is None:
        return MISSING
    number = _number(value)
    if number is not None and not re.fullmatch(r"[+-]?\d+", value):
        return f"{number:.4g}"
    return value


def format_number(value: float | None, digits: int = 3) -> str:
    if value is None:
        return MISSING
    return f"{value:.{digits}g}"


def format_stat(stat: Stat, digits: int = 3, percent: bool = False) -> str:
    """``"21.7 ± 1.3"``; ``" (2 missing)"`` appended when cells were left out."""
    scale = 100.0 if percent else 1.0
    if stat.mean is None:
        text = MISSING
    else:
        text = format_number(stat.mean * scale, digits)
        if stat.std is not None:
            text += f" ± {format_number(stat.std * scale, digits)}"
        if percent:
            text += "%"
    if stat.missing:
        text += f" ({stat.missing} missing)"
    return text


def _success_cell(table: Table, group: Group, digits: int) -> str:
    """``"62.5% (10/16)"``; with ``spread="runs"`` and several runs, the std of the runs' rates too."""
    if table.spread == "runs" and len(group.runs) > 1:
        stat = group.column("success", "runs")
        rate = format_stat(Stat(stat.mean, stat.std, stat.n), digits, percent=True)
    else:
        rate = f"{format_number(100.0 * group.successes / group.samples, digits)}%" if group.samples else MISSING
    return f"{rate} ({group.successes}/{group.samples})"


def header(table: Table) -> list[str]:
    """Column names of the formatted table."""
    return [*table.by, "runs", "n", "success", *table.metrics, "s/img"]


def cells(table: Table, digits: int = 3) -> list[list[str]]:
    """The formatted table body, one list of cells per group."""
    body = []
    for group in table.groups:
        line = [display_value(group.values[key]) for key in table.by]
        line += [str(len(group.runs)), str(group.samples), _success_cell(table, group, digits)]
        line += [format_stat(group.column(metric, table.spread), digits) for metric in table.metrics]
        line.append(format_stat(group.column("seconds", table.spread), digits))
        body.append(line)
    return body


def to_markdown(table: Table, digits: int = 3, notes: bool = True) -> str:
    """A GitHub-flavoured Markdown table (keys left-aligned, numbers right-aligned), then the notes."""
    head = header(table)
    align = [":---"] * len(table.by) + ["---:"] * (len(head) - len(table.by))
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in line) + " |" for line in cells(table, digits)]
    spread = "samples" if table.spread == "samples" else "runs (std of per-run means)"
    lines += ["", f"mean ± std over {spread}; n: samples; s/img: search seconds per image."]
    if notes and table.notes:
        lines += ["", "Notes:", *[f"- {note}" for note in table.notes]]
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_"}
_LATEX_SPECIAL.update({"{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"})


def _latex_escape(text: str) -> str:
    text = "".join(_LATEX_SPECIAL.get(char, char) for char in text)
    return text.replace("±", r"$\pm$").replace(MISSING, "--")


def to_latex(table: Table, digits: int = 3, notes: bool = True) -> str:
    """A booktabs ``tabular`` (needs ``\\usepackage{booktabs}``); notes as LaTeX comments."""
    head = header(table)
    spec = "l" * len(table.by) + "r" * (len(head) - len(table.by))
    lines = [f"\\begin{{tabular}}{{{spec}}}", "\\toprule"]
    lines.append(" & ".join(_latex_escape(h) for h in head) + r" \\")
    lines.append("\\midrule")
    lines += [" & ".join(_latex_escape(c) for c in line) + r" \\" for line in cells(table, digits)]
    lines += ["\\bottomrule", "\\end{tabular}"]
    if notes and table.notes:
        lines += [f"% {note}" for note in table.notes]
    return "\n".join(lines) + "\n"


def to_csv(table: Table) -> str:
    """Machine-readable numbers: for each metric its mean, std, values used and missing cells."""
    head = [*table.by, "runs", "samples", "successes", "success_rate", "success_rate_std"]
    for name in [*table.metrics, "seconds"]:
        head += [f"{name}_mean", f"{name}_std", f"{name}_n", f"{name}_missing"]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(head)

    def raw(value: float | None) -> str:
        return "" if value is None else repr(value)

    for group in table.groups:
        rate = group.column("success", table.spread)
        line: list[str] = [group.values[k] or "" for k in table.by]
        line += [str(len(group.runs)), str(group.samples), str(group.successes), raw(rate.mean), raw(rate.std)]
        for name in [*table.metrics, "seconds"]:
            stat = group.column(name, table.spread)
            line += [raw(stat.mean), raw(stat.std), str(stat.n), str(stat.missing)]
        writer.writerow(line)
    return out.getvalue()


FORMATS = {"md": to_markdown, "latex": to_latex, "csv": to_csv}


def success_curve(first_steps: Sequence[int], steps: int) -> list[float]:
    """Fraction of samples whose first step at eps is ``<= t``, for ``t = 0 .. steps - 1``."""
    if not first_steps:
        return [0.0] * steps
    return [sum(0 <= s <= t for s in first_steps) / len(first_steps) for t in range(steps)]


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text)


def _figure(figure_cls: Any, labels: Sequence[str]) -> Any:
    """A figure wide enough for a legend of ``labels`` on its right."""
    width = 6.0 + (0.065 * max(map(len, labels)) if labels else 0.0)
    return figure_cls(figsize=(min(width, 16.0), 4.0), layout="constrained")


def plot(table: Table, out_dir: str | Path) -> list[Path]:
    """PNG figures of ``table`` in ``out_dir`` (needs matplotlib); returns the files written.

    - ``success_vs_steps.png``: per group, the fraction of samples whose downscale error had reached
      eps after t steps (from ``first_step_at_eps``);
    - ``<metric>_vs_<key>.png`` for each numeric ``by`` key with several values and each metric
      (and ``success_rate``): group means with std bars against the key, one line per combination
      of the other keys (a plain scatter when every combination is unique, as in an Optuna search).
    """
    try:
        from matplotlib.figure import Figure  # no pyplot: no display backend, safe in scripts and tests
    except ImportError as error:  # matplotlib is in the dev and sweep extras, not in the core install
        raise ImportError("plots need matplotlib: pip install matplotlib (or -e '.[sweep]')") from error

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []

    labels = [table.label(group) for group in table.groups] if len(table.groups) <= 20 else []
    figure = _figure(Figure, labels)
    axes = figure.add_subplot()
    for index, group in enumerate(table.groups):
        first = group.first_steps()
        steps = group.steps or (max(first) + 1 if first and max(first) >= 0 else 1)
        style = ["-", "--", ":", "-."][(index // 10) % 4]  # the colour cycle repeats after 10 lines
        curve = success_curve(first, steps)
        axes.step(range(1, steps + 1), curve, where="post", linestyle=style, label=table.label(group))
    axes.set(xlabel="steps taken", ylabel="fraction of samples that reached eps", ylim=(-0.02, 1.02))
    axes.set_title("success vs steps")
    if labels:
        figure.legend(loc="outside right upper", fontsize="small")
    path = out_dir / "success_vs_steps.png"
    figure.savefig(path, dpi=120)
    written.append(path)

    for key in table.by:
        raw_values = {g.values[key] for g in table.groups}
        numbers = [_number(v) for v in raw_values]
        if len(raw_values) < 2 or any(x is None for x in numbers):
            continue
        xs_all = [float(x) for x in numbers if x is not None]
        others = [k for k in table.by if k != key]
        for metric in ["success_rate", *table.metrics]:
            series: dict[str, list[tuple[float, Stat]]] = {}
            for group in table.groups:
                name = ", ".join(f"{k}={display_value(group.values[k])}" for k in others) or metric
                stat = group.column("success" if metric == "success_rate" else metric, table.spread)
                series.setdefault(name, []).append((float(group.values[key] or "nan"), stat))
            scatter = len(series) > 1 and all(len(points) == 1 for points in series.values())
            if scatter:
                # Every other-key combination is unique (Optuna trials): one scatter, no legend.
                series = {metric: [point for points in series.values() for point in points]}
            legend = list(series) if 1 < len(series) <= 20 else []
            figure = _figure(Figure, legend)
            axes = figure.add_subplot()
            for name, points in series.items():
                points = sorted((p for p in points if p[1].mean is not None), key=lambda p: p[0])
                if points:
                    xs = [x for x, _ in points]
                    ys = [s.mean for _, s in points]
                    errors = [s.std or 0.0 for _, s in points]
                    line = "none" if scatter else "-"
                    axes.errorbar(xs, ys, yerr=errors, marker="o", capsize=3, linestyle=line, label=name)
            if min(xs_all) > 0 and max(xs_all) / min(xs_all) >= 20:
                axes.set_xscale("log")
            axes.set(xlabel=key, ylabel=metric, title=f"{metric} vs {key}")
            if legend and axes.get_legend_handles_labels()[0]:  # series without any value draw nothing
                figure.legend(loc="outside right upper", fontsize="small")
            path = out_dir / f"{_safe_name(metric)}_vs_{_safe_name(key)}.png"
            figure.savefig(path, dpi=120)
            written.append(path)
    return written


def make_table(
    roots: Iterable[str | Path],
    by: Sequence[str] | None = None,
    metrics: Sequence[str] | None = None,
    spread: str = "samples",
) -> Table:
    """:func:`find_runs` under ``roots``, then :func:`aggregate`."""
    return aggregate(find_runs(*roots), by=by, metrics=metrics, spread=spread)

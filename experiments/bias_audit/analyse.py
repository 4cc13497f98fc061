#!/usr/bin/env python
"""Skin-tone groups of the bias audit: per-group table, plot and significance tests from its run folders.

    python experiments/bias_audit/analyse.py multirun/bias_audit --out experiments/bias_audit [--census]

Reads every run folder below the given folders (``results.csv`` with the face columns of
:mod:`pulse.metrics.face_metrics`), puts each sample in the ITA group of its *ground truth*
(:data:`pulse.metrics.skin.ITA_GROUPS`) and reports per solver, scale and group:

- n (samples; one per face and scale here), the success rate at eps (95 % Wilson CI),
- ``ita_shift`` (output ITA - true ITA, degrees; positive = lighter) mean with a 95 % bootstrap CI,
- ``id_dist_hr`` mean with a 95 % bootstrap CI and ``id_match_hr`` (distance <= 0.6) with a 95 % Wilson CI;

and across groups, per solver and scale: Kruskal-Wallis H tests of ``ita_shift`` and ``id_dist_hr``
(groups with at least 2 samples), a chi-squared test of success against group with a permutation p-value
(groups are small, so the asymptotic chi-squared would not hold), and Spearman's rank
correlation of ``ita_shift`` with the true ITA. Samples whose ITA is undefined (NaN, or beyond +-89
degrees: a grayscale photo) count in the "all" rows but in no skin-tone group and in no ITA mean.
``--census`` adds the ITA groups of all fetched CelebA crops (needs the ``faces`` extra and
``pulse-fetch celeba``); ``--prior-samples N`` the ITA groups of N faces sampled from the embedded DCGAN.
Writes ``table.md`` and ``plot.png``.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing

from pulse import tables  # noqa: E402
from pulse.metrics.skin import ITA_GROUPS, ita_group  # noqa: E402

GROUP_NAMES = [name for name, _, _ in ITA_GROUPS]
BOOTSTRAP = 10_000
FINITE_CHECKED = ("id_dist_hr", "ita_shift")
# pulse.metrics.skin.ita gives NaN where the skin region's mean b* < 1 (grayscale photos, whose angle sits at
# +-90 degrees); results written before that rule are filtered here by the angle itself.
UNDEFINED_ITA = 89.0


def bootstrap_ci(values: Sequence[float], seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean (NaN for fewer than 2 values)."""
    data = np.asarray(values, dtype=np.float64)
    if len(data) < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, len(data), size=(BOOTSTRAP, len(data)))].mean(axis=1)
    tail = (1 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def wilson_ci(successes: int, total: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a proportion (NaN when ``total`` is 0)."""
    if total == 0:
        return math.nan, math.nan
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return max(0.0, centre - half), min(1.0, centre + half)


def chi_squared(groups: np.ndarray, outcome: np.ndarray) -> float:
    """Pearson's chi-squared statistic of the group x outcome contingency table (integer-coded arrays)."""
    table = np.zeros((groups.max() + 1, 2))
    np.add.at(table, (groups, outcome), 1)
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    return float(np.sum(np.where(expected > 0, (table - expected) ** 2 / np.where(expected > 0, expected, 1), 0)))


def chi2_permutation(
    groups: Sequence[str], outcome: Sequence[bool], permutations: int = 10_000, seed: int = 0
) -> tuple[float, float, int]:
    """Chi-squared of success x group with a permutation p-value (valid for the small counts per group here).

    Returns ``(statistic, p, number of groups)``; ``p`` is NaN with one group or a constant outcome.
    """
    names = sorted(set(groups))
    codes = np.array([names.index(g) for g in groups])
    result = np.array(outcome, dtype=int)
    if len(names) < 2 or result.min() == result.max():
        return math.nan, math.nan, len(names)
    observed = chi_squared(codes, result)
    rng = np.random.default_rng(seed)
    exceed = sum(chi_squared(codes, rng.permutation(result)) >= observed - 1e-12 for _ in range(permutations))
    return observed, (exceed + 1) / (permutations + 1), len(names)


def _float(cell: str | None) -> float:
    return float(cell) if cell not in (None, "") else math.nan


def samples(roots: Sequence[str | Path]) -> list[dict]:
    """One record per sample: solver, generator, scale, name, success and the face columns."""
    records = []
    for run in tables.find_runs(*roots):
        solver_config = run.config.get("solver")
        has_ilo = isinstance(solver_config, dict) and bool(solver_config.get("ilo"))
        solver = run.value("solver") or ("ilo" if has_ilo else "pulse")
        generator = run.value("generator") or "?"
        for row in run.rows:
            tone = {key: _float(row.get(key)) for key in ("ita_hr", "ita_sr")}
            for key, value in tone.items():
                if abs(value) >= UNDEFINED_ITA:  # near-neutral region (runs made before ita's b* >= 1 rule)
                    tone[key] = math.nan
            records.append(
                {
                    "solver": solver,
                    "generator": generator,
                    "scale": int(row["scale"]),
                    "name": row["name"],
                    "success": row["success"] == "True",
                    **tone,
                    "ita_shift": tone["ita_sr"] - tone["ita_hr"],
                    "id_dist_hr": _float(row.get("id_dist_hr")),
                    "id_match_hr": _float(row.get("id_match_hr")),
                }
            )
    return records


def _fmt(value: float, digits: int = 1) -> str:
    return "–" if math.isnan(value) else f"{value:.{digits}f}"


def _mean_ci(values: list[float], digits: int = 1) -> str:
    if not values:
        return "–"
    low, high = bootstrap_ci(values)
    spread = "" if math.isnan(low) else f" [{_fmt(low, digits)}, {_fmt(high, digits)}]"
    return f"{_fmt(float(np.mean(values)), digits)}{spread}"


def _rate_ci(hits: int, total: int) -> str:
    if total == 0:
        return "–"
    low, high = wilson_ci(hits, total)
    return f"{100 * hits / total:.0f}% ({hits}/{total}) [{100 * low:.0f}, {100 * high:.0f}]"


def group_rows(records: list[dict]) -> list[list[str]]:
    """Table rows: solver, scale, group, n, success, ita_shift, id_dist_hr, id_match_hr."""
    rows = []
    keys = sorted({(r["generator"], r["solver"], r["scale"]) for r in records})
    for generator, solver, scale in keys:
        chosen = [r for r in records if (r["generator"], r["solver"], r["scale"]) == (generator, solver, scale)]
        for group in [*GROUP_NAMES, "all"]:
            members = [r for r in chosen if group == "all" or ita_group(r["ita_hr"]) == group]
            shifts = [r["ita_shift"] for r in members if math.isfinite(r["ita_shift"])]
            distances = [r["id_dist_hr"] for r in members if math.isfinite(r["id_dist_hr"])]
            matches = [r["id_match_hr"] for r in members if math.isfinite(r["id_match_hr"])]
            rows.append(
                [
                    generator,
                    solver,
                    f"x{scale}",
                    f"**{group}**" if group == "all" else group,
                    str(len(members)),
                    _rate_ci(sum(r["success"] for r in members), len(members)),
                    _mean_ci(shifts),
                    _mean_ci(distances, 3),
                    _rate_ci(int(sum(matches)), len(matches)),
                ]
            )
    return rows


def tests(records: list[dict]) -> list[list[str]]:
    """Across-group tests per generator, solver and scale."""
    from scipy import stats

    out = []
    keys = sorted({(r["generator"], r["solver"], r["scale"]) for r in records})
    for generator, solver, scale in keys:
        chosen = [r for r in records if (r["generator"], r["solver"], r["scale"]) == (generator, solver, scale)]
        cells = [generator, solver, f"x{scale}"]
        for column in ("ita_shift", "id_dist_hr"):
            by_group = [
                [r[column] for r in chosen if ita_group(r["ita_hr"]) == g and math.isfinite(r[column])]
                for g in GROUP_NAMES
            ]
            by_group = [values for values in by_group if len(values) >= 2]
            if len(by_group) >= 2:
                statistic, p = stats.kruskal(*by_group)
                cells.append(f"H={statistic:.2f}, p={p:.3g} ({len(by_group)} groups)")
            else:
                cells.append("– (fewer than 2 groups with 2+ samples)")
        labelled = [(ita_group(r["ita_hr"]), r["success"]) for r in chosen if ita_group(r["ita_hr"]) is not None]
        if labelled:
            groups, successes = zip(*labelled, strict=True)
            statistic, p, kinds = chi2_permutation(groups, successes)
            cells.append("–" if math.isnan(p) else f"chi2={statistic:.2f}, p={p:.3g} ({kinds} groups, permutation)")
        else:
            cells.append("–")
        pairs = [(r["ita_hr"], r["ita_shift"]) for r in chosen if math.isfinite(r["ita_shift"])]
        if len(pairs) >= 3:
            rho, p = stats.spearmanr(*zip(*pairs, strict=True))
            cells.append(f"rho={rho:.2f}, p={p:.3g} (n={len(pairs)})")
        else:
            cells.append("–")
        out.append(cells)
    return out


def census(size: int = 64) -> Counter:
    """ITA groups of the ground truth of every fetched CelebA photo (data=celeba's crop at ``size`` px)."""
    import torch

    from pulse.data import celeba_face
    from pulse.io.celeba import celeba_photos
    from pulse.metrics.skin import ita

    photos = celeba_photos()
    counts: Counter = Counter()
    for start in range(0, len(photos), 50):
        batch = torch.stack([celeba_face(path, size) for path in photos[start : start + 50]])
        counts.update(ita_group(float(v)) for v in ita(batch))
    return counts


def prior_census(samples: int, seed: int = 1234) -> tuple[Counter, list[float], int]:
    """ITA groups, ITA values and undefined count of faces sampled from the embedded DCGAN prior."""
    from pulse.generators.base import sample_images
    from pulse.generators.dcgan import DCGANGenerator
    from pulse.metrics.skin import ita

    faces = sample_images(DCGANGenerator.pretrained(), samples, seed=seed)
    values = [float(v) for v in ita(faces)]
    counts = Counter(ita_group(v) for v in values if math.isfinite(v))
    return counts, [v for v in values if math.isfinite(v)], sum(not math.isfinite(v) for v in values)


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" :--- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _group_stats(chosen: list[dict], column: str) -> tuple[list[float], list[float], list[float]]:
    """Per ITA group: mean and the distances below and above it to the 95 % CI (bootstrap; Wilson for success)."""
    means, below, above = [], [], []
    for group in GROUP_NAMES:
        members = [r for r in chosen if ita_group(r["ita_hr"]) == group]
        if column == "success":
            hits = sum(r["success"] for r in members)
            mean = hits / len(members) if members else math.nan
            low, high = wilson_ci(hits, len(members))
        else:
            values = [r[column] for r in members if math.isfinite(r[column])]
            mean = float(np.mean(values)) if values else math.nan
            low, high = bootstrap_ci(values)
        means.append(mean)
        below.append(max(0.0, mean - low) if math.isfinite(low) else 0.0)  # rounding can put a bound a hair past
        above.append(max(0.0, high - mean) if math.isfinite(high) else 0.0)
    return means, below, above


def plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({(r["generator"], r["solver"], r["scale"]) for r in records})
    panels = (
        ("ita_shift", "ita_shift = ITA(output) - ITA(truth), degrees\n(> 0: output lighter)", 0.0),
        ("id_dist_hr", "id_dist_hr (dlib; <= 0.6: same person)", 0.6),
        ("success", "success rate at eps", None),
    )
    figure, axes = plt.subplots(1, 3, figsize=(16, 4.4))
    x = np.arange(len(GROUP_NAMES))
    width = 0.8 / max(len(keys), 1)
    for k, key in enumerate(keys):
        chosen = [r for r in records if (r["generator"], r["solver"], r["scale"]) == key]
        label = f"{key[1]} x{key[2]}" + ("" if key[0] == "dcgan_faces" else f" ({key[0]})")
        for axis, (column, _, _) in zip(axes, panels, strict=True):
            means, below, above = _group_stats(chosen, column)
            offset = x + (k - (len(keys) - 1) / 2) * width
            axis.errorbar(offset, means, yerr=[below, above], fmt="o", capsize=3, label=label)
    # Samples per group in the largest setting (all settings hold the same faces once each is complete).
    counts = [
        max(sum(ita_group(r["ita_hr"]) == group for r in records if (r["generator"], r["solver"], r["scale"]) == key)
            for key in keys)
        for group in GROUP_NAMES
    ]  # fmt: skip
    for axis, (_, ylabel, line) in zip(axes, panels, strict=True):
        if line is not None:
            axis.axhline(line, color="grey", linewidth=0.8, linestyle="--" if line else "-")
        axis.set_ylabel(ylabel)
        axis.set_xticks(x, [f"{g}\n(n={n})" for g, n in zip(GROUP_NAMES, counts, strict=True)], fontsize=8)
        axis.set_xlabel("skin-tone group of the true face (ITA)")
    axes[0].legend(fontsize=8)
    figure.suptitle("Bias audit, real CelebA faces: mean and 95% CI per skin-tone group (bootstrap; Wilson for rates)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("roots", nargs="+", help="sweep folders holding the audit's run folders")
    parser.add_argument("--out", type=Path, default=Path("."), help="folder for table.md and plot.png")
    parser.add_argument("--census", action="store_true", help="also count the ITA groups of all fetched photos")
    parser.add_argument(
        "--prior-samples", type=int, default=0, help="also the ITA groups of this many embedded-DCGAN samples"
    )
    args = parser.parse_args(argv)
    records = samples(args.roots)
    if not records:
        raise SystemExit(f"no samples under {args.roots}")
    faces = len({r["name"].rsplit("_x", 1)[0] for r in records})
    parts = [
        f"Samples: {len(records)} ({faces} faces). Mean [95% CI]: bootstrap of the mean ({BOOTSTRAP} resamples,"
        " seed 0) for ita_shift (degrees, > 0 = output lighter) and id_dist_hr; Wilson score interval for the"
        " rates. Groups by the ITA of the true face. Finite values: "
        + ", ".join(f"{c} {sum(math.isfinite(r[c]) for r in records)}/{len(records)}" for c in FINITE_CHECKED)
        + ".",
        "",
        markdown(
            [
                "generator",
                "solver",
                "scale",
                "ITA group",
                "n",
                "success at eps",
                "ita_shift",
                "id_dist_hr",
                "id_match_hr (<= 0.6)",
            ],
            group_rows(records),
        ),
        "",
        "Across groups (Kruskal-Wallis, asymptotic, over groups with 2+ samples; chi-squared of success x group with a"
        " permutation p-value (10,000 shuffles of the group labels); Spearman of"
        " ita_shift with the true ITA, which regression to the mean biases negative):",
        "",
        markdown(
            [
                "generator",
                "solver",
                "scale",
                "ita_shift: Kruskal-Wallis",
                "id_dist_hr: Kruskal-Wallis",
                "success: chi-squared",
                "ita_shift vs true ITA: Spearman",
            ],
            tests(records),
        ),
    ]
    if args.census:
        counts = census()
        parts += [
            "",
            f"All {sum(counts.values())} fetched CelebA crops (64 px, data=celeba's HR) by ITA group: "
            + ", ".join(f"{name} {counts.get(name, 0)}" for name in GROUP_NAMES)
            + f", undefined (grayscale) {counts.get(None, 0)}",
        ]
    if args.prior_samples:
        counts, values, undefined = prior_census(args.prior_samples)
        quartiles = np.percentile(values, [25, 50, 75])
        parts += [
            "",
            f"{args.prior_samples} faces sampled from the embedded DCGAN prior (seed 1234) by ITA group: "
            + ", ".join(f"{name} {counts.get(name, 0)}" for name in GROUP_NAMES)
            + f", undefined {undefined}; ITA median {quartiles[1]:.1f}, "
            f"quartiles {quartiles[0]:.1f} .. {quartiles[2]:.1f}",
        ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text("\n".join(parts) + "\n")
    plot(records, args.out / "plot.png")
    print((args.out / "table.md").read_text())


if __name__ == "__main__":
    main()

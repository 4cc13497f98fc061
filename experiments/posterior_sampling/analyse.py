#!/usr/bin/env python
"""PULSE restarts against Langevin posterior samples: coverage, diversity, fidelity of the mean, cost, skin tone.

    python experiments/posterior_sampling/analyse.py --run pulse=RUN_DIR --run langevin=RUN_DIR [...]
        [--label generated] [--out experiments/posterior_sampling] [--prior-samples 200]

Writes ``table_<label>.md`` and, with both methods, ``plot_<label>.png``: per scale, each input's pull towards the
prior's typical skin tone under PULSE (x) against Langevin (y), coloured by the true face's skin-tone group (points
below the diagonal: Langevin pulled less), and each method's coverage against its diversity.

Each ``--run`` names a run folder (``results.csv``) of one method on one data set; runs with the same label and
method are pooled. Per method and scale: means over inputs of ``coverage_90`` (and the calibrated value
``coverage_nominal``), ``diversity_l2``/``diversity_lpips``, ``id_distinct``, the mean image's PSNR/SSIM/LPIPS,
seconds per sample. Per true-face ITA group: inputs, mean ``ita_shift`` and its spread across an input's samples.

Jalal et al. (ICML 2021) claim a MAP-like search pulls towards the majority more than posterior sampling. Here
the "majority" is the prior's typical face: the median ITA of ``--prior-samples`` faces drawn from the embedded
DCGAN. Per input, ``pull = (mean ITA of its outputs - ITA of the truth) * sign(prior median - ITA of the truth)``
(degrees moved towards the prior's typical skin tone); the paired difference ``pull_pulse - pull_langevin`` over
inputs both methods solved is tested with Wilcoxon's signed-rank test (two-sided), per scale.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

COLUMNS = (
    "coverage_90",
    "coverage_nominal",
    "diversity_l2",
    "diversity_lpips",
    "id_distinct",
    "mean_psnr_hr",
    "mean_ssim_hr",
    "mean_lpips_hr",
    "psnr_hr",
    "seconds",
    "rhat",
)


def _float(cell: str | None) -> float:
    return float(cell) if cell not in (None, "") else math.nan


def per_input(run: Path) -> dict[str, dict]:
    """``{input name: {scale, K, column means, ita_hr, ita_sr (mean), ita_spread}}`` of one run folder."""
    with (run / "results.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise ValueError(f"{run}/results.csv has no rows")
    grouped: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        grouped[row["name"]].append(row)
    out = {}
    for name, members in grouped.items():
        record: dict = {"scale": int(members[0]["scale"]), "samples": len(members)}
        for column in COLUMNS:
            values = [_float(r.get(column)) for r in members]
            finite = [v for v in values if math.isfinite(v)]
            record[column] = statistics.fmean(finite) if finite else math.nan
        record["ita_hr"] = _float(members[0].get("ita_hr"))
        ita_sr = [v for v in (_float(r.get("ita_sr")) for r in members) if math.isfinite(v)]
        record["ita_sr"] = statistics.fmean(ita_sr) if ita_sr else math.nan
        record["ita_spread"] = statistics.stdev(ita_sr) if len(ita_sr) > 1 else math.nan
        out[name] = record
    return out


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.fmean(finite) if finite else math.nan


def _fmt(value: float, digits: int = 3) -> str:
    return "null" if not math.isfinite(value) else f"{value:.{digits}f}"


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def prior_median_ita(samples: int, seed: int = 1234) -> float:
    """Median ITA (degrees) of faces sampled from the embedded DCGAN (the prior's typical skin tone)."""
    from pulse.generators.base import sample_images
    from pulse.generators.dcgan import DCGANGenerator
    from pulse.metrics.skin import ita

    values = [float(v) for v in ita(sample_images(DCGANGenerator.pretrained(), samples, seed=seed))]
    return statistics.median([v for v in values if math.isfinite(v)])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", action="append", required=True, help="METHOD=RUN_DIR, repeatable")
    parser.add_argument("--label", default="faces", help="name of the data set in the tables")
    parser.add_argument("--out", type=Path, default=Path("experiments/posterior_sampling"))
    parser.add_argument("--prior-samples", type=int, default=200)
    args = parser.parse_args(argv)
    from scipy.stats import wilcoxon

    from pulse.metrics.skin import ita_group

    methods: dict[str, dict[str, dict]] = defaultdict(dict)
    for spec in args.run:
        method, _, path = spec.partition("=")
        if not path:
            raise SystemExit(f"--run takes METHOD=RUN_DIR, got {spec!r}")
        methods[method].update(per_input(Path(path)))

    summary_rows = []
    for method, inputs in methods.items():
        for scale in sorted({r["scale"] for r in inputs.values()}):
            chosen = [r for r in inputs.values() if r["scale"] == scale]
            summary_rows.append(
                [args.label, method, f"x{scale}", str(len(chosen)), str(chosen[0]["samples"])]
                + [
                    _fmt(_mean([r[c] for r in chosen]), 2 if c in ("mean_psnr_hr", "psnr_hr", "rhat") else 3)
                    for c in COLUMNS
                ]
            )
    header = ["data", "method", "scale", "inputs", "K", *COLUMNS]
    text = [f"## {args.label}: per method and scale (means over inputs)", "", markdown(header, summary_rows), ""]

    group_rows = []
    for method, inputs in methods.items():
        by_group: dict[tuple[int, str], list[dict]] = defaultdict(list)
        for record in inputs.values():
            group = ita_group(record["ita_hr"]) if math.isfinite(record["ita_hr"]) else None
            if group is not None:
                by_group[(record["scale"], group)].append(record)
        for (scale, group), chosen in sorted(by_group.items()):
            shift = [r["ita_sr"] - r["ita_hr"] for r in chosen]
            group_rows.append(
                [
                    method,
                    f"x{scale}",
                    group,
                    str(len(chosen)),
                    _fmt(_mean(shift), 1),
                    _fmt(_mean([r["ita_spread"] for r in chosen]), 1),
                ]
            )
    text += [
        "## ITA shift per true-face skin-tone group",
        "",
        "`shift`: mean over inputs of (mean ITA of the outputs - ITA of the truth), degrees; `spread`: mean",
        "over inputs of the standard deviation of the outputs' ITA (how much one input's samples disagree).",
        "",
        markdown(["method", "scale", "group", "inputs", "shift", "spread"], group_rows),
        "",
    ]

    pulls_by_scale: dict[int, list[tuple[float, float, str]]] = {}
    if {"pulse", "langevin"} <= set(methods) and args.prior_samples > 0:
        prior = prior_median_ita(args.prior_samples)
        test_rows = []
        for scale in sorted({r["scale"] for r in methods["pulse"].values()}):
            pulls = []
            for name, a in methods["pulse"].items():
                b = methods["langevin"].get(name)
                if b is None or a["scale"] != scale:
                    continue
                if not all(math.isfinite(v) for v in (a["ita_sr"], b["ita_sr"], a["ita_hr"])):
                    continue
                direction = math.copysign(1.0, prior - a["ita_hr"])
                pulls.append(((a["ita_sr"] - a["ita_hr"]) * direction, (b["ita_sr"] - b["ita_hr"]) * direction))
                pulls_by_scale.setdefault(scale, []).append((*pulls[-1], ita_group(a["ita_hr"]) or "none"))
            if len(pulls) < 6:
                test_rows.append([f"x{scale}", str(len(pulls)), "null", "null", "null", "too few paired inputs"])
                continue
            differences = [p - q for p, q in pulls]
            result = wilcoxon(differences)
            test_rows.append(
                [
                    f"x{scale}",
                    str(len(pulls)),
                    _fmt(_mean([p for p, _ in pulls]), 1),
                    _fmt(_mean([q for _, q in pulls]), 1),
                    _fmt(statistics.median(differences), 1),
                    f"{result.pvalue:.3g}",
                ]
            )
        text += [
            "## Pull towards the prior's typical skin tone (Jalal et al.'s claim)",
            "",
            f"Prior median ITA: {prior:.1f} degrees ({args.prior_samples} DCGAN samples, seed 1234). `pull`: degrees",
            "the outputs' mean ITA moved from the truth towards it; Wilcoxon signed-rank test of pulse - langevin.",
            "",
            markdown(["scale", "paired inputs", "pull PULSE", "pull Langevin", "median difference", "p"], test_rows),
            "",
        ]
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"table_{args.label}.md"
    path.write_text("\n".join(text))
    print("\n".join(text))
    print(f"wrote {path}")
    if pulls_by_scale:
        figure = args.out / f"plot_{args.label}.png"
        plot(methods, pulls_by_scale, args.label, figure)
        print(f"wrote {figure}")


def plot(
    methods: dict[str, dict[str, dict]],
    pulls_by_scale: dict[int, list[tuple[float, float, str]]],
    label: str,
    path: Path,
) -> None:
    """Per scale: pull under PULSE against pull under Langevin per input; then coverage against diversity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scales = sorted(pulls_by_scale)
    figure, axes = plt.subplots(1, len(scales) + 1, figsize=(4.2 * (len(scales) + 1), 4), squeeze=False)
    groups = sorted({g for pulls in pulls_by_scale.values() for _, _, g in pulls})
    colours = dict(zip(groups, plt.cm.viridis([i / max(1, len(groups) - 1) for i in range(len(groups))]), strict=True))
    for axis, scale in zip(axes[0], scales, strict=False):
        pulls = pulls_by_scale[scale]
        for group in groups:
            chosen = [(p, q) for p, q, g in pulls if g == group]
            if chosen:
                axis.scatter(*zip(*chosen, strict=True), s=18, color=colours[group], label=f"{group} ({len(chosen)})")
        low = min(min(p, q) for p, q, _ in pulls) - 1
        high = max(max(p, q) for p, q, _ in pulls) + 1
        axis.plot([low, high], [low, high], color="grey", linewidth=0.8)
        axis.axhline(0, color="grey", linewidth=0.4)
        axis.axvline(0, color="grey", linewidth=0.4)
        axis.set(
            title=f"{label} x{scale}: pull towards the prior (deg)", xlabel="PULSE restarts", ylabel="Langevin draws"
        )
        axis.legend(fontsize=7)
    axis = axes[0][-1]
    for marker, (method, inputs) in zip("os^", methods.items(), strict=False):
        for scale in scales:
            chosen = [r for r in inputs.values() if r["scale"] == scale]
            axis.scatter(
                _mean([r["diversity_lpips"] for r in chosen]),
                _mean([r["coverage_90"] for r in chosen]),
                marker=marker,
                s=40,
                label=f"{method} x{scale}",
            )
    nominal = _mean([r["coverage_nominal"] for inputs in methods.values() for r in inputs.values()])
    if math.isfinite(nominal):
        axis.axhline(nominal, color="grey", linestyle="--", linewidth=0.8, label=f"calibrated ({nominal:.3f})")
    axis.set(title=f"{label}: coverage_90 against diversity", xlabel="diversity_lpips", ylabel="coverage_90")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""docs/images/langevin_samples.png: posterior samples of generated faces, their mean and std map.

    python scripts/make_langevin_figure.py [--out docs/images/langevin_samples.png] [--samples 8] [--mala]
    python scripts/make_langevin_figure.py --run RUN_DIR --names face000_x8,face006_x4   # rows of a run's grid

One row per input (the first generated faces at x8, then at x4): LR (nearest-upsampled) | samples | mean |
per-pixel std (gray, white = 0.25) | HR. Uses ``configs/solver/langevin.yaml``'s defaults (ULA, sigma 0.045,
80 burn-in steps, thin 20) unless told otherwise; a few minutes on two CPU cores. With ``--run`` it samples
nothing and cuts the named inputs' rows out of that run's ``grid.png`` (the same layout, from
``python run.py solver=langevin``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from pulse.data import GeneratedFaces, save_image  # noqa: E402
from pulse.generators.dcgan import DCGANGenerator  # noqa: E402
from pulse.metrics.posterior import coverage, nominal_coverage, posterior_mean_std  # noqa: E402
from pulse.outputs import STD_MAP_WHITE  # noqa: E402
from pulse.solvers.langevin import LangevinSettings, LangevinSolver  # noqa: E402


def rows_of_run(run: Path, names: list[str]) -> torch.Tensor:
    """The ``grid.png`` rows of ``names`` (``[3, 64 * len(names), W]``); the grid has one row per input, in order."""
    from pulse.data import load_image
    from pulse.outputs import read_rows

    order = list(dict.fromkeys(row["name"] for row in read_rows(run / "results.csv")))
    grid = load_image(run / "grid.png")
    side = grid.shape[-2] // min(len(order), 16)  # the grid shows the first 16 inputs
    missing = [n for n in names if n not in order[:16]]
    if not names or missing:
        raise SystemExit(f"--names must list inputs of the grid ({', '.join(order[:16])}); missing: {missing}")
    return torch.cat([grid[:, order.index(n) * side : (order.index(n) + 1) * side] for n in names], dim=-2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/images/langevin_samples.png"))
    parser.add_argument("--faces", type=int, default=2)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--mala", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run", type=Path, default=None, help="a solver=langevin run folder to take rows from")
    parser.add_argument("--names", default="", help="with --run: comma-separated input names, in figure order")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    if args.run is not None:
        save_image(rows_of_run(args.run, [n for n in args.names.split(",") if n]), args.out)
        print(f"wrote {args.out}")
        return

    generator = DCGANGenerator.pretrained()
    solver = LangevinSolver(generator, settings=LangevinSettings(samples=args.samples, mala=args.mala, seed=args.seed))
    rows = []
    for factor in (8, 4):
        problems = list(GeneratedFaces(generator, num=args.faces, factors=[factor]))
        result = solver.solve(torch.stack([p.lr for p in problems]))
        for index, problem in enumerate(problems):
            draws = result.hr[result.input_index == index]
            mean, std = posterior_mean_std(draws)
            std_map = (std.mean(0, keepdim=True) / STD_MAP_WHITE).clamp(0, 1).expand(3, -1, -1)
            lr_up = F.interpolate(problem.lr[None], size=draws.shape[-2:], mode="nearest")[0]
            rows.append(torch.cat([lr_up, *draws, mean, std_map, problem.hr], dim=-1))
            print(
                f"{problem.name}: coverage_90 {coverage(draws, problem.hr):.3f} "
                f"(calibrated: {nominal_coverage(len(draws)):.3f}), mean per-pixel std {float(std.mean()):.4f}"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_image(torch.cat(rows, dim=-2), args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

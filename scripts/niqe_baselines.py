"""NIQE of a finished run next to the paper's baselines: the paper's Table 2 (HR, nearest, bicubic, PULSE).

    python scripts/niqe_baselines.py outputs/paper_niqe_table/<date>/<time> [--convention gray|y] [--limit N]

Reads the run's ``config.yaml`` (a ``data=folder`` run with ``data.factor``: ground truth downscaled by the
run), rebuilds its low-resolution inputs exactly as the run did, upsamples them back by nearest neighbour and
by MATLAB-style bicubic, and scores those, the ground truth and the run's outputs (``sr/*.png``) with NIQE.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pulse.data import ImageFolder, load_image  # noqa: E402
from pulse.metrics.niqe import matlab_resize, niqe  # noqa: E402

PAPER = {"HR": 3.90, "nearest": 12.48, "bicubic": 7.06, "PULSE": 2.47}


def bicubic_up(lr: torch.Tensor, factor: int) -> torch.Tensor:
    """MATLAB ``imresize(lr, factor)`` (Keys a = -0.5) of ``[3, h, w]`` -> ``[3, h*factor, w*factor]``."""
    return matlab_resize(lr.double() * 255, factor).div(255).clamp(0, 1).float()


def nearest_up(lr: torch.Tensor, factor: int) -> torch.Tensor:
    return F.interpolate(lr[None], scale_factor=factor, mode="nearest")[0]


def mean_std(values: list[float]) -> str:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "null"
    spread = statistics.stdev(finite) if len(finite) > 1 else 0.0
    return f"{statistics.fmean(finite):.3f} ± {spread:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--convention", choices=["gray", "y"], default="gray")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N inputs")
    args = parser.parse_args(argv)

    cfg = OmegaConf.load(args.run_dir / "config.yaml")
    factor = cfg.data.get("factor")
    if not str(cfg.data.get("_target_", "")).endswith("ImageFolder") or not factor:
        parser.error("needs a data=folder run with data.factor set (ground truth downscaled by the run)")
    with (args.run_dir / "results.csv").open(newline="") as handle:
        outputs = {row["name"]: row["image"] for row in csv.DictReader(handle) if row["duplicate"] == "0"}
    if not outputs:
        parser.error(f"{args.run_dir / 'results.csv'} lists no outputs")
    resolution = load_image(args.run_dir / next(iter(outputs.values()))).shape[-1]  # the generator's output size
    data = ImageFolder(
        cfg.data.path, resolution=resolution, factor=int(factor), degradation=cfg.data.get("degradation")
    )
    scores: dict[str, list[float]] = {name: [] for name in PAPER}
    for index, problem in enumerate(data):
        if args.limit is not None and index >= args.limit:
            break
        if problem.name not in outputs:
            print(f"{problem.name}: no output in the run, skipped", file=sys.stderr)
            continue
        images = {
            "HR": problem.hr,
            "nearest": nearest_up(problem.lr, int(factor)),
            "bicubic": bicubic_up(problem.lr, int(factor)),
            "PULSE": load_image(args.run_dir / outputs[problem.name]),
        }
        for name, image in images.items():
            scores[name].append(float(niqe(image[None], args.convention)[0]))

    count = len(scores["HR"])
    print(f"NIQE ({args.convention}, LIVE model; lower is better), {count} images, x{factor}, run {args.run_dir}")
    print("| | " + " | ".join(PAPER) + " |")
    print("| --- |" + " ---: |" * len(PAPER))
    print("| paper (Table 2) | " + " | ".join(f"{v:.2f}" for v in PAPER.values()) + " |")
    print("| this run | " + " | ".join(mean_std(scores[name]) for name in PAPER) + " |")
    return 0 if count else 1


if __name__ == "__main__":
    raise SystemExit(main())

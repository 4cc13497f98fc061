#!/usr/bin/env python
"""A small side-by-side picture of runs on real faces: LR | one column per run | HR, a few faces per factor.

    python scripts/real_faces_grid.py RUN [RUN ...] --labels PULSE,ILO [--faces 3] [--factors 8,4]
                                      [--scale 2] --out docs/images/real_faces.png

Each RUN is a ``data=celeba`` run folder (``results.csv``, ``sr/``, ``config.yaml``). LR and HR are rebuilt
from the fetched photos with the run's data settings (the data source is deterministic), so nothing but
the runs' own outputs is needed. Faces are the first ``--faces`` inputs (name order) present in every run.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from pulse.data import CelebAFaces, load_image, to_uint8  # noqa: E402


def _first_samples(run: Path) -> dict[str, Path]:
    """``{input name: image of its first sample}`` of a run folder."""
    with open(run / "results.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("duplicate", "0") == "0" and row.get("image")]
    return {row["name"]: run / row["image"] for row in rows}


def make_grid(runs: Sequence[Path], factors: Sequence[int], faces: int, scale: int) -> np.ndarray:
    """Rows of LR (nearest-upsampled) | each run's output | HR; ``[H, W, 3]`` uint8."""
    samples = [_first_samples(run) for run in runs]
    data = OmegaConf.load(runs[0] / "config.yaml").data
    if not str(data.get("_target_", "")).endswith("CelebAFaces"):
        raise SystemExit(f"error: {runs[0]} is not a data=celeba run")
    resolution = load_image(next(iter(samples[0].values()))).shape[-1]
    source = CelebAFaces(
        resolution,
        count=data.count,
        start=data.start,
        factors=list(factors),
        quantize=data.quantize,
        degradation=data.degradation,
        path=data.path,
        box=data.box if "box" in data else (25, 57, 153, 185),
    )
    rows = []
    for factor in factors:
        chosen = [p for p in source if p.name.endswith(f"_x{factor}") and all(p.name in found for found in samples)][
            :faces
        ]
        if not chosen:
            raise SystemExit(f"error: no x{factor} input is in every run")
        for problem in chosen:
            lr = F.interpolate(problem.lr[None], size=(resolution, resolution), mode="nearest")[0]
            cells = [lr, *(load_image(found[problem.name]) for found in samples), problem.hr]
            rows.append(torch.cat(cells, dim=2))
    grid = torch.cat(rows, dim=1)
    grid = F.interpolate(grid[None], scale_factor=scale, mode="nearest")[0] if scale > 1 else grid
    return to_uint8(grid)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="data=celeba run folders, one column each")
    parser.add_argument("--labels", help="comma-separated column names, printed with the layout")
    parser.add_argument("--faces", type=int, default=3, help="faces per factor (default 3)")
    parser.add_argument("--factors", default="8,4", help="comma-separated factors, one block of rows each")
    parser.add_argument("--scale", type=int, default=2, help="nearest-neighbour enlargement (default 2)")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args(argv)
    factors = [int(f) for f in args.factors.split(",")]
    grid = make_grid(args.runs, factors, args.faces, args.scale)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(args.out, optimize=True)
    labels = args.labels.split(",") if args.labels else [run.name for run in args.runs]
    columns = " | ".join(["LR", *labels, "HR"])
    print(f"wrote {args.out} ({grid.shape[1]}x{grid.shape[0]}): columns {columns}; rows x{factors} ({args.faces} each)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

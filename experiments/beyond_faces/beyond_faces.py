"""PULSE, ILO and bicubic on terrain heightmaps: samples of the terrain prior (realisable) and real DEM patches.

    python experiments/beyond_faces/beyond_faces.py --terrain 4 --dem 4 --factors 4 8 --steps 100 --ilo-steps 50 \
        --out experiments/beyond_faces/full

Needs ``pulse-fetch terrain`` once. Writes ``results.csv`` (one row per method and input), ``table.md`` (means
per data, method and factor) and ``grid.png`` (rows: LR nearest | bicubic | PULSE | ILO | HR) into ``--out``.

``--draws N`` also runs, per input, N independent PULSE restarts and N Langevin posterior draws
(:class:`pulse.solvers.langevin.LangevinSolver`, ``--sigma``, ``--burn-in``, ``--thin``) and scores each draw
(``pulse_restart``, ``langevin``) and the mean of an input's N draws (``pulse_mean``, ``langevin_mean``): the
prior's fine grain lands in different places in different draws, so their mean is an estimate of the posterior
mean (the MMSE answer), the output the pixel metrics favour.

Columns: ``downscale_error`` (MSE of the downscaled output to the input, [0, 1] scale), ``psnr`` and ``ssim``
(against the ground truth, on the model's asinh-compressed unit scale), ``rmse_m`` (the same in metres, after
:func:`pulse.generators.terrain.unit_to_metres`), and ``hf_ratio``: the mean absolute Laplacian of the output
over that of the ground truth (1 = as rough as the truth; above 1 = added speckle; below 1 = smoother).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from pulse.data import ElevationPatches, GeneratedFaces, Problem, save_image
from pulse.downscale import BicubicDownscale
from pulse.generators.terrain import TerrainGenerator, unit_to_metres
from pulse.losses import PulseLoss
from pulse.metrics.fidelity import psnr, ssim
from pulse.solvers.ilo import ILOSettings, ILOSolver
from pulse.solvers.langevin import LangevinSettings, LangevinSolver
from pulse.solvers.pulse import PulseSolver, SearchSettings

LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)


def roughness(images: torch.Tensor) -> torch.Tensor:
    """Mean absolute Laplacian ``[B]`` of ``[B, 1, H, W]`` images (reflect-padded)."""
    return F.conv2d(F.pad(images, (1, 1, 1, 1), mode="reflect"), LAPLACIAN).abs().flatten(1).mean(1)


def latent_statistics(latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Whiteness of searched noise maps ``[B, 1, 16384]``: lag-1 correlation (0 for white noise) and kurtosis (3).

    The model was trained on white Gaussian noise; a search that keeps the norm (the sphere) can still make
    the map spatially correlated or heavy-tailed, inputs the one-step model never saw.
    """
    maps = latent.reshape(-1, 128, 128).double()
    maps = (maps - maps.mean(dim=(1, 2), keepdim=True)) / maps.std(dim=(1, 2), keepdim=True)
    lag1 = 0.5 * ((maps[:, 1:] * maps[:, :-1]).mean(dim=(1, 2)) + (maps[:, :, 1:] * maps[:, :, :-1]).mean(dim=(1, 2)))
    return lag1, maps.pow(4).mean(dim=(1, 2))


def bicubic_upsample(lr: torch.Tensor, size: int) -> torch.Tensor:
    """The no-prior baseline: bicubic interpolation (a = -0.75, torch's) of ``[B, 1, h, w]`` to ``size``."""
    return F.interpolate(lr, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


def measure(
    name: list[str],
    method: str,
    factor: int,
    data: str,
    hr: torch.Tensor,
    sr: torch.Tensor,
    lr: torch.Tensor,
    latent: torch.Tensor | None = None,
    best_step: torch.Tensor | None = None,
) -> list[dict]:
    """One row per sample of ``sr`` ``[B, 1, R, R]``; latent statistics where the searched noise map is known."""
    lag1, kurtosis = latent_statistics(latent) if latent is not None else (None, None)
    down = BicubicDownscale(factor)(sr)
    rows = []
    error = (down - lr).pow(2).flatten(1).mean(1)
    rmse_m = (unit_to_metres(sr) - unit_to_metres(hr)).pow(2).flatten(1).mean(1).sqrt()
    ratio = roughness(sr) / roughness(hr)
    for i in range(len(sr)):
        rows.append(
            {
                "data": data,
                "name": name[i],
                "method": method,
                "factor": factor,
                "downscale_error": float(error[i]),
                "psnr": float(psnr(sr[i : i + 1], hr[i : i + 1])[0]),
                "ssim": float(ssim(sr[i : i + 1], hr[i : i + 1])[0]),
                "rmse_m": float(rmse_m[i]),
                "hf_ratio": float(ratio[i]),
                "latent_lag1": float(lag1[i]) if lag1 is not None else math.nan,
                "latent_kurtosis": float(kurtosis[i]) if kurtosis is not None else math.nan,
                "best_step": int(best_step[i]) if best_step is not None else -1,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--terrain", type=int, default=2, help="samples of the prior (realisable problems)")
    parser.add_argument("--dem", type=int, default=2, help="real DEM patches (matplotlib's jacksboro_fault_dem)")
    parser.add_argument("--factors", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--steps", type=int, default=100, help="PULSE steps")
    parser.add_argument("--ilo-steps", type=int, default=50, help="ILO steps on block 1 (the noisy input map)")
    parser.add_argument("--ilo-radius", type=float, default=0.05)
    parser.add_argument("--lr", type=float, default=0.4, help="spherical Adam learning rate")
    parser.add_argument(
        "--optimizer",
        choices=["spherical", "white"],
        default="spherical",
        help="spherical Adam (the paper) or white_spectrum: the noise map also kept white per frequency band",
    )
    parser.add_argument("--bands", type=int, default=16, help="radial bands for --optimizer white")
    parser.add_argument("--difficulty", type=float, default=100.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("experiments/beyond_faces/pilot"))
    parser.add_argument("--draws", type=int, default=0, help="also N PULSE restarts and N Langevin draws per input")
    parser.add_argument("--sigma", type=float, default=0.045, help="Langevin likelihood noise, unit scale")
    parser.add_argument("--burn-in", type=int, default=80, help="Langevin burn-in steps")
    parser.add_argument("--thin", type=int, default=20, help="Langevin steps from burn-in to the draw")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    generator = TerrainGenerator(difficulty=args.difficulty)
    sources: list[tuple[str, list[Problem]]] = []
    if args.terrain:
        sources.append(
            ("terrain", list(GeneratedFaces(generator, args.terrain, args.factors, quantize=16, prefix="terrain")))
        )
    if args.dem:
        sources.append(("dem", list(ElevationPatches(128, count=args.dem, factors=args.factors))))

    from functools import partial

    from pulse.optim import SphericalOptimizer, WhiteSpectrumOptimizer

    if args.optimizer == "white":
        optimizer = partial(WhiteSpectrumOptimizer, torch.optim.Adam, lr=args.lr, bands=args.bands, flat_side=128)
    else:
        optimizer = partial(SphericalOptimizer, torch.optim.Adam, lr=args.lr)
    settings = SearchSettings(steps=args.steps, seed=args.seed)
    pulse = PulseSolver(
        generator,
        PulseLoss({"l2": 100.0, "geocross": 0.05}, settings.eps),
        optimizer,
        settings=settings,
    )
    ilo = ILOSolver(pulse, ILOSettings(blocks=[1], steps=args.ilo_steps, radius=args.ilo_radius))
    # ILO starts from the PULSE search: keep that stage's result instead of searching twice.
    first_stage: dict[str, object] = {}
    search = pulse.solve

    def keep_first_stage(*call, **options):
        first_stage["result"] = search(*call, **options)
        return first_stage["result"]

    pulse.solve = keep_first_stage
    rows, grid_rows = [], []
    for data, problems in sources:
        for factor in args.factors:
            chosen = [p for p in problems if p.name.endswith(f"_x{factor}")]
            names = [p.name for p in chosen]
            lr = torch.stack([p.lr for p in chosen])
            hr = torch.stack([p.hr for p in chosen])
            outputs = {"bicubic": bicubic_upsample(lr, 128)}
            start = time.perf_counter()
            found = ilo.solve(lr) if args.ilo_steps else pulse.solve(lr)
            seconds = time.perf_counter() - start
            outputs["pulse"] = first_stage["result"].hr
            if args.ilo_steps:
                outputs["ilo"] = found.hr
            latents = {"pulse": first_stage["result"].latent}
            best = {"pulse": first_stage["result"].best_step, "ilo": found.best_step}
            for method, sr in outputs.items():
                rows += measure(names, method, factor, data, hr, sr, lr, latents.get(method), best.get(method))
            print(f"{data} x{factor}: {len(chosen)} inputs searched in {seconds:.0f} s", flush=True)
            if args.draws:
                draws = posterior_draws(generator, pulse, lr, args)
                for method, (found, spent) in draws.items():
                    index = found.input_index
                    rows += measure(
                        [names[i] for i in index],
                        method,
                        factor,
                        data,
                        hr[index],
                        found.hr,
                        lr[index],
                        found.latent,
                        found.best_step,
                    )
                    mean = torch.stack([found.hr[index == i].mean(0) for i in range(len(chosen))])
                    method_mean = method.replace("_restart", "") + "_mean"
                    rows += measure(names, method_mean, factor, data, hr, mean, lr)
                    outputs[method_mean] = mean
                    print(f"  {method}: {len(found.hr)} draws in {spent:.0f} s", flush=True)
            for i in range(len(chosen)):
                lr_up = F.interpolate(lr[i : i + 1], size=(128, 128), mode="nearest")[0]
                grid_rows.append([lr_up, *(outputs[m][i] for m in outputs), hr[i]])
    write_outputs(rows, grid_rows, args.out)


def posterior_draws(
    generator: TerrainGenerator, pulse: PulseSolver, lr: torch.Tensor, args: argparse.Namespace
) -> dict[str, tuple]:
    """``args.draws`` PULSE restarts and as many Langevin draws per input: ``{method: (result, seconds)}``."""
    restarts = PulseSolver(
        generator,
        pulse.loss,
        pulse.optimizer,
        settings=dataclasses.replace(pulse.settings, duplicates=args.draws, seed=args.seed + 1),
    )
    sampler = LangevinSolver(
        generator,
        settings=LangevinSettings(
            samples=args.draws, sigma=args.sigma, burn_in=args.burn_in, thin=args.thin, seed=args.seed + 1
        ),
    )
    results = {}
    for method, solver in (("pulse_restart", restarts), ("langevin", sampler)):
        start = time.perf_counter()
        found = solver.solve(lr)
        results[method] = (found, time.perf_counter() - start)
    return results


def write_outputs(rows: list[dict], grid_rows: list[list[torch.Tensor]], out: Path) -> None:
    with (out / "results.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["data"], row["factor"], row["method"]), []).append(row)
    lines = [
        "| data | factor | method | n | downscale_error | psnr (dB) | ssim | rmse (m) | hf_ratio "
        "| latent lag-1 | kurtosis | best step |",
        "| :--- | ---: | :--- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (data, factor, method), members in groups.items():

        def mean(key: str, members: list[dict] = members) -> str:
            value = statistics.fmean(r[key] for r in members)
            return "-" if math.isnan(value) else f"{value:.4g}"

        lines.append(
            f"| {data} | x{factor} | {method} | {len(members)} | {mean('downscale_error')} | {mean('psnr')} | "
            f"{mean('ssim')} | {mean('rmse_m')} | {mean('hf_ratio')} | {mean('latent_lag1')} | "
            f"{mean('latent_kurtosis')} | {mean('best_step')} |"
        )
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    width = max(len(r) for r in grid_rows)
    canvas = torch.ones(1, 128 * len(grid_rows), 128 * width)
    for i, tiles in enumerate(grid_rows):
        for j, tile in enumerate(tiles):
            canvas[:, i * 128 : (i + 1) * 128, j * 128 : (j + 1) * 128] = tile
    save_image(canvas, out / "grid.png")


if __name__ == "__main__":
    main()

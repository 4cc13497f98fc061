#!/usr/bin/env python
"""Cost of a Langevin posterior sample against one PULSE search, same generator, inputs and device.

    python scripts/benchmark_langevin.py [--samples 8] [--inputs 2] [--factor 8] [--burn-in 80] [--thin 20]
                                         [--mala] [--device cpu|cuda] [--repeats 2] [--json PATH]

Both run on the embedded DCGAN with ``samples`` samples per input in one batch: PULSE with its defaults
(100 steps, one forward and backward each), Langevin with one chain per sample (``burn_in + thin`` steps, one
forward and backward each: the proposal's gradient is the next step's). Prints seconds per sample and per
step and their ratios (median of ``repeats`` timings; on a shared CPU they are noisy).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

from pulse.data import GeneratedFaces  # noqa: E402
from pulse.generators.dcgan import DCGANGenerator  # noqa: E402
from pulse.solvers.langevin import LangevinSettings, LangevinSolver  # noqa: E402
from pulse.solvers.pulse import PulseSolver, SearchSettings  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--inputs", type=int, default=2)
    parser.add_argument("--factor", type=int, default=8)
    parser.add_argument("--burn-in", type=int, default=80)
    parser.add_argument("--thin", type=int, default=20)
    parser.add_argument("--mala", action="store_true")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    generator = DCGANGenerator.pretrained().to(args.device)
    problems = list(GeneratedFaces(generator, num=args.inputs, factors=[args.factor]))
    lr = torch.stack([p.lr for p in problems])
    pulse = PulseSolver(generator, settings=SearchSettings(duplicates=args.samples))
    sampler_settings = LangevinSettings(samples=args.samples, burn_in=args.burn_in, thin=args.thin, mala=args.mala)
    sampler = LangevinSolver(generator, settings=sampler_settings)
    solvers = {"pulse": (pulse, pulse.settings.steps), "langevin": (sampler, sampler.settings.steps)}
    seconds: dict[str, list[float]] = {name: [] for name in solvers}
    for _ in range(args.repeats):
        for name, (solver, _) in solvers.items():
            if args.device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            solver.solve(lr)
            if args.device == "cuda":
                torch.cuda.synchronize()
            seconds[name].append(time.perf_counter() - start)
    samples = args.inputs * args.samples
    report: dict[str, object] = {"device": str(torch.device(args.device)), "samples": samples, "repeats": args.repeats}
    for name, (_, steps) in solvers.items():
        median = statistics.median(seconds[name])
        report[name] = {
            "steps": steps,
            "seconds": median,
            "s_per_sample": median / samples,
            "s_per_step": median / steps,
        }
        print(
            f"{name:9s} {steps:4d} steps  {median:7.2f} s  {median / samples:.3f} s/sample  {median / steps:.4f} s/step"
        )
    ratio_sample = report["langevin"]["s_per_sample"] / report["pulse"]["s_per_sample"]  # type: ignore[index]
    ratio_step = report["langevin"]["s_per_step"] / report["pulse"]["s_per_step"]  # type: ignore[index]
    report["langevin_over_pulse_per_sample"], report["langevin_over_pulse_per_step"] = ratio_sample, ratio_step
    print(f"langevin / pulse: {ratio_sample:.2f}x per sample, {ratio_step:.2f}x per step ({args.device})")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()

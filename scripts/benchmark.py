#!/usr/bin/env python
"""Seconds per PULSE step, faithful eager generator against the fast path, in one run.

    python scripts/benchmark.py [--generator stylegan|dcgan|stylegan3] [--resolution 1024] [--batch 1,4,8]
                                [--steps 3] [--warmup 1] [--device cpu|cuda] [--compile]
                                [--channels-last auto|on|off] [--pretrained] [--json PATH] [--quick]

Prints s/step, steps/s, images/min and peak memory per path and batch size, the fast/eager ratio
of steps/s, and how far the fast path's results are from the eager ones. StyleGAN uses seeded random
weights at full size (``StyleGANGenerator.synthetic``, FFHQ feature maps) unless ``--pretrained``
reads the official weights from the cache. ``--quick`` is a seconds-long correctness run (32 px,
narrow feature maps, one timed step). The logic lives in :mod:`pulse.benchmark`.
``--generator stylegan3`` times the plain-torch StyleGAN3 (``--stylegan3-config T|R``, NVIDIA's channel counts,
seeded random weights; eager only, there is no fast path for it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

from pulse.benchmark import BenchmarkReport, best_batches, format_report, run_benchmark  # noqa: E402
from pulse.runtime import tune_cpu_allocator  # noqa: E402

FAST_ONLY_STYLEGAN = "the fast path exists for StyleGAN only (pulse.generators.fast.accelerate)"


def _batches(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--batch takes comma-separated integers such as 1,4,8, got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"--batch needs positive sizes, got {text!r}")
    return values


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generator", choices=["stylegan", "dcgan", "stylegan3"], default="stylegan")
    parser.add_argument("--stylegan3-config", choices=["T", "R"], default="T", help="StyleGAN3 config (T or R)")
    parser.add_argument("--resolution", type=int, default=1024, help="StyleGAN output side (power of two)")
    parser.add_argument("--fmap-base", type=int, default=8192, help="StyleGAN feature maps (FFHQ: 8192)")
    parser.add_argument("--fmap-max", type=int, default=512, help="StyleGAN feature-map cap (FFHQ: 512)")
    parser.add_argument("--batch", type=_batches, default=[1], help="comma-separated batch sizes, e.g. 1,4,8")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before them")
    parser.add_argument(
        "--rounds", type=int, default=2, help="measurements per path, alternating fast and eager (median over all)"
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--compile", action="store_true", help="fast path: torch.compile (falls back if it fails)")
    parser.add_argument(
        "--tf32",
        action="store_true",
        help="CUDA: let the fast path use TF32 tensor cores (the eager path stays float32); no effect on the CPU",
    )
    parser.add_argument(
        "--bf16",
        action="store_true",
        help="run the fast path under bfloat16 autocast (convolutions in bf16; downscale, loss and statistics in "
        "float32); the eager path stays float32",
    )
    parser.add_argument(
        "--float64-reference",
        action="store_true",
        help="also report each path's distance from a float64 evaluation of the faithful port (float32 paths)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="CPU: also profile one step per path and report the time spent in convolutions",
    )
    parser.add_argument("--channels-last", choices=["auto", "on", "off"], default="auto")
    parser.add_argument("--pretrained", action="store_true", help="official FFHQ weights from the cache (1024 px)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", type=Path, default=None, help="also write the report as JSON here")
    parser.add_argument("--quick", action="store_true", help="tiny correctness run: 32 px, batches 1,2, 1 step")
    parser.add_argument(
        "--no-allocator-tuning",
        dest="allocator_tuning",
        action="store_false",
        help="keep glibc's default malloc settings (run.py tunes them on the CPU; both paths always share the choice)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.resolution, args.fmap_base, args.fmap_max = 32, 256, 32
        args.batch, args.steps, args.warmup, args.rounds = [1, 2], 1, 1, 1
    if args.steps < 1 or args.warmup < 1 or args.rounds < 1:
        parser.error(f"--steps, --warmup and --rounds must be >= 1, got {args.steps}, {args.warmup}, {args.rounds}")
    if args.profile and args.device != "cpu":
        parser.error("--profile measures CPU operator time; it is not available with --device cuda")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available here; use --device cpu")
    return args


def build(args: argparse.Namespace):
    """The eager generator and the factory of its fast path (``None`` with the reason when there is none)."""
    if args.generator == "dcgan":
        from pulse.generators.dcgan import DCGANGenerator

        return DCGANGenerator.pretrained(), None, FAST_ONLY_STYLEGAN
    if args.generator == "stylegan3":
        from pulse.generators.stylegan3 import StyleGAN3Generator

        if args.pretrained:
            return StyleGAN3Generator.pretrained(), None, FAST_ONLY_STYLEGAN
        narrow = {"channel_base": 256, "channel_max": 32} if args.quick else {}
        eager = StyleGAN3Generator.synthetic(
            resolution=args.resolution, config=args.stylegan3_config, fit_samples=500 if args.quick else 20000, **narrow
        )
        return eager, None, FAST_ONLY_STYLEGAN
    from pulse.generators.fast import accelerate
    from pulse.generators.stylegan import StyleGANGenerator

    if args.pretrained:
        eager = StyleGANGenerator.pretrained()
    else:
        eager = StyleGANGenerator.synthetic(
            resolution=args.resolution,
            fmap_base=args.fmap_base,
            fmap_max=args.fmap_max,
            fit_samples=500 if args.quick else 20000,
        )
    channels_last = {"auto": None, "on": True, "off": False}[args.channels_last]

    def make_fast(generator):
        return accelerate(generator, channels_last=channels_last, compile=args.compile)

    return eager, make_fast, None


def main(argv: Sequence[str] | None = None) -> BenchmarkReport:
    args = parse_args(argv)
    tuned = tune_cpu_allocator() if args.allocator_tuning and args.device == "cpu" else False
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    eager, make_fast, unavailable = build(args)
    eager = eager.to(args.device)
    report = run_benchmark(
        eager,
        make_fast,
        batches=args.batch,
        lr_side=min(16, eager.resolution // 4),
        warmup=args.warmup,
        steps=args.steps,
        generator_name=args.generator + (" (official weights)" if args.pretrained else " (random weights)"),
        fast_unavailable=unavailable,
        options={
            "compile": args.compile,
            "channels_last": args.channels_last,
            "quick": args.quick,
            "cpu_allocator_tuned": tuned,
            "fast_tf32": args.tf32,
            "fast_bf16": args.bf16,
        },
        log=lambda message: print(message, file=sys.stderr, flush=True),
        rounds=args.rounds,
        fast_tf32=args.tf32,
        fast_autocast=torch.bfloat16 if args.bf16 else None,
        profile=args.profile,
        float64_reference=args.float64_reference,
    )
    print(format_report(report))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        record = {**dataclasses.asdict(report), "best": best_batches(report)}
        args.json.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()

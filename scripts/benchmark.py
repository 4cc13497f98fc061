#!/usr/bin/env python
"""Seconds per PULSE step, faithful eager generator against the fast path.

    python scripts/benchmark.py [--generator stylegan|dcgan|stylegan3] [--resolution 1024] [--batch 1,4,8]
                                [--steps 3] [--warmup 1] [--device cpu|cuda] [--compile]
                                [--channels-last auto|on|off] [--pretrained] [--json PATH] [--quick]
                                [--set KEY=VALUE ...] [--isolate] [--whole-runs --short 2 --long 12]
                                [--agreement] [--probe-machine SECONDS]

Prints s/step, steps/s, images/min and peak memory per path and batch size, the fast/eager ratio
of steps/s, and how far the fast path's results are from the eager ones. StyleGAN uses seeded random
weights at full size (``StyleGANGenerator.synthetic``, FFHQ feature maps) unless ``--pretrained``
reads the official weights from the cache. ``--quick`` is a seconds-long correctness run (32 px,
narrow feature maps, one timed step). The logic lives in :mod:`pulse.benchmark`.
``--generator stylegan3`` times the plain-torch StyleGAN3 (``--stylegan3-config T|R``, NVIDIA's channel counts,
seeded random weights; eager only, there is no fast path for it).

The step timed is the one ``run.py`` runs: the solver comes from ``run.py``'s own config composition and
``build_solver`` (solver, loss, optimizer, schedule, downscale, noise layers; ``--set loss=l2`` etc. are
``run.py`` overrides). By default both paths are measured in this process, alternating; ``--isolate`` runs
every measurement of a path in a fresh process (A B, B A, ...), so neither path inherits the other's heap.
``--whole-runs`` times whole ``run.py`` processes instead (what a user waits for), short and long runs
interleaved, s/step = (wall(long) - wall(short)) / (long - short), with the random weights written in the
official layout. Every mode prints median [min-max] over its repeats. ``--isolate`` and ``--whole-runs`` also time
a fixed piece of work (matrix products, :func:`pulse.benchmark.machine_probe_s`) before every process.
``--agreement`` checks the benchmark against real runs: per round and path, an ``--isolate`` child, then a short and a
long ``run.py`` run, ratios paired within the round (the wall difference and the long run's own median step,
``results.csv``'s ``step_seconds``). ``--probe-machine SECONDS`` only times that fixed work, over and over: on a
shared virtual machine the same work can take twice as long from one minute to the next, which no comparison of
whole runs there can be more precise than.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

import torch  # noqa: E402

from pulse.benchmark import (  # noqa: E402
    BenchmarkReport,
    ProcessCommand,
    Spread,
    best_batches,
    format_process_timings,
    format_report,
    machine_probe_s,
    measure_processes,
    pulse_run_command,
    run_benchmark,
    time_search,
    write_random_input,
    write_random_official_weights,
)
from pulse.runtime import allocator_environment, tune_cpu_allocator  # noqa: E402

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
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a run.py override for the solver timed (loss=l2, solver.num_trainable_noise_layers=0, ...); repeatable",
    )
    parser.add_argument("--isolate", action="store_true", help="each measurement of a path in its own process")
    parser.add_argument("--whole-runs", action="store_true", help="time whole run.py processes (see the docstring)")
    parser.add_argument(
        "--agreement",
        action="store_true",
        help="the benchmark's step (--isolate children) against run.py runs of each path, side by side, per round",
    )
    parser.add_argument("--short", type=int, default=2, help="--whole-runs: steps of the short run")
    parser.add_argument("--long", type=int, default=12, help="--whole-runs: steps of the long run")
    parser.add_argument(
        "--probe-machine",
        type=float,
        default=None,
        metavar="SECONDS",
        help="only time a fixed piece of work (matrix products) again and again for SECONDS: the machine's own spread",
    )
    parser.add_argument("--only", choices=["eager", "fast"], default=None, help=argparse.SUPPRESS)  # --isolate child
    # --agreement child: read the StyleGAN weights from these official-layout files, as the run.py runs do
    parser.add_argument("--weights", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.resolution, args.fmap_base, args.fmap_max = 32, 256, 32
        args.batch, args.steps, args.warmup, args.rounds = [1, 2], 1, 1, 1
    if args.steps < 1 or args.warmup < 1 or args.rounds < 1:
        parser.error(f"--steps, --warmup and --rounds must be >= 1, got {args.steps}, {args.warmup}, {args.rounds}")
    if args.profile and args.device != "cpu":
        parser.error("--profile measures CPU operator time; it is not available with --device cuda")
    if (args.whole_runs or args.agreement) and (
        args.generator != "stylegan" or args.device != "cpu" or args.short >= args.long
    ):
        parser.error("--whole-runs and --agreement time run.py's StyleGAN runs on the CPU and need --short < --long")
    if (args.isolate or args.whole_runs or args.agreement) and len(args.batch) > 1:
        parser.error("--isolate, --whole-runs and --agreement measure one batch size; give --batch N")
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

    if args.weights is not None:
        size = {} if args.resolution == 1024 else {"fmap_base": args.fmap_base, "fmap_max": args.fmap_max}
        eager = StyleGANGenerator.pretrained(cache_dir=args.weights, resolution=args.resolution, progress=False, **size)
    elif args.pretrained:
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


def run_config(overrides: Sequence[str] = ()) -> Any:
    """``run.py``'s composed config (``configs/``) with ``overrides``, as Hydra gives it to ``run.py``."""
    from pulse.configured import compose_config

    return compose_config(overrides, ROOT / "configs")


def run_solver_factory(overrides: Sequence[str] = ()):
    """``make(generator, total_steps)``: the solver ``run.py`` builds (its ``build_solver``) around ``generator``."""
    from omegaconf import open_dict

    import run  # the command line's own module (ROOT is on sys.path)

    cfg = run_config(overrides)

    def make(generator, total_steps: int):
        step_cfg = cfg.copy()
        with open_dict(step_cfg):
            step_cfg.solver.steps = total_steps
        return run.build_solver(step_cfg, generator=generator)[1]

    return make


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def measure_one_path(args: argparse.Namespace) -> dict[str, Any]:
    """``--only PATH`` (an ``--isolate`` child): ``rounds`` measurements of that path in this process."""
    eager, make_fast, unavailable = build(args)
    eager = eager.to(args.device)
    generator = eager if args.only == "eager" else make_fast(eager) if make_fast else None
    if generator is None:
        raise SystemExit(f"no fast path: {unavailable}")
    lr_side = min(16, eager.resolution // 4)
    del eager  # as in a run.py process of the fast path, only the generator searched stays alive
    gc.collect()
    batch = args.batch[0]
    targets = torch.rand(batch, 3, lr_side, lr_side, generator=torch.Generator().manual_seed(batch))
    make_solver = run_solver_factory(args.overrides)
    durations: list[float] = []
    for _ in range(args.rounds):
        measured, _ = time_search(generator, targets, args.warmup, args.steps, make_solver=make_solver)
        durations += measured
    return {"path": args.only, "batch": batch, "durations": durations}


def isolated_step(child_argv: Sequence[str], path: str, out: Path, env: dict[str, str] | None = None) -> float:
    """The median step of one ``--only PATH`` child process (the benchmark's measurement of ``path``)."""
    command = [sys.executable, __file__, *child_argv, "--only", path, "--rounds", "1", "--json", str(out)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=env)
    durations = json.loads(out.read_text())["durations"]
    return sorted(durations)[len(durations) // 2]


def isolated(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    """``--isolate``: ``rounds`` fresh processes per path, alternating (fast eager, eager fast, ...)."""
    child_argv = [a for a in argv if a != "--isolate"]
    per_round: dict[str, list[float]] = {"fast": [], "eager": []}
    probes: list[float] = []
    with tempfile.TemporaryDirectory(prefix="pulse-bench-") as tmp:
        for round_index in range(args.rounds):
            for path in ("fast", "eager") if round_index % 2 == 0 else ("eager", "fast"):
                _log(f"round {round_index + 1}/{args.rounds}: {path} in its own process ...")
                probes.append(machine_probe_s())
                per_round[path].append(isolated_step(child_argv, path, Path(tmp) / f"{path}_{round_index}.json"))
    spreads = {path: Spread.of(values) for path, values in per_round.items()}
    ratio = Spread.of([f / e for f, e in zip(per_round["fast"], per_round["eager"], strict=True)])
    print(
        f"{args.generator} {args.resolution}px batch {args.batch[0]}, {args.rounds} processes per path "
        f"({args.warmup} warm-up + {args.steps} timed steps each; each process's median step), median [min-max]"
    )
    for path, spread in spreads.items():
        print(f"{path:>5}: {spread.text('.3f')} s/step")
    print(f"fast s/step / eager s/step: {ratio.text()}")
    probe = Spread.of(probes)
    print(f"machine probe before each process (fixed work): {probe.text('.3f')} s")
    return {"per_round": per_round, "ratio_fast_over_eager": dataclasses.asdict(ratio), "machine_probe_s": probes}


def probe_machine(seconds: float, threads: int | None = None) -> dict[str, Any]:
    """``--probe-machine``: :func:`pulse.benchmark.machine_probe_s` repeated for ``seconds``; prints its spread.

    The work never changes, so on a steady machine its times agree within a few percent; on a shared virtual
    machine they show how far any timing taken there can move by itself.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    values: list[float] = []
    try:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end or not values:
            values.append(machine_probe_s())
        used = torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)
    spread = Spread.of(values)
    print(
        f"machine probe ({used} threads, {len(values)} times in {seconds:.0f} s): "
        f"{spread.text('.3f')} s, slowest / fastest {spread.max / spread.min:.2f}"
    )
    return {"probe_s": values}


def run_programs(args: argparse.Namespace, work: Path):
    """``run.py`` commands of both paths on random weights in the official layout, their environment and overrides.

    Returns ``({"eager": make, "fast": make}, env, weights, extra)`` with ``make(steps, out_dir) -> ProcessCommand``.
    """
    from pulse.io.cache import cache_dir

    generator_args: dict[str, Any] = {}
    if args.pretrained:
        weights = cache_dir() / "stylegan_ffhq"
    else:
        name = f"stylegan_random_{args.resolution}" + (
            "" if args.resolution == 1024 else f"_{args.fmap_base}_{args.fmap_max}"
        )
        weights = write_random_official_weights(
            cache_dir() / "benchmark" / name, args.resolution, args.fmap_base, args.fmap_max
        )
        if args.resolution != 1024:
            generator_args = {"resolution": args.resolution, "fmap_base": args.fmap_base, "fmap_max": args.fmap_max}
    inputs = write_random_input(work / "input", side=min(16, args.resolution // 4)).parent
    env = dict(os.environ)
    extra = [f"batch_size={args.batch[0]}", *args.overrides]
    if args.allocator_tuning:
        env.update(allocator_environment())
    else:
        env = {key: value for key, value in env.items() if not key.startswith("MALLOC_")}
        extra.append("tune_cpu_allocator=false")
    if args.threads is not None:
        env["OMP_NUM_THREADS"] = str(args.threads)

    def program(generator: str):
        def make(steps: int, out_dir: Path) -> ProcessCommand:
            return pulse_run_command(ROOT / "run.py", generator, weights, inputs, out_dir, steps, extra, generator_args)

        return make

    return {"eager": program("stylegan_ffhq"), "fast": program("stylegan_ffhq_fast")}, env, weights, extra


def whole_runs(args: argparse.Namespace) -> dict[str, Any]:
    """``--whole-runs``: whole ``run.py`` processes of both paths on random weights in the official layout."""
    work = Path(tempfile.mkdtemp(prefix="pulse-runs-"))
    programs, env, weights, extra = run_programs(args, work)
    timings = measure_processes(programs, work, args.short, args.long, args.rounds, env, log=_log)
    print(f"run.py, {args.resolution}px, batch {args.batch[0]}, weights {weights}, overrides {extra}")
    print(format_process_timings(timings, [("fast", "eager")]))
    return {name: dataclasses.asdict(timing) for name, timing in timings.items()}


def agreement(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    """``--agreement``: the benchmark's step against the step of real ``run.py`` runs, measured side by side.

    Every round takes, for each path in turn (reversed on odd rounds), an ``--isolate`` child (the benchmark's
    step: its median), then a short and a long ``run.py`` run of the same path: the real runs' step both as
    ``(wall(long) - wall(short)) / (long - short)`` and as the long run's own median step (``results.csv``'s
    ``step_seconds``). The ratios are paired within a round, so the machine's drift between minutes falls on
    both sides of each ratio.
    """
    work = Path(tempfile.mkdtemp(prefix="pulse-agreement-"))
    programs, env, weights, extra = run_programs(args, work)
    # The benchmark's children read the same weight files and get the same environment (allocator settings from
    # their first instruction) as the run.py runs, so the two sides differ only in what runs around the step.
    child_argv = [a for a in argv if a != "--agreement"] + ["--weights", str(weights)]
    bench: dict[str, list[float]] = {"eager": [], "fast": []}
    wall: dict[str, list[float]] = {"eager": [], "fast": []}
    in_run: dict[str, list[float]] = {"eager": [], "fast": []}
    for round_index in range(args.rounds):
        for path in ("eager", "fast") if round_index % 2 == 0 else ("fast", "eager"):
            _log(f"round {round_index + 1}/{args.rounds}: {path}: benchmark process ...")
            bench[path].append(isolated_step(child_argv, path, work / f"{path}_{round_index}.json", env))
            timing = measure_processes(
                {path: programs[path]}, work / f"round_{round_index}", args.short, args.long, 1, env, log=_log
            )[path]
            wall[path].append(timing.step_wall_s.median)
            if timing.step_in_run_s is None:  # a NaN here would be a made-up number in every ratio below
                raise RuntimeError(
                    f"run.py ({path}) wrote no step_seconds to results.csv under {work / f'round_{round_index}'}: "
                    "--agreement needs a solver that times its steps on the CPU (the PULSE search)"
                )
            in_run[path].append(timing.step_in_run_s.median)
            _log(
                f"  benchmark {bench[path][-1]:.3f}, run.py {wall[path][-1]:.3f} (wall), "
                f"{in_run[path][-1]:.3f} (in run) s/step"
            )
    print(
        f"benchmark against run.py, {args.resolution}px batch {args.batch[0]}, {args.rounds} rounds, "
        f"weights {weights}, overrides {extra}; median [min-max]"
    )
    print(f"{'path':<6} {'benchmark s/step':>20} {'run.py s/step (wall)':>22} {'run.py s/step (in run)':>24}")
    record: dict[str, Any] = {"benchmark": bench, "run_wall": wall, "run_in_run": in_run}
    for path in ("eager", "fast"):
        print(
            f"{path:<6} {Spread.of(bench[path]).text('.3f'):>20} {Spread.of(wall[path]).text('.3f'):>22} "
            f"{Spread.of(in_run[path]).text('.3f'):>24}"
        )
    for path in ("eager", "fast"):
        to_wall = Spread.of([b / w for b, w in zip(bench[path], wall[path], strict=True)])
        to_in_run = Spread.of([b / r for b, r in zip(bench[path], in_run[path], strict=True)])
        record[f"{path}_benchmark_over_wall"] = to_wall.values
        record[f"{path}_benchmark_over_in_run"] = to_in_run.values
        print(
            f"{path}: benchmark / run.py (wall) {to_wall.text('.3f')}, "
            f"benchmark / run.py (in run) {to_in_run.text('.3f')}"
        )
    for name, values in (("benchmark", bench), ("run.py (wall)", wall), ("run.py (in run)", in_run)):
        ratio = Spread.of([f / e for f, e in zip(values["fast"], values["eager"], strict=True)])
        print(f"fast / eager by {name}: {ratio.text('.3f')}")
    return record


def main(argv: Sequence[str] | None = None) -> BenchmarkReport | dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.probe_machine is not None:
        return _write_json(args, probe_machine(args.probe_machine, args.threads))
    if args.agreement:
        return _write_json(args, agreement(args, argv))
    if args.whole_runs:
        return _write_json(args, whole_runs(args))
    if args.isolate:
        return _write_json(args, isolated(args, argv))
    tuned = tune_cpu_allocator() if args.allocator_tuning and args.device == "cpu" else False
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.only is not None:
        return _write_json(args, measure_one_path(args))
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
            "run_overrides": list(args.overrides),
        },
        log=_log,
        rounds=args.rounds,
        fast_tf32=args.tf32,
        fast_autocast=torch.bfloat16 if args.bf16 else None,
        profile=args.profile,
        float64_reference=args.float64_reference,
        make_solver=run_solver_factory(args.overrides),
    )
    print(format_report(report))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        record = {**dataclasses.asdict(report), "best": best_batches(report)}
        args.json.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.json}")
    return report


def _write_json(args: argparse.Namespace, record: dict[str, Any]) -> dict[str, Any]:
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return record


if __name__ == "__main__":
    main()

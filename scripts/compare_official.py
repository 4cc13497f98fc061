#!/usr/bin/env python
"""A fair speed comparison with the official PULSE code: same random weights, same input, same allocator, CPU.

    python scripts/compare_official.py --official /tmp/pulse-official [--repeats 3] [--short 2] [--long 12]
    python scripts/compare_official.py --official-git /work/.mirror/adamian98+pulse/repo     # a bare clone

Writes seeded random StyleGAN weights at 1024 px in the official layout (``synthesis.pt``, ``mapping.pt``,
``gaussian_fit.pt``; once, under ``--weights``) and one seeded random 16 px input, then runs whole processes in
turn (A B C, C B A, ...): the official ``run.py`` (through ``scripts/official_cpu.py``, which only redirects
CUDA to the CPU and the Google Drive download to the local files), ``run.py generator=stylegan_ffhq`` (eager
port) and ``run.py generator=stylegan_ffhq_fast``, each for ``--short`` and ``--long`` steps at batch 1.
Every process gets glibc's tuned allocator from the start through ``MALLOC_*`` variables (pulse's own
``tune_cpu_allocator`` settings, :func:`pulse.runtime.allocator_environment`); ``--allocator default`` runs all
of them on glibc's defaults instead (and pulse with ``tune_cpu_allocator=false``).

Prints, per program, the median [min-max] over repeats of the whole-run wall times, the seconds per step
(``(wall(long) - wall(short)) / (long - short)``, and the same from the program's own timer), the start-up
(``wall(short) - short * s/step``: imports, loading, end-of-run work, shutdown), then the ratios
``time(official) / time(pulse)`` (above 1: pulse is faster) per step, for start-up and for the whole short run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from pulse.benchmark import (  # noqa: E402
    ProcessCommand,
    ProcessTiming,
    format_process_timings,
    measure_processes,
    official_run_command,
    pulse_run_command,
    write_random_input,
    write_random_official_weights,
)
from pulse.io.cache import cache_dir  # noqa: E402
from pulse.runtime import allocator_environment  # noqa: E402

PROGRAMS = ("official", "eager", "fast")
PULSE_GENERATORS = {"eager": "stylegan_ffhq", "fast": "stylegan_ffhq_fast"}


def _programs(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = sorted(set(names) - set(PROGRAMS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"--programs takes a comma-separated subset of {','.join(PROGRAMS)}")
    return names


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--official", type=Path, help="a checkout of adamian98/pulse (has PULSE.py)")
    source.add_argument(
        "--official-git", type=Path, help="a bare git clone of adamian98/pulse (its .py files are used)"
    )
    parser.add_argument("--programs", type=_programs, default=list(PROGRAMS), help="subset of official,eager,fast")
    parser.add_argument("--short", type=int, default=2, help="steps of the short run")
    parser.add_argument("--long", type=int, default=12, help="steps of the long run")
    parser.add_argument("--repeats", type=int, default=3, help="short+long pairs per program, interleaved")
    parser.add_argument("--allocator", choices=["tuned", "default"], default="tuned")
    parser.add_argument("--weights", type=Path, default=None, help="random-weight folder (default: in the cache)")
    parser.add_argument("--work", type=Path, default=None, help="where the runs write (default: a temporary folder)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds one run may take")
    parser.add_argument("--json", type=Path, default=None, help="also write the timings as JSON here")
    args = parser.parse_args(argv)
    if "official" in args.programs and args.official is None and args.official_git is None:
        parser.error("the official program needs --official DIR or --official-git BARE_REPO")
    if args.official is not None and not (args.official / "PULSE.py").is_file():
        parser.error(f"--official {args.official}: no PULSE.py there (expected a checkout of adamian98/pulse)")
    if not 1 <= args.short < args.long or args.repeats < 1:
        parser.error(f"need 1 <= --short < --long and --repeats >= 1, got {args.short}, {args.long}, {args.repeats}")
    return args


def extract_official(bare: Path, dest: Path) -> Path:
    """The ``.py`` files of ``bare``'s HEAD (a bare clone of adamian98/pulse) written to ``dest``."""
    git = ["git", f"--git-dir={bare}"]
    names = subprocess.run([*git, "ls-tree", "-r", "--name-only", "HEAD"], capture_output=True, text=True, check=True)
    dest.mkdir(parents=True, exist_ok=True)
    for name in names.stdout.split():
        if name.endswith(".py") and "/" not in name:
            blob = subprocess.run([*git, "show", f"HEAD:{name}"], capture_output=True, check=True).stdout
            (dest / name).write_bytes(blob)
    if not (dest / "PULSE.py").is_file():
        raise SystemExit(f"--official-git {bare}: no PULSE.py at HEAD (expected adamian98/pulse)")
    return dest


def main(argv: Sequence[str] | None = None) -> dict[str, ProcessTiming]:
    args = parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="pulse-compare-"))
    weights = args.weights or cache_dir() / "benchmark" / "stylegan_random_1024"
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    log(f"random weights in {write_random_official_weights(weights)}; runs in {work}")
    inputs = write_random_input(work / "input").parent
    official = args.official
    if "official" in args.programs and official is None:
        official = extract_official(args.official_git, work / "official")
    env = dict(os.environ)
    extra: list[str] = []
    if args.allocator == "tuned":
        env.update(allocator_environment())
    else:
        env = {key: value for key, value in env.items() if not key.startswith("MALLOC_")}
        extra = ["tune_cpu_allocator=false"]

    def pulse_program(name: str):
        def make(steps: int, out_dir: Path) -> ProcessCommand:
            return pulse_run_command(ROOT / "run.py", PULSE_GENERATORS[name], weights, inputs, out_dir, steps, extra)

        return make

    def official_program(steps: int, out_dir: Path) -> ProcessCommand:
        return official_run_command(ROOT / "scripts" / "official_cpu.py", official, weights, inputs, out_dir, steps)

    programs = {name: official_program if name == "official" else pulse_program(name) for name in args.programs}
    timings = measure_processes(programs, work, args.short, args.long, args.repeats, env, args.timeout, log)
    ratios = [("official", name) for name in ("eager", "fast") if "official" in programs and name in programs]
    if "eager" in programs and "fast" in programs:
        ratios.append(("fast", "eager"))
    allocator = "MALLOC_* settings of pulse.runtime in every process" if args.allocator == "tuned" else "glibc defaults"
    print(f"allocator: {args.allocator} ({allocator}); load average at the end {os.getloadavg()[0]:.2f}")
    print(format_process_timings(timings, ratios))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({k: dataclasses.asdict(v) for k, v in timings.items()}, indent=2) + "\n")
        print(f"wrote {args.json}")
    return timings


if __name__ == "__main__":
    main()

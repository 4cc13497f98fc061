#!/usr/bin/env python
"""Where the time of one ``run.py`` process goes: imports, loading, search, end-of-run metrics, shutdown.

    python scripts/startup_breakdown.py [--allocator tuned|default] [--repeats 3] -- out_dir=DIR OVERRIDES ...
    python scripts/startup_breakdown.py -- out_dir=/tmp/run generator=stylegan_ffhq_fast \\
        generator.generator.cache_dir=W data=folder data.path=IN solver.steps=2 batch_size=1 trainer=cpu progress=false

Runs ``run.py``'s ``run`` on the config its ``main`` would compose (``out_dir=...`` must be given: Hydra's run
folder does not exist outside ``main``) in a fresh process (``--repeats`` times) with clock stamps wrapped around
its phases (nothing else changes), and prints the median [min-max] seconds of each phase: interpreter start,
Hydra and ``run.py`` import, torch and Lightning import (``pulse.runner``), config composition, generator and
solver (weights loaded), data and Lightning set-up, the search, images, rows and end-of-run metrics (each metric
also on its own line), the grid, and interpreter shutdown (last stamp to process exit). ``run.py``'s own
``__main__`` skips the teardown (:func:`pulse.runtime.exit_without_teardown`) and so does the child here;
``PULSE_FULL_TEARDOWN=1`` keeps it in both, so the shutdown line shows what skipping it saves.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARK = "STARTUP-STAMPS "


def child(overrides: list[str]) -> None:
    """Run run.py's main with stamps; print them (wall-clock ``time.time()``) as one JSON line."""
    stamps: list[tuple[str, float]] = [("interpreter started", time.time())]
    metric_seconds: dict[str, float] = {}
    sys.path.insert(0, str(ROOT))
    import run

    stamps.append(("hydra and run.py imported", time.time()))
    import pulse.runner
    from pulse.metrics import default_metrics
    from pulse.outputs import ResultStore
    from pulse.solvers.pulse import PulseSolver

    stamps.append(("torch and lightning imported", time.time()))

    def stamped(owner, name, label_before=None, label_after=None):
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            if label_before:
                stamps.append((label_before, time.time()))
            try:
                return original(*args, **kwargs)
            finally:
                if label_after:
                    stamps.append((label_after, time.time()))

        setattr(owner, name, wrapper)

    stamped(run, "build_solver", None, "generator and solver built")
    stamped(PulseSolver, "solve", "data read, lightning set up", "search done")
    stamped(ResultStore, "write_grid", "images, rows and metrics written", "grid written")
    for metric in default_metrics():
        cls = type(metric)
        original = cls.__call__

        def timed(self, *args, _original=original, _name=cls.__name__, **kwargs):
            start = time.perf_counter()
            try:
                return _original(self, *args, **kwargs)
            finally:
                metric_seconds[_name] = metric_seconds.get(_name, 0.0) + time.perf_counter() - start

        cls.__call__ = timed
    del pulse.runner
    from hydra import compose, initialize_config_dir

    # run.py's @hydra.main finds configs/ only when run.py is __main__: compose as it does, then call its run().
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3", job_name="pulse"):
        cfg = compose(config_name="config", overrides=overrides)
    stamps.append(("config composed (hydra)", time.time()))
    run.run(cfg)
    stamps.append(("run.py run() returned", time.time()))
    print(MARK + json.dumps({"stamps": stamps, "metrics": metric_seconds}), flush=True)
    if os.environ.get("PULSE_FULL_TEARDOWN") != "1":  # end as run.py's __main__ does
        from pulse.runtime import exit_without_teardown

        exit_without_teardown(0)


def phases(start: float, end: float, record: dict) -> dict[str, float]:
    """Seconds per phase from one child's stamps, process start ``start`` and exit ``end`` (wall clock)."""
    out: dict[str, float] = {}
    previous = start
    for label, stamp in record["stamps"]:
        out[label] = out.get(label, 0.0) + stamp - previous
        previous = stamp
    for name, seconds in record["metrics"].items():
        out[f"  of which metric {name}"] = seconds
    out["interpreter shutdown"] = end - previous
    out["whole process"] = end - start
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, list[float]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    own, overrides = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--allocator", choices=["tuned", "default"], default="tuned")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(own)
    if args.child:
        child(overrides)
        return {}
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    sys.path.insert(0, str(ROOT))
    from pulse.runtime import allocator_environment

    env = dict(os.environ)
    if args.allocator == "tuned":
        env.update(allocator_environment())
    collected: dict[str, list[float]] = {}
    for repeat in range(args.repeats):
        print(f"run {repeat + 1}/{args.repeats} ...", file=sys.stderr, flush=True)
        start = time.time()
        done = subprocess.run(
            [sys.executable, __file__, "--child", "--", *overrides], env=env, capture_output=True, text=True
        )
        end = time.time()
        lines = [line for line in done.stdout.splitlines() if line.startswith(MARK)]
        if done.returncode != 0 or not lines:
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
            raise SystemExit(f"run.py failed (exit {done.returncode}):\n{tail}")
        for label, seconds in phases(start, end, json.loads(lines[-1][len(MARK) :])).items():
            collected.setdefault(label, []).append(seconds)
    print(
        f"run.py {' '.join(overrides)}\n{args.repeats} processes, allocator {args.allocator}; seconds, median [min-max]"
    )
    for label, values in collected.items():
        print(f"{label:<40} {statistics.median(values):7.2f} [{min(values):.2f}-{max(values):.2f}]")
    return collected


if __name__ == "__main__":
    main()

"""One prepared check of pulse on a CUDA GPU, writing ``gpu_check.json`` and ``gpu_check.md``.

    python scripts/gpu_check.py [--out DIR] [--dry-run]

Steps, each a subprocess with its own time box (a step that fails or runs out of time is recorded as
such, with ``null`` numbers, and the next step runs):

1. ``pytest -m cuda``: the tests that need a GPU.
2. ``run.py trainer=gpu`` and the same run on the CPU, compared sample by sample (``results.csv``):
   downscale error within ``atol + rtol * cpu`` (:data:`TOLERANCE`) and the 8-bit images' largest
   difference. Exact equality is not expected: float32 sums in another order, and spherical Adam's first
   steps (about ``lr * sign(grad)``) turn rounding-level gradient differences into visible ones.
3. ``run.py trainer=gpu trainer.precision=bf16-mixed``: finite, and its mean downscale error next to float32's.
4. ``run.py trainer=gpu batch_size=auto``: the probe's trials (``batch_size.json``).
5. ``scripts/benchmark.py --device cuda --resolution 1024 --batch 1,4,8,16``: eager vs fast, then the fast
   path with ``--tf32``, ``--bf16`` and ``--compile``; s/step, images/min, peak memory, and the seconds a
   100-step search takes at the best batch (per search and per image).

``--dry-run`` runs the same steps on the CPU at tiny sizes (32 px, 1-3 steps), so that the script itself is
tested without a GPU; its numbers say nothing about GPU speed. Without ``--dry-run`` and without CUDA the
script stops with a one-line message.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = {"atol": 2e-3, "rtol": 0.2}  # on the downscale error (MSE on [0, 1] images), as tests/test_fast.py
SEARCH_STEPS = 100


def run_step(name: str, command: list[str], time_box: float, log: list[dict[str, Any]]) -> dict[str, Any]:
    """Run ``command`` from the repository root with a time limit; record status, seconds and the output's tail."""
    print(f"[gpu_check] {name}: {' '.join(command)} (time box {time_box:.0f} s)", file=sys.stderr, flush=True)
    start = time.perf_counter()
    record: dict[str, Any] = {"step": name, "command": command, "time_box_s": time_box}
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=time_box, check=False)
        record["status"] = "ok" if done.returncode == 0 else f"failed (exit {done.returncode})"
        output = done.stdout + done.stderr
    except subprocess.TimeoutExpired as error:
        record["status"] = f"timed out after {time_box:.0f} s"
        output = _text(error.stdout) + _text(error.stderr)
    record["seconds"] = round(time.perf_counter() - start, 2)
    record["output_tail"] = output[-2000:]
    log.append(record)
    print(f"[gpu_check] {name}: {record['status']} in {record['seconds']} s", file=sys.stderr, flush=True)
    return record


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


def read_results(out_dir: Path) -> dict[tuple[str, str], dict[str, str]]:
    path = out_dir / "results.csv"
    if not path.is_file():
        return {}
    with path.open(newline="") as handle:
        return {(row["name"], row["duplicate"]): row for row in csv.DictReader(handle)}


def compare_runs(device_dir: Path, cpu_dir: Path) -> dict[str, Any]:
    """Sample-by-sample comparison of two run folders of the same configuration."""
    import numpy as np
    from PIL import Image

    device_rows, cpu_rows = read_results(device_dir), read_results(cpu_dir)
    if not device_rows or not cpu_rows:
        return {"compared": 0, "within_tolerance": None, "note": "a run wrote no results.csv"}
    if set(device_rows) != set(cpu_rows):
        return {"compared": 0, "within_tolerance": False, "note": "the runs hold different samples"}
    samples = []
    for key in sorted(cpu_rows):
        a, b = device_rows[key], cpu_rows[key]
        error_a, error_b = float(a["downscale_error"] or "nan"), float(b["downscale_error"] or "nan")
        image_a = np.asarray(Image.open(device_dir / a["image"]), dtype=np.int16)
        image_b = np.asarray(Image.open(cpu_dir / b["image"]), dtype=np.int16)
        samples.append(
            {
                "name": key[0],
                "duplicate": int(key[1]),
                "downscale_error_device": error_a,
                "downscale_error_cpu": error_b,
                "within_tolerance": abs(error_a - error_b) <= TOLERANCE["atol"] + TOLERANCE["rtol"] * abs(error_b),
                "max_pixel_difference_8bit": int(np.abs(image_a - image_b).max()),
                "success_device": a["success"],
                "success_cpu": b["success"],
            }
        )
    return {
        "compared": len(samples),
        "tolerance": TOLERANCE,
        "within_tolerance": all(s["within_tolerance"] for s in samples),
        "max_abs_downscale_error_difference": max(
            abs(s["downscale_error_device"] - s["downscale_error_cpu"]) for s in samples
        ),
        "max_pixel_difference_8bit": max(s["max_pixel_difference_8bit"] for s in samples),
        "samples": samples,
    }


def summary_of(out_dir: Path) -> dict[str, Any] | None:
    path = out_dir / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else None


def benchmark_numbers(path: Path) -> dict[str, Any] | None:
    """The benchmark's rows plus the 100-step search time at the best batch of each path (from its JSON)."""
    if not path.is_file():
        return None
    report = json.loads(path.read_text())
    rows = []
    best: dict[str, dict[str, Any]] = {}
    for result in report.get("results", []):
        for kind in ("eager", "fast"):
            entry = result.get(kind)
            if not entry:
                continue
            row = {"batch": result["batch"], "path": kind, **entry}
            rows.append(row)
            if kind not in best or entry["images_per_min"] > best[kind]["images_per_min"]:
                best[kind] = row
    for row in best.values():
        row["seconds_per_100_step_search"] = SEARCH_STEPS * row["s_per_step"]
        row["seconds_per_100_step_search_per_image"] = SEARCH_STEPS * row["s_per_step"] / row["batch"]
    fast, eager = best.get("fast"), best.get("eager")
    ratio = fast["images_per_min"] / eager["images_per_min"] if fast and eager else None
    return {
        "device": report.get("device"),
        "environment": report.get("environment"),
        "rows": rows,
        "best": best,
        "fast_over_eager_images_per_min": ratio,
    }


def build_plan(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Commands and time boxes of every step (the dry run: the same steps, CPU and tiny)."""
    python = sys.executable
    dry = args.dry_run
    device_trainer = "trainer=cpu" if dry else "trainer=gpu"
    generator = ["generator=stylegan_synthetic_fast"]
    if dry:
        problem = ["solver.steps=2", "data.num=2", "data.factors=[4]"]
    else:
        generator += [
            "generator.generator.resolution=256",
            "generator.generator.fmap_base=2048",
            "generator.generator.fmap_max=128",
        ]
        problem = ["solver.steps=30", "data.num=4", "data.factors=[8]", "solver.duplicates=2"]
    common = [*generator, *problem, "progress=false", "logger=csv"]

    def run_py(name: str, *extra: str) -> list[str]:
        folder = out / "runs" / name
        return [python, "run.py", *common, *extra, f"out_dir={folder}", f"hydra.run.dir={folder}/hydra"]

    if dry:
        bench = [python, "scripts/benchmark.py", "--device", "cpu", "--resolution", "32", "--fmap-base", "256"]
        bench += ["--fmap-max", "32", "--batch", "1,2", "--steps", "1", "--warmup", "1", "--rounds", "1"]
        pytest = [python, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", "tests/test_niqe.py"]
    else:
        bench = [python, "scripts/benchmark.py", "--device", "cuda", "--resolution", "1024", "--batch", "1,4,8,16"]
        bench += ["--steps", "3", "--warmup", "2", "--rounds", "1"]
        pytest = [python, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider"]
    scale = args.time_scale
    variants = {"eager_vs_fast": [], "tf32": ["--tf32"], "bf16": ["--bf16"], "compile": ["--compile"]}
    return {
        # Time boxes add up to 480 s: the whole check stays within 8 minutes (at --time-scale 1).
        "pytest_cuda": (pytest, 60 * scale),
        "run_device": (run_py("device", device_trainer), 45 * scale),
        "run_cpu": (run_py("cpu", "trainer=cpu"), 60 * scale),
        "run_bf16": (run_py("bf16", device_trainer, "trainer.precision=bf16-mixed"), 45 * scale),
        "run_auto_batch": (run_py("auto_batch", device_trainer, "batch_size=auto", "auto_batch_limit=16"), 45 * scale),
        **{
            f"benchmark_{name}": (
                [*bench, *flags, "--json", str(out / f"benchmark_{name}.json")],
                (75 if name == "compile" else 50) * scale,
            )
            for name, flags in variants.items()
        },
    }


def markdown(report: dict[str, Any]) -> str:
    """The report as markdown (every number from the JSON; missing ones say why)."""
    lines = [f"# pulse GPU check{' (dry run on the CPU: no GPU numbers)' if report['dry_run'] else ''}", ""]
    lines += [f"- device: {report['device']}", f"- torch {report['torch']}, started {report['started']}", ""]
    lines += ["| step | status | seconds |", "|---|---|---|"]
    lines += [f"| {s['step']} | {s['status']} | {s['seconds']} |" for s in report["steps"]]
    comparison = report.get("device_vs_cpu") or {}
    lines += ["", "## Device vs CPU, sample by sample", ""]
    if comparison.get("compared"):
        lines.append(
            f"{comparison['compared']} samples; downscale error within {TOLERANCE['atol']} + "
            f"{TOLERANCE['rtol']} x CPU value: {comparison['within_tolerance']}; largest difference "
            f"{comparison['max_abs_downscale_error_difference']:.3g}; largest 8-bit pixel difference "
            f"{comparison['max_pixel_difference_8bit']}."
        )
    else:
        lines.append(f"not compared: {comparison.get('note', 'a run failed')}")
    bf16 = report.get("bf16") or {}
    lines += ["", "## bf16-mixed", "", f"{bf16.get('note') or bf16}"]
    auto = report.get("batch_size_auto")
    lines += ["", "## batch_size=auto", "", json.dumps(auto) if auto else "no batch_size.json (the run failed)"]
    lines += ["", "## Benchmark (1024 px)" if not report["dry_run"] else "## Benchmark (32 px, CPU)", ""]
    for name, numbers in report.get("benchmarks", {}).items():
        if numbers is None:
            lines.append(f"- {name}: no numbers (see its step's status)")
            continue
        lines += [f"### {name}", "", "| batch | path | s/step | images/min | peak MiB |", "|---|---|---|---|---|"]
        for row in numbers["rows"]:
            peak = row.get("peak_memory_mb")
            lines.append(
                f"| {row['batch']} | {row['path']} | {row['s_per_step']:.4g} | {row['images_per_min']:.4g} | "
                f"{'n/a' if peak is None else f'{peak:.0f}'} |"
            )
        for kind, row in numbers["best"].items():
            lines.append(
                f"\nbest {kind}: batch {row['batch']}, a {SEARCH_STEPS}-step search takes "
                f"{row['seconds_per_100_step_search']:.3g} s ({row['seconds_per_100_step_search_per_image']:.3g} s "
                "per image)"
            )
        if numbers["fast_over_eager_images_per_min"] is not None:
            lines.append(f"\nfast / eager images per minute: {numbers['fast_over_eager_images_per_min']:.3g}")
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "gpu_check", help="report folder")
    parser.add_argument("--dry-run", action="store_true", help="the same steps on the CPU at tiny sizes")
    parser.add_argument("--only", default=None, help="comma-separated step names to run (default: all)")
    parser.add_argument("--time-scale", type=float, default=1.0, help="multiply every step's time box")
    args = parser.parse_args(argv)

    import torch

    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no CUDA device visible to torch; use --dry-run to exercise the check on the CPU")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    device = "cpu (dry run)" if args.dry_run else torch.cuda.get_device_name(0)
    report: dict[str, Any] = {
        "dry_run": args.dry_run,
        "device": device,
        "torch": torch.__version__,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "steps": [],
    }
    plan = build_plan(args, out)
    wanted = set(plan) if args.only is None else set(args.only.split(","))
    unknown = wanted - set(plan)
    if unknown:
        parser.error(f"unknown steps {sorted(unknown)}; valid: {list(plan)}")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    for name, (command, time_box) in plan.items():
        if name in wanted:
            run_step(name, command, time_box, report["steps"])

    runs = out / "runs"
    report["device_vs_cpu"] = compare_runs(runs / "device", runs / "cpu")
    fp32, bf16 = summary_of(runs / "device"), summary_of(runs / "bf16")
    if bf16 is None:
        report["bf16"] = {"note": "the bf16-mixed run wrote no summary (see its step)"}
    else:
        errors = [float(r["downscale_error"]) for r in read_results(runs / "bf16").values() if r["downscale_error"]]
        report["bf16"] = {
            "all_finite": bool(errors) and all(math.isfinite(e) for e in errors),
            "mean_downscale_error_bf16": bf16.get("mean_downscale_error"),
            "mean_downscale_error_fp32": None if fp32 is None else fp32.get("mean_downscale_error"),
        }
        report["bf16"]["note"] = (
            f"finite: {report['bf16']['all_finite']}; mean downscale error bf16 "
            f"{report['bf16']['mean_downscale_error_bf16']}, float32 {report['bf16']['mean_downscale_error_fp32']}"
        )
    auto = runs / "auto_batch" / "batch_size.json"
    report["batch_size_auto"] = json.loads(auto.read_text()) if auto.is_file() else None
    report["benchmarks"] = {
        name.removeprefix("benchmark_"): benchmark_numbers(out / f"{name}.json")
        for name in plan
        if name.startswith("benchmark_")
    }
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, allow_nan=True) + "\n")
    (out / "gpu_check.md").write_text(markdown(report))
    print(f"wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}")
    return report


if __name__ == "__main__":
    main()

"""Speed of the PULSE search step: the faithful eager generator against the fast path.

One measurement times real :meth:`pulse.solvers.pulse.PulseSolver.solve` steps (forward synthesis,
downscale, loss, backward, spherical Adam step and the per-sample bookkeeping): the solver's
callback stamps the clock after every step, the first ``warmup`` steps are discarded, the median of
the timed steps is reported (pooled over ``rounds`` alternating measurements), and on CUDA the device
is synchronised before each stamp. Both paths search the same inputs from the same seeds, so their
best images are also compared (``max_abs_diff_hr``), as is one forward pass of the generators on
identical inputs (``max_abs_diff_image``, raw generator output).

Peak memory is ``torch.cuda.max_memory_allocated`` on CUDA (reset per measurement). On the CPU it is
the process's peak resident set size (``getrusage``), which cannot be reset: it is a high-water mark
over everything measured so far in the process (the fast path is measured first at each batch size).
"""

from __future__ import annotations

import copy
import math
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pulse.generators.base import Generator
from pulse.runtime import tf32
from pulse.solvers.pulse import PulseSolver, SearchSettings, StepInfo

HR_DIFFERENCE_NOTE = (
    "max|dHR| compares the two searches' best images; spherical Adam's first steps are about lr * sign(grad), "
    "so rounding-level gradient differences grow over steps: the generator output difference measures the function"
)
PEAK_MEMORY_NOTES = {
    "cuda": "torch.cuda.max_memory_allocated, reset before each measurement",
    "cpu": "process peak RSS (getrusage ru_maxrss): a high-water mark since the process started (models included); "
    "the fast path runs first at each batch size, so only its first figure excludes the eager path",
}


@dataclass
class Timing:
    """One path at one batch size. ``peak_memory_mb`` follows :data:`PEAK_MEMORY_NOTES`."""

    s_per_step: float
    steps_per_s: float
    images_per_min: float
    peak_memory_mb: float
    timed_steps: int


@dataclass
class BatchResult:
    """Eager and fast timings at one batch size; ``fast`` is ``None`` with ``fast_unavailable`` saying why.

    ``speedup`` is fast steps/s divided by eager steps/s (> 1: the fast path is faster).
    """

    batch: int
    eager: Timing
    fast: Timing | None
    speedup: float | None
    max_abs_diff_hr: float | None
    fast_unavailable: str | None = None


@dataclass
class BenchmarkReport:
    generator: str
    resolution: int
    lr_side: int
    device: str
    dtype: str
    warmup: int
    steps: int
    options: dict[str, Any]
    environment: dict[str, Any]
    peak_memory_note: str
    max_abs_diff_image: float | None
    rounds: int = 1
    results: list[BatchResult] = field(default_factory=list)
    profile: dict[str, StepProfile] | None = None
    # max |path - float64 faithful port| of the same generator output, per path (``float64_reference=True``)
    max_abs_diff_from_float64: dict[str, float] | None = None


@dataclass
class StepProfile:
    """Where one profiled CPU solver step of a path went (first batch size, after one warm-up step).

    ``convolution_s`` sums the profiler's self time of every operator named ``*conv*`` (forward,
    transposed and backward convolutions); ``ceiling`` is the eager step divided by this path's
    convolution time: the largest fast/eager ratio possible if everything but the convolutions took
    no time, i.e. without fewer (or faster) convolution FLOPs.
    """

    step_s: float
    convolution_s: float
    convolution_share: float
    ceiling: float | None = None


def profile_step(generator: Generator, lr_images: torch.Tensor, seed: int = 0) -> StepProfile:
    """Profile the second step of a two-step CPU search of ``lr_images`` (the first one warms up)."""
    from torch.profiler import ProfilerActivity, profile, schedule

    profiler = profile(activities=[ProfilerActivity.CPU], schedule=schedule(wait=0, warmup=1, active=1, repeat=1))
    with profiler:
        (step,), _ = time_search(generator, lr_images, warmup=1, steps=1, seed=seed, on_step=profiler.step)
    convolution_us = sum(event.self_cpu_time_total for event in profiler.key_averages() if "conv" in event.key)
    return StepProfile(step_s=step, convolution_s=convolution_us / 1e6, convolution_share=convolution_us / 1e6 / step)


def peak_memory_mb(device: torch.device) -> float:
    """See :data:`PEAK_MEMORY_NOTES`."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / 2**20 if sys.platform == "darwin" else maxrss / 2**10  # bytes on macOS, KiB on Linux


def reset_peak_memory(device: torch.device) -> None:
    """Start a new CUDA peak; a no-op on the CPU, where the process peak cannot be reset."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def time_search(
    generator: Generator,
    lr_images: torch.Tensor,
    warmup: int,
    steps: int,
    seed: int = 0,
    on_step: Callable[[], Any] | None = None,
) -> tuple[list[float], torch.Tensor]:
    """Seconds of each of ``steps`` solver steps after ``warmup`` untimed ones.

    Args:
        generator: the generator searched (on its device).
        lr_images: ``[B, 3, h, w]`` targets in [0, 1]; ``B`` is the batch measured.
        on_step: called after each step's time stamp (e.g. a profiler's ``step``).

    Returns:
        The step durations and the search's best images ``[B, 3, R, R]`` (on the CPU).
    """
    if warmup < 1 or steps < 1:
        raise ValueError(f"need warmup >= 1 and steps >= 1, got {warmup} and {steps}")
    device = next(iter((*generator.parameters(), *generator.buffers()))).device  # type: ignore[attr-defined]
    # No noise layer is zeroed: the default (layer 17) would not exist in small generators.
    settings = SearchSettings(steps=warmup + steps, bad_noise_layers=(), seed=seed)
    stamps: list[float] = []

    def stamp(info: StepInfo) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        stamps.append(time.perf_counter())
        if on_step is not None:
            on_step()

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    result = PulseSolver(generator, settings=settings).solve(lr_images.to(device), callback=stamp)
    # stamps[warmup - 1] closes the last warm-up step; the timed steps follow it.
    return [b - a for a, b in zip(stamps[warmup - 1 : -1], stamps[warmup:], strict=True)], result.hr


def summarise_steps(durations: Sequence[float], batch: int, peak_mb: float) -> Timing:
    """The median step of ``durations`` as a :class:`Timing`: on a shared CPU one step stalled by another
    process, or one round disturbed by the other path's memory state, would otherwise decide the ratio."""
    per_step = statistics.median(durations)
    return Timing(
        s_per_step=per_step,
        steps_per_s=1.0 / per_step,
        images_per_min=60.0 * batch / per_step,
        peak_memory_mb=peak_mb,
        timed_steps=len(durations),
    )


@torch.no_grad()
def generator_output(
    generator: Generator, batch: int = 1, seed: int = 0, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Raw output ``[batch, 3, R, R]`` for one seeded latent (on the sphere) and noise draw, fed in ``dtype``."""
    device = next(iter((*generator.parameters(), *generator.buffers()))).device  # type: ignore[attr-defined]
    rng = torch.Generator().manual_seed(seed)
    latent = torch.randn(batch, generator.num_latents, generator.latent_dim, generator=rng)
    latent = latent / latent.norm(dim=-1, keepdim=True) * math.sqrt(generator.latent_dim)
    noise = [torch.randn(batch, *shape, generator=rng).to(device, dtype) for shape in generator.noise_shapes]
    return generator.synthesize(generator.to_style(latent.to(device, dtype)), noise)


@torch.no_grad()
def float64_distances(eager: nn.Module, fast: Generator | None, batch: int = 1, seed: int = 0) -> dict[str, float]:
    """Each path's max abs distance from a float64 evaluation of the faithful port on the same inputs.

    Puts ``max_abs_diff_image`` in scale: two float32 evaluations of the same function (different
    summation orders) differ by about as much as each differs from float64.
    """
    reference = generator_output(copy.deepcopy(eager).double(), batch, seed, torch.float64)
    paths = {"eager": eager} if fast is None else {"eager": eager, "fast": fast}
    with tf32(False):
        outputs = {name: generator_output(path, batch, seed).double() for name, path in paths.items()}
    return {name: (output - reference).abs().max().item() for name, output in outputs.items()}


def precision(device_type: str, allow_tf32: bool = False, autocast_dtype: torch.dtype | None = None) -> ExitStack:
    """Context for one path's arithmetic: TF32 on or off, and autocast to ``autocast_dtype`` if given."""
    stack = ExitStack()
    stack.enter_context(tf32(allow_tf32))
    if autocast_dtype is not None:
        stack.enter_context(torch.autocast(device_type=device_type, dtype=autocast_dtype))
    return stack


def image_difference(
    eager: Generator,
    fast: Generator,
    batch: int = 1,
    seed: int = 0,
    fast_tf32: bool = False,
    fast_autocast: torch.dtype | None = None,
) -> float:
    """Max abs difference of the two generators' raw outputs on the same inputs (eager in float32)."""
    device_type = next(iter((*eager.parameters(), *eager.buffers()))).device.type  # type: ignore[attr-defined]
    with precision(device_type):
        reference = generator_output(eager, batch, seed)
    with precision(device_type, fast_tf32, fast_autocast):
        return (reference - generator_output(fast, batch, seed).float()).abs().max().item()


def environment(device: torch.device) -> dict[str, Any]:
    """What the numbers depend on: versions, threads, the machine's load when measured."""
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def run_benchmark(
    eager: Generator,
    make_fast: Callable[[Generator], Generator] | None,
    batches: Sequence[int],
    lr_side: int,
    warmup: int,
    steps: int,
    generator_name: str,
    fast_unavailable: str | None = None,
    options: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
    rounds: int = 1,
    fast_tf32: bool = False,
    fast_autocast: torch.dtype | None = None,
    profile: bool = False,
    float64_reference: bool = False,
) -> BenchmarkReport:
    """Measure both paths at every batch size (fast first, then eager; same seeds and targets).

    Args:
        eager: the faithful generator, already on the device.
        make_fast: builds the fast path from ``eager``; ``None`` when there is none (then
            ``fast_unavailable`` says why and the fast fields are ``None``).
        lr_side: side of the random low-resolution targets (must divide the resolution).
        rounds: measurements per path, alternating fast and eager; the median step over all of them.
        fast_tf32: let the fast path use TF32 on CUDA (:func:`pulse.runtime.set_tf32`); the eager path
            always runs float32, so the ratio then includes the precision change.
        fast_autocast: run the fast path's searches under autocast to this dtype (e.g. ``torch.bfloat16``:
            convolutions in bf16, downscale, loss and normalisation in float32); eager stays float32.
        profile: CPU only: also profile one step of each path at the first batch size
            (:class:`StepProfile`, in ``report.profile``).
        float64_reference: also measure each path's distance from a float64 evaluation
            (:func:`float64_distances`; float32 only, so ``fast_autocast`` and ``fast_tf32`` do not apply).
    """
    if rounds < 1:
        raise ValueError(f"need rounds >= 1, got {rounds}")
    device = next(iter((*eager.parameters(), *eager.buffers()))).device  # type: ignore[attr-defined]
    if profile and device.type != "cpu":
        raise ValueError("profile=True measures CPU operator time; it is not available on " + device.type)
    fast = make_fast(eager) if make_fast is not None else None
    report = BenchmarkReport(
        generator=generator_name,
        resolution=eager.resolution,
        lr_side=lr_side,
        device=str(device),
        dtype="float32",
        warmup=warmup,
        steps=steps,
        options=dict(options or {}),
        environment=environment(device),
        peak_memory_note=PEAK_MEMORY_NOTES[device.type if device.type in PEAK_MEMORY_NOTES else "cpu"],
        max_abs_diff_image=(
            None if fast is None else image_difference(eager, fast, fast_tf32=fast_tf32, fast_autocast=fast_autocast)
        ),
        rounds=rounds,
    )
    if float64_reference:
        log("float64 reference evaluation ...")
        report.max_abs_diff_from_float64 = float64_distances(eager, fast)
    for batch in batches:
        targets = torch.rand(batch, 3, lr_side, lr_side, generator=torch.Generator().manual_seed(batch))
        fast_steps: list[float] = []
        eager_steps: list[float] = []
        fast_hr = eager_hr = None
        fast_peak = eager_peak = 0.0
        # Rounds alternate fast, eager, fast, eager, ...: each path's timing depends on the memory state the
        # other left behind, so several rounds pool both orders. On the CPU only the first measurement's
        # peak memory is its own (the fast path's, measured first).
        for round_index in range(rounds):
            suffix = f" (round {round_index + 1}/{rounds})" if rounds > 1 else ""
            if fast is not None:
                log(f"batch {batch}: fast{suffix} ...")
                reset_peak_memory(device)
                with precision(device.type, fast_tf32, fast_autocast):
                    durations, hr = time_search(fast, targets, warmup, steps)
                fast_steps += durations
                fast_hr = hr if fast_hr is None else fast_hr
                if round_index == 0 or device.type == "cuda":
                    fast_peak = max(fast_peak, peak_memory_mb(device))
            log(f"batch {batch}: eager{suffix} ...")
            reset_peak_memory(device)
            with precision(device.type):
                durations, hr = time_search(eager, targets, warmup, steps)
            eager_steps += durations
            eager_hr = hr if eager_hr is None else eager_hr
            eager_peak = max(eager_peak, peak_memory_mb(device))
        fast_timing = summarise_steps(fast_steps, batch, fast_peak) if fast is not None else None
        eager_timing = summarise_steps(eager_steps, batch, eager_peak)
        report.results.append(
            BatchResult(
                batch=batch,
                eager=eager_timing,
                fast=fast_timing,
                speedup=fast_timing.steps_per_s / eager_timing.steps_per_s if fast_timing else None,
                max_abs_diff_hr=(fast_hr - eager_hr).abs().max().item() if fast_hr is not None else None,
                fast_unavailable=None if fast is not None else fast_unavailable,
            )
        )
    if profile:
        targets = torch.rand(batches[0], 3, lr_side, lr_side, generator=torch.Generator().manual_seed(batches[0]))
        log(f"batch {batches[0]}: profiling one step of each path ...")
        with precision(device.type):
            report.profile = {"eager": profile_step(eager, targets)}
        if fast is not None:
            with precision(device.type, fast_tf32, fast_autocast):
                report.profile["fast"] = profile_step(fast, targets)
        for measured in report.profile.values():
            measured.ceiling = report.profile["eager"].step_s / measured.convolution_s
    return report


def best_batches(report: BenchmarkReport) -> dict[str, Any] | None:
    """Each path's batch size with the most images/min and the ratio of those maxima (None without a fast path)."""
    rows = [row for row in report.results if row.fast is not None]
    if not rows:
        return None
    eager = max(report.results, key=lambda row: row.eager.images_per_min)
    fast = max(rows, key=lambda row: row.fast.images_per_min)  # type: ignore[union-attr]
    return {
        "eager_batch": eager.batch,
        "eager_images_per_min": eager.eager.images_per_min,
        "fast_batch": fast.batch,
        "fast_images_per_min": fast.fast.images_per_min,  # type: ignore[union-attr]
        "ratio": fast.fast.images_per_min / eager.eager.images_per_min,  # type: ignore[union-attr]
    }


def format_report(report: BenchmarkReport) -> str:
    """A plain-text table of :class:`BenchmarkReport`; missing values print as ``null`` with the reason."""

    def num(value: float | None, spec: str) -> str:
        return "null" if value is None else format(value, spec)

    env = report.environment
    lines = [
        f"{report.generator} {report.resolution}px (targets {report.lr_side}px), {report.device}, {report.dtype}, "
        f"{report.rounds} x ({report.warmup} warm-up + {report.steps} timed steps) per path, "
        f"torch {env['torch']}, {env['cpu_threads']} threads, "
        f"load average {env['load_average']}",
        f"options: {report.options}",
        f"max |fast - eager| of one generator output: {num(report.max_abs_diff_image, '.3g')}"
        + "".join(
            f"; max |{name} - float64| {value:.3g}" for name, value in (report.max_abs_diff_from_float64 or {}).items()
        ),
        f"{'batch':>5} {'path':>5} {'s/step':>9} {'steps/s':>9} {'img/min':>9} {'peak MiB':>9}  fast/eager  max|dHR|",
    ]
    for row in report.results:
        for name, timing in (("eager", row.eager), ("fast", row.fast)):
            if timing is None:
                lines.append(f"{row.batch:>5} {name:>5} {'null':>9} {'null':>9} {'null':>9} {'null':>9}")
                continue
            tail = f"  {num(row.speedup, '.2f'):>10}  {num(row.max_abs_diff_hr, '.3g')}" if name == "fast" else ""
            lines.append(
                f"{row.batch:>5} {name:>5} {timing.s_per_step:>9.3f} {timing.steps_per_s:>9.3f} "
                f"{timing.images_per_min:>9.2f} {timing.peak_memory_mb:>9.0f}{tail}"
            )
        if row.fast_unavailable:
            lines.append(f"      fast path unavailable: {row.fast_unavailable}")
    for name, measured in (report.profile or {}).items():
        lines.append(
            f"profile ({name}, batch {report.results[0].batch}, one step): {measured.step_s:.3f} s, convolutions "
            f"{measured.convolution_s:.3f} s ({100 * measured.convolution_share:.0f}%); eager step / these "
            f"convolutions = {measured.ceiling:.2f}x (the most this path could gain over eager without cheaper "
            "convolutions)"
        )
    best = best_batches(report)
    if best is not None and len(report.results) > 1:
        lines.append(
            f"best batch: eager {best['eager_images_per_min']:.2f} img/min at batch {best['eager_batch']}, fast "
            f"{best['fast_images_per_min']:.2f} at batch {best['fast_batch']}: {best['ratio']:.2f}x"
        )
    lines.append(f"peak memory: {report.peak_memory_note}")
    if any(row.max_abs_diff_hr is not None for row in report.results):
        lines.append(HR_DIFFERENCE_NOTE)
    return "\n".join(lines)

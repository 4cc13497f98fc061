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
import dataclasses
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
from pathlib import Path
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
# make_solver(generator, total_steps) -> a solver with ``solve(lr, callback=...)`` (see time_search)
SolverFactory = Callable[[Generator, int], Any]
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
    no time, i.e. without fewer (or faster) convolution FLOPs. ``convolution_gflop`` counts the floating-point
    operations of those convolutions in one step (:func:`convolution_flops`) and ``convolution_gflop_per_s`` is
    the rate they ran at: next to the machine's peak it says how much faster the convolutions themselves
    could still get.
    """

    step_s: float
    convolution_s: float
    convolution_share: float
    ceiling: float | None = None
    convolution_gflop: float | None = None
    convolution_gflop_per_s: float | None = None


def profile_step(
    generator: Generator, lr_images: torch.Tensor, seed: int = 0, make_solver: SolverFactory | None = None
) -> StepProfile:
    """Profile the second step of a two-step CPU search of ``lr_images`` (the first one warms up)."""
    from torch.profiler import ProfilerActivity, profile, schedule

    profiler = profile(activities=[ProfilerActivity.CPU], schedule=schedule(wait=0, warmup=1, active=1, repeat=1))
    with profiler:
        (step,), _ = time_search(
            generator, lr_images, warmup=1, steps=1, seed=seed, on_step=profiler.step, make_solver=make_solver
        )
    convolution_us = sum(event.self_cpu_time_total for event in profiler.key_averages() if "conv" in event.key)
    # Counted in a run of its own: the counter's dispatch overhead would distort the profiled times. time_search
    # runs at least two steps (one untimed), and every step runs the same convolutions.
    flops = (
        convolution_flops(
            lambda: time_search(generator, lr_images, warmup=1, steps=1, seed=seed, make_solver=make_solver)
        )
        / 2
    )
    convolution_s = convolution_us / 1e6
    return StepProfile(
        step_s=step,
        convolution_s=convolution_s,
        convolution_share=convolution_s / step,
        convolution_gflop=flops / 1e9,
        convolution_gflop_per_s=flops / 1e9 / convolution_s if convolution_s > 0 else None,
    )


def convolution_flops(run: Callable[[], object]) -> int:
    """Floating-point operations of every convolution ``run()`` executes: forward, transposed and backward.

    Counted by :class:`torch.utils.flop_counter.FlopCounterMode` from the operators' shapes (a multiply-add
    is two), so hand-written backward passes that call ``aten.convolution_backward`` count too.
    """
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        run()
    counts = counter.get_flop_counts().get("Global", {})
    return int(sum(count for op, count in counts.items() if "convolution" in str(op)))


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
    make_solver: SolverFactory | None = None,
) -> tuple[list[float], torch.Tensor]:
    """Seconds of each of ``steps`` solver steps after ``warmup`` untimed ones.

    Args:
        generator: the generator searched (on its device).
        lr_images: ``[B, 3, h, w]`` targets in [0, 1]; ``B`` is the batch measured.
        on_step: called after each step's time stamp (e.g. a profiler's ``step``).
        make_solver: ``make_solver(generator, total_steps)`` builds the solver timed, e.g. the one ``run.py``
            builds from its config (``scripts/benchmark.py`` does that). ``None``: a default
            :class:`~pulse.solvers.pulse.PulseSolver` with no noise layer zeroed.

    Returns:
        The step durations and the search's best images ``[B, 3, R, R]`` (on the CPU).
    """
    if warmup < 1 or steps < 1:
        raise ValueError(f"need warmup >= 1 and steps >= 1, got {warmup} and {steps}")
    device = next(iter((*generator.parameters(), *generator.buffers()))).device  # type: ignore[attr-defined]
    if make_solver is None:
        # No noise layer is zeroed: the default (layer 17) would not exist in small generators.
        solver = PulseSolver(generator, settings=SearchSettings(steps=warmup + steps, bad_noise_layers=(), seed=seed))
    else:
        solver = make_solver(generator, warmup + steps)
    stamps: list[float] = []

    def stamp(info: StepInfo) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        stamps.append(time.perf_counter())
        if on_step is not None:
            on_step()

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    result = solver.solve(lr_images.to(device), callback=stamp)
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
    make_solver: SolverFactory | None = None,
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
        make_solver: how each path's solver is built (see :func:`time_search`); both paths get the same.
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
                    durations, hr = time_search(fast, targets, warmup, steps, make_solver=make_solver)
                fast_steps += durations
                fast_hr = hr if fast_hr is None else fast_hr
                if round_index == 0 or device.type == "cuda":
                    fast_peak = max(fast_peak, peak_memory_mb(device))
            log(f"batch {batch}: eager{suffix} ...")
            reset_peak_memory(device)
            with precision(device.type):
                durations, hr = time_search(eager, targets, warmup, steps, make_solver=make_solver)
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
            report.profile = {"eager": profile_step(eager, targets, make_solver=make_solver)}
        if fast is not None:
            with precision(device.type, fast_tf32, fast_autocast):
                report.profile["fast"] = profile_step(fast, targets, make_solver=make_solver)
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
        if measured.convolution_gflop_per_s is not None:
            lines.append(
                f"  convolutions ({name}): {measured.convolution_gflop:.1f} GFLOP per step, run at "
                f"{measured.convolution_gflop_per_s:.0f} GFLOP/s"
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


# --------------------------------------------------------------------------------------------------
# Whole processes: what a user waits for (start-up, search, end-of-run work, shutdown)
# --------------------------------------------------------------------------------------------------

# Google Drive ids the official PULSE code downloads its weights from (PULSE.py), and the files they are.
OFFICIAL_WEIGHT_IDS = {
    "1TCViX1YpQyRsklTVYEJwdbmK91vklCo8": "synthesis.pt",
    "14R6iHGf5iuVx3DMNsACAl7eBr7Vdpd0k": "mapping.pt",
}


@dataclass
class Spread:
    """Median, minimum and maximum of repeated measurements (``values`` in measurement order)."""

    median: float
    min: float
    max: float
    values: list[float]

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if not values:
            raise ValueError("a spread needs at least one value")
        return cls(statistics.median(values), min(values), max(values), list(values))

    def text(self, spec: str = ".2f") -> str:
        return f"{self.median:{spec}} [{self.min:{spec}}-{self.max:{spec}}]"


@dataclass
class ProcessTiming:
    """One program measured by whole runs of ``short`` and ``long`` steps, ``repeats`` times each.

    ``step_wall_s`` is ``(wall(long) - wall(short)) / (long - short)`` per repeat: the seconds one more step
    costs a user, whatever happens before and after the search. ``step_program_s`` is the same difference of
    the program's own search timer (``None`` when it reports none). ``startup_s`` is ``wall(short) - short *
    step_wall_s``: imports, model loading, end-of-run work and shutdown of a ``short``-step run.

    What else happened, per repeat (``None`` where the counters are missing, e.g. off Linux): ``step_cpu_s``,
    the same difference of the runs' CPU seconds (user + system, all threads); ``step_faults``, of their minor
    page faults (the heap growing); ``others_load``, the worst run's CPU taken by anything but the runs, in
    cores (other processes, the kernel, steal); ``steal_share``, the worst run's steal time (the hypervisor
    running someone else on our cores) as a share of its wall time times the cores; ``machine_probe_s``, the
    fixed reference work of :func:`machine_probe_s` timed before each of the program's runs (its spread is the
    machine's own: the same work, in the same measuring process). ``step_in_run_s``: the long runs' own median
    step after the first (``results.csv``'s ``step_seconds``; ``None`` when the program reports none): one
    process, no difference of two noisy walls.
    """

    name: str
    short: int
    long: int
    wall_short_s: Spread
    wall_long_s: Spread
    step_wall_s: Spread
    step_program_s: Spread | None
    startup_s: Spread
    step_cpu_s: Spread | None = None
    step_faults: Spread | None = None
    others_load: Spread | None = None
    steal_share: Spread | None = None
    machine_probe_s: Spread | None = None
    step_in_run_s: Spread | None = None


def _no_step_timer(stdout: str, out_dir: Path) -> float | None:
    return None


@dataclass
class ProcessCommand:
    """How to run one program for ``steps`` steps: its command, working folder, and how to read its own timer.

    ``program_seconds(stdout, out_dir)`` returns the search time the program itself measured, or ``None``;
    ``program_step_seconds(stdout, out_dir)`` the median step it measured, or ``None`` (the default).
    """

    argv: list[str]
    cwd: Path
    out_dir: Path
    program_seconds: Callable[[str, Path], float | None]
    program_step_seconds: Callable[[str, Path], float | None] = _no_step_timer


def write_random_official_weights(
    folder: str | os.PathLike[str],
    resolution: int = 1024,
    fmap_base: int = 8192,
    fmap_max: int = 512,
    seed: int = 0,
    fit_samples: int = 20000,
) -> Path:
    """Seeded random StyleGAN weights in the official layout: ``synthesis.pt``, ``mapping.pt``, ``gaussian_fit.pt``.

    Both pulse (``StyleGANGenerator.pretrained(cache_dir=folder)``) and the official code read these files, so
    the two run the same network. The Gaussian fit comes from ``fit_samples`` draws of the random mapping (the
    official code's 1,000,000 would only cost start-up time that neither program pays with a fit on disk).
    Files already there are kept (the same arguments write the same files).
    """
    from pulse.generators.stylegan import gaussian_fit, random_networks

    folder = Path(folder)
    names = ("synthesis.pt", "mapping.pt", "gaussian_fit.pt")
    if all((folder / name).is_file() for name in names):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    synthesis, mapping = random_networks(resolution, fmap_base, fmap_max, seed)
    fit = gaussian_fit(mapping, num_samples=fit_samples, seed=seed, progress=False)
    for name, state in zip(names, (synthesis.state_dict(), mapping.state_dict(), fit), strict=True):
        torch.save({key: value.detach().clone() for key, value in state.items()}, folder / name)
    return folder


def write_random_input(folder: str | os.PathLike[str], side: int = 16, seed: int = 0) -> Path:
    """One seeded random RGB PNG ``input.png`` of ``side`` px in ``folder`` (the search target of both programs)."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pixels = torch.randint(0, 256, (side, side, 3), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    path = folder / "input.png"
    Image.fromarray(pixels.numpy()).save(path)
    return path


def pulse_run_command(
    run_py: Path,
    generator: str,
    weights: Path,
    inputs: Path,
    out_dir: Path,
    steps: int,
    extra: Sequence[str] = (),
    generator_args: dict[str, Any] | None = None,
) -> ProcessCommand:
    """``python run.py`` searching ``inputs`` (a folder of LR images) with ``generator`` on ``weights``, batch 1.

    ``generator`` is ``stylegan_ffhq`` or ``stylegan_ffhq_fast``; ``generator_args`` are further arguments of
    ``StyleGANGenerator.pretrained`` (``resolution``, ``fmap_base``, ``fmap_max`` for smaller random networks).
    Reads the program's own timers from ``results.csv``: ``seconds`` summed over the run's samples, and the
    median step (``step_seconds``).
    """
    prefix = "generator.generator" if generator.endswith("_fast") else "generator"
    argv = [
        sys.executable,
        str(run_py),
        f"generator={generator}",
        f"{prefix}.cache_dir={weights}",
        *(f"+{prefix}.{key}={value}" for key, value in (generator_args or {}).items()),
        "data=folder",
        f"data.path={inputs}",
        f"solver.steps={steps}",
        "batch_size=1",
        "trainer=cpu",
        "progress=false",
        f"hydra.run.dir={out_dir}",
        *extra,
    ]
    return ProcessCommand(
        argv,
        run_py.parent,
        out_dir,
        lambda stdout, out: results_csv_seconds(out),
        lambda stdout, out: results_csv_step_seconds(out),
    )


def _results_rows(out_dir: Path) -> list[dict[str, str]] | None:
    """The rows of ``out_dir/results.csv`` (``None`` without the file)."""
    from pulse.outputs import read_rows

    path = Path(out_dir) / "results.csv"
    return read_rows(path) if path.is_file() else None


def results_csv_seconds(out_dir: Path) -> float | None:
    """The ``seconds`` of every row of ``out_dir/results.csv`` summed (``None`` without the file)."""
    rows = _results_rows(out_dir)
    return None if rows is None else sum(float(row["seconds"]) for row in rows)


def results_csv_step_seconds(out_dir: Path) -> float | None:
    """The median of ``out_dir/results.csv``'s ``step_seconds`` cells (``None`` without the file or the cells)."""
    values = [float(row["step_seconds"]) for row in _results_rows(out_dir) or [] if row.get("step_seconds")]
    return statistics.median(values) if values else None


def official_run_command(
    driver: Path, official: Path, weights: Path, inputs: Path, out_dir: Path, steps: int
) -> ProcessCommand:
    """The official PULSE ``run.py`` on the CPU through ``driver`` (``scripts/official_cpu.py``), batch 1.

    Runs in ``out_dir``, where the driver puts the Gaussian fit the official code reads from its working folder.
    Reads the program's own timer from its ``time: X`` line.
    """
    argv = [
        sys.executable,
        str(driver),
        "--official",
        str(official),
        "--weights",
        str(weights),
        "--",
        "-input_dir",
        str(inputs),
        "-output_dir",
        str(out_dir / "runs"),
        "-cache_dir",
        str(out_dir / "cache"),
        "-steps",
        str(steps),
        "-seed",
        "1",
    ]
    return ProcessCommand(argv, out_dir, out_dir, lambda stdout, out: official_seconds(stdout))


def official_seconds(stdout: str) -> float | None:
    """The search time the official code prints (``... | time: 12.3 | it/s: ...``), or ``None``."""
    import re

    found = re.findall(r"\|\s*time:\s*([0-9.]+)\s*\|", stdout)
    return float(found[-1]) if found else None


@dataclass
class ProcessRun:
    """One finished run: wall time, its own timer, and what the machine did meanwhile.

    ``cpu_s`` and ``minor_faults`` are the run's (``getrusage(RUSAGE_CHILDREN)`` before and after, all its
    threads and children). ``others_cpu_s`` is the CPU time the whole machine spent while it ran (``/proc/stat``,
    all cores, steal included) minus the run's and this process's own: other processes, interrupts and the
    hypervisor. ``steal_s`` is the steal part alone. Both are ``None`` without ``/proc/stat``. ``probe_s`` is
    :func:`machine_probe_s` just before the run (``None`` when not probed).
    """

    wall_s: float
    program_s: float | None
    cpu_s: float
    minor_faults: int
    others_cpu_s: float | None
    steal_s: float | None
    probe_s: float | None = None
    step_s: float | None = None


def machine_probe_s(repeats: int = 12, side: int = 512) -> float:
    """Seconds this machine takes for a fixed piece of work: ``repeats`` float32 ``side x side`` matrix products.

    The same work every time, on torch's threads, with no allocation after the first product: its time moves
    only with the machine's speed (other tenants of a virtual machine's host, frequency scaling), not with
    pulse. Timed before each measured run, its spread says how much of the runs' spread is the machine.
    """
    a = torch.randn(side, side, generator=torch.Generator().manual_seed(0))
    out = torch.empty_like(a)
    torch.mm(a, a, out=out)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, a, out=out)
    return time.perf_counter() - start


def machine_cpu_seconds() -> tuple[float, float] | None:
    """``(busy, steal)`` CPU seconds of the whole machine since boot (``/proc/stat``), or ``None`` off Linux.

    Busy is user, nice, system, irq and softirq (guest time is part of user); idle and iowait are not busy.
    """
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
    except OSError:
        return None
    if fields[0] != "cpu" or len(fields) < 9:
        return None
    ticks = [int(value) for value in fields[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks
    hertz = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / hertz, steal / hertz


def _usage(who: int) -> tuple[float, int]:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime, usage.ru_minflt


def run_process(command: ProcessCommand, env: dict[str, str], timeout: float) -> ProcessRun:
    """Run ``command`` to its end and return its :class:`ProcessRun`.

    Raises:
        RuntimeError: the program failed; the message names it and ends with its last output lines.
    """
    import subprocess

    command.out_dir.mkdir(parents=True, exist_ok=True)
    machine_before, children_before, self_before = (
        machine_cpu_seconds(),
        _usage(resource.RUSAGE_CHILDREN),
        _usage(resource.RUSAGE_SELF),
    )
    start = time.perf_counter()
    finished = subprocess.run(
        command.argv, cwd=command.cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    wall = time.perf_counter() - start
    machine_after, children_after, self_after = (
        machine_cpu_seconds(),
        _usage(resource.RUSAGE_CHILDREN),
        _usage(resource.RUSAGE_SELF),
    )
    if finished.returncode != 0:
        tail = "\n".join((finished.stdout + finished.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"{' '.join(command.argv[:3])} ... exited with {finished.returncode}:\n{tail}")
    cpu = children_after[0] - children_before[0]
    others = steal = None
    if machine_before is not None and machine_after is not None:
        steal = machine_after[1] - machine_before[1]
        busy = machine_after[0] - machine_before[0]
        # /proc/stat counts in clock ticks (10 ms): clamp the rounding below zero away
        others = max(0.0, busy + steal - cpu - (self_after[0] - self_before[0]))
    return ProcessRun(
        wall_s=wall,
        program_s=command.program_seconds(finished.stdout, command.out_dir),
        cpu_s=cpu,
        minor_faults=children_after[1] - children_before[1],
        others_cpu_s=others,
        steal_s=steal,
        step_s=command.program_step_seconds(finished.stdout, command.out_dir),
    )


def measure_processes(
    programs: dict[str, Callable[[int, Path], ProcessCommand]],
    work_dir: Path,
    short: int = 2,
    long: int = 12,
    repeats: int = 3,
    env: dict[str, str] | None = None,
    timeout: float = 900.0,
    log: Callable[[str], Any] = lambda message: None,
    probe_machine: bool = True,
) -> dict[str, ProcessTiming]:
    """Whole runs of every program, ``short`` and ``long`` steps, interleaved, ``repeats`` times.

    Repeat ``r`` runs the programs in turn (reversed on odd repeats, so drift in the machine's load falls
    on both sides), each short then long: A B, B A, A B, ... Every run is a fresh process.

    Args:
        programs: ``{name: make(steps, out_dir) -> ProcessCommand}``.
        work_dir: each run writes under ``work_dir/<name>/<steps>_<repeat>``.
        env: the environment of every run (e.g. ``os.environ`` plus :func:`pulse.runtime.allocator_environment`).
        probe_machine: time :func:`machine_probe_s` before every run (``machine_probe_s`` in the result).
    """
    if not 1 <= short < long:
        raise ValueError(f"need 1 <= short < long steps, got short={short}, long={long}")
    if repeats < 1:
        raise ValueError(f"need repeats >= 1, got {repeats}")
    env = dict(os.environ if env is None else env)
    runs: dict[str, dict[int, list[ProcessRun]]] = {name: {short: [], long: []} for name in programs}
    names = list(programs)
    cores = os.cpu_count() or 1
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else names[::-1]:
            for steps in (short, long):
                command = programs[name](steps, Path(work_dir) / name / f"{steps}_{repeat}")
                log(f"repeat {repeat + 1}/{repeats}: {name}, {steps} steps ...")
                probe = machine_probe_s() if probe_machine else None
                run = dataclasses.replace(run_process(command, env, timeout), probe_s=probe)
                runs[name][steps].append(run)
                log(
                    f"  {run.wall_s:.1f} s wall, {run.cpu_s:.1f} s CPU"
                    + ("" if run.program_s is None else f", {run.program_s:.1f} s by its own timer")
                    + ("" if run.others_cpu_s is None else f", others {run.others_cpu_s / run.wall_s:.2f} cores")
                )
    timings = {}
    for name in names:
        pairs = list(zip(runs[name][short], runs[name][long], strict=True))

        def per_step(value, pairs=pairs):
            return _per_step(pairs, value, long - short)

        def worst(value, pairs=pairs):
            return _worst(pairs, value)

        step_wall = per_step(lambda run: run.wall_s)
        assert step_wall is not None
        walls_short = [a.wall_s for a, _ in pairs]
        timings[name] = ProcessTiming(
            name=name,
            short=short,
            long=long,
            wall_short_s=Spread.of(walls_short),
            wall_long_s=Spread.of([b.wall_s for _, b in pairs]),
            step_wall_s=step_wall,
            step_program_s=per_step(lambda run: run.program_s),
            startup_s=Spread.of(
                [wall - short * step for wall, step in zip(walls_short, step_wall.values, strict=True)]
            ),
            step_cpu_s=per_step(lambda run: run.cpu_s),
            step_faults=per_step(lambda run: float(run.minor_faults)),
            others_load=worst(lambda run: None if run.others_cpu_s is None else run.others_cpu_s / run.wall_s),
            steal_share=worst(lambda run: None if run.steal_s is None else run.steal_s / (run.wall_s * cores)),
            machine_probe_s=_probes([run for pair in pairs for run in pair]),
            step_in_run_s=_in_run_steps([b for _, b in pairs]),
        )
    return timings


def _per_step(
    pairs: Sequence[tuple[ProcessRun, ProcessRun]], value: Callable[[ProcessRun], float | None], steps: int
) -> Spread | None:
    """``(value(long run) - value(short run)) / steps`` per repeat, or ``None`` where a value is missing."""
    values = [(value(b), value(a)) for a, b in pairs]
    if any(x is None or y is None for x, y in values):
        return None
    return Spread.of([(x - y) / steps for x, y in values])  # type: ignore[operator]


def _worst(
    pairs: Sequence[tuple[ProcessRun, ProcessRun]], value: Callable[[ProcessRun], float | None]
) -> Spread | None:
    """The larger ``value`` of each repeat's two runs, or ``None`` where a value is missing."""
    values = [(value(a), value(b)) for a, b in pairs]
    if any(x is None or y is None for x, y in values):
        return None
    return Spread.of([max(x, y) for x, y in values])  # type: ignore[type-var]


def _in_run_steps(runs: Sequence[ProcessRun]) -> Spread | None:
    values = [run.step_s for run in runs]
    return None if any(value is None for value in values) else Spread.of(values)  # type: ignore[arg-type]


def _probes(runs: Sequence[ProcessRun]) -> Spread | None:
    values = [run.probe_s for run in runs if run.probe_s is not None]
    return Spread.of(values) if values else None


def ratio_spread(numerator: Spread, denominator: Spread) -> Spread:
    """Ratios of paired measurements (repeat by repeat), as a spread: median of the ratios, not ratio of medians."""
    return Spread.of([a / b for a, b in zip(numerator.values, denominator.values, strict=True)])


def format_process_timings(timings: dict[str, ProcessTiming], ratios: Sequence[tuple[str, str]] = ()) -> str:
    """A table of :func:`measure_processes`'s results, then ``a/b`` ratios of per-step and start-up times.

    Values are ``median [min-max]`` over the repeats.
    """
    first = next(iter(timings.values()))
    lines = [
        f"{len(first.step_wall_s.values)} repeats, whole processes of {first.short} and {first.long} steps; "
        f"median [min-max]; s/step = (wall({first.long}) - wall({first.short})) / {first.long - first.short}",
        f"{'program':<22} {'wall ' + str(first.short) + ' steps':>20} {'wall ' + str(first.long) + ' steps':>20} "
        f"{'s/step (wall)':>20} {'s/step (own timer)':>20} {'s/step (in run)':>20} {'start-up s':>20}",
    ]
    for name, timing in timings.items():
        program = "null" if timing.step_program_s is None else timing.step_program_s.text(".3f")
        in_run = "null" if timing.step_in_run_s is None else timing.step_in_run_s.text(".3f")
        lines.append(
            f"{name:<22} {timing.wall_short_s.text('.1f'):>20} {timing.wall_long_s.text('.1f'):>20} "
            f"{timing.step_wall_s.text('.3f'):>20} {program:>20} {in_run:>20} {timing.startup_s.text('.1f'):>20}"
        )
    lines.append(
        f"(own timer: the difference of the programs' search timers; in run: the {first.long}-step runs' own median "
        "step after the first, null where a program reports none)"
    )
    if any(timing.step_cpu_s is not None for timing in timings.values()):

        def cell(spread: Spread | None, spec: str) -> str:
            return "null" if spread is None else spread.text(spec)

        lines.append(
            f"{'what else happened':<22} {'s/step (CPU)':>20} {'page faults/step':>20} "
            f"{'others (cores)':>20} {'steal share':>20} {'machine probe s':>20}"
        )
        for name, timing in timings.items():
            lines.append(
                f"{name:<22} {cell(timing.step_cpu_s, '.3f'):>20} {cell(timing.step_faults, '.0f'):>20} "
                f"{cell(timing.others_load, '.2f'):>20} {cell(timing.steal_share, '.3f'):>20} "
                f"{cell(timing.machine_probe_s, '.3f'):>20}"
            )
        lines.append(
            "(CPU: the runs' user + system seconds, all threads; others: CPU the machine spent outside the runs "
            "during the worse run of each repeat, steal included: above about 0.1 cores a repeat was disturbed; "
            "machine probe: the same fixed matrix products timed before every run: its spread is the machine's)"
        )
    for a, b in ratios:
        step = ratio_spread(timings[a].step_wall_s, timings[b].step_wall_s)
        startup = ratio_spread(timings[a].startup_s, timings[b].startup_s)
        whole = ratio_spread(timings[a].wall_short_s, timings[b].wall_short_s)
        lines.append(
            f"time({a}) / time({b}): s/step {step.text()}, start-up {startup.text()}, "
            f"whole {first.short}-step run {whole.text()}"
        )
    return "\n".join(lines)


def step_description(solver: Any) -> dict[str, Any]:
    """What one search step of ``solver`` computes, as comparable plain values (for checking two builds agree).

    Solver class and settings (steps, eps, noise type, trainable and zeroed noise layers, schedule, ...), the
    loss's terms and weights, the optimizer factory and its arguments, the downscale operator, the generator.
    """
    import dataclasses
    import functools

    optimizer = solver.optimizer
    if isinstance(optimizer, functools.partial):
        optimizer_text = (
            getattr(optimizer.func, "__qualname__", repr(optimizer.func)),
            tuple(getattr(a, "__qualname__", repr(a)) for a in optimizer.args),
            dict(sorted(optimizer.keywords.items())),
        )
    else:
        optimizer_text = (repr(optimizer), (), {})
    downscale = solver.downscale
    return {
        "solver": type(solver).__qualname__,
        "settings": dataclasses.asdict(solver.settings),
        "loss": (type(solver.loss).__qualname__, dict(solver.loss.weights), solver.loss.eps),
        "optimizer": optimizer_text,
        "downscale": getattr(downscale, "__qualname__", None) or repr(downscale),
        "generator": type(solver.generator).__qualname__,
    }

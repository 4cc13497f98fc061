"""``batch_size=auto``: the number of inputs per search that gives the most inputs per second here.

Candidates are 1, 2, 4, ... inputs per search (each with the run's duplicates). Each is timed with a few
real solver steps on random targets of the run's input size, on the run's device and precision; the
probe stops at the first out-of-memory error, at ``limit``, or at the first size that is not at least
``min_gain`` faster per input than the best so far, and the fastest size wins. On a GPU throughput should
grow until the device is full (not measured here: no GPU was available). On a CPU batching gains little
and timings move with the allocator's state: for the 1024 px fast path on a 2-core CPU the benchmark
measured 47 inputs/min at batch 1 and 56 at batch 2, while the probe inside a run, with the heap shaped
by the run's earlier work, measured batch 2 slower and kept batch 1.

Batch composition does not change the search itself: every sample starts from its own seed and is
judged on its own (:class:`pulse.solvers.pulse.PulseSolver`), so the chosen size changes speed and float
rounding only.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)


@dataclass
class BatchTrial:
    """One probed size (inputs per search); ``seconds_per_step`` is ``None`` when it ran out of memory."""

    batch: int
    seconds_per_step: float | None

    @property
    def inputs_per_second(self) -> float | None:
        return None if self.seconds_per_step is None else self.batch / self.seconds_per_step


# Allocation failures reported as plain RuntimeErrors: the caching allocator's "out of memory", the CPU
# allocator's, and the status codes cuDNN and cuBLAS return when their own workspace allocation fails.
_OOM_MESSAGES = (
    "out of memory",
    "can't allocate memory",
    "cudnn_status_alloc_failed",
    "cudnn_status_not_enough_workspace",
    "cublas_status_alloc_failed",
)


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocation failure (CUDA, cuDNN, cuBLAS or the CPU allocator) rather than a bug.

    Follows ``__cause__``/``__context__``: compilers and Lightning re-raise the allocator's error wrapped.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (torch.cuda.OutOfMemoryError, MemoryError)):
            return True
        message = str(current).lower()
        if isinstance(current, RuntimeError) and any(text in message for text in _OOM_MESSAGES):
            return True
        current = current.__cause__ or current.__context__
    return False


def _release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def choose_batch_size(
    time_step: Callable[[int], float], limit: int, min_gain: float = 0.05
) -> tuple[int, list[BatchTrial]]:
    """The fastest of 1, 2, 4, ... <= ``limit`` inputs per search, and every trial made.

    Args:
        time_step: seconds per solver step at a given number of inputs; may raise out-of-memory errors
            (:func:`is_out_of_memory`), which end the probe. Other errors propagate.
        limit: the largest size tried.
        min_gain: a size must give this much more inputs per second than the best so far to keep doubling.
    """
    if limit < 1:
        raise ValueError(f"the batch-size limit must be >= 1, got {limit}")
    trials: list[BatchTrial] = []
    best: BatchTrial | None = None
    batch = 1
    while batch <= limit:
        try:
            seconds = time_step(batch)
        except Exception as error:
            if not is_out_of_memory(error):
                raise
            trials.append(BatchTrial(batch, None))
            break
        trial = BatchTrial(batch, seconds)
        trials.append(trial)
        if best is not None and trial.inputs_per_second < best.inputs_per_second * (1 + min_gain):
            best = trial if trial.inputs_per_second > best.inputs_per_second else best
            break
        best = trial
        batch *= 2
    if trials[-1].seconds_per_step is None:
        _release_memory()  # here, after the except block, nothing holds the failed step's tensors any more
    if best is None:
        raise RuntimeError("batch_size=auto: one input per search already runs out of memory on this device")
    return best.batch, trials


class _ProbeDone(Exception):
    """Raised from the solver's callback once enough steps were timed."""


def solver_step_timer(
    solver: Any,
    lr_side: int,
    device: torch.device,
    steps: int = 3,
    warmup: int = 2,
    context: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
) -> Callable[[int], float]:
    """``time_step`` for :func:`choose_batch_size`: the median of ``steps`` real steps after ``warmup``.

    Args:
        solver: a :class:`pulse.solvers.pulse.PulseSolver` or :class:`pulse.solvers.ilo.ILOSolver` whose generator is on
            ``device``; the search is cut short after ``warmup + steps`` steps.
        lr_side: side of the random ``[batch, C, lr_side, lr_side]`` targets (the run's input size; ``C`` the
            generator's channels).
        context: entered around each search (the run's precision, e.g. Lightning's autocast context).
    """
    duplicates = int(getattr(solver.settings, "duplicates", 1))
    channels = int(getattr(solver.generator, "channels", 3))

    def time_step(batch: int) -> float:
        targets = torch.rand(batch, channels, lr_side, lr_side, generator=torch.Generator().manual_seed(batch))
        stamps = [time.perf_counter()]

        def stamp(info: Any) -> None:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            stamps.append(time.perf_counter())
            if len(stamps) > warmup + steps:
                raise _ProbeDone

        try:
            with context(), torch.enable_grad():
                solver.solve(targets, seeds=list(range(batch * duplicates)), callback=stamp)
        except _ProbeDone:
            pass
        durations = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
        timed = durations[warmup:] or durations
        return statistics.median(timed)

    return time_step


def describe(chosen: int, trials: list[BatchTrial]) -> dict[str, Any]:
    """JSON-ready record of a probe (written to ``batch_size.json`` in the run folder)."""
    return {
        "chosen": chosen,
        "trials": [
            {"batch": t.batch, "seconds_per_step": t.seconds_per_step, "inputs_per_second": t.inputs_per_second}
            for t in trials
        ],
    }

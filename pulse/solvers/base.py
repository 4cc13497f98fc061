"""The contract between a solver and the runner (:mod:`pulse.runner`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch

if TYPE_CHECKING:
    from pulse.solvers.pulse import SearchResult, StepInfo

SOLVER_MEMBERS = ("generator", "settings", "solve")


@runtime_checkable
class Solver(Protocol):
    """What the runner needs of a solver.

    Attributes:
        generator: the ``torch.nn.Module`` the solver runs (a generator, or a feed-forward model); the runner
            registers it so Lightning moves it to the run's device.
        settings: an object with ``duplicates`` (samples per input) and ``seed`` (the run's base seed).

    Optional members the runner uses when present: ``check_input_size(height, width)`` (raise ``ValueError``
    saying why inputs of that size cannot be solved) and ``total_steps`` (for the progress bar; default
    ``settings.steps``).
    """

    generator: torch.nn.Module

    def solve(
        self,
        lr_images: torch.Tensor,
        seeds: Sequence[int] | None = None,
        callback: Callable[[StepInfo], None] | None = None,
        frames_every: int = 0,
    ) -> SearchResult:
        """``lr_images`` ``[N, 3, h, w]`` in [0, 1] -> ``settings.duplicates`` samples per input (input-major)."""
        ...


def check_solver(solver: object) -> Solver:
    """Fail early, naming what is missing, when a configured object is not a solver."""
    missing = [name for name in SOLVER_MEMBERS if not hasattr(solver, name)]
    if missing:
        raise TypeError(
            f"{type(solver).__name__} is not a pulse solver: missing {', '.join(missing)}. "
            "See pulse.solvers.base.Solver for the contract."
        )
    return solver  # type: ignore[return-value]

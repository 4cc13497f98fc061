"""The PULSE latent search: find generator outputs that downscale to the given low-resolution images.

Lightning-free and Hydra-free: build a :class:`PulseSolver` from a generator, a loss, an optimizer
factory and a downscaling factory, then call :meth:`PulseSolver.solve` on a batch of inputs. Every
sample (input x duplicate) is its own search inside one batched optimisation: it has its own seed, its
own best step and its own success flag, and a sample whose loss turns NaN/inf is stopped and reported
without disturbing the others.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from pulse.downscale import BicubicDownscale, integer_factor
from pulse.generators.base import (
    Generator,
    check_generator,
    generator_channels,
    generator_output_range,
    module_device,
    to_unit,
)
from pulse.losses import LossInputs, PulseLoss
from pulse.optim import SphericalOptimizer, schedule

log = logging.getLogger(__name__)

NOISE_TYPES = ("zero", "fixed", "trainable")


@dataclass
class SearchSettings:
    """Hyperparameters of one search; defaults are the official PULSE code's.

    Attributes:
        steps: optimisation steps.
        eps: downscale-error target (MSE on [0, 1] images); the paper used 1e-3, the code 2e-3.
        duplicates: independent searches (different random starts) per input.
        noise_type: ``zero`` (no noise), ``fixed`` (random, frozen) or ``trainable``.
        num_trainable_noise_layers: the first this many noise layers are optimised (``trainable``).
        bad_noise_layers: noise layers forced to zero, or ``"auto"``: the generator's
            ``default_bad_noise_layers`` (the official code's ``[17]`` for the 1024 px StyleGAN, none
            elsewhere); resolved by :class:`PulseSolver`.
        tile_latent: search one latent vector shared by all style layers.
        schedule: learning-rate schedule name (see :func:`pulse.optim.schedule`).
        seed: base seed; each sample's start is drawn from its own seed derived from it.
        early_stop_patience: 0 (default) searches every sample for all ``steps``. ``k > 0`` freezes a
            sample once it has reached eps and its loss has not dropped by more than ``early_stop_rtol``
            (relative) for ``k`` steps; the batch stops when every sample is frozen or stopped.
        early_stop_rtol: relative loss decrease that counts as progress for ``early_stop_patience``.
    """

    steps: int = 100
    eps: float = 2e-3
    duplicates: int = 1
    noise_type: str = "trainable"
    num_trainable_noise_layers: int = 5
    bad_noise_layers: Sequence[int] | str = "auto"
    tile_latent: bool = False
    schedule: str = "linear1cycledrop"
    seed: int = 0
    early_stop_patience: int = 0
    early_stop_rtol: float = 1e-3

    def __post_init__(self) -> None:
        if self.noise_type not in NOISE_TYPES:
            raise ValueError(f"unknown noise_type {self.noise_type!r}; valid: {list(NOISE_TYPES)}")
        if self.steps < 1 or self.duplicates < 1:
            raise ValueError(f"steps and duplicates must be >= 1, got {self.steps} and {self.duplicates}")
        schedule(self.schedule, self.steps)  # fail now, naming the valid schedules
        if isinstance(self.bad_noise_layers, str):
            if self.bad_noise_layers != "auto":
                raise ValueError(
                    f"bad_noise_layers must be a list of layer indices or 'auto', got {self.bad_noise_layers!r}"
                )
        else:
            self.bad_noise_layers = tuple(int(i) for i in self.bad_noise_layers)
        if self.early_stop_patience < 0 or self.early_stop_rtol < 0:
            raise ValueError(
                f"early_stop_patience and early_stop_rtol must be >= 0 (0 patience: off), "
                f"got {self.early_stop_patience} and {self.early_stop_rtol}"
            )


class StepInfo:
    """What a progress callback sees after a step; values are means over the still-active samples.

    The numbers live on the search's device and are copied to the host only when read, so a
    callback that looks at them every few steps does not stall a GPU on every step.
    """

    def __init__(
        self,
        step: int,
        steps: int,
        total: torch.Tensor,
        terms: dict[str, torch.Tensor],
        error: torch.Tensor,
        active: torch.Tensor,
        first_at_eps: torch.Tensor,
    ) -> None:
        self.step, self.steps, self.samples = step, steps, len(active)
        self._total, self._terms, self._error = total.detach(), terms, error
        self._active, self._first_at_eps = active.clone(), first_at_eps.clone()

    def _mean(self, values: torch.Tensor) -> float:
        weights = self._active.to(values.dtype)
        count = weights.sum()
        return (torch.where(self._active, values.detach(), 0).sum() / count).item() if count else math.nan

    @property
    def loss(self) -> float:
        return self._mean(self._total)

    @property
    def terms(self) -> dict[str, float]:
        return {name: self._mean(value) for name, value in self._terms.items()}

    @property
    def downscale_error(self) -> float:
        return self._mean(self._error)

    @property
    def at_eps(self) -> int:
        """Samples that have reached eps at some step so far."""
        return int((self._first_at_eps >= 0).sum().item())

    @property
    def active(self) -> int:
        return int(self._active.sum().item())


@dataclass
class SearchResult:
    """Per-sample outcome of a search; sample ``s`` came from input ``input_index[s]``.

    Attributes:
        hr: ``[S, 3, R, R]`` best image per sample (lowest total loss), clamped to [0, 1], on CPU.
        lr: ``[S, 3, h, w]`` the downscaling of ``hr``.
        downscale_error: ``[S]`` MSE between ``lr`` and the input (the paper's criterion).
        success: ``[S]`` whether ``downscale_error <= eps``.
        best_step: ``[S]`` step (0-based) that produced ``hr``; -1 if none was finite.
        first_step_at_eps: ``[S]`` first step whose downscale error reached eps; -1 if never.
        best_loss: ``[S]`` total loss at ``best_step``.
        terms: ``{name: [S]}`` each loss term at ``best_step``.
        status: per sample, ``"ok"`` or why it was stopped.
        input_index, duplicate_index: ``[S]`` provenance of each sample.
        seeds: per-sample seeds used for the random start.
        seconds: wall time of the whole batch.
        history: per step, the mean loss and number of samples at eps.
        frames: ``[T, S, 3, f, f]`` intermediate images when recorded, else ``None``.
        latent: ``[S, L or 1, D]`` the search variable at ``best_step`` (before ``to_style``), on CPU.
        noise: the noise maps at ``best_step``, one ``[S, *shape]`` per noise layer, on CPU.
        stopped_step: ``[S]`` step at which a sample was stopped for a non-finite loss; -1 if never.
        step_seconds: wall seconds of each step the search ran, on the host clock; ``None`` off the CPU,
            where reading the clock per step would need a device synchronisation the loop avoids.
    """

    hr: torch.Tensor
    lr: torch.Tensor
    downscale_error: torch.Tensor
    success: torch.Tensor
    best_step: torch.Tensor
    first_step_at_eps: torch.Tensor
    best_loss: torch.Tensor
    terms: dict[str, torch.Tensor]
    status: list[str]
    input_index: torch.Tensor
    duplicate_index: torch.Tensor
    seeds: list[int]
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    frames: torch.Tensor | None = None
    latent: torch.Tensor | None = None
    noise: list[torch.Tensor] | None = None
    stopped_step: torch.Tensor | None = None
    step_seconds: list[float] | None = None


def sample_seed(base_seed: int, *keys: int) -> int:
    """A well-mixed 63-bit seed for one sample, independent of which batch it lands in."""
    return int(np.random.SeedSequence([base_seed % 2**32, *keys]).generate_state(2, np.uint64)[0] >> 1)


def _thumbnail(images: torch.Tensor, size: int) -> torch.Tensor:
    """``[B, 3, R, R] -> [B, 3, min(R, size), ...]`` clamped to [0, 1]."""
    if images.shape[-1] > size:
        images = torch.nn.functional.interpolate(images.float(), size=(size, size), mode="area")
    return images.clamp(0, 1)


_module_device = module_device  # the name other modules import


class BestTracker:
    """Per-sample bookkeeping of a search, all on the device: best step, first step at eps, NaN stops.

    Args:
        samples: number of samples ``S``.
        resolution: image side ``R``.
        latent: ``[S, rows, D]`` the search variable (its best value is kept).
        noise: the noise maps (best values of the trainable ones are kept).
        eps: the downscale-error target.
    """

    def __init__(
        self,
        samples: int,
        resolution: int,
        latent: torch.Tensor,
        noise: Sequence[torch.Tensor],
        eps: float,
        device: torch.device,
        channels: int = 3,
    ) -> None:
        self.eps = eps
        self.best_loss = torch.full((samples,), math.inf, device=device)
        self.best_step = torch.full((samples,), -1, dtype=torch.long, device=device)
        self.first_at_eps = torch.full((samples,), -1, dtype=torch.long, device=device)
        self.stopped_at = torch.full((samples,), -1, dtype=torch.long, device=device)
        self.best_hr = torch.zeros(samples, channels, resolution, resolution, device=device)
        self.best_terms: dict[str, torch.Tensor] = {}
        self.best_latent = latent.detach().clone()
        self.best_noise = [n.detach().clone() for n in noise]
        self.active = torch.ones(samples, dtype=torch.bool, device=device)
        self.mean_losses: list[torch.Tensor] = []
        self.at_eps_counts: list[torch.Tensor] = []

    def resume_from(self, result: SearchResult) -> None:
        """Continue the bookkeeping of an earlier search (its best samples, history and stops)."""
        device = self.best_loss.device
        self.best_loss = result.best_loss.to(device)
        self.best_step = result.best_step.to(device)
        self.first_at_eps = result.first_step_at_eps.to(device)
        self.best_hr = result.hr.to(device)
        self.best_terms = {name: value.to(device) for name, value in result.terms.items()}
        if result.stopped_step is not None:
            self.stopped_at = result.stopped_step.to(device)
            self.active = self.stopped_at < 0
        self.mean_losses = [torch.tensor(h["loss"], device=device) for h in result.history]
        self.at_eps_counts = [torch.tensor(h["at_eps"], device=device) for h in result.history]

    @torch.no_grad()
    def update(
        self,
        step: int,
        total: torch.Tensor,
        terms: dict[str, torch.Tensor],
        hr: torch.Tensor,
        lr_gen: torch.Tensor,
        reference: torch.Tensor,
        latent: torch.Tensor,
        noise: Sequence[torch.Tensor],
    ) -> torch.Tensor:
        """Record one evaluated step (before the optimizer moves); returns the downscale errors ``[S]``."""
        error = (lr_gen - reference).pow(2).mean(dim=(1, 2, 3))
        finite = torch.isfinite(total) & torch.isfinite(error)
        self.stopped_at = torch.where(self.active & ~finite, step, self.stopped_at)
        self.active &= finite
        improved = self.active & (total < self.best_loss)
        self.best_loss = torch.where(improved, total, self.best_loss)
        self.best_step = torch.where(improved, step, self.best_step)
        self.best_hr = torch.where(improved.view(-1, 1, 1, 1), hr.detach(), self.best_hr)
        self.best_latent = torch.where(improved.view(-1, 1, 1), latent.detach(), self.best_latent)
        for layer, maps in enumerate(noise):
            if maps.requires_grad:
                keep = improved.view(-1, *([1] * (maps.ndim - 1)))
                self.best_noise[layer] = torch.where(keep, maps.detach(), self.best_noise[layer])
        for name, value in terms.items():
            kept = self.best_terms.get(name, torch.full_like(value, math.nan))
            self.best_terms[name] = torch.where(improved, value.detach(), kept)
        reached = self.active & (error <= self.eps) & (self.first_at_eps < 0)
        self.first_at_eps = torch.where(reached, step, self.first_at_eps)
        self.mean_losses.append(torch.where(self.active, total, 0).sum() / self.active.to(total.dtype).sum())
        self.at_eps_counts.append((self.first_at_eps >= 0).sum())
        return error

    def backward(self, total: torch.Tensor, variables: Sequence[torch.Tensor]) -> None:
        """Backpropagate the active samples' losses; stopped samples get zero gradients (not NaN).

        Autocast is off during the backward (Lightning's mixed precision wraps the whole step in it): the
        backward of each operation then runs in the dtype its forward used, as torch's AMP recipe intends,
        instead of recasting float32 parts of the forward (loss, styles, statistics) to bf16/fp16.
        """
        with torch.autocast(device_type=total.device.type, enabled=False):
            torch.where(self.active, total, torch.zeros_like(total)).sum().backward()
        with torch.no_grad():
            for variable in variables:
                if variable.grad is not None:
                    keep = self.active.view(-1, *([1] * (variable.ndim - 1)))
                    variable.grad.copy_(torch.where(keep, variable.grad, 0))

    @torch.no_grad()
    def result(
        self, downscale: nn.Module, reference: torch.Tensor, frames: list[torch.Tensor], **provenance: Any
    ) -> SearchResult:
        """The :class:`SearchResult`, judged on the returned (clamped) images."""
        hr_out = self.best_hr.clamp(0, 1)
        with torch.autocast(device_type=hr_out.device.type, enabled=False):  # judged in float32, like the search
            lr_out = downscale(hr_out.float())
        error = (lr_out - reference).pow(2).mean(dim=(1, 2, 3))
        error = torch.where(self.best_step >= 0, error, torch.full_like(error, math.nan))
        status = [f"stopped: non-finite loss at step {k}" if k >= 0 else "ok" for k in self.stopped_at.tolist()]
        losses = torch.stack(self.mean_losses).tolist() if self.mean_losses else []
        counts = torch.stack(self.at_eps_counts).tolist() if self.at_eps_counts else []
        return SearchResult(
            hr=hr_out.cpu(),
            lr=lr_out.cpu(),
            downscale_error=error.cpu(),
            success=(error <= self.eps).cpu(),
            best_step=self.best_step.cpu(),
            first_step_at_eps=self.first_at_eps.cpu(),
            best_loss=self.best_loss.cpu(),
            terms={name: value.cpu() for name, value in self.best_terms.items()},
            status=status,
            history=[
                {"step": i, "loss": loss, "at_eps": int(count)}
                for i, (loss, count) in enumerate(zip(losses, counts, strict=True))
            ],
            frames=torch.stack(frames) if frames else None,
            latent=self.best_latent.cpu(),
            noise=[n.cpu() for n in self.best_noise],
            stopped_step=self.stopped_at.cpu(),
            **provenance,
        )


class PlateauStop:
    """Per-sample early stop, on the device: freezes samples that reached eps and stopped improving.

    A sample's reference loss is reset whenever its loss drops below ``(1 - rtol)`` times the
    reference; after ``patience`` steps without such a drop, and once it has reached eps, it is frozen
    for good: :meth:`hold` undoes the optimizer's move on its rows (zeroing its gradient would not be
    enough, Adam's momentum would keep moving it). Frozen samples are still evaluated (the batch keeps
    its shape, so no host sync is needed), and their loss stays constant.
    """

    def __init__(self, samples: int, patience: int, rtol: float, device: torch.device) -> None:
        self.patience, self.rtol = patience, rtol
        self.reference = torch.full((samples,), math.inf, device=device)
        self.since = torch.zeros(samples, dtype=torch.long, device=device)
        self.frozen = torch.zeros(samples, dtype=torch.bool, device=device)

    @torch.no_grad()
    def update(self, total: torch.Tensor, at_eps: torch.Tensor) -> None:
        """``total``: ``[S]`` this step's losses; ``at_eps``: ``[S]`` whether each sample has reached eps."""
        # The first finite loss always counts as progress (inf - rtol * inf would be NaN).
        threshold = self.reference - self.rtol * self.reference.abs()
        progress = (total < threshold) | (torch.isinf(self.reference) & torch.isfinite(total))
        self.reference = torch.where(progress, total, self.reference)
        self.since = torch.where(progress, 0, self.since + 1)
        self.frozen |= at_eps & (self.since >= self.patience)

    @torch.no_grad()
    def hold(self, before: Sequence[torch.Tensor], variables: Sequence[torch.Tensor]) -> None:
        """Put the frozen samples' rows of ``variables`` (``[S, ...]`` each) back to ``before``."""
        for old, variable in zip(before, variables, strict=True):
            keep = self.frozen.view(-1, *([1] * (variable.ndim - 1)))
            variable.copy_(torch.where(keep, old, variable))


def measure_fp32(
    downscale: nn.Module,
    loss: PulseLoss,
    hr: torch.Tensor,
    reference: torch.Tensor,
    style: torch.Tensor,
    eps: float,
    groups: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Downscale ``hr`` ``[S, 3, R, R]`` and evaluate the loss in float32, even inside mixed-precision autocast.

    The generator may run in bf16/fp16 (``trainer.precision=bf16-mixed``), but the downscale error is
    compared with eps ~ 1e-3, below bf16's resolution (8 bits of mantissa), so this part never is.

    Returns:
        ``(hr, lr_gen, total, terms)`` with ``hr`` and ``style`` cast to float32, ``total`` ``[S]``.
    """
    with torch.autocast(device_type=hr.device.type, enabled=False):
        hr = hr.float()
        lr_gen = downscale(hr)
        total, terms = loss(LossInputs(lr_gen, reference, style.float(), hr, eps, groups))
    return hr, lr_gen, total, terms


class PulseSolver:
    """Batched PULSE search.

    Args:
        generator: a :class:`pulse.generators.base.Generator` (frozen).
        loss: per-sample loss, e.g. ``PulseLoss({"l2": 100, "geocross": 0.05})``.
        optimizer: factory called as ``optimizer(params=[...])``; default spherical Adam, lr 0.4.
        downscale: factory ``factor -> nn.Module``; default the paper's bicubic.
        settings: :class:`SearchSettings`.
    """

    def __init__(
        self,
        generator: Generator,
        loss: PulseLoss | None = None,
        optimizer: Callable[[list[torch.Tensor]], torch.optim.Optimizer] | None = None,
        downscale: Callable[[int], nn.Module] = BicubicDownscale,
        settings: SearchSettings | None = None,
    ) -> None:
        self.generator = check_generator(generator)
        self.settings = settings or SearchSettings()
        if self.settings.bad_noise_layers == "auto":
            default = tuple(getattr(self.generator, "default_bad_noise_layers", ()))
            self.settings = replace(self.settings, bad_noise_layers=default)
        self.loss = loss if loss is not None else PulseLoss({"l2": 100.0, "geocross": 0.05}, self.settings.eps)
        self.optimizer = optimizer or partial(SphericalOptimizer, torch.optim.Adam, lr=0.4)
        self.downscale = downscale
        layers = len(self.generator.noise_shapes)
        missing = [i for i in self.settings.bad_noise_layers if i >= layers]
        if layers and missing:  # e.g. an explicit [17] on StyleGAN2 (maps 0-16)
            log.warning(
                "bad_noise_layers %s name no noise map of this generator (it has %d: 0-%d); they are ignored",
                missing, layers, layers - 1,
            )  # fmt: skip

    @classmethod
    def from_config(
        cls,
        generator: Generator,
        loss: PulseLoss | None = None,
        optimizer: Callable[[list[torch.Tensor]], torch.optim.Optimizer] | None = None,
        downscale: Callable[[int], nn.Module] = BicubicDownscale,
        **settings: Any,
    ) -> PulseSolver:
        """The solver of ``configs/solver/pulse.yaml``: ``settings`` are :class:`SearchSettings` fields, flat."""
        return cls(generator, loss, optimizer, downscale, SearchSettings(**settings))

    def _check_inputs(self, lr_images: torch.Tensor) -> int:
        channels = generator_channels(self.generator)
        if lr_images.ndim != 4 or lr_images.shape[1] != channels:
            raise ValueError(
                f"expected low-resolution images [N, {channels}, h, w] (the generator makes {channels}-channel "
                f"images), got shape {tuple(lr_images.shape)}"
            )
        height, width = lr_images.shape[-2:]
        if height != width:
            raise ValueError(
                f"non-square input {height}x{width}: the generator makes square images; "
                "crop or pad the input to a square first"
            )
        if not torch.isfinite(lr_images).all():
            raise ValueError("input images contain NaN or inf values")
        return integer_factor(self.generator.resolution, height)

    def check_input_size(self, height: int, width: int) -> None:
        """Raise a ``ValueError`` saying why ``[h, w]`` inputs cannot be searched; return if they can.

        Checks what :meth:`solve` would find out only mid-run: a square size that divides the
        generator's output, and a downscale option that builds for that factor and maps the
        generator's ``[1, 3, R, R]`` to ``[1, 3, h, w]`` (gray and inpainting keep the size, so they
        take only ``h == R``). Runs the operator once, on the CPU, per call.
        """
        if height != width:
            raise ValueError(f"non-square input {width}x{height}: the generator makes square images")
        resolution = self.generator.resolution
        channels = generator_channels(self.generator)
        factor = integer_factor(resolution, height)
        try:
            with torch.no_grad():
                lr = self.downscale(factor)(torch.zeros(1, channels, resolution, resolution))
        except (ValueError, RuntimeError, NotImplementedError) as error:
            raise ValueError(f"the downscale option cannot reduce {resolution} px by {factor}: {error}") from None
        if tuple(lr.shape) != (1, channels, height, width):
            raise ValueError(
                f"the downscale option maps {resolution} px to {list(lr.shape)}, not to the input's {height}x{width}"
            )

    def _initial_variables(
        self, seeds: Sequence[int], device: torch.device
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Random starts: latent ``[S, L or 1, D]`` and noise maps, each sample from its own seed."""
        s = self.settings
        gen = self.generator
        rows = 1 if s.tile_latent else gen.num_latents
        latents, noises = [], []
        for seed in seeds:
            rng = torch.Generator().manual_seed(seed)
            latents.append(torch.randn(rows, gen.latent_dim, generator=rng))
            noises.append([torch.randn(shape, generator=rng) for shape in gen.noise_shapes])
        latent = torch.stack(latents).to(device).requires_grad_(True)
        noise, trainable = [], []
        for layer in range(len(gen.noise_shapes)):
            maps = torch.stack([sample_noise[layer] for sample_noise in noises]).to(device)
            if s.noise_type == "zero" or layer in s.bad_noise_layers:
                maps.zero_()
            elif s.noise_type == "trainable" and layer < s.num_trainable_noise_layers:
                maps.requires_grad_(True)
                trainable.append(maps)
            noise.append(maps)
        return latent, noise, trainable

    def solve(
        self,
        lr_images: torch.Tensor,
        seeds: Sequence[int] | None = None,
        callback: Callable[[StepInfo], None] | None = None,
        frames_every: int = 0,
        frame_size: int = 128,
    ) -> SearchResult:
        """Search for high-resolution explanations of ``lr_images``.

        Args:
            lr_images: ``[N, 3, h, w]`` in [0, 1]; ``h`` must divide the generator's resolution.
            seeds: one seed per sample (``N * duplicates``, input-major); derived from
                ``settings.seed`` when omitted.
            callback: called with a :class:`StepInfo` after every step (progress bars, logging).
            frames_every: record the current images every this many steps (0: never), shrunk to
                at most ``frame_size`` px, for animations of the search.

        Returns:
            A :class:`SearchResult` with ``S = N * duplicates`` samples.
        """
        s = self.settings
        gen = self.generator
        factor = self._check_inputs(lr_images)
        device = _module_device(gen)
        downscale = self.downscale(factor).to(device)
        num_inputs = lr_images.shape[0]
        input_index = torch.arange(num_inputs).repeat_interleave(s.duplicates)
        duplicate_index = torch.arange(s.duplicates).repeat(num_inputs)
        samples = len(input_index)
        if seeds is None:
            seeds = [
                sample_seed(s.seed, i, d) for i, d in zip(input_index.tolist(), duplicate_index.tolist(), strict=True)
            ]
        if len(seeds) != samples:
            raise ValueError(f"got {len(seeds)} seeds for {samples} samples")
        reference = lr_images.to(device=device, dtype=torch.float32)[input_index.to(device)]
        groups = input_index.to(device)

        latent, noise, trainable = self._initial_variables(seeds, device)
        optimizer = self.optimizer(params=[latent, *trainable])
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule(s.schedule, s.steps))
        eps = getattr(self.loss, "eps", s.eps)

        tracker = BestTracker(samples, gen.resolution, latent, noise, s.eps, device, generator_channels(gen))
        output_range = generator_output_range(gen)
        plateau = (
            PlateauStop(samples, s.early_stop_patience, s.early_stop_rtol, device) if s.early_stop_patience else None
        )
        frames: list[torch.Tensor] = []
        start = time.perf_counter()
        # Per-step wall time on the CPU only: there the clock is the step's end; on a GPU it would only say
        # when the kernels were queued (a synchronisation per step would slow the search to measure it).
        stamps: list[float] | None = [start] if device.type == "cpu" else None

        # No host-device synchronisation inside the loop: all bookkeeping is tensor arithmetic on the
        # device, and only the callback (when it reads a value) and the periodic all-stopped check sync.
        for step in range(s.steps):
            optimizer.zero_grad(set_to_none=True)
            rows = latent.expand(-1, gen.num_latents, -1) if s.tile_latent else latent
            style = gen.to_style(rows)
            hr = to_unit(gen.synthesize(style, noise), output_range)
            hr, lr_gen, total, terms = measure_fp32(downscale, self.loss, hr, reference, style, eps, groups)
            if frames_every and step % frames_every == 0:
                frames.append(_thumbnail(hr.detach(), frame_size).cpu())
            error = tracker.update(step, total, terms, hr, lr_gen, reference, latent, noise)

            if plateau is not None:
                plateau.update(total.detach(), tracker.first_at_eps >= 0)
            running = tracker.active if plateau is None else tracker.active & ~plateau.frozen
            if step % 10 == 9 and not running.any():
                break
            tracker.backward(total, [latent, *trainable])
            before = [v.detach().clone() for v in (latent, *trainable)] if plateau is not None else []
            optimizer.step()
            if plateau is not None:
                plateau.hold(before, [latent, *trainable])
            scheduler.step()
            if stamps is not None:
                stamps.append(time.perf_counter())
            if callback is not None:
                callback(StepInfo(step, s.steps, total, terms, error, tracker.active, tracker.first_at_eps))

        return tracker.result(
            downscale,
            reference,
            input_index=input_index,
            duplicate_index=duplicate_index,
            seeds=list(seeds),
            seconds=time.perf_counter() - start,
            frames=frames,
            step_seconds=None if stamps is None else [b - a for a, b in zip(stamps[:-1], stamps[1:], strict=True)],
        )


def super_resolve(
    generator: Generator,
    lr_images: torch.Tensor,
    settings: SearchSettings | None = None,
    loss: PulseLoss | None = None,
    **solver_kwargs: Any,
) -> SearchResult:
    """One-call convenience: ``PulseSolver(generator, loss, settings=settings).solve(lr_images)``."""
    return PulseSolver(generator, loss, settings=settings, **solver_kwargs).solve(lr_images)

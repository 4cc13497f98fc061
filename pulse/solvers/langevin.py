"""Posterior sampling of the search latent by Langevin dynamics (ULA, or MALA with an exact accept/reject).

Target, for a low-resolution input ``y`` in [0, 1] and the configured ``downscale`` operator ``D``::

    p(z, n | y)  ∝  N(z; 0, I) · N(n; 0, I) · exp(-||D(G(z, n)) - y||² / (2 σ²))

with ``z`` the search latent (``[rows, latent_dim]`` per sample, the generator's own input distribution:
see :class:`LangevinSolver`), ``n`` the trainable noise maps (if any), ``G`` the generator's image in
[0, 1] and ``σ = sigma`` the likelihood's noise level in [0, 1] pixel units (the sum runs over every
low-resolution pixel and channel). With ``U = -log p`` (up to a constant) one step is

    x' = x - h ∇U(x) + sqrt(2 h) ξ,   ξ ~ N(0, I)

taken as it is (ULA, biased by O(h)) or accepted with probability
``min(1, exp(U(x) - U(x') + log q(x | x') - log q(x' | x)))``, ``q(x' | x) = N(x'; x - h ∇U(x), 2 h I)``
(MALA: the chain's stationary law is the posterior exactly, for any fixed ``h``).

The step ``h`` (latent units squared) is tuned during burn-in, per input, towards the acceptance
probability ``target_accept`` (``step_schedule=adapt``; the probability is computed in ULA too, as a gauge
of its discretisation error), then frozen so the chain after burn-in is a time-homogeneous Markov chain.
``constant`` keeps ``step_size``; ``decay`` uses ``step_size (1 + t / burn_in) ** -step_decay`` throughout.

``samples`` draws per input come from ``chains`` chains per input (default one draw per chain), run as one
batch: after ``burn_in`` steps a draw is kept every ``thin`` steps. Every draw is a result row like a PULSE
duplicate. The chains' post-burn-in traces (``U`` and the first latent coordinates) give split R-hat and
ESS (:mod:`pulse.metrics.mcmc`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from pulse.downscale import BicubicDownscale
from pulse.generators.base import Generator, check_generator
from pulse.losses import PulseLoss
from pulse.optim import SphericalOptimizer
from pulse.solvers.pulse import (
    NOISE_TYPES,
    PulseSolver,
    SearchResult,
    SearchSettings,
    StepInfo,
    _module_device,
    sample_seed,
)

STEP_SCHEDULES = ("adapt", "constant", "decay")


@dataclass
class LangevinSettings:
    """Settings of the sampler (see the module docstring for what each controls).

    Attributes:
        samples: draws per input (result rows per input).
        chains: chains per input; ``None``: ``samples`` (one draw per chain). Must divide ``samples``.
        sigma: likelihood noise level, [0, 1] pixel units (``> 0``).
        mala: Metropolis-adjust every step (exact); otherwise unadjusted Langevin.
        step_size: the (initial) step ``h``, latent units squared.
        step_schedule: ``adapt`` (tune h to ``target_accept`` during burn-in), ``constant`` or ``decay``.
        target_accept: acceptance probability ``adapt`` aims for (0.574: optimal for MALA in high dimension).
        step_decay: exponent of the ``decay`` schedule.
        burn_in: steps before the first draw may be kept.
        thin: steps between kept draws of a chain (and from the end of burn-in to the first draw).
        warm_start: start each chain from its own PULSE search (``pulse`` settings) instead of a prior draw.
        eps: downscale-error target, only to fill ``success`` as for PULSE.
        noise_type, num_trainable_noise_layers, bad_noise_layers, tile_latent: as in
            :class:`pulse.solvers.pulse.SearchSettings`; trainable noise maps are sampled with an N(0, I) prior.
        seed: base seed (chains start from per-sample seeds; the step noise from a seed of the batch's seeds).
        trace_dims: latent coordinates traced (beside ``U``) for R-hat and ESS.
    """

    samples: int = 8
    chains: int | None = None
    sigma: float = 0.045
    mala: bool = False
    step_size: float = 1e-3
    step_schedule: str = "adapt"
    target_accept: float = 0.574
    step_decay: float = 0.55
    burn_in: int = 80
    thin: int = 20
    warm_start: bool = False
    eps: float = 2e-3
    noise_type: str = "trainable"
    num_trainable_noise_layers: int = 5
    bad_noise_layers: Sequence[int] | str = "auto"
    tile_latent: bool = False
    seed: int = 0
    trace_dims: int = 3

    def __post_init__(self) -> None:
        if self.chains is None:
            self.chains = self.samples
        if self.samples < 1 or self.chains < 1 or self.samples % self.chains:
            raise ValueError(
                f"samples ({self.samples}) must be a positive multiple of chains ({self.chains}): "
                "each chain gives samples / chains draws"
            )
        if not 0 < self.sigma <= 1:
            raise ValueError(f"sigma is a noise level in [0, 1] pixel units and must be in (0, 1], got {self.sigma}")
        if not self.step_size > 0:
            raise ValueError(f"step_size must be > 0, got {self.step_size}")
        if self.step_schedule not in STEP_SCHEDULES:
            raise ValueError(f"unknown step_schedule {self.step_schedule!r}; valid: {list(STEP_SCHEDULES)}")
        if not 0 < self.target_accept < 1:
            raise ValueError(f"target_accept must be in (0, 1), got {self.target_accept}")
        if self.burn_in < 0 or self.thin < 1:
            raise ValueError(f"burn_in must be >= 0 and thin >= 1, got {self.burn_in} and {self.thin}")
        if self.noise_type not in NOISE_TYPES:
            raise ValueError(f"unknown noise_type {self.noise_type!r}; valid: {list(NOISE_TYPES)}")

    @property
    def duplicates(self) -> int:
        """Result rows per input (the runner's name for samples)."""
        return self.samples

    @property
    def draws_per_chain(self) -> int:
        return self.samples // int(self.chains)

    @property
    def steps(self) -> int:
        """Langevin steps per chain: burn-in, then ``thin`` per kept draw."""
        return self.burn_in + self.thin * self.draws_per_chain


@dataclass
class PosteriorSamples(SearchResult):
    """A :class:`SearchResult` whose samples are posterior draws, with what the chains recorded.

    Attributes (beyond :class:`SearchResult`, whose ``best_step`` is the step a draw was taken at,
    ``best_loss`` its ``U`` and ``terms`` its ``prior`` and ``likelihood`` parts):
        chain_index: ``[S]`` the chain (0 .. N * chains - 1, input-major) each draw came from.
        trace: ``[T, N * chains, K]`` per post-burn-in step, ``U`` and ``K - 1`` latent coordinates.
        acceptance: ``[S]`` share of post-burn-in proposals accepted by the draw's chain (MALA), else NaN.
        step_size: ``[S]`` the step ``h`` of the draw's chain after burn-in.
        sampler: ``"mala"`` or ``"ula"``.
    """

    chain_index: torch.Tensor | None = None
    trace: torch.Tensor | None = None
    acceptance: torch.Tensor | None = None
    step_size: torch.Tensor | None = None
    sampler: str = "ula"


class LangevinSolver:
    """Langevin posterior sampler over the search latent (and trainable noise maps) of any pulse generator.

    The prior is N(0, I) on the search variable, which :meth:`Generator.to_style` maps to the generator's
    input: for the DCGAN default that *is* the generator's training distribution; for StyleGAN/StyleGAN2 it is
    PULSE's Gaussianised W+ approximation (each row an independent N(0, I) pushed through
    ``leaky_relu(z * std + mean, 0.2)``, the Gaussian fit of the mapping network's output; ``tile_latent``
    ties the rows, as the mapping network does); for your own generator, whatever ``to_style`` makes of N(0, I).

    Args:
        generator: a :class:`pulse.generators.base.Generator`.
        downscale: factory ``factor -> nn.Module`` (the likelihood's operator ``D``).
        settings: :class:`LangevinSettings`.
        search: the PULSE search used for ``warm_start`` (one per chain) and for the initial noise layout;
            built from ``settings`` when omitted.
    """

    def __init__(
        self,
        generator: Generator,
        downscale: Callable[[int], nn.Module] = BicubicDownscale,
        settings: LangevinSettings | None = None,
        search: PulseSolver | None = None,
    ) -> None:
        self.generator = check_generator(generator)
        self.settings = settings or LangevinSettings()
        self.downscale = downscale
        s = self.settings
        if search is None:
            search = PulseSolver(
                generator,
                downscale=downscale,
                settings=SearchSettings(
                    eps=s.eps,
                    noise_type=s.noise_type,
                    num_trainable_noise_layers=s.num_trainable_noise_layers,
                    bad_noise_layers=s.bad_noise_layers,
                    tile_latent=s.tile_latent,
                    seed=s.seed,
                ),
            )
        if search.settings.duplicates != s.chains:
            search.settings = _with_duplicates(search.settings, int(s.chains))
        self.search = search
        self.loss = search.loss if s.warm_start else None
        self.total_steps = s.steps + (search.settings.steps if s.warm_start else 0)

    @classmethod
    def from_config(
        cls,
        generator: Generator,
        loss: PulseLoss | None = None,
        optimizer: Callable[[list[torch.Tensor]], torch.optim.Optimizer] | None = None,
        downscale: Callable[[int], nn.Module] = BicubicDownscale,
        schedule: str = "linear1cycledrop",
        pulse: dict[str, Any] | None = None,
        **settings: Any,
    ) -> LangevinSolver:
        """The solver of ``configs/solver/langevin.yaml``: ``settings`` are :class:`LangevinSettings` fields;
        ``pulse`` holds :class:`SearchSettings` fields of the warm-start search, which uses ``loss``,
        ``optimizer`` and ``schedule`` of the run (and the noise settings above)."""
        sampler = LangevinSettings(**settings)
        search_settings = SearchSettings(
            **{
                "eps": sampler.eps,
                "noise_type": sampler.noise_type,
                "num_trainable_noise_layers": sampler.num_trainable_noise_layers,
                "bad_noise_layers": sampler.bad_noise_layers,
                "tile_latent": sampler.tile_latent,
                "seed": sampler.seed,
                "schedule": schedule,
                **(pulse or {}),
                "duplicates": int(sampler.chains),
            }
        )
        optimizer = optimizer or partial(SphericalOptimizer, torch.optim.Adam, lr=0.4)
        search = PulseSolver(generator, loss, optimizer, downscale, search_settings)
        return cls(generator, downscale, sampler, search)

    def check_input_size(self, height: int, width: int) -> None:
        """Why ``[h, w]`` inputs cannot be sampled, as :meth:`PulseSolver.check_input_size`."""
        self.search.check_input_size(height, width)

    # The two halves of U = -log p. Kept as methods so tests can show that a wrong one is caught.
    def prior_energy(self, variables: Sequence[torch.Tensor]) -> torch.Tensor:
        """``-log N(x; 0, I)`` up to a constant, per chain: ``sum ||x||² / 2`` over ``[B, ...]`` tensors -> ``[B]``."""
        return sum(v.pow(2).flatten(1).sum(1) for v in variables) / 2

    def likelihood_energy(self, lr_generated: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """``||D(G) - y||² / (2 σ²)`` per chain, summed over every LR pixel and channel: ``[B, 3, h, w] -> [B]``."""
        return (lr_generated - reference).pow(2).flatten(1).sum(1) / (2 * self.settings.sigma**2)

    def noise_scale(self, step: torch.Tensor) -> torch.Tensor:
        """The Langevin noise's standard deviation for step ``h``: ``sqrt(2 h)``."""
        return (2 * step).sqrt()

    def _energy(
        self,
        variables: list[torch.Tensor],
        noise: list[torch.Tensor],
        trainable_layers: list[int],
        reference: torch.Tensor,
        downscale: nn.Module,
    ) -> tuple[torch.Tensor, list[torch.Tensor], dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """``U`` ``[B]``, its gradients (zero where not finite), its terms, the image ``[B, 3, R, R]`` and its LR."""
        gen = self.generator
        variables = [v.detach().requires_grad_(True) for v in variables]
        latent, maps = variables[0], variables[1:]
        layers = list(noise)
        for layer, value in zip(trainable_layers, maps, strict=True):
            layers[layer] = value
        with torch.enable_grad():
            rows = latent.expand(-1, gen.num_latents, -1) if self.settings.tile_latent else latent
            hr = (gen.synthesize(gen.to_style(rows), layers) + 1.0) / 2.0
            with torch.autocast(device_type=hr.device.type, enabled=False):  # the likelihood in float32
                hr = hr.float()
                lr_generated = downscale(hr)
                prior = self.prior_energy(variables)
                likelihood = self.likelihood_energy(lr_generated, reference)
                total = prior + likelihood
            grads = torch.autograd.grad(torch.where(torch.isfinite(total), total, 0).sum(), variables)
        finite = torch.isfinite(total)
        grads = [torch.where(finite.view(-1, *[1] * (g.ndim - 1)), g, 0).nan_to_num(0.0) for g in grads]
        terms = {"prior": prior.detach(), "likelihood": likelihood.detach()}
        return total.detach(), grads, terms, hr.detach(), lr_generated.detach()

    def solve(
        self,
        lr_images: torch.Tensor,
        seeds: Sequence[int] | None = None,
        callback: Callable[[StepInfo], None] | None = None,
        frames_every: int = 0,
        frame_size: int = 128,
    ) -> PosteriorSamples:
        """Draw ``samples`` posterior samples per input.

        Args:
            lr_images: ``[N, 3, h, w]`` in [0, 1]; ``h`` must divide the generator's resolution.
            seeds: one per sample (``N * samples``, input-major); chain ``c`` of input ``i`` starts from
                seed ``i * samples + c``. Derived from ``settings.seed`` when omitted.
            callback: called with a :class:`StepInfo` after every step (``loss`` is the mean ``U``).
            frames_every: not recorded by the sampler (accepted for the runner's interface).

        Returns:
            :class:`PosteriorSamples` with ``S = N * samples`` draws; draw ``j`` of chain ``c`` is sample
            ``j * chains + c`` of its input.
        """
        s = self.settings
        gen = self.generator
        chains, draws = int(s.chains), s.draws_per_chain
        factor = self.search._check_inputs(lr_images)
        device = _module_device(gen)
        downscale = self.downscale(factor).to(device)
        num_inputs = lr_images.shape[0]
        if seeds is None:
            seeds = [sample_seed(s.seed, i, k) for i in range(num_inputs) for k in range(s.samples)]
        seeds = list(seeds)
        if len(seeds) != num_inputs * s.samples:
            raise ValueError(f"got {len(seeds)} seeds for {num_inputs * s.samples} samples")
        chain_seeds = [seeds[i * s.samples + c] for i in range(num_inputs) for c in range(chains)]
        chain_input = torch.arange(num_inputs, device=device).repeat_interleave(chains)  # [B]
        reference = lr_images.to(device=device, dtype=torch.float32)[chain_input]
        start = time.perf_counter()

        latent, noise, trainable = self.search._initial_variables(chain_seeds, device)
        trainable_layers = [i for i, maps in enumerate(noise) if maps.requires_grad]
        variables = [latent.detach(), *(t.detach() for t in trainable)]
        noise = [n.detach() for n in noise]
        if s.warm_start:
            found = self.search.solve(lr_images, seeds=chain_seeds, callback=callback)
            variables = [found.latent.to(device)] + [found.noise[i].to(device) for i in trainable_layers]
            noise = [
                found.noise[i].to(device) if i in trainable_layers else maps for i, maps in enumerate(noise)
            ]  # fixed maps stay those drawn from the seeds (the search kept them)

        rng = torch.Generator(device=device).manual_seed(sample_seed(s.seed, *[seed % 2**32 for seed in seeds[:64]]))
        energy, grads, terms, hr, lr_gen = self._energy(variables, noise, trainable_layers, reference, downscale)
        log_step = torch.full((num_inputs,), math.log(s.step_size), device=device)
        accepted = torch.zeros(len(chain_input), device=device)
        first_at_eps = torch.full((len(chain_input),), -1, dtype=torch.long, device=device)
        trace: list[torch.Tensor] = []
        kept: list[dict[str, Any]] = []
        offset = self.total_steps - s.steps  # warm-start steps already reported

        for step in range(s.steps):
            if s.step_schedule == "decay":
                h_input = log_step.exp() * (1 + step / max(s.burn_in, 1)) ** (-s.step_decay)
            else:
                h_input = log_step.exp()
            h = h_input[chain_input]  # [B]
            proposal = []
            for value, grad in zip(variables, grads, strict=True):
                shape = (-1, *[1] * (value.ndim - 1))
                xi = torch.randn(value.shape, generator=rng, device=device, dtype=value.dtype)
                proposal.append(value - h.view(shape) * grad + self.noise_scale(h).view(shape) * xi)
            new_energy, new_grads, new_terms, new_hr, new_lr = self._energy(
                proposal, noise, trainable_layers, reference, downscale
            )
            log_ratio = energy - new_energy
            for value, grad, moved, new_grad in zip(variables, grads, proposal, new_grads, strict=True):
                forward = (moved - value + h.view(-1, *[1] * (value.ndim - 1)) * grad).pow(2).flatten(1).sum(1)
                backward = (value - moved + h.view(-1, *[1] * (value.ndim - 1)) * new_grad).pow(2).flatten(1).sum(1)
                log_ratio = log_ratio + (forward - backward) / (4 * h)
            finite = torch.isfinite(new_energy) & torch.isfinite(log_ratio)
            accept_prob = torch.where(finite, log_ratio.clamp(max=0).exp(), 0.0)
            if s.mala:
                uniform = torch.rand(len(chain_input), generator=rng, device=device)
                accept = finite & (uniform < accept_prob)
            else:
                accept = finite  # ULA moves whenever the proposal is finite
            variables = [_where(accept, b, a) for a, b in zip(variables, proposal, strict=True)]
            grads = [_where(accept, b, a) for a, b in zip(grads, new_grads, strict=True)]
            energy = torch.where(accept, new_energy, energy)
            terms = {k: torch.where(accept, new_terms[k], v) for k, v in terms.items()}
            hr, lr_gen = _where(accept, new_hr, hr), _where(accept, new_lr, lr_gen)
            error = (lr_gen - reference).pow(2).flatten(1).mean(1)
            first_at_eps = torch.where((first_at_eps < 0) & (error <= s.eps), step + offset, first_at_eps)

            if step < s.burn_in:
                if s.step_schedule == "adapt":  # Robbins-Monro on log h, per input, decaying gain
                    mean_prob = torch.zeros(num_inputs, device=device).index_add_(0, chain_input, accept_prob)
                    gain = 2.0 / (1.0 + step) ** 0.6
                    log_step = log_step + gain * (mean_prob / chains - s.target_accept)
            else:
                accepted += accept.to(accepted.dtype)
                coords = variables[0].flatten(1)[:, : s.trace_dims]
                trace.append(torch.cat([energy[:, None], coords], dim=1).detach())
                since = step - s.burn_in + 1
                if since % s.thin == 0:
                    kept.append(
                        {
                            "step": step + offset,
                            "hr": hr.clamp(0, 1),
                            "energy": energy.clone(),
                            "terms": {k: v.clone() for k, v in terms.items()},
                            "latent": variables[0].clone(),
                            "noise": [_layer(variables, trainable_layers, noise, i).clone() for i in range(len(noise))],
                        }
                    )
            if callback is not None:
                active = torch.ones(len(chain_input), dtype=torch.bool, device=device)
                callback(StepInfo(step + offset, self.total_steps, energy, terms, error, active, first_at_eps))

        post_steps = max(s.steps - s.burn_in, 1)
        return self._result(
            kept,
            num_inputs,
            chains,
            draws,
            downscale,
            reference,
            seeds,
            first_at_eps,
            accepted / post_steps,
            h,
            torch.stack(trace) if trace else None,
            time.perf_counter() - start,
        )

    @torch.no_grad()
    def _result(
        self,
        kept: list[dict[str, Any]],
        num_inputs: int,
        chains: int,
        draws: int,
        downscale: nn.Module,
        reference: torch.Tensor,
        seeds: list[int],
        first_at_eps: torch.Tensor,
        acceptance: torch.Tensor,
        step_size: torch.Tensor,
        trace: torch.Tensor | None,
        seconds: float,
    ) -> PosteriorSamples:
        """Reorder the kept draws (draw-major per chain) into input-major samples and judge them."""
        s = self.settings
        # sample k of input i is draw k // chains of chain i * chains + k % chains
        order = [(k // chains, i * chains + k % chains) for i in range(num_inputs) for k in range(s.samples)]
        draw_of = torch.tensor([d for d, _ in order])
        chain_of = torch.tensor([c for _, c in order])

        def gather(key: str) -> torch.Tensor:
            stacked = torch.stack([entry[key] for entry in kept])  # [draws, B, ...]
            return stacked[draw_of, chain_of].cpu()

        hr = gather("hr")
        lr = downscale(hr.to(reference.device)).cpu()
        error = (lr - reference.cpu()[chain_of]).pow(2).flatten(1).mean(1)
        steps = torch.tensor([kept[d]["step"] for d in draw_of.tolist()])
        terms = {k: torch.stack([e["terms"][k] for e in kept])[draw_of, chain_of].cpu() for k in kept[0]["terms"]}
        noise = [
            torch.stack([e["noise"][i] for e in kept])[draw_of, chain_of].cpu() for i in range(len(kept[0]["noise"]))
        ]
        finite = torch.isfinite(gather("energy"))
        mala = s.mala
        return PosteriorSamples(
            hr=hr,
            lr=lr,
            downscale_error=error,
            success=error <= s.eps,
            best_step=steps,
            first_step_at_eps=first_at_eps.cpu()[chain_of],
            best_loss=gather("energy"),
            terms=terms,
            status=["ok" if f else "stopped: non-finite posterior energy" for f in finite.tolist()],
            input_index=torch.arange(num_inputs).repeat_interleave(s.samples),
            duplicate_index=torch.arange(s.samples).repeat(num_inputs),
            seeds=seeds,
            seconds=seconds,
            latent=gather("latent"),
            noise=noise,
            chain_index=chain_of,
            trace=trace.cpu() if trace is not None else None,
            acceptance=acceptance.cpu()[chain_of] if mala else torch.full((len(order),), math.nan),
            step_size=step_size.cpu()[chain_of],
            sampler="mala" if mala else "ula",
        )


def _where(mask: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """Per chain, ``new`` where ``mask`` ``[B]`` else ``old`` (``[B, ...]`` each)."""
    return torch.where(mask.view(-1, *[1] * (new.ndim - 1)), new, old)


def _layer(
    variables: list[torch.Tensor], trainable_layers: list[int], noise: list[torch.Tensor], i: int
) -> torch.Tensor:
    """Noise layer ``i``: the sampled variable when trainable, the fixed map otherwise."""
    return variables[1 + trainable_layers.index(i)] if i in trainable_layers else noise[i]


def _with_duplicates(settings: SearchSettings, duplicates: int) -> SearchSettings:
    from dataclasses import replace

    return replace(settings, duplicates=duplicates)

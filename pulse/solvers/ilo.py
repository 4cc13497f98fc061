"""Intermediate Layer Optimisation (ILO; Daras, Dean, Jalal, Dimakis, ICML 2021) after a PULSE search.

The latent search can only reach images in the generator's range. ILO cuts the generator after a
block ``b``, takes the features the current solution produces there, and optimises a deviation
``delta`` of those features (together with the latent rows the later blocks read), keeping ``delta``
inside an l1 ball so the result stays close to the range of the earlier layers. Doing so for
successive blocks (progressively deeper) extends the reachable set a little at a time.

The radius of the ball is relative: ``radius * ||features||_1`` per sample, so one number works for
layers of very different sizes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from pulse.generators.base import LayeredGenerator, generator_channels, generator_output_range, to_unit
from pulse.solvers.pulse import (
    BestTracker,
    PulseSolver,
    SearchResult,
    StepInfo,
    _module_device,
    _thumbnail,
    measure_fp32,
)


def project_l1_ball(values: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each sample of ``values [B, ...]`` onto ``{x : ||x||_1 <= radius[b]}``.

    The sort-based algorithm of Duchi et al. (ICML 2008): soft-threshold by the ``theta`` that makes
    the l1 norm equal the radius; samples already inside are returned unchanged. Computed in float32 at
    least, outside autocast, and returned in ``values``' dtype: in bf16 the running sum has 8 bits of
    mantissa, and the projected norm missed the radius by up to 1.6% on a 128x64x64 feature map.
    """
    dtype = values.dtype
    with torch.autocast(device_type=values.device.type, enabled=False):
        work = torch.promote_types(dtype, torch.float32)
        return _project_l1_ball(values.to(work), radius.to(work)).to(dtype)


def _project_l1_ball(values: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    flat = values.flatten(1)
    magnitude = flat.abs()
    inside = magnitude.sum(1) <= radius
    if bool(inside.all()):
        return values
    sorted_desc, _ = magnitude.sort(dim=1, descending=True)
    cumulative = sorted_desc.cumsum(1) - radius[:, None]
    index = torch.arange(1, flat.shape[1] + 1, device=flat.device, dtype=flat.dtype)
    support = sorted_desc * index > cumulative  # condition u_j > (sum_{i<=j} u_i - r) / j
    count = support.sum(1, keepdim=True).clamp(min=1)
    theta = (cumulative.gather(1, count - 1) / count.to(flat.dtype)).clamp(min=0)
    projected = flat.sign() * (magnitude - theta).clamp(min=0)
    return torch.where(inside[:, None], flat, projected).view_as(values)


@dataclass
class ILOSettings:
    """Settings of the intermediate-layer stages that follow the latent search.

    Attributes:
        blocks: cut points, in order; after the latent search, one stage per entry optimises the
            features entering block ``b`` (``1 <= b < num_blocks``).
        steps: optimisation steps per stage.
        lr: Adam learning rate for the feature deviation.
        radius: l1 radius of the deviation, as a fraction of the features' l1 norm (per sample);
            one value, or one per entry of ``blocks``.
    """

    blocks: Sequence[int] = (1, 2, 3)
    steps: int = 50
    lr: float = 0.05
    radius: float | Sequence[float] = 0.05

    def radius_for(self, stage: int) -> float:
        if isinstance(self.radius, int | float):
            return float(self.radius)
        radii = list(self.radius)
        if len(radii) != len(self.blocks):
            raise ValueError(f"ilo.radius has {len(radii)} values for {len(self.blocks)} blocks")
        return float(radii[stage])


class ILOSolver:
    """A PULSE search followed by progressive intermediate-layer optimisation.

    Exposes the same ``solve`` and ``settings`` as :class:`PulseSolver`, so the runner takes either.

    Args:
        base: the latent search (first stage); its generator must be a
            :class:`pulse.generators.base.LayeredGenerator`.
        ilo: the intermediate stages.
    """

    def __init__(self, base: PulseSolver, ilo: ILOSettings | None = None) -> None:
        self.base = base
        self.ilo = ilo or ILOSettings()
        generator = base.generator
        if not isinstance(generator, LayeredGenerator):
            raise TypeError(
                f"{type(generator).__name__} cannot be cut between blocks (no forward_blocks); "
                "solver=ilo needs a layered generator such as StyleGAN or the DCGAN default"
            )
        blocks = list(self.ilo.blocks)
        if blocks != sorted(set(blocks)):
            raise ValueError(f"ilo.blocks must increase strictly (progressive), got {blocks}")
        bad = [b for b in blocks if not 1 <= b < generator.num_blocks]
        if bad:
            raise ValueError(
                f"ilo.blocks {bad} out of range: {type(generator).__name__} has blocks 1..{generator.num_blocks - 1}"
            )
        self.generator = generator
        self.settings = base.settings
        self.loss = base.loss
        self.total_steps = base.settings.steps + len(self.ilo.blocks) * self.ilo.steps

    @classmethod
    def from_config(
        cls,
        generator: LayeredGenerator,
        ilo: dict[str, Any] | None = None,
        **search: Any,
    ) -> ILOSolver:
        """The solver of ``configs/solver/ilo.yaml``: ``ilo`` holds :class:`ILOSettings` fields, everything else
        (``loss``, ``optimizer``, ``downscale``, the :class:`SearchSettings` fields) builds the PULSE search it
        starts from, as :meth:`PulseSolver.from_config`."""
        return cls(PulseSolver.from_config(generator, **search), ILOSettings(**(ilo or {})))

    def check_input_size(self, height: int, width: int) -> None:
        """Why ``[h, w]`` inputs cannot be searched, as :meth:`PulseSolver.check_input_size`."""
        self.base.check_input_size(height, width)

    def solve(
        self,
        lr_images: torch.Tensor,
        seeds: Sequence[int] | None = None,
        callback: Callable[[StepInfo], None] | None = None,
        frames_every: int = 0,
        frame_size: int = 128,
    ) -> SearchResult:
        """The latent search, then one stage per cut point; returns the best sample over all stages."""
        start = time.perf_counter()
        first = self.base.solve(
            lr_images, seeds=seeds, callback=callback, frames_every=frames_every, frame_size=frame_size
        )
        if first.latent is None or first.noise is None:
            raise RuntimeError("the base solver returned no latents to continue from")
        generator = self.generator
        device = _module_device(generator)
        factor = generator.resolution // lr_images.shape[-1]
        downscale = self.base.downscale(factor).to(device)
        reference = lr_images.to(device=device, dtype=torch.float32)[first.input_index.to(device)]
        eps = getattr(self.loss, "eps", self.settings.eps)
        groups = first.input_index.to(device)

        latent = first.latent.to(device)
        if latent.shape[1] == 1 and generator.num_latents > 1:  # tiled search: untie the rows now
            latent = latent.expand(-1, generator.num_latents, -1).clone()
        noise = [n.to(device) for n in first.noise]
        tracker = BestTracker(
            len(first.seeds),
            generator.resolution,
            latent,
            noise,
            self.settings.eps,
            device,
            generator_channels(generator),
        )
        output_range = generator_output_range(generator)
        tracker.resume_from(first)
        frames = list(first.frames.unbind(0)) if first.frames is not None else []  # [S, 3, f, f] each

        step = self.settings.steps
        cut_block, cut_features = 0, None  # the solution so far, as features entering block `cut_block`
        for stage, block in enumerate(self.ilo.blocks):
            with torch.no_grad():
                style = generator.to_style(latent)
                # float32 even under mixed precision (bf16 features would make delta and its l1 ball bf16)
                features = generator.forward_blocks(cut_features, style, noise, cut_block, block).float()
            delta = torch.zeros_like(features, requires_grad=True)
            tail = slice(generator.block_rows(block).start, generator.num_latents)
            later_rows = latent[:, tail].clone().requires_grad_(True) if tail.start < tail.stop else None
            optimizers = [torch.optim.Adam([delta], lr=self.ilo.lr)]
            if later_rows is not None:
                optimizers.append(self.base.optimizer(params=[later_rows]))
            radius = self.ilo.radius_for(stage) * features.abs().flatten(1).sum(1)

            for _ in range(self.ilo.steps):
                for optimizer in optimizers:
                    optimizer.zero_grad(set_to_none=True)
                rows = latent if later_rows is None else torch.cat([latent[:, : tail.start], later_rows], dim=1)
                style = generator.to_style(rows)
                deep = generator.forward_blocks(features + delta, style, noise, block, generator.num_blocks)
                hr = to_unit(generator.features_to_image(deep), output_range)
                hr, lr_gen, total, terms = measure_fp32(downscale, self.loss, hr, reference, style, eps, groups)
                if frames_every and step % frames_every == 0:
                    frames.append(_thumbnail(hr.detach(), frame_size).cpu())
                error = tracker.update(step, total, terms, hr, lr_gen, reference, rows, noise)
                tracker.backward(total, [delta] + ([later_rows] if later_rows is not None else []))
                for optimizer in optimizers:
                    optimizer.step()
                with torch.no_grad():
                    delta.copy_(project_l1_ball(delta, radius))
                if callback is not None:
                    callback(
                        StepInfo(step, self.total_steps, total, terms, error, tracker.active, tracker.first_at_eps)
                    )
                step += 1
            with torch.no_grad():  # the next stage starts from this stage's final solution
                if later_rows is not None:
                    latent = torch.cat([latent[:, : tail.start], later_rows.detach()], dim=1)
                cut_block, cut_features = block, features + delta.detach()

        return tracker.result(
            downscale,
            reference,
            frames=frames,
            input_index=first.input_index,
            duplicate_index=first.duplicate_index,
            seeds=first.seeds,
            seconds=time.perf_counter() - start,
        )

"""The contract between a frozen image generator and the latent search.

The solver optimises a latent ``z`` of shape ``[batch, num_latents, latent_dim]`` on the sphere
(each ``[latent_dim]`` row keeps its norm) plus optional noise maps, and asks the generator for
images. Any ``torch.nn.Module`` that provides the members below plugs into :mod:`pulse.solvers.pulse`;
configs select one with ``_target_: my_pkg.MyGenerator``.

What a generator makes is declared by three optional attributes, read with defaults (so a generator
written before they existed keeps working, as an RGB face-agnostic one):

- ``channels`` (default 3): image channels ``C``; 1 for heightmaps, X-ray, microscopy, ...
- ``output_range`` (default ``(-1, 1)``): the ``(low, high)`` values of :meth:`Generator.synthesize`;
  :func:`to_unit` maps them linearly to the [0, 1] images that downscale operators, losses, metrics and
  saved files use (one function, so no module hard-codes ``(x + 1) / 2``).
- ``domain`` (default ``"unknown"``): what the images show; ``"faces"`` turns on the face metrics
  (identity, skin tone), any other text (``"terrain"``, ``"microscopy"``) leaves them null with a reason.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Generator(Protocol):
    """A frozen generator searched by PULSE.

    Attributes:
        resolution: output image side length ``R`` (images are ``[batch, C, R, R]``).
        num_latents: number of latent rows searched per sample (18 style layers at 1024 px
            for StyleGAN, 1 for a plain DCGAN).
        latent_dim: size of one latent row (512 for StyleGAN, 100 for the DCGAN default).
        noise_shapes: per-sample shapes of the noise inputs, one per noise layer (e.g. ``(1, 4, 4)``);
            empty for generators without noise inputs.
    """

    resolution: int
    num_latents: int
    latent_dim: int
    noise_shapes: list[tuple[int, ...]]

    def to_style(self, latent: torch.Tensor) -> torch.Tensor:
        """Map the spherical search variable to the generator's input space.

        ``[batch, num_latents, latent_dim] -> [batch, num_latents, latent_dim]``. For StyleGAN this is
        the "gaussianised" inverse, ``leaky_relu(z * std + mean, 0.2)``; identity for a plain GAN.
        GEOCROSS is computed on the output of this map.
        """
        ...

    def synthesize(self, style: torch.Tensor, noise: list[torch.Tensor]) -> torch.Tensor:
        """Render images.

        Args:
            style: ``[batch, num_latents, latent_dim]`` (output of :meth:`to_style`).
            noise: one tensor per entry of ``noise_shapes``, each ``[batch, *shape]``.

        Returns:
            ``[batch, C, resolution, resolution]`` with values in about ``output_range`` (default
            ``[-1, 1]``; ``C`` is ``channels``, default 3).
        """
        ...


@runtime_checkable
class LayeredGenerator(Generator, Protocol):
    """A generator whose synthesis can be cut between blocks (for intermediate-layer optimisation).

    ``synthesize(style, noise) == features_to_image(forward_blocks(None, style, noise, 0, num_blocks))``.
    """

    num_blocks: int

    def block_rows(self, block: int) -> slice:
        """Rows of ``style`` that block ``block`` reads."""
        ...

    def forward_blocks(
        self, features: torch.Tensor | None, style: torch.Tensor, noise: list[torch.Tensor], start: int, stop: int
    ) -> torch.Tensor:
        """Run blocks ``start .. stop - 1`` on ``features`` (the output of block ``start - 1``; None at 0)."""
        ...

    def features_to_image(self, features: torch.Tensor) -> torch.Tensor:
        """The last block's features -> ``[B, C, R, R]`` in about ``output_range``."""
        ...


DEFAULT_CHANNELS = 3
DEFAULT_OUTPUT_RANGE = (-1.0, 1.0)
DEFAULT_DOMAIN = "unknown"
FACES = "faces"


def generator_channels(generator: object) -> int:
    """The generator's image channels ``C`` (its ``channels`` attribute; 3 when it declares none)."""
    return int(getattr(generator, "channels", DEFAULT_CHANNELS))


def generator_output_range(generator: object) -> tuple[float, float]:
    """``(low, high)`` of the generator's raw output (its ``output_range``; ``(-1, 1)`` when it declares none)."""
    low, high = getattr(generator, "output_range", DEFAULT_OUTPUT_RANGE)
    return float(low), float(high)


def generator_domain(generator: object) -> str:
    """What the generator's images show (its ``domain``; ``"unknown"`` when it declares none)."""
    return str(getattr(generator, "domain", DEFAULT_DOMAIN))


def to_unit(images: torch.Tensor, output_range: tuple[float, float]) -> torch.Tensor:
    """Raw generator output ``[B, C, R, R]`` on ``output_range`` -> the same on [0, 1] (linear, not clamped)."""
    low, high = output_range
    if (low, high) == (-1.0, 1.0):  # the common case, written as before so face results stay bit-identical
        return (images + 1.0) / 2.0
    return (images - low) / (high - low)


def check_generator(generator: object) -> Generator:
    """Fail early, naming what is missing, when an object does not follow :class:`Generator`."""
    missing = [
        name
        for name in ("resolution", "num_latents", "latent_dim", "noise_shapes", "to_style", "synthesize")
        if not hasattr(generator, name)
    ]
    if missing:
        raise TypeError(
            f"{type(generator).__name__} is not a pulse Generator: missing {', '.join(missing)}. "
            "See pulse.generators.base.Generator for the contract."
        )
    channels = generator_channels(generator)
    if channels < 1:
        raise TypeError(f"{type(generator).__name__}.channels must be >= 1, got {channels}")
    low, high = generator_output_range(generator)
    if not high > low:
        raise TypeError(
            f"{type(generator).__name__}.output_range must be (low, high) with high > low, got {(low, high)}"
        )
    return generator  # type: ignore[return-value]


def freeze(module: torch.nn.Module) -> torch.nn.Module:
    """Put a generator in eval mode with no parameter gradients (the search never trains weights)."""
    module.eval()
    for param in module.parameters():
        param.requires_grad_(False)
    return module


def module_device(module: object) -> torch.device:
    """Where a generator's tensors live: its first parameter or buffer (the fast StyleGAN has only buffers)."""
    if isinstance(module, torch.nn.Module):
        for tensor in (*module.parameters(), *module.buffers()):
            return tensor.device
    return torch.device("cpu")


@torch.no_grad()
def sample_images(generator: Generator, num: int, seed: int = 0, batch_size: int = 16) -> torch.Tensor:
    """Random images from a generator, ``[num, C, R, R]`` in [0, 1] on the CPU (mapped by :func:`to_unit`).

    Latents (``[num, num_latents, latent_dim]``, one N(0, I) draw shared by all rows, as the mapping
    network would produce) and noise maps come from a CPU generator seeded with ``seed``, so the
    images do not depend on the device.
    """
    rng = torch.Generator().manual_seed(seed)
    latent = torch.randn(num, 1, generator.latent_dim, generator=rng).expand(-1, generator.num_latents, -1)
    noise = [torch.randn(num, *shape, generator=rng) for shape in generator.noise_shapes]
    device = module_device(generator)
    images = []
    for start in range(0, num, batch_size):
        part = slice(start, start + batch_size)
        style = generator.to_style(latent[part].to(device))
        images.append(generator.synthesize(style, [n[part].to(device) for n in noise]).cpu())
    return to_unit(torch.cat(images), generator_output_range(generator)).clamp(0, 1)

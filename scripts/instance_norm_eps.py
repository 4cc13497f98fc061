"""How much the instance-norm epsilon moves a StyleGAN (v1) image: official PULSE's 1e-5 against NVIDIA's 1e-8.

Builds one seeded random network of the FFHQ layout (1024 px by default; every bias and noise strength drawn at
random, as in the check against NVIDIA's TensorFlow code), renders the same latents and noise with both epsilons
through the faithful port (float32 and float64) and the fast path (float32), and prints the largest differences.
Random weights, not the FFHQ ones: trained networks have other feature statistics.

    python scripts/instance_norm_eps.py                 # 1024 px, batch 1 (about a minute on 2 CPU cores)
    python scripts/instance_norm_eps.py --resolution 64 --json eps.json
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time

import torch

from pulse.generators.fast import accelerate
from pulse.generators.stylegan import (
    INSTANCE_NORM_EPS,
    NVIDIA_INSTANCE_NORM_EPS,
    EqualizedConv2d,
    EqualizedLinear,
    StyleGANGenerator,
)


def random_generator(resolution: int, seed: int, eps: float) -> StyleGANGenerator:
    """FFHQ-layout random weights (``synthetic``) with every bias, N(0, 0.2**2), and the constant input, N(0, 1), drawn.

    The reference init's constant input is all ones: spatially flat, so the first instance norm would see
    only the noise's variance and the epsilon would dominate there, unlike in any trained network.
    """
    generator = StyleGANGenerator.synthetic(
        resolution=resolution, fmap_base=8192, fmap_max=512, seed=seed, fit_samples=2000, instance_norm_eps=eps
    )
    rng = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in generator.synthesis.modules():
            if isinstance(module, (EqualizedConv2d, EqualizedLinear)):
                module.bias.copy_(torch.randn(module.bias.shape, generator=rng) * 0.2)
        constant = generator.synthesis.blocks["4x4"].const
        constant.copy_(torch.randn(constant.shape, generator=rng))
    return generator


def render(generator, latent: torch.Tensor, noise: list[torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return generator.synthesize(generator.to_style(latent), noise).double()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolution", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args()

    started = time.perf_counter()
    generators = {
        eps: random_generator(args.resolution, args.seed, eps) for eps in (INSTANCE_NORM_EPS, NVIDIA_INSTANCE_NORM_EPS)
    }
    reference = generators[INSTANCE_NORM_EPS]
    rng = torch.Generator().manual_seed(args.seed + 2)
    latent = torch.randn(args.batch, reference.num_latents, reference.latent_dim, generator=rng)
    latent = latent / latent.norm(dim=-1, keepdim=True) * math.sqrt(reference.latent_dim)
    noise = [torch.randn(args.batch, *shape, generator=rng) for shape in reference.noise_shapes]

    images = {}
    for eps, generator in generators.items():
        images["eager32", eps] = render(generator, latent, noise)
        images["fast32", eps] = render(accelerate(generator), latent, noise)
        images["eager64", eps] = render(copy.deepcopy(generator).double(), latent.double(), [n.double() for n in noise])

    def largest(a: torch.Tensor, b: torch.Tensor) -> float:
        return (a - b).abs().max().item()

    low, high = INSTANCE_NORM_EPS, NVIDIA_INSTANCE_NORM_EPS
    result = {
        "resolution": args.resolution,
        "batch": args.batch,
        "seed": args.seed,
        "image_range": [images["eager64", low].min().item(), images["eager64", low].max().item()],
        "eps_difference": {
            path: largest(images[path, low], images[path, high]) for path in ("eager64", "eager32", "fast32")
        },
        "fast_vs_eager_float32": {
            str(eps): largest(images["fast32", eps], images["eager32", eps]) for eps in (low, high)
        },
        "float32_vs_float64": {
            str(eps): largest(images["eager32", eps], images["eager64", eps]) for eps in (low, high)
        },
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(
        f"{args.resolution} px, random FFHQ-layout weights (seed {args.seed}), image range "
        f"[{result['image_range'][0]:.2f}, {result['image_range'][1]:.2f}]"
    )
    for path, value in result["eps_difference"].items():
        print(f"  eps 1e-5 vs 1e-8, {path}: largest pixel difference {value:.3g}")
    for eps in (low, high):
        print(
            f"  eps {eps:g}: fast vs eager (float32) {result['fast_vs_eager_float32'][str(eps)]:.3g}, "
            f"eager float32 vs float64 {result['float32_vs_float64'][str(eps)]:.3g}"
        )
    print(f"  ({result['seconds']} s)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()

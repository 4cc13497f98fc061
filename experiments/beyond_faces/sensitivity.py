"""How smooth is the terrain model in its noise map? The output change for small moves of the latent on the sphere.

    python experiments/beyond_faces/sensitivity.py   # writes experiments/beyond_faces/sensitivity.md

One white noise map ``z`` (seed 0) is moved to ``normalise(z + t * n) * 128`` for a second white map ``n`` and
relative sizes ``t``; for each, the RMS change of the output (unit scale) and of its x8 and x4 bicubic
downscalings is printed, beside the same for an independent sample (``t = inf``). A smooth map changes its output in
proportion to ``t``; where a 1-3% move already changes the output by a sizeable part of what a new sample does,
a gradient step of the search lands somewhere unrelated and the search cannot descend steadily.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pulse.downscale import BicubicDownscale
from pulse.generators.base import to_unit
from pulse.generators.terrain import TerrainGenerator

SIZES = (0.003, 0.01, 0.03, 0.1, 0.3)


def main() -> None:
    generator = TerrainGenerator()
    rng = torch.Generator().manual_seed(0)
    z = torch.randn(1, 1, 16384, generator=rng)
    n = torch.randn(1, 1, 16384, generator=rng)
    other = torch.randn(1, 1, 16384, generator=rng)
    radius = 16384**0.5
    moved = [(z + t * n) / (z + t * n).norm() * radius for t in SIZES]
    latents = torch.cat([z, *moved, other])
    with torch.no_grad():
        images = to_unit(generator.synthesize(latents, []), generator.output_range).clamp(0, 1)
    base = images[:1]
    lines = [
        "| move t | latent change (rms) | output change (rms, unit) | x4 LR change | x8 LR change |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    labels = [*(f"{t:g}" for t in SIZES), "new sample"]
    for label, latent, image in zip(labels, latents[1:], images[1:], strict=True):
        row = [label, f"{(latent - z[0]).pow(2).mean().sqrt():.4f}", f"{(image - base[0]).pow(2).mean().sqrt():.4f}"]
        for factor in (4, 8):
            down = BicubicDownscale(factor)
            row.append(f"{(down(image[None]) - down(base)).pow(2).mean().sqrt():.4f}")
        lines.append("| " + " | ".join(row) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    (Path(__file__).parent / "sensitivity.md").write_text(text)


if __name__ == "__main__":
    main()

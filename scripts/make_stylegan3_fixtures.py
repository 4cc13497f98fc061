"""Write the StyleGAN3 parity fixtures in tests/fixtures/stylegan3/ with NVIDIA's own stylegan3 code.

    python scripts/make_stylegan3_fixtures.py --stylegan3 /tmp/sg3ref [--out tests/fixtures/stylegan3]

``--stylegan3`` is an extracted NVlabs/stylegan3 checkout (e.g. ``git --git-dir=<mirror> archive HEAD | tar -x``).
Its code runs here, in this script only, on the CPU, where its custom ops fall back to their plain-torch
reference implementations. pulse never imports it.

For each of config T (16 px, 3x3 convolutions, separable Kaiser filters) and config R (32 px, 1x1 convolutions,
radial jinc downsampling filters, a small ``conv_clamp`` so clamping happens) it

1. builds a small ``training.networks_stylegan3.Generator`` (tiny channel counts, 2-layer mapping, the
   default 14 layers, margin and filter design) and a tiny StyleGAN2 discriminator (so the pickle has
   the ``G``, ``D``, ``G_ema``, ``augment_pipe``, ``training_set_kwargs`` entries of a training snapshot);
2. randomises every parameter and buffer NVIDIA's network reads: weights, biases, affine layers (the
   Fourier input's too, which NVIDIA initialises to zero), ``magnitude_ema``, ``w_avg``, the input's
   frequencies, phases and user ``transform``, and adds asymmetric noise to the designed low-pass
   filters (they are symmetric, so without it a flipped filter would go unnoticed);
3. pickles the snapshot dict as NVIDIA's training loop does (``pickle.dump``; persistence embeds the
   source code, which pulse's reader drops unread);
4. renders with NVIDIA's code: ``ws = G_ema.mapping(z, None)`` and ``G_ema.synthesis(ws)`` for seeded
   ``z``, plus random per-row ``ws`` (so every row matters), and stores them with the designed (pre-noise)
   filters in ``<name>_render.pt`` (plain tensors).

It also writes ``stylegan3_t16_conditional.pkl`` (a tiny class-conditional T network, ``c_dim=4``, not
rendered), which pulse must refuse, and ``stylegan3_designs.pt``: the layer hyperparameters and filters NVIDIA's
``SynthesisNetwork`` designs for configs T and R at 256, 512 and 1024 px (NVIDIA's released sizes; built with
NVIDIA's channel counts, only the design is kept), for checking pulse's own design without weights.
"""

from __future__ import annotations

import argparse
import copy
import pickle
import sys
import types
from pathlib import Path

import torch

CONFIGS = {
    # name: (resolution, generator kwargs)
    "stylegan3_t16": (16, dict(channel_base=256, channel_max=32, conv_kernel=3, use_radial_filters=False)),
    "stylegan3_r32": (
        32,
        dict(channel_base=512, channel_max=24, conv_kernel=1, use_radial_filters=True, conv_clamp=1.5),
    ),
}
Z_DIM = W_DIM = 32
NUM_SAMPLES = 3


def import_nvidia(repo: Path) -> types.SimpleNamespace:
    """NVIDIA's modules from an extracted stylegan3 checkout (with a ``pkg_resources`` shim; see pulse-facts)."""
    if "pkg_resources" not in sys.modules:
        from packaging.version import parse

        shim = types.ModuleType("pkg_resources")
        shim.parse_version = parse  # the only name stylegan3 uses
        sys.modules["pkg_resources"] = shim
    sys.path.insert(0, str(repo))
    import dnnlib
    from training import networks_stylegan2, networks_stylegan3

    return types.SimpleNamespace(dnnlib=dnnlib, sg2=networks_stylegan2, sg3=networks_stylegan3)


@torch.no_grad()
def randomise(generator: torch.nn.Module, rng: torch.Generator) -> dict[str, torch.Tensor]:
    """Redraw every tensor of ``generator`` in place; returns the designed filters before their noise."""

    def randn(shape: torch.Size) -> torch.Tensor:
        return torch.randn(shape, generator=rng)

    designed = {}
    for name, tensor in [*generator.named_parameters(), *generator.named_buffers()]:
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("up_filter", "down_filter"):
            designed[name] = tensor.clone()
            tensor.add_(randn(tensor.shape) * 0.1 * tensor.abs().max())
        elif leaf == "magnitude_ema":
            tensor.copy_(torch.rand([], generator=rng) * 1.5 + 0.5)
        elif leaf == "transform":
            angle = float(torch.rand([], generator=rng)) * 6.28
            c, s = torch.cos(torch.tensor(angle)), torch.sin(torch.tensor(angle))
            tx, ty = (torch.rand(2, generator=rng) - 0.5).tolist()
            tensor.copy_(torch.tensor([[c, s, tx], [-s, c, ty], [0.0, 0.0, 1.0]]))
        elif leaf == "freqs":
            tensor.mul_(1.0 + 0.2 * randn(tensor.shape))
        elif leaf == "phases":
            tensor.copy_(torch.rand(tensor.shape, generator=rng) - 0.5)
        elif name.endswith("input.affine.weight"):
            tensor.copy_(randn(tensor.shape) * 0.5)  # NVIDIA inits it to 0 (no learned transform)
        elif name.endswith("input.affine.bias"):
            tensor.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]) + 0.3 * randn(tensor.shape))
        elif leaf == "bias" and ".affine." in name:
            tensor.copy_(1.0 + 0.3 * randn(tensor.shape))
        elif leaf in ("bias", "w_avg"):
            tensor.copy_(0.3 * randn(tensor.shape) / (0.01 if name.startswith("mapping.fc") else 1.0))
        elif leaf == "weight":
            scale = 1 / 0.01 if name.startswith("mapping.fc") else 1.0
            tensor.copy_(randn(tensor.shape) * scale)
        else:
            raise RuntimeError(f"not randomised: {name}")
    return designed


def make(nvidia: types.SimpleNamespace, name: str, out: Path, seed: int) -> None:
    resolution, kwargs = CONFIGS[name]
    torch.manual_seed(seed)  # NVIDIA's constructors draw freqs/phases/weights from the global generator
    generator = nvidia.sg3.Generator(
        z_dim=Z_DIM,
        c_dim=0,
        w_dim=W_DIM,
        img_resolution=resolution,
        img_channels=3,
        mapping_kwargs=dict(num_layers=2),
        magnitude_ema_beta=0.999,
        **kwargs,
    ).eval()
    designed = randomise(generator, torch.Generator().manual_seed(seed))
    discriminator = nvidia.sg2.Discriminator(
        c_dim=0, img_resolution=resolution, img_channels=3, channel_base=64, channel_max=8
    ).eval()
    snapshot = dict(
        G=copy.deepcopy(generator).requires_grad_(False),
        D=discriminator.requires_grad_(False),
        G_ema=generator.requires_grad_(False),
        augment_pipe=None,
        training_set_kwargs=nvidia.dnnlib.EasyDict(resolution=resolution, use_labels=False, xflip=False),
    )
    with open(out / f"{name}.pkl", "wb") as handle:
        pickle.dump(snapshot, handle)

    rng = torch.Generator().manual_seed(seed + 1)
    z = torch.randn(NUM_SAMPLES, Z_DIM, generator=rng)
    with torch.no_grad():
        mapped = generator.mapping(z, None)
        images = generator.synthesis(mapped, noise_mode="const", force_fp32=True)
        mixed_ws = torch.randn(NUM_SAMPLES, generator.num_ws, W_DIM, generator=rng)
        mixed = generator.synthesis(mixed_ws, noise_mode="const", force_fp32=True)
    torch.save(
        {
            "z": z,
            "ws": mapped,
            "images": images,
            "mixed_ws": mixed_ws,
            "mixed_images": mixed,
            "designed_filters": designed,
        },
        out / f"{name}_render.pt",
    )
    print(f"{name}: {resolution} px, num_ws {generator.num_ws}, image range [{images.min():.3f}, {images.max():.3f}]")


def make_conditional(nvidia: types.SimpleNamespace, out: Path) -> None:
    torch.manual_seed(99)
    generator = nvidia.sg3.Generator(
        z_dim=8, c_dim=4, w_dim=8, img_resolution=16, img_channels=3, channel_base=64, channel_max=4
    ).eval()
    with open(out / "stylegan3_t16_conditional.pkl", "wb") as handle:
        pickle.dump(dict(G_ema=generator.requires_grad_(False)), handle)


def make_designs(nvidia: types.SimpleNamespace, out: Path) -> None:
    designs = {}
    for config, kwargs in (("T", dict(conv_kernel=3)), ("R", dict(conv_kernel=1, use_radial_filters=True))):
        base, cap = (32768, 512) if config == "T" else (65536, 1024)
        for resolution in (256, 512, 1024):
            torch.manual_seed(0)
            synthesis = nvidia.sg3.SynthesisNetwork(
                w_dim=8, img_resolution=resolution, img_channels=3, channel_base=base, channel_max=cap, **kwargs
            )
            layers = {}
            for name in synthesis.layer_names:
                layer = getattr(synthesis, name)
                layers[name] = {
                    "in_channels": layer.in_channels,
                    "padding": list(layer.padding),
                    "up": layer.up_factor,
                    "down": layer.down_factor,
                    "in_size": int(layer.in_size[0]),
                    "conv_kernel": layer.conv_kernel,
                    "up_filter": layer.up_filter,
                    "down_filter": layer.down_filter,
                }
            inp = synthesis.input
            designs[f"{config}{resolution}"] = {
                "layers": layers,
                "input": [inp.channels, int(inp.size[0]), float(inp.sampling_rate), float(inp.bandwidth)],
            }
            del synthesis
    torch.save(designs, out / "stylegan3_designs.pt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stylegan3", type=Path, required=True, help="extracted NVlabs/stylegan3 checkout")
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/stylegan3"))
    args = parser.parse_args()
    nvidia = import_nvidia(args.stylegan3.resolve())
    args.out.mkdir(parents=True, exist_ok=True)
    for seed, name in enumerate(CONFIGS):
        make(nvidia, name, args.out, seed)
    make_conditional(nvidia, args.out)
    make_designs(nvidia, args.out)


if __name__ == "__main__":
    main()

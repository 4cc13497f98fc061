"""Feed-forward baselines in the runner: ``solver=bicubic``, ``solver=realesrgan``, ``solver=restorer``.

A baseline does not search: one forward pass turns each low-resolution input ``[N, 3, h, w]`` into an image of the
run's output size ``R`` (the generator's resolution, which the data sources also use for the ground truth). Its
output then goes through the run's ``downscale`` operator, exactly like a PULSE sample, so ``downscale_error``
(MSE to the input) and ``success`` (error <= ``eps``) mean the same thing in every row of a table: a feed-forward
model is not made to be consistent with its input, and the table shows how far it is.

Scale factors: a network of scale ``s`` is applied repeatedly until its output is at least ``R`` px, then
resized to ``R`` (area averaging when the ratio is an integer, antialiased bicubic otherwise): x4 at x4; x2: x4 then
area / 2; x8: x4 twice (x16) then area / 2; x64 (16 -> 1024): x4 three times. A restoration network of scale 1
(GFPGAN, CodeFormer, ...) gets the input bicubic-upsampled to ``R`` first. Inputs whose side a network cannot take
(``multiple_of``) are reflect-padded and the output cropped.

The weights are loaded at the first :meth:`FeedForwardSolver.check_input_size` or solve, not when the solver is
built, so every config builds without a file; a missing or refused file then stops the run in one line before any
image is written. ``spandrel`` (the ``baselines`` extra) builds the networks from their state dicts.
"""

from __future__ import annotations

import os
import pickle
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pulse.downscale import BicubicDownscale, integer_factor
from pulse.solvers.pulse import SearchResult, StepInfo

__all__ = [
    "BaselineSettings",
    "FeedForwardSolver",
    "RestorerRefused",
    "UpscalerNet",
    "bicubic",
    "load_restorer",
    "realesrgan",
    "restorer",
    "upscale_to",
]

SPANDREL_HINT = "install the baselines extra (pip install spandrel==0.4.2)"


class RestorerRefused(RuntimeError):
    """A restorer file that is not loaded: unsafe, unreadable or of an architecture spandrel does not know.

    Not a ``ValueError``: the runner reads those from ``check_input_size`` as "this input size cannot be served"
    and would skip inputs instead of stopping the run.
    """


@dataclass
class BaselineSettings:
    """What the runner reads of a solver's settings; a baseline is deterministic, one sample per input."""

    seed: int = 0
    eps: float = 2e-3
    duplicates: int = 1
    steps: int = 1


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """``[N, C, s, s] -> [N, C, size, size]``: area when shrinking by an integer, bicubic otherwise."""
    side = images.shape[-1]
    if side == size:
        return images
    if side > size and side % size == 0:
        return F.interpolate(images, size=(size, size), mode="area")
    return F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False, antialias=side > size)


def upscale_to(
    network: Callable[[torch.Tensor], torch.Tensor] | None,
    scale: int,
    images: torch.Tensor,
    size: int,
    multiple: int = 1,
) -> torch.Tensor:
    """``images`` ``[N, 3, h, h]`` -> ``[N, 3, size, size]`` in [0, 1] through a network of upscale ``scale``.

    ``network=None`` is bicubic upsampling; ``scale=1`` upsamples bicubically to ``size`` and runs the network
    once; otherwise the network runs until the side reaches ``size`` and the result is resized to it (see the
    module docstring). ``multiple``: input sides the network needs, reached by reflect padding.
    """
    if network is None:
        return _resize(images, size).clamp(0, 1)
    if scale == 1:
        return _run_padded(network, _resize(images, size).clamp(0, 1), 1, multiple).clamp(0, 1)
    out = images
    while out.shape[-1] < size:
        out = _run_padded(network, out, scale, multiple).clamp(0, 1)
    return _resize(out, size).clamp(0, 1)


def _run_padded(network: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, scale: int, multiple: int):
    side = x.shape[-1]
    pad = -side % multiple
    if pad:  # reflect needs pad < side; replicate covers tiny inputs
        x = F.pad(x, (0, pad, 0, pad), mode="reflect" if pad < side else "replicate")
    out = network(x)
    return out[..., : side * scale, : side * scale] if pad else out


class UpscalerNet(nn.Module):
    """The module a baseline places on the run's device: an optional network plus an anchor buffer.

    ``loader`` (called once, at first use) returns ``(network, scale, multiple_of, minimum)`` (``minimum``: the
    smallest input side the network takes, e.g. 512 for GFPGAN); the anchor, a zero-size
    buffer, lets the solver know where Lightning put the module before the network exists.
    """

    def __init__(self, loader: Callable[[], tuple[nn.Module, int, int, int]] | None, resolution: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.loader = loader
        self.network: nn.Module | None = None
        self.scale, self.multiple, self.minimum = 1, 1, 1
        self.register_buffer("anchor", torch.zeros(0), persistent=False)

    def load(self) -> None:
        """Build the network (once) on the anchor's device."""
        if self.loader is not None and self.network is None:
            network, self.scale, self.multiple, self.minimum = self.loader()
            self.network = network.eval().requires_grad_(False).to(self.anchor.device)

    @torch.no_grad()
    def forward(self, lr_images: torch.Tensor) -> torch.Tensor:
        """``[N, 3, h, h]`` -> ``[N, 3, R, R]`` in [0, 1]."""
        self.load()
        return upscale_to(self.network, self.scale, lr_images, self.resolution, self.multiple)


class FeedForwardSolver:
    """A :class:`pulse.solvers.base.Solver` that upsamples in one pass and judges the result like PULSE.

    Args:
        net: the :class:`UpscalerNet` (the runner moves it to the run's device as ``generator``).
        downscale: ``factor -> nn.Module``, the run's operator; maps ``[N, 3, R, R]`` to the input size.
        settings: ``eps``, ``seed`` (duplicates is 1: the result is deterministic).
        name: for messages and ``repr``.
    """

    total_steps = 1

    def __init__(
        self, net: UpscalerNet, downscale: Callable[[int], nn.Module], settings: BaselineSettings, name: str
    ) -> None:
        self.generator = net
        self.downscale = downscale
        self.settings = settings
        self.name = name
        self._operators: dict[tuple[int, torch.device], nn.Module] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}, eps={self.settings.eps})"

    def _operator(self, factor: int, device: torch.device) -> nn.Module:
        key = (factor, device)
        if key not in self._operators:
            self._operators[key] = self.downscale(factor).to(device)
        return self._operators[key]

    def check_input_size(self, height: int, width: int) -> None:
        """Raise ``ValueError`` saying why ``[h, w]`` inputs cannot be served; loads the weights (errors: one line)."""
        if height != width:
            raise ValueError(f"non-square input {width}x{height}: the outputs are square")
        resolution = self.generator.resolution
        factor = integer_factor(resolution, height)
        self.generator.load()
        first_input = resolution if self.generator.scale == 1 else height  # a scale-1 network sees the output size
        if self.generator.network is not None and first_input < self.generator.minimum:
            raise ValueError(
                f"{self.name} takes inputs of at least {self.generator.minimum} px, it would get {first_input} px "
                f"(outputs are {resolution} px): use a generator with larger outputs"
            )
        try:
            with torch.no_grad():
                lr = self.downscale(factor)(torch.zeros(1, 3, resolution, resolution))
        except (ValueError, RuntimeError, NotImplementedError) as error:
            raise ValueError(f"the downscale option cannot reduce {resolution} px by {factor}: {error}") from None
        if tuple(lr.shape) != (1, 3, height, width):
            raise ValueError(f"the downscale option maps {resolution} px to {list(lr.shape)}, not to {height}x{width}")

    def solve(
        self,
        lr_images: torch.Tensor,
        seeds: Sequence[int] | None = None,
        callback: Callable[[StepInfo], None] | None = None,
        frames_every: int = 0,
    ) -> SearchResult:
        """``lr_images`` ``[N, 3, h, h]`` in [0, 1] -> one sample per input, judged by the run's downscale."""
        if lr_images.ndim != 4 or lr_images.shape[1] != 3 or lr_images.shape[-1] != lr_images.shape[-2]:
            raise ValueError(f"expected square low-resolution images [N, 3, h, h], got {tuple(lr_images.shape)}")
        if not torch.isfinite(lr_images).all():
            raise ValueError("input images contain NaN or inf values")
        net = self.generator
        factor = integer_factor(net.resolution, lr_images.shape[-1])
        device = net.anchor.device
        target = lr_images.to(device, torch.float32)
        start = time.perf_counter()
        with torch.no_grad():
            hr = net(target).float()
            # Judged in float32 outside autocast, like PULSE's success test (eps is below bf16's resolution).
            with torch.autocast(device.type, enabled=False):
                lr = self._operator(factor, device)(hr)
                error = (lr - target).pow(2).mean(dim=(1, 2, 3))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        count = lr_images.shape[0]
        success = error <= self.settings.eps
        first_at_eps = torch.where(success, 0, -1)
        if callback is not None:
            callback(StepInfo(0, 1, error, {}, error, torch.ones_like(success), first_at_eps))
        return SearchResult(
            hr=hr.cpu(),
            lr=lr.cpu(),
            downscale_error=error.cpu(),
            success=success.cpu(),
            best_step=torch.zeros(count, dtype=torch.long),
            first_step_at_eps=first_at_eps.cpu(),
            best_loss=error.cpu(),  # no loss is minimised; the row's loss is its downscale error
            terms={},
            status=["ok"] * count,
            input_index=torch.arange(count),
            duplicate_index=torch.zeros(count, dtype=torch.long),
            seeds=list(seeds) if seeds is not None else [self.settings.seed] * count,
            seconds=seconds,
        )


# --------------------------------------------------------------------------------------------------
# loading networks


def _spandrel() -> Any:
    try:
        import spandrel
    except ImportError:
        raise ImportError(f"feed-forward restorers need spandrel: {SPANDREL_HINT}") from None
    return spandrel


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.pth``/``.pt``/``.ckpt`` (``torch.load(weights_only=True)``) or ``.safetensors`` file."""
    if not path.is_file():
        raise RestorerRefused(f"no such restorer file: {path}")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise RestorerRefused(f"{path.name}: reading .safetensors needs the safetensors package") from None
        return load_file(str(path), device="cpu")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = " ".join(str(error).split())[:160]
        raise RestorerRefused(
            f"refused {path.name}: it pickles objects other than tensors and plain containers, which could run code "
            f"(torch.load weights_only=True: {reason}); nothing was run"
        ) from None
    except (RuntimeError, EOFError, OSError) as error:
        raise RestorerRefused(f"refused {path.name}: not a readable torch checkpoint ({error})") from None
    if not isinstance(state, dict):
        raise RestorerRefused(f"refused {path.name}: holds a {type(state).__name__}, not a state dict")
    return state


def load_restorer(path: str | os.PathLike[str]) -> tuple[nn.Module, int, int, int]:
    """A spandrel-supported image-to-image network from a weights file: ``(model, scale, multiple_of, minimum)``.

    Raises:
        RestorerRefused: the file is missing, has pickled code, or is not an architecture spandrel recognises;
            one line naming the file and the reason. Nothing from the file is executed.
    """
    path = Path(path).expanduser()
    state = _read_state_dict(path)
    spandrel = _spandrel()
    try:
        descriptor = spandrel.ModelLoader().load_from_state_dict(state)
    except spandrel.UnsupportedModelError:
        tensors = state.get("params_ema", state.get("params", state.get("state_dict", state)))
        keys = list(tensors)[:3] if isinstance(tensors, dict) else []
        raise RestorerRefused(
            f"refused {path.name}: spandrel {spandrel.__version__} recognises no architecture in it "
            f"({len(tensors) if isinstance(tensors, dict) else 0} entries, first keys {keys})"
        ) from None
    except (KeyError, ValueError, RuntimeError, TypeError) as error:
        raise RestorerRefused(f"refused {path.name}: spandrel could not build it ({error})") from None
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise RestorerRefused(f"refused {path.name}: {descriptor.architecture.name} is not an image-to-image model")
    if descriptor.input_channels != 3 or descriptor.output_channels != 3:
        raise RestorerRefused(
            f"refused {path.name}: {descriptor.architecture.name} maps {descriptor.input_channels} to "
            f"{descriptor.output_channels} channels; pulse runs RGB -> RGB"
        )
    requirements = descriptor.size_requirements
    multiple, minimum = max(1, int(requirements.multiple_of)), max(1, int(requirements.minimum))
    return descriptor.model, int(descriptor.scale), multiple, minimum


# Loaders are module-level functions bound with functools.partial, not closures, so a solver can be pickled
# (Lightning's ddp_spawn sends it to its worker processes).


def _load_realesrgan(weights: str | None) -> tuple[nn.Module, int, int, int]:
    from pulse.io.realesrgan import realesrgan_weights

    return load_restorer(weights if weights else realesrgan_weights())


def _load_user_restorer(path: str | None) -> tuple[nn.Module, int, int, int]:
    if not path:
        raise RestorerRefused("solver=restorer needs the weights file: add solver.path=/path/to/model.pth")
    return load_restorer(path)


def _build(
    loader: Callable[[], tuple[nn.Module, int, int, int]] | None,
    generator: Any,
    downscale: Callable[[int], nn.Module],
    eps: float,
    seed: int,
    name: str,
) -> FeedForwardSolver:
    net = UpscalerNet(loader, int(generator.resolution))
    return FeedForwardSolver(net, downscale, BaselineSettings(seed=seed, eps=eps), name)


# The factories of configs/solver/{bicubic,realesrgan,restorer}.yaml. They take the run's components like every
# solver factory (see pulse.solvers) and ignore those a forward pass has no use for; `steps` is accepted so
# experiment files that set solver.steps for the searches can sweep a baseline beside them.


def bicubic(
    generator: Any,
    downscale: Callable[[int], nn.Module] = BicubicDownscale,
    eps: float = 2e-3,
    seed: int = 0,
    steps: int | None = None,
    loss: Any = None,
    optimizer: Any = None,
    schedule: Any = None,
) -> FeedForwardSolver:
    """The paper's no-search baseline: bicubic upsampling (PyTorch's, a = -0.75) of the input to the output size."""
    return _build(None, generator, downscale, eps, seed, "bicubic")


def realesrgan(
    generator: Any,
    downscale: Callable[[int], nn.Module] = BicubicDownscale,
    eps: float = 2e-3,
    seed: int = 0,
    weights: str | None = None,
    steps: int | None = None,
    loss: Any = None,
    optimizer: Any = None,
    schedule: Any = None,
) -> FeedForwardSolver:
    """Real-ESRGAN x4plus (RRDBNet) from ``weights`` (default: what ``pulse-fetch realesrgan`` cached)."""
    return _build(partial(_load_realesrgan, weights), generator, downscale, eps, seed, "realesrgan")


def restorer(
    generator: Any,
    downscale: Callable[[int], nn.Module] = BicubicDownscale,
    eps: float = 2e-3,
    seed: int = 0,
    path: str | None = None,
    steps: int | None = None,
    loss: Any = None,
    optimizer: Any = None,
    schedule: Any = None,
) -> FeedForwardSolver:
    """Any spandrel-supported network a user brings (``solver.path=model.pth``); see :func:`load_restorer`."""
    name = f"restorer {Path(path).name if path else '(no path)'}"
    return _build(partial(_load_user_restorer, path), generator, downscale, eps, seed, name)

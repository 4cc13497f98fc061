"""Device placement and precision hazards that can be reproduced without a GPU (``meta`` device, fakes)."""

import torch
from torch import nn

from pulse.generators.base import module_device, sample_images


class BuffersOnly(nn.Module):
    """A generator like the fast StyleGAN: all its tensors are buffers, none a parameter."""

    resolution, num_latents, latent_dim, noise_shapes = 8, 2, 4, [(1, 8, 8)]

    def __init__(self, device: str) -> None:
        super().__init__()
        self.register_buffer("scale", torch.ones(4, device=device))
        self.seen: list[torch.device] = []

    def to_style(self, latent):
        return latent

    def synthesize(self, style, noise):
        self.seen += [style.device, *(n.device for n in noise)]
        return torch.zeros(style.shape[0], 3, 8, 8)


def test_sample_images_follow_a_buffers_only_generator_to_its_device():
    generator = BuffersOnly("meta")
    assert module_device(generator).type == "meta"
    images = sample_images(generator, 3, batch_size=2)
    assert images.shape == (3, 3, 8, 8)
    assert generator.seen and all(d.type == "meta" for d in generator.seen)  # not left on the CPU


def test_float16_precisions_are_refused_with_the_ones_that_work(tmp_path, dcgan):
    import pytest

    from pulse.data import GeneratedFaces
    from pulse.runner import run_search
    from pulse.solver import PulseSolver, SearchSettings

    problems = list(GeneratedFaces(dcgan, num=1, factors=[8]))
    solver = PulseSolver(dcgan, settings=SearchSettings(steps=1))
    for precision in ("16-mixed", "bf16-true"):
        with pytest.raises(ValueError, match=r"(?s)not supported.*subnormal in float16.*bf16-mixed.*32-true"):
            run_search(solver, problems, tmp_path, trainer={"precision": precision}, progress=False, metrics=[])
    assert not (tmp_path / "results.csv").exists()

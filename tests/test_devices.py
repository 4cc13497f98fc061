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
    from pulse.solvers.pulse import PulseSolver, SearchSettings

    problems = list(GeneratedFaces(dcgan, num=1, factors=[8]))
    solver = PulseSolver(dcgan, settings=SearchSettings(steps=1))
    for precision in ("16-mixed", "bf16-true"):
        with pytest.raises(ValueError, match=r"(?s)not supported.*subnormal in float16.*bf16-mixed.*32-true"):
            run_search(solver, problems, tmp_path, trainer={"precision": precision}, progress=False, metrics=[])
    assert not (tmp_path / "results.csv").exists()


# ------------------------------------------------------------------ no host traffic inside the search loop

_HOST_READS = {"item", "tolist", "__bool__", "__int__", "__float__", "cpu", "numpy"}
_FROM_HOST = {"tensor", "as_tensor"}
_FACTORIES = {"zeros", "ones", "full", "empty", "arange", "rand", "randn", "randint", "eye", "linspace"}


class HostTraffic(torch.overrides.TorchFunctionMode):
    """Records, while ``recording``, what would copy between host and device or wait for the device on a GPU:
    reading a tensor's value on the host, making a tensor from Python data, or a factory call without a
    ``device`` (made on the host, then moved). Adam's step counter lives on the host by design (skipped).
    """

    def __init__(self) -> None:
        super().__init__()
        self.recording = False
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        host = name in _HOST_READS or name in _FROM_HOST or (name in _FACTORIES and kwargs.get("device") is None)
        if self.recording and host:
            import traceback

            stack = traceback.extract_stack()[:-1]
            if not any("/torch/optim/" in frame.filename for frame in stack):
                self.calls.append(f"{name} at {stack[-1].filename.rsplit('/', 1)[-1]}:{stack[-1].lineno}")
        return func(*args, **kwargs)


def test_the_search_loop_makes_no_host_copies_after_its_first_step():
    # "No sync in the loop": constants (blur taps, JPEG offsets, inpainting masks) are buffers or cached
    # per device; steps 1 and 2 (after the first made any cache) must not read or build tensors on the host.
    from pulse.degradations import make_operator
    from pulse.generators.fast import accelerate
    from pulse.generators.stylegan import StyleGANGenerator
    from pulse.solvers.pulse import PulseSolver, SearchSettings

    small = StyleGANGenerator.synthetic(resolution=32, fmap_base=256, fmap_max=32, fit_samples=2000)
    for generator, operator, factor in [
        (accelerate(small), "bicubic", 4),
        (accelerate(small), "jpeg", 4),
        (small, "inpaint", 1),
        (small, "gaussian", 4),
    ]:
        solver = PulseSolver(
            generator, settings=SearchSettings(steps=4), downscale=lambda f, name=operator: make_operator(name, f)
        )
        traffic = HostTraffic()

        def watch(info, traffic=traffic):
            traffic.recording = 1 <= info.step + 1 <= 2  # from the start of step 1 to the end of step 2

        with traffic:
            solver.solve(torch.rand(2, 3, 32 // factor, 32 // factor), callback=watch)
        assert traffic.calls == [], (operator, traffic.calls)


def test_niqe_loss_builds_its_tables_once_per_device():
    from pulse.metrics.niqe import niqe_loss

    images = torch.rand(1, 3, 192, 192, requires_grad=True)
    niqe_loss(images).sum().backward()  # the first call builds the tables
    with HostTraffic() as traffic:
        traffic.recording = True
        niqe_loss(images).sum().backward()
    assert traffic.calls == []


def test_parallel_joblib_jobs_get_one_gpu_each():
    from run import spread_jobs_over_gpus

    gpu = {"accelerator": "gpu", "devices": 1}
    joblib = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    assert [spread_jobs_over_gpus(gpu, joblib, n, 4)["devices"] for n in range(6)] == [[0], [1], [2], [3], [0], [1]]
    assert spread_jobs_over_gpus(gpu, "hydra._internal.core_plugins.basic_launcher.BasicLauncher", 3, 4) == gpu
    assert spread_jobs_over_gpus(gpu, joblib, 3, 1) == gpu  # one GPU: nothing to spread
    assert spread_jobs_over_gpus({**gpu, "devices": [2]}, joblib, 3, 4)["devices"] == [2]  # explicit choice kept
    assert spread_jobs_over_gpus({"accelerator": "cpu", "devices": 1}, joblib, 3, 4)["devices"] == 1


def test_fast_path_picks_layout_and_chunking_for_the_device_it_runs_on():
    # run.py builds the fast copy on the CPU and Lightning moves it: the layout used to stay the CPU's.
    from pulse.generators import fast
    from pulse.generators.stylegan import StyleGANGenerator

    small = StyleGANGenerator.synthetic(resolution=32, fmap_base=256, fmap_max=32, fit_samples=2000)
    quick = fast.accelerate(small)
    kernels = lambda: [l.weight for l in quick.layers if l.weight.dim() == 4 and l.weight.shape[-1] == 3]  # noqa: E731
    assert quick.channels_last and all(k.is_contiguous(memory_format=torch.channels_last) for k in kernels())
    quick.to("meta")
    assert not quick.channels_last and all(k.is_contiguous() for k in kernels())
    quick.to_empty(device="cpu")  # (meta holds no values)
    assert quick.channels_last
    explicit = fast.accelerate(small, channels_last=False).to("meta").to_empty(device="cpu")
    assert not explicit.channels_last  # an explicit choice is kept
    big = torch.empty(8, 16, 1024, 1024, device="meta")
    assert len(fast._row_chunks(big)) <= 2 < len(fast._row_chunks(torch.empty(1, 16, 1024, 1024)))


def test_run_metrics_are_computed_on_the_search_device(tmp_path, dcgan):
    from pulse.data import GeneratedFaces
    from pulse.metrics import default_metrics
    from pulse.runner import run_search
    from pulse.solvers.pulse import PulseSolver, SearchSettings

    metrics = default_metrics(None)
    for metric in metrics:
        metric.device = torch.device("meta")  # anything but the run's device
    problems = list(GeneratedFaces(dcgan, num=1, factors=[8]))
    solver = PulseSolver(dcgan, settings=SearchSettings(steps=1))
    run_search(solver, problems, tmp_path, progress=False, metrics=metrics)
    assert [m.device.type for m in metrics] == ["cpu"] * len(metrics)  # the runner moved them to the search's device

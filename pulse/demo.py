"""``pulse-demo``: a local web page (Gradio) that restores an uploaded photo with a PULSE-family solver.

    pip install -e ".[demo,faces]"
    pulse-demo                       # http://127.0.0.1:7860, CPU, the embedded 64 px DCGAN
    pulse-demo --generator stylegan_ffhq --device cuda   # the official 1024 px StyleGAN (pulse-fetch ffhq)

The page takes a photo (upload, or one of the CelebA faces once ``pulse-fetch celeba`` has run), a scale, a
solver (every ``configs/solver/*.yaml``), the number of samples and of steps; a progress bar follows the search;
it shows the LR faces, every sample, the restored photo and the metrics. The pipeline is
:class:`pulse.restore.PhotoRestorer`; the solver is built from ``configs/`` as ``pulse-restore`` builds it.
Nothing is sent anywhere: the server listens on ``--host`` only, Gradio's analytics are off, no share link.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pulse.cli_restore import pick_device
from pulse.configured import CONFIG_DIR, build_solver, compose_config
from pulse.restore import PhotoRestorer, PhotoResult

DEMO_INSTALL = "pip install -e '.[demo]'"
EMBEDDED_PRIOR_NOTE = (
    "The embedded prior is a 64 px DCGAN trained on synthetic DigiFace faces: each face becomes a plausible "
    "DigiFace-like face that downscales to your input, not the person, and never more than 64 px of detail."
)
STYLEGAN_NOTE = (
    "Prior: the official PULSE StyleGAN (FFHQ, 1024 px); a search returns one plausible face, not the person."
)


def solver_names(config_dir: str | Path = CONFIG_DIR) -> list[str]:
    """The solvers the page offers: every ``configs/solver/*.yaml``, ``pulse`` first."""
    names = sorted(path.stem for path in Path(config_dir, "solver").glob("*.yaml"))
    return sorted(names, key=lambda name: name != "pulse")


def default_generator(device: str) -> str:
    """``stylegan_ffhq`` on a GPU when its weights are in the cache, else the embedded ``dcgan_faces``."""
    from pulse.io.weights import ffhq_dir  # noqa: PLC0415

    weights = ffhq_dir()
    if device.startswith("cuda") and (weights / "synthesis.pt").is_file() and (weights / "mapping.pt").is_file():
        return "stylegan_ffhq"
    return "dcgan_faces"


def example_photos(count: int = 6) -> list[str]:
    """A few fetched CelebA photos (``pulse-fetch celeba``), or none."""
    from pulse.io.celeba import CelebAUnavailable, celeba_photos  # noqa: PLC0415

    try:
        return [str(path) for path in celeba_photos()[:count]]
    except (CelebAUnavailable, OSError, ValueError):
        return []


class DemoBackend:
    """Builds (and keeps) a solver per setting and restores one photo; the page's logic, without Gradio."""

    def __init__(self, generator: str = "dcgan_faces", device: str = "cpu", overrides: Sequence[str] = ()) -> None:
        self.generator_name, self.device, self.overrides = generator, device, list(overrides)
        self._solvers: dict[tuple, Any] = {}
        self._detector = None

    def solver(self, solver: str, samples: int, steps: int) -> Any:
        key = (solver, int(samples), int(steps))
        if key not in self._solvers:
            overrides = [f"generator={self.generator_name}", f"solver={solver}", *self.overrides]
            overrides += [f"solver.duplicates={int(samples)}", f"solver.steps={int(steps)}"]
            generator, built = build_solver(compose_config(overrides))
            generator.to(self.device)
            self._solvers = {key: built}  # one at a time: a 1024 px generator is large
        return self._solvers[key]

    def restore(
        self,
        photo: np.ndarray,
        scale: float,
        solver: str,
        samples: int,
        steps: int,
        progress: Callable[[float, str], None] | None = None,
    ) -> PhotoResult:
        """``photo`` ``[H, W, 3]`` uint8 (or ``[H, W]``, ``[H, W, 4]``) -> the restored photo and its faces."""
        if photo is None:
            raise ValueError("no photo: upload one or pick an example")
        array = np.asarray(photo)
        if array.ndim == 2:
            array = np.repeat(array[..., None], 3, axis=-1)
        if array.ndim != 3 or array.shape[-1] not in (3, 4):
            raise ValueError(f"expected an RGB photo, got an array of shape {list(array.shape)}")
        tensor = torch.from_numpy(np.array(array[..., :3], dtype=np.uint8)).permute(2, 0, 1).float() / 255.0
        built = self.solver(solver, samples, steps)
        restorer = PhotoRestorer(built, scale=scale, detector=self._detector)
        self._detector = restorer.detector  # dlib's models load once
        total = max(int(getattr(built, "total_steps", steps)), 1)
        done = [0]

        def on_step(_info: Any) -> None:
            done[0] += 1
            if progress is not None:
                progress(min(done[0] / total, 1.0), f"step {done[0]}/{total}")

        return restorer.restore(tensor, name="photo", callback=on_step)


def to_pixels(image: torch.Tensor) -> np.ndarray:
    """``[3, H, W]`` in [0, 1] -> ``[H, W, 3]`` uint8."""
    return (image.detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)


def metrics_markdown(result: PhotoResult) -> str:
    """A short Markdown report: status, sizes, one row per face and sample."""
    summary = result.summary()
    (in_w, in_h), (out_w, out_h) = summary["input_size"], summary["output_size"]
    lines = [f"**{result.status}** - {in_w}x{in_h} -> {out_w}x{out_h} px in {result.seconds:.1f} s", ""]
    if summary["faces"]:
        header = "| face | sample | LR px | downscale error | reached eps | best step | id dist (same person <= 0.6) |"
        lines += [header, "|---|---|---|---|---|---|---|"]
        for face in summary["faces"]:
            for sample, (error, success, step, identity) in enumerate(
                zip(face["downscale_error"], face["success"], face["best_step"], face["id_dist"], strict=True)
            ):
                chosen = " (pasted)" if sample == face["chosen_sample"] else ""
                identity = "null" if identity is None else f"{identity:.3f}"
                cells = [face["index"], f"{sample}{chosen}", face["lr_size"], f"{error:.4g}", success, step, identity]
                lines.append("| " + " | ".join(map(str, cells)) + " |")
    lines += [f"- {note}" for note in result.notes]
    return "\n".join(lines)


def build_demo(backend: DemoBackend, default_steps: int = 50, examples: Sequence[str] = ()) -> Any:
    """The Gradio ``Blocks`` page around ``backend``."""
    import gradio as gr  # noqa: PLC0415 - optional extra

    note = EMBEDDED_PRIOR_NOTE if backend.generator_name == "dcgan_faces" else STYLEGAN_NOTE

    def run(photo, scale, solver, samples, steps, progress=gr.Progress()):  # noqa: B008 - Gradio's idiom
        progress(0.0, desc="detecting faces")
        try:
            result = backend.restore(photo, float(scale), solver, int(samples), int(steps),
                                     progress=lambda fraction, text: progress(fraction, desc=text))  # fmt: skip
        except Exception as error:  # noqa: BLE001 - shown on the page in one line, the server goes on
            raise gr.Error(f"{type(error).__name__}: {error}") from None
        size = result.faces[0].samples.shape[-1] if result.faces else 64
        lr_faces = [to_pixels(F.interpolate(face.lr[None], size=(size, size))[0]) for face in result.faces]
        samples_out = [to_pixels(sample) for face in result.faces for sample in face.samples]
        return lr_faces, samples_out, to_pixels(result.restored), metrics_markdown(result)

    with gr.Blocks(title="pulse: restore a photo", analytics_enabled=False) as demo:
        gr.Markdown("# pulse: restore a photo\nEvery face is aligned, super-resolved by a latent search and pasted "
                    "back into the upscaled photo.")  # fmt: skip
        gr.Markdown(note, elem_id="prior-note")
        with gr.Row():
            with gr.Column():
                photo = gr.Image(label="Photo", type="numpy", elem_id="photo", sources=["upload", "clipboard"])
                if examples:
                    gr.Examples(examples=[[path] for path in examples], inputs=[photo], label="CelebA faces")
                scale = gr.Radio([2, 4, 8], value=4, label="Scale (output / input size)", elem_id="scale")
                solver = gr.Dropdown(solver_names(), value="pulse", label="Solver", elem_id="solver")
                samples = gr.Slider(1, 4, value=1, step=1, label="Samples per face", elem_id="samples")
                steps = gr.Slider(1, 500, value=default_steps, step=1, label="Steps", elem_id="steps")
                button = gr.Button("Restore", variant="primary", elem_id="restore")
            with gr.Column():
                lr_faces = gr.Gallery(label="LR faces (solver inputs)", elem_id="lr-faces", columns=4, height=160)
                samples_out = gr.Gallery(label="Samples", elem_id="samples-out", columns=4, height=160)
                restored = gr.Image(label="Restored photo", elem_id="restored", type="numpy", format="png")
                metrics = gr.Markdown(elem_id="metrics")
        button.click(run, [photo, scale, solver, samples, steps], [lr_faces, samples_out, restored, metrics])
    return demo


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pulse-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda ...")
    parser.add_argument(
        "--generator", default="auto", help="auto: stylegan_ffhq on a GPU with weights, else dcgan_faces"
    )
    parser.add_argument("--steps", type=int, default=50, help="the page's default number of steps")
    parser.add_argument("overrides", nargs="*", help="more Hydra overrides of configs/ (loss=..., seed=...)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing leaves the machine
    try:
        import gradio  # noqa: F401, PLC0415
    except ImportError:
        print(f"error: the demo needs Gradio: {DEMO_INSTALL}", file=sys.stderr)
        return 2
    device = pick_device(args.device)
    generator = default_generator(device) if args.generator == "auto" else args.generator
    backend = DemoBackend(generator, device, args.overrides)
    try:
        backend.solver("pulse", 1, args.steps)  # a bad override or missing weights fail now, in one line
    except Exception as error:  # noqa: BLE001 - Hydra, weights and device errors alike end in one line
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        return 2
    demo = build_demo(backend, default_steps=args.steps, examples=example_photos())
    print(f"pulse-demo: generator {generator} on {device}; http://{args.host}:{args.port}", flush=True)
    demo.queue().launch(server_name=args.host, server_port=args.port, share=False, show_error=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

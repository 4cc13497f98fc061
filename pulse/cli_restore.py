"""``pulse-restore PHOTO... --out DIR [--scale 4] [OVERRIDE ...]``: restore whole photos (:mod:`pulse.restore`).

    pulse-restore astronaut.png --out out/                          # PULSE, the embedded 64 px DCGAN, x4
    pulse-restore photos/ --out out/ solver=ilo solver.steps=50     # any Hydra override of run.py's configs
    pulse-restore a.jpg --out out/ generator=stylegan_ffhq --scale 8 # official weights (pulse-fetch ffhq)

Arguments with ``=`` are Hydra overrides of ``configs/`` (the ones ``run.py`` takes: ``solver=``, ``generator=``,
``loss=``, ``solver.steps=``, ``seed=`` ...); the others are photos or folders of photos. The generator and solver
are built from the composed config by :mod:`pulse.configured`, as ``run.py`` builds them; the library
(:mod:`pulse.restore`) takes a ready solver and never needs Hydra.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pulse.configured import build_solver, compose_config


def pick_device(name: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; other names as given."""
    if name != "auto":
        return name
    import torch  # noqa: PLC0415

    return "cuda" if torch.cuda.is_available() else "cpu"


def face_factor_arg(text: str) -> int | str:
    """``--face-factor``: a positive integer or ``native``."""
    if text == "native":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'native', got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pulse-restore", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("inputs", nargs="+", metavar="PHOTO|OVERRIDE", help="photos, folders, Hydra overrides")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--scale", type=float, default=4, help="output size / input size (default 4)")
    parser.add_argument(
        "--face-factor",
        type=face_factor_arg,
        help="the solver's factor: aligned face side / LR side (default: --scale); native: LR faces as large as "
        "the faces in the photo",
    )
    parser.add_argument(
        "--background",
        default="bicubic",
        choices=["bicubic", "realesrgan"],
        help="upscaler of the rest of the photo: bicubic, or realesrgan (pulse-fetch realesrgan first)",
    )
    parser.add_argument("--feather", type=float, default=0.1, help="blend ramp, fraction of the face crop (0.1)")
    parser.add_argument("--upsample", type=int, default=1, help="dlib detector upsampling: 2 finds smaller faces (1)")
    parser.add_argument(
        "--min-score", type=float, default=0.0, help="drop dlib detections scoring below this (0: dlib's default)"
    )
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1 ...")
    parser.add_argument("--config-dir", type=Path, help="pulse's configs/ folder (default: the checkout's)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def split_inputs(items: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(photos, overrides)``: an item with ``=`` that is not an existing path is a Hydra override."""
    photos, overrides = [], []
    for item in items:
        (overrides if "=" in item and not Path(item).exists() else photos).append(item)
    return photos, overrides


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    photos, overrides = split_inputs(args.inputs)
    if not photos:
        print("error: no photo given (arguments with '=' are Hydra overrides)", file=sys.stderr)
        return 2
    from hydra.errors import HydraException  # noqa: PLC0415
    from omegaconf.errors import OmegaConfBaseException  # noqa: PLC0415
    from tqdm import tqdm  # noqa: PLC0415

    from pulse.faces import FacesUnavailable  # noqa: PLC0415
    from pulse.restore import DlibFaceDetector, PhotoRestorer, restore_files  # noqa: PLC0415

    try:
        cfg = compose_config(overrides, args.config_dir)
        generator, solver = build_solver(cfg)
        generator.to(pick_device(args.device))
        restorer = PhotoRestorer(
            solver,
            scale=args.scale,
            face_factor=args.face_factor,
            background=args.background,
            feather=args.feather,
            detector=DlibFaceDetector(
                args.upsample, args.min_score
            ),  # loads dlib now: a missing install fails before any photo
        )
    except (HydraException, OmegaConfBaseException, ValueError, FileNotFoundError, FacesUnavailable) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    summary = restore_files(photos, args.out, restorer, log=lambda line: tqdm.write(line, file=sys.stderr))
    faces = sum(len(photo["faces"]) for photo in summary["photos"])
    print(
        f"pulse-restore: {len(summary['photos'])} photos ({faces} faces) restored x{args.scale:g} into {args.out}; "
        f"{len(summary['skipped'])} skipped (see {args.out / 'summary.json'})"
    )
    return 0 if summary["photos"] else 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Align faces in raw photos the FFHQ way and write PULSE inputs.

    python scripts/align_faces.py IN OUT [--size 1024] [--factor 64] [--landmarks FILE] [--detector mediapipe]
                                  [--padding ffhq|reflect|black] [--supersample 4] [--quiet]

IN is an image or a folder of images. Writes ``OUT/hr/<stem>.png`` (``size x size``) and, with ``--factor``,
``OUT/lr/<stem>.png`` (``size / factor``, the paper's bicubic downscale of the HR file), so that
``python run.py data=folder data.path=OUT/lr`` super-resolves them. Landmarks come from ``--landmarks FILE``
(JSON or CSV, 68/5/468 points per image; see docs/alignment.md) or from MediaPipe when it is installed with its
bundled model. An image that cannot be used is reported in one line and in ``OUT/skipped.json``; the others go on.
The logic lives in :mod:`pulse.align`; this file only handles files and arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pulse.align import (
    PADDING_MODES,
    DetectorUnavailable,
    LandmarkError,
    MediaPipeLandmarks,
    align_image,
    lookup_landmarks,
    read_landmarks_file,
)
from pulse.data import IMAGE_SUFFIXES, ImageError, image_files, load_image, save_image, to_uint8
from pulse.downscale import check_factor


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", type=Path, help="an image file or a folder of images")
    parser.add_argument("output", type=Path, help="output folder (hr/, lr/, skipped.json)")
    parser.add_argument("--size", type=int, default=1024, help="side of the aligned image (default 1024)")
    parser.add_argument("--factor", type=int, help="also write OUT/lr/ downscaled by this factor (e.g. 64: 16 px)")
    parser.add_argument("--landmarks", type=Path, metavar="FILE", help="JSON or CSV: image name -> 68/5/468 points")
    parser.add_argument(
        "--detector", choices=["mediapipe"], default="mediapipe", help="used when no --landmarks file is given"
    )
    parser.add_argument("--padding", choices=PADDING_MODES, default="ffhq", help="fill where the crop leaves the photo")
    parser.add_argument("--supersample", type=int, default=4, help="resample at this multiple of --size, then reduce")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _inputs(path: Path) -> list[Path]:
    if path.is_dir():
        return image_files(path)
    if not path.is_file():
        raise FileNotFoundError(f"input {path} does not exist")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise FileNotFoundError(f"input {path} is not an image ({', '.join(IMAGE_SUFFIXES)})")
    return [path]


def _landmark_source(args: argparse.Namespace) -> tuple[Callable[[Path, np.ndarray], np.ndarray], Callable[[], None]]:
    """A function (path, photo ``[H, W, 3]`` uint8) -> landmarks, and a function releasing its resources."""
    if args.landmarks is not None:
        table = read_landmarks_file(args.landmarks)
        return (lambda path, _photo: lookup_landmarks(table, path)), (lambda: None)
    detector = MediaPipeLandmarks()
    return (lambda _path, photo: detector(photo)), detector.close


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.size < 1 or args.supersample < 1:
            raise ValueError(f"--size and --supersample must be positive, got {args.size} and {args.supersample}")
        if args.factor is not None:
            check_factor(args.size, args.size, args.factor)
        files = _inputs(args.input)
        landmarks_of, close = _landmark_source(args)
    except (ValueError, FileNotFoundError, DetectorUnavailable) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    skipped: dict[str, str] = {}
    written = 0
    seen: set[str] = set()
    try:
        for path in tqdm(files, desc="align", unit="img", disable=args.quiet):
            try:
                if path.stem in seen:
                    raise ImageError(f"{path}: another input already wrote {path.stem}.png; rename one of them")
                photo = to_uint8(load_image(path))
                face = align_image(
                    photo,
                    landmarks_of(path, photo),
                    size=args.size,
                    factor=args.factor,
                    supersample=args.supersample,
                    padding=args.padding,
                )
            except Exception as error:  # noqa: BLE001 - one bad photo must not stop the batch; its reason is recorded
                known = isinstance(error, (ImageError, LandmarkError))
                message = str(error) if known else f"unexpected {type(error).__name__}: {error}"
                reason = message if str(path) in message else f"{path}: {message}"
                skipped[path.name] = reason
                tqdm.write(f"skipped {reason}", file=sys.stderr)
                continue
            seen.add(path.stem)
            save_image(face.hr, args.output / "hr" / f"{path.stem}.png")
            if face.lr is not None:
                save_image(face.lr, args.output / "lr" / f"{path.stem}.png")
            written += 1
    finally:
        close()

    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "skipped.json").write_text(json.dumps(skipped, indent=2) + "\n")
    lr_note = f", LR x{args.factor} in {args.output / 'lr'}" if args.factor is not None else ""
    print(
        f"align_faces: {written}/{len(files)} aligned to {args.size} px in {args.output / 'hr'}{lr_note}; "
        f"{len(skipped)} skipped (see {args.output / 'skipped.json'})"
    )
    return 0 if written else 1


if __name__ == "__main__":
    sys.exit(main())

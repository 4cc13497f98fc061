#!/usr/bin/env python
"""Align every face in raw photos the way official PULSE does (dlib + FFHQ recipe) and write PULSE inputs.

    python scripts/align_faces.py IN OUT [--size 1024] [--factor 64] [--detector dlib|mediapipe]
                                  [--landmarks FILE] [--padding ffhq|reflect|black] [--supersample 4] [--quiet]

IN is an image or a folder of images. Each face ``i`` found in ``photo.jpg`` is written as
``OUT/hr/photo_<i>.png`` (``size x size``) and, with ``--factor``, ``OUT/lr/photo_<i>.png`` (``size / factor``,
the paper's bicubic downscale of the HR file), so that ``python run.py data=folder data.path=OUT/lr``
super-resolves them. Landmarks come from dlib's 68-point predictor on every face its frontal detector finds
(``pip install -e ".[faces]"``; the default when installed), from MediaPipe (one face per photo), or from
``--landmarks FILE`` (JSON or CSV, 68/5/468 points per image; see docs/alignment.md). A photo that cannot be
used (unreadable, no face) is reported in one line and in ``OUT/skipped.json``; the others go on.
The logic lives in :mod:`pulse.align` and :mod:`pulse.faces`; this file only handles files and arguments.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pulse.align import (
    NO_DETECTOR,
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
from pulse.faces import DlibLandmarks, FacesUnavailable, detection_pixels, dlib_available

LandmarkSource = Callable[[Path, np.ndarray], list[np.ndarray]]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", type=Path, help="an image file or a folder of images")
    parser.add_argument("output", type=Path, help="output folder (hr/, lr/, skipped.json)")
    parser.add_argument("--size", type=int, default=1024, help="side of the aligned image (default 1024)")
    parser.add_argument("--factor", type=int, help="also write OUT/lr/ downscaled by this factor (e.g. 64: 16 px)")
    parser.add_argument("--landmarks", type=Path, metavar="FILE", help="JSON or CSV: image name -> 68/5/468 points")
    parser.add_argument(
        "--detector",
        choices=["dlib", "mediapipe"],
        help="used when no --landmarks file is given: dlib (every face, as official PULSE; the default when "
        "installed) or mediapipe (one face per photo; the default otherwise)",
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


def _default_detector() -> str:
    if dlib_available():
        return "dlib"
    if importlib.util.find_spec("mediapipe") is not None:
        return "mediapipe"
    raise DetectorUnavailable(NO_DETECTOR)


def _landmark_source(args: argparse.Namespace) -> tuple[LandmarkSource, Callable[[], None]]:
    """A function (path, photo ``[H, W, 3]`` uint8) -> landmarks of every face, and one releasing resources."""
    if args.landmarks is not None:
        table = read_landmarks_file(args.landmarks)
        return (lambda path, _photo: [lookup_landmarks(table, path)]), (lambda: None)
    name = args.detector or _default_detector()
    if name == "dlib":
        try:
            dlib_detector = DlibLandmarks()
        except FacesUnavailable as error:
            raise DetectorUnavailable(str(error)) from None
        # Detect on dlib's own decode of the file, as official PULSE does (JPEG decoders differ slightly).
        return (lambda path, photo: dlib_detector(detection_pixels(path, photo))), dlib_detector.close
    mediapipe_detector = MediaPipeLandmarks()

    def one_face(_path: Path, photo: np.ndarray) -> list[np.ndarray]:
        try:
            return [mediapipe_detector(photo)]
        except LandmarkError:
            return []

    return one_face, mediapipe_detector.close


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
    faces = photos = 0
    seen: set[str] = set()

    def skip(key: str, path: Path, error: Exception) -> None:
        known = isinstance(error, (ImageError, LandmarkError))
        message = str(error) if known else f"unexpected {type(error).__name__}: {error}"
        reason = message if str(path) in message else f"{path}: {message}"
        skipped[key] = reason
        tqdm.write(f"skipped {reason}", file=sys.stderr)

    try:
        for path in tqdm(files, desc="align", unit="img", disable=args.quiet):
            try:
                if path.stem in seen:
                    raise ImageError(f"{path}: another input already wrote {path.stem}_*.png; rename one of them")
                photo = to_uint8(load_image(path))
                found = landmarks_of(path, photo)
                if not found:
                    raise LandmarkError("no face found")
            except Exception as error:  # noqa: BLE001 - one bad photo must not stop the batch; its reason is recorded
                skip(path.name, path, error)
                continue
            seen.add(path.stem)
            written = 0
            for index, landmarks in enumerate(found):
                try:
                    face = align_image(
                        photo,
                        landmarks,
                        size=args.size,
                        factor=args.factor,
                        supersample=args.supersample,
                        padding=args.padding,
                    )
                except Exception as error:  # noqa: BLE001 - the photo's other faces still go on
                    skip(f"{path.name}#{index}", path, error)
                    continue
                save_image(face.hr, args.output / "hr" / f"{path.stem}_{index}.png")
                if face.lr is not None:
                    save_image(face.lr, args.output / "lr" / f"{path.stem}_{index}.png")
                written += 1
            faces += written
            photos += written > 0
            if len(found) > 1 and not args.quiet:
                tqdm.write(f"{path}: {len(found)} faces, {written} aligned")
    finally:
        close()

    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "skipped.json").write_text(json.dumps(skipped, indent=2) + "\n")
    lr_note = f", LR x{args.factor} in {args.output / 'lr'}" if args.factor is not None else ""
    print(
        f"align_faces: {faces} faces from {photos}/{len(files)} photos aligned to {args.size} px in "
        f"{args.output / 'hr'}{lr_note}; {len(skipped)} skipped (see {args.output / 'skipped.json'})"
    )
    return 0 if faces else 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Make README's before/after picture (docs/images/restore_astronaut.png) with ``pulse-restore``.

    python scripts/restore_astronaut.py [--out docs/images/restore_astronaut.png] [--work DIR] [OVERRIDE ...]

The photo is ``skimage.data.astronaut()`` reduced to 256 x 256 (a small photo; dlib finds one face in it),
restored x2 by ``pulse.cli_restore.main`` exactly as ``pulse-restore astronaut.png --out DIR --scale 2`` would,
with the defaults (PULSE, the embedded 64 px DCGAN, 100 steps, seed 0). The picture: the photo upscaled by
bicubic | the restored photo, and below them the face region of both enlarged. Needs the dev and faces extras.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pulse.cli_restore import main as restore_main

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("detection_score", "lr_size", "downscale_error", "lr_psnr", "success", "id_dist")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "restore_astronaut.png")
    parser.add_argument("--work", type=Path, help="folder for the photo and pulse-restore's outputs (default: temp)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides passed on to pulse-restore")
    args = parser.parse_args(argv)
    from skimage import data  # noqa: PLC0415 - a dev dependency

    work = args.work or Path(tempfile.mkdtemp(prefix="restore_astronaut_"))
    work.mkdir(parents=True, exist_ok=True)
    photo = Image.fromarray(data.astronaut()).resize((256, 256), Image.Resampling.LANCZOS)
    photo.save(work / "astronaut.png")
    code = restore_main([str(work / "astronaut.png"), "--out", str(work / "out"), "--scale", "2", *args.overrides])
    if code != 0:
        return code
    restored = Image.open(work / "out" / "astronaut.png")
    background = Image.open(work / "out" / "astronaut_background.png")
    report = json.loads((work / "out" / "astronaut.json").read_text())
    quad = np.array(report["faces"][0]["quad"]) * 2  # input pixels -> output pixels (scale 2)
    left, top = np.floor(quad.min(0)).astype(int).clip(0)
    right, bottom = np.ceil(quad.max(0)).astype(int).clip(max=restored.width)
    side = 384  # each panel; README-sized
    fulls = [image.convert("RGB").resize((side, side), Image.Resampling.LANCZOS) for image in (background, restored)]
    crops = [image.convert("RGB").crop((left, top, right, bottom)).resize((side, side), Image.Resampling.LANCZOS)
             for image in (background, restored)]  # fmt: skip
    canvas = Image.new("RGB", (2 * side, 2 * side + 24), "white")
    for column, (full, crop) in enumerate(zip(fulls, crops, strict=True)):
        canvas.paste(full, (column * side, 24))
        canvas.paste(crop, (column * side, 24 + side))
    draw = ImageDraw.Draw(canvas)
    draw.text((8, 6), "bicubic x2 (256 -> 512 px)", fill="black")
    error = min(report["faces"][0]["downscale_error"])
    draw.text((side + 8, 6), f"pulse-restore x2 (PULSE, DCGAN; downscale error {error:.4f})", fill="black")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(args.out, optimize=True)
    face = report["faces"][0]
    print(f"wrote {args.out} (work folder {work}); face 0: {json.dumps({k: face[k] for k in METRICS})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

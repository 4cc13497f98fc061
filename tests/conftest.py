import pytest
import torch

from pulse.generators.dcgan import DCGANGenerator


@pytest.fixture(scope="session")
def dcgan() -> DCGANGenerator:
    """The embedded default face generator (weights from the gan-face-generate package)."""
    return DCGANGenerator.pretrained()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Never touch the user's real cache from tests; keep torch single-threaded-ish on 2 cores."""
    monkeypatch.setenv("PULSE_CACHE", str(tmp_path_factory.mktemp("pulse_cache")))
    monkeypatch.setenv("WANDB_MODE", "disabled")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)

"""A newcomer's local files stay out of ``git status``: the checkout's .gitignore covers them."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _ignored(path: str) -> bool:
    """Whether git would ignore ``path`` (relative to the checkout; it need not exist)."""
    result = subprocess.run(
        ["git", "-C", str(ROOT), "check-ignore", "--quiet", "--no-index", path], capture_output=True, text=True
    )
    if result.returncode not in (0, 1):
        pytest.skip(f"git check-ignore failed: {result.stderr.strip()}")
    return result.returncode == 0


@pytest.fixture(autouse=True)
def _needs_a_git_checkout():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")


@pytest.mark.parametrize("path", [".venv/bin/python", ".venv/pyvenv.cfg", "venv/lib/site.py", ".env"])
def test_virtual_environments_in_the_checkout_are_ignored(path):
    assert _ignored(path)


@pytest.mark.parametrize("path", ["pulse/losses.py", "configs/config.yaml", "tests/test_gitignore.py"])
def test_the_project_itself_is_not_ignored(path):
    assert not _ignored(path)

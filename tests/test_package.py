import subprocess
import sys

import pulse


def test_every_advertised_name_resolves_to_its_module_object():
    import importlib

    for name, module in pulse._EXPORTS.items():
        assert getattr(pulse, name) is getattr(importlib.import_module(module), name)


def test_unknown_names_fail_like_a_module_and_import_stays_light():
    try:
        pulse.NoSuchThing  # noqa: B018
    except AttributeError as error:
        assert "NoSuchThing" in str(error)
    else:
        raise AssertionError("expected AttributeError")
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, pulse; print('pytorch_lightning' in sys.modules, 'hydra' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert loaded == ["False", "False"]

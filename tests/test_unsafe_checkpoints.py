"""Hostile checkpoints (.pt, .pkl, TF pickles) are refused in one line of our own, naming what the file
asked for; nothing in them runs, and no message repeats torch's advice to load with weights_only=False."""

import os
import pickle
import traceback
from pathlib import Path

import pytest
import torch

from pulse.degradations import InpaintMask, KernelDownscale
from pulse.generators.dcgan import DCGANGenerator
from pulse.generators.stylegan import load_tensor_dict
from pulse.generators.stylegan2 import load_rosinality, read_nvidia_pkl
from pulse.io.convert import ConversionError, load_tf_pickle
from pulse.io.safe_pickle import UnsafePickleError, load_torch_weights, pickle_globals
from pulse.metrics.lpips import LPIPSUnavailable, converted_cache_path, load_lpips

SYSTEM = r"(posix|nt|os)\.system"


class _Shell:
    """Unpickling this calls ``os.system(command)``: the payload the marker file detects."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "payload_ran"


def hostile_files(folder: Path, marker: Path) -> dict[str, Path]:
    """A torch zip file and raw pickles (protocols 0, 2 and 4) that would create ``marker`` if loaded unsafely."""
    payload = {"weight": torch.zeros(2), "g_ema": _Shell(f"touch {marker}")}
    files = {"zip": folder / "evil.pt"}
    torch.save(payload, files["zip"])
    for protocol in (0, 2, 4):
        files[f"pickle{protocol}"] = folder / f"evil{protocol}.pkl"
        files[f"pickle{protocol}"].write_bytes(pickle.dumps({"G_ema": _Shell(f"touch {marker}")}, protocol=protocol))
    return files


def assert_refused(error: BaseException, marker: Path, names: str = SYSTEM) -> None:
    text = "".join(traceback.format_exception(error))  # the whole chain, as a user would see it
    assert "weights_only=False" not in text and "set to `False`" not in text, text
    assert "trusted source" not in text
    assert pytest.importorskip("re").search(names, str(error)), str(error)
    assert not marker.exists(), "the payload ran"


@pytest.mark.parametrize("kind", ["zip", "pickle0", "pickle2", "pickle4"])
def test_torch_weights_loader_refuses_in_its_own_words(tmp_path, marker, kind):
    path = hostile_files(tmp_path, marker)[kind]
    with pytest.raises(UnsafePickleError) as error:
        load_torch_weights(path)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"refused {path.name}: it asks for ")
    assert "nothing in it was run" in message
    assert_refused(error.value, marker)
    with pytest.raises(UnsafePickleError):  # bytes and file objects too
        load_torch_weights(path.read_bytes())
    assert not marker.exists()


def test_every_checkpoint_reader_refuses_and_runs_nothing(tmp_path, marker, monkeypatch):
    files = hostile_files(tmp_path, marker)
    readers = {
        "dcgan": lambda: DCGANGenerator.pretrained(files["zip"]),
        "stylegan state dict": lambda: load_tensor_dict(files["zip"]),
        "rosinality": lambda: load_rosinality(files["zip"]),
        "blur kernel": lambda: KernelDownscale(4, path=files["zip"]),
        "inpainting mask": lambda: InpaintMask(mask=str(files["zip"])),
        "nvidia pkl": lambda: read_nvidia_pkl(files["pickle4"]),
        "tf pickle": lambda: load_tf_pickle(files["pickle2"]),
    }
    for name, read in readers.items():
        with pytest.raises((RuntimeError, ValueError, ConversionError, pickle.UnpicklingError)) as error:
            read()
        assert "nothing in it was run" in str(error.value), (name, str(error.value))
        assert_refused(error.value, marker)


def test_lpips_cache_file_that_asks_for_code_is_reported_not_run(tmp_path, marker):
    cached = converted_cache_path("alex")  # under the test's own PULSE_CACHE
    cached.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": _Shell(f"touch {marker}")}, cached)
    with pytest.raises(LPIPSUnavailable) as error:
        load_lpips("alex")
    assert "nothing in it was run" in str(error.value)
    assert_refused(error.value, marker)


def test_the_payload_is_real(tmp_path, marker):
    # Control: an ordinary unpickler does run it, so the absent marker in the other tests means something.
    pickle.loads(hostile_files(tmp_path, marker)["pickle2"].read_bytes())
    assert marker.exists()


def test_plain_files_still_load_and_globals_are_listed_without_running(tmp_path, marker):
    torch.save({"w": torch.arange(3.0)}, tmp_path / "plain.pt")
    assert torch.equal(load_torch_weights(tmp_path / "plain.pt")["w"], torch.arange(3.0))
    for protocol in (0, 2, 4):
        names = pickle_globals(pickle.dumps([_Shell("true"), {"x": 1}], protocol=protocol))
        assert len(names) == 1 and names[0].endswith(".system")


def test_a_torch_global_that_is_not_data_is_named_too(tmp_path, marker):
    class _Hub:
        def __reduce__(self):
            return (torch.hub.load, (str(tmp_path), "model"))

    torch.save({"w": torch.zeros(1), "x": _Hub()}, tmp_path / "hub.pt")
    with pytest.raises(UnsafePickleError, match=r"refused hub\.pt: it asks for torch\.hub\.load,") as error:
        load_torch_weights(tmp_path / "hub.pt")
    assert_refused(error.value, marker, r"torch\.hub\.load")


class _RecordingUnpickler(pickle.Unpickler):
    """An ordinary unpickler that notes every global it resolves: the exact answer for pickle_globals.

    Only used on pickles these tests made of numpy arrays and tensors (safe to load)."""

    def __init__(self, data: bytes) -> None:
        import io

        super().__init__(io.BytesIO(data))
        self.names: list[str] = []

    def find_class(self, module, name):
        self.names.append(f"{module}.{name}")
        return super().find_class(module, name)


def _resolved_globals(data: bytes) -> list[str]:
    unpickler = _RecordingUnpickler(data)
    unpickler.load()
    return list(dict.fromkeys(unpickler.names))


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_pickle_globals_names_what_the_unpickler_resolves_numpy(protocol):
    """Protocol 4+ repeats module and class names through the memo; the names must be the real globals."""
    np = pytest.importorskip("numpy")
    data = pickle.dumps(
        {"lod": np.float32(0.0), "a": np.zeros((2, 3), np.float32), "b": np.arange(4), "c": np.ones(2, np.float16)},
        protocol=protocol,
    )
    names = pickle_globals(data)
    assert names == _resolved_globals(data)
    assert not any(n.startswith(("ndarray.", "lod.", "dtype.")) for n in names), names
    assert "numpy.dtype" in names


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_pickle_globals_names_what_the_unpickler_resolves_torch(protocol):
    """Like an NVIDIA network pickle: parameters and tensors pickled without torch.save's persistent ids."""
    objects = {
        "G_ema": {"weight": torch.nn.Parameter(torch.ones(2, 2)), "bias": torch.zeros(2)},
        "layers": [torch.nn.Parameter(torch.full((3,), float(i))) for i in range(3)],
    }
    data = pickle.dumps(objects, protocol=protocol)
    names = pickle_globals(data)
    assert names == _resolved_globals(data)
    assert "torch._utils._rebuild_parameter" in names and "torch._utils._rebuild_tensor_v2" in names
    assert not any(n.startswith("_rebuild_parameter.") for n in names), names


def test_refusal_names_the_real_global_behind_memoised_strings(tmp_path, marker):
    """A protocol-4 pickle whose module string comes back from the memo is refused under its real name."""
    data = pickle.dumps([_Shell("true"), _Shell("true"), {"os": "system"}], protocol=4)
    names = pickle_globals(data)
    assert len(names) == 1 and names[0].endswith(".system") and names[0].split(".")[0] in ("posix", "nt", "os")
    torch.save({"w": torch.zeros(1), "x": [_Shell(f"touch {marker}"), _Shell(f"touch {marker}")]}, tmp_path / "x.pt")
    with pytest.raises(UnsafePickleError, match=rf"it asks for {SYSTEM}, which") as error:
        load_torch_weights(tmp_path / "x.pt")
    assert_refused(error.value, marker)

"""Restricted (allow-list) unpickling for third-party checkpoints.

``pickle.load`` runs whatever callables a pickle names (``os.system``, ``builtins.eval``, ...), so
checkpoints we did not write are read with :func:`restricted_load` instead: every global the pickle
references must be listed in an explicit ``{(module, name): object}`` mapping and resolves to the
given object -- the real thing for harmless data constructors (numpy arrays, ``OrderedDict``) or an
inert stand-in from :func:`stub_class` for classes whose code we must not run (e.g. the ``dnnlib``
classes inside TensorFlow-era StyleGAN pickles). Anything else is refused with
:class:`UnsafePickleError` (a :class:`pickle.UnpicklingError`) naming the global, before it is called.
Persistent ids (used by ``torch.save``) are refused too; torch files go through
:func:`load_torch_weights` (``torch.load(weights_only=True)`` with the same kind of one-line refusal, and
never torch's advice to load the file unsafely).
"""

from __future__ import annotations

import _codecs
import collections
import importlib
import io
import os
import pickle
import pickletools
import re
import zipfile
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import IO, Any

__all__ = [
    "NUMPY_ALLOWED",
    "RestrictedUnpickler",
    "UnsafePickleError",
    "load_torch_weights",
    "pickle_globals",
    "restricted_load",
    "stub_class",
]

AllowList = Mapping[tuple[str, str], object]

NOTHING_RUN = "the file was not loaded and nothing in it was run"


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """A file that names a callable outside the allow-list: refused before anything in it ran.

    Also a ``ValueError`` (bad file content), so code that reports unreadable files catches it too.
    """


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the ``(module, name)`` globals in ``allowed``.

    Resolution never imports anything: the mapping holds the objects themselves, so a listed name
    (e.g. ``numpy.core.multiarray._reconstruct`` under numpy 2) cannot trigger module imports either.
    """

    def __init__(self, file: IO[bytes], allowed: AllowList, *, encoding: str = "ASCII") -> None:
        super().__init__(file, encoding=encoding)
        self._allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        # Called for GLOBAL, STACK_GLOBAL, INST and the copyreg EXT opcodes, i.e. for every way a
        # pickle can name a callable; REDUCE/NEWOBJ/OBJ can only call what came through here.
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refused global {module}.{name}: not in this reader's allow-list; {NOTHING_RUN}"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        # Persistent ids hand control to the loader (torch storages, external objects); none is expected.
        raise UnsafePickleError(f"refused persistent id {pid!r:.80}: not supported by this reader; {NOTHING_RUN}")


def restricted_load(
    file_or_bytes: bytes | bytearray | memoryview | IO[bytes] | str | os.PathLike[str],
    allowed: AllowList,
    *,
    encoding: str = "ASCII",
) -> Any:
    """Unpickle ``file_or_bytes`` resolving only the globals in ``allowed``.

    Args:
        file_or_bytes: the pickle as bytes, a binary file object, or a path to a file.
        allowed: ``{(module, name): object}``; e.g. ``{**NUMPY_ALLOWED, ("dnnlib", "EasyDict"): dict}``.
        encoding: how to decode Python 2 ``str`` objects (``"latin1"`` for old numpy pickles).

    Raises:
        pickle.UnpicklingError: the pickle references a global not in ``allowed`` (message names it),
            uses a persistent id, or is malformed.
    """
    if isinstance(file_or_bytes, (bytes, bytearray, memoryview)):
        return RestrictedUnpickler(io.BytesIO(file_or_bytes), allowed, encoding=encoding).load()
    if isinstance(file_or_bytes, (str, os.PathLike)):
        with open(file_or_bytes, "rb") as handle:
            return RestrictedUnpickler(handle, allowed, encoding=encoding).load()
    return RestrictedUnpickler(file_or_bytes, allowed, encoding=encoding).load()


def stub_class(module: str, name: str) -> type:
    """An inert stand-in for class ``module.name``: records what the pickle gives it, runs no code of its own.

    Instances keep constructor arguments in ``.args`` / ``.kwargs`` (REDUCE / NEWOBJ) and the pickled
    state in ``.state`` (BUILD), so a loader can read e.g. a StyleGAN ``Network``'s variables without the
    original class. Use as ``{(mod, "Network"): stub_class(mod, "Network")}`` with
    ``mod = "dnnlib.tflib.network"``.
    """

    def __new__(cls: type, *args: Any, **kwargs: Any) -> Any:
        self = object.__new__(cls)
        self.args, self.kwargs, self.state = args, kwargs, None
        return self

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        pass  # __new__ already recorded the arguments

    def __setstate__(self: Any, state: Any) -> None:
        self.state = state

    def __repr__(self: Any) -> str:
        return f"<stub {module}.{name} args={len(self.args)} state={type(self.state).__name__}>"

    namespace: dict[str, Callable[..., Any] | str] = {
        "__new__": __new__,
        "__init__": __init__,
        "__setstate__": __setstate__,
        "__repr__": __repr__,
        "__module__": f"pulse.io.safe_pickle.stub:{module}",
        "__qualname__": name,
    }
    return type(name, (), namespace)


def _numpy_allowed() -> dict[tuple[str, str], object]:
    """The globals numpy (1.x and 2.x) writes when pickling arrays, dtypes and scalars, protocols 2-5."""
    import numpy

    # numpy 2 moved numpy.core to numpy._core; pickles name whichever wrote them, so list both spellings
    # but resolve through the module that exists here (importing numpy.core under numpy 2 warns).
    try:
        multiarray = importlib.import_module("numpy._core.multiarray")
        numeric = importlib.import_module("numpy._core.numeric")
    except ImportError:  # numpy < 2 without the _core alias
        multiarray = importlib.import_module("numpy.core.multiarray")
        numeric = importlib.import_module("numpy.core.numeric")
    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): numpy.ndarray,
        ("numpy", "dtype"): numpy.dtype,
        ("collections", "OrderedDict"): collections.OrderedDict,
        # Protocol 2 pickles store bytes as latin-1 text re-encoded with _codecs.encode (data only).
        ("_codecs", "encode"): _codecs.encode,
    }
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = multiarray.scalar
        # Protocol 5 arrays are rebuilt from an in-band buffer by _frombuffer.
        allowed[(f"{core}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


NUMPY_ALLOWED: Mapping[tuple[str, str], object] = MappingProxyType(_numpy_allowed())
"""Allow-list for plain containers of numpy arrays / scalars / dtypes and ``collections.OrderedDict``."""


_MARK = object()  # a MARK on the simulated stack
_OTHER = object()  # any value that is not a string or a global's name


class _GlobalName(str):
    """A ``module.name`` a global opcode produced (a string on the simulated stack that is not data)."""


def _globals_of_one_pickle(ops: Any, names: list[str]) -> None:
    """Simulate the stack and memo of one pickle just far enough to name every global it asks for.

    ``STACK_GLOBAL`` (protocol 4+) takes its module and name from the stack, and pickles reuse strings
    through the memo (``MEMOIZE``/``PUT``, then ``GET``), so the two strings pushed last are not always the
    ones it reads: ``torch._utils`` is written once and fetched from the memo for every later tensor.
    Only strings are tracked; every other value is a placeholder, and marks delimit ``TUPLE``/``DICT``/...
    """
    stack: list[Any] = []
    memo: dict[int, Any] = {}
    for opcode, arg, _ in ops:
        name = opcode.name
        if name in ("GLOBAL", "INST"):
            value: Any = _GlobalName(".".join(str(arg).split(" ", 1)))
            names.append(value)
        elif name == "STACK_GLOBAL":
            parts = stack[-2:] if len(stack) >= 2 else []
            value = (
                _GlobalName(".".join(parts))
                if len(parts) == 2 and all(isinstance(p, str) and not isinstance(p, _GlobalName) for p in parts)
                else _GlobalName("an unnamed global")
            )
            names.append(value)
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            value = memo.get(int(arg), _OTHER)
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[int(arg)] = stack[-1] if stack else _OTHER
            continue
        elif name == "MEMOIZE":
            memo[len(memo)] = stack[-1] if stack else _OTHER
            continue
        elif isinstance(arg, str) and "UNICODE" in name:
            value = arg
        else:
            value = _OTHER
        # Pop what the opcode consumes (up to and including the topmost MARK when it takes a mark).
        before = opcode.stack_before
        if pickletools.markobject in before:
            while stack and stack.pop() is not _MARK:
                pass
            del stack[len(stack) - min(len(stack), before.index(pickletools.markobject)) :]
        else:
            del stack[len(stack) - min(len(stack), len(before)) :]
        for produced in opcode.stack_after:
            stack.append(_MARK if produced is pickletools.markobject else value)


def pickle_globals(data: bytes) -> list[str]:
    """The ``module.name`` globals the pickles in ``data`` ask for, in order, read without running anything.

    Covers ``GLOBAL``/``INST`` (protocols 0-3) and ``STACK_GLOBAL`` (4+, whose module and name are the two
    values on top of the stack, pushed as strings or fetched from the memo); reading stops quietly at the
    first malformed opcode.
    """
    names: list[str] = []
    stream = io.BytesIO(data)
    while stream.tell() < len(data):
        try:
            _globals_of_one_pickle(pickletools.genops(stream), names)
        except Exception:  # malformed or not a pickle: report what was found so far
            break
    return [str(name) for name in dict.fromkeys(names)]


def _unsafe_torch_globals(data: bytes) -> list[str]:
    """Globals of a torch file that its weights-only reader refuses (the zip's ``data.pkl`` or a raw pickle)."""
    if zipfile.is_zipfile(io.BytesIO(data)):
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            pickles = [archive.read(n) for n in archive.namelist() if n.endswith("data.pkl")]
        names = [name for blob in pickles for name in pickle_globals(blob)]
    else:
        names = pickle_globals(data)
    # Leave out what the weights-only reader allows (tensor rebuilders, dtypes, OrderedDict, ...).
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        allowed = set(_get_allowed_globals())
    except (ImportError, AttributeError):  # a torch without that list: its tensor rebuilders, by prefix
        allowed = {n for n in names if n.startswith(("torch._utils.", "torch.storage.")) or n.endswith("Storage")}
        allowed |= {"collections.OrderedDict", "torch.Size", "torch.device"}
    return [n for n in names if n not in allowed]


def _torch_reason(error: Exception) -> str:
    """torch's explanation of a refused load, without its advice to load the file unsafely or allow-list it."""
    advice = (
        "weights_only",
        "Weights only",
        "trust",
        "documentation",
        "safe_globals",
        "file an issue",
        "still be loaded",
    )
    kept = []
    for line in str(error).splitlines():
        for sentence in re.split(r"(?<=[.:])\s+", line.strip()):
            if sentence and sentence != "WeightsUnpickler error:" and not any(a in sentence for a in advice):
                kept.append(sentence)
    return " ".join(kept)[:300] or type(error).__name__


def load_torch_weights(
    source: str | os.PathLike[str] | bytes | IO[bytes], *, label: str | None = None, safe_globals: Sequence[Any] = ()
) -> Any:
    """``torch.load(source, map_location="cpu", weights_only=True)``, refusing unsafe files in one line.

    Args:
        source: a path, the file's bytes, or a binary file object.
        label: how the file is named in messages (default: the path's name).
        safe_globals: extra classes allowed as data (``torch.serialization.safe_globals``).

    Raises:
        UnsafePickleError: torch's weights-only reader refused the file. The message names what the file
            asked for (e.g. ``posix.system``) and says nothing in it was run; it never repeats torch's
            advice to retry with ``weights_only=False``, the one thing not to do with such a file.
    """
    import torch

    if isinstance(source, (str, os.PathLike)):
        label = label or os.path.basename(os.fspath(source))
    label = label or "the checkpoint"
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    start = 0 if isinstance(source, (str, os.PathLike)) else source.tell()
    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = _torch_reason(error)
    try:
        if isinstance(source, (str, os.PathLike)):
            with open(source, "rb") as handle:
                data = handle.read()
        else:
            source.seek(start)
            data = source.read()
        names = _unsafe_torch_globals(data)
    except (OSError, ValueError, zipfile.BadZipFile):
        names = []
    if names:
        raise UnsafePickleError(
            f"refused {label}: it asks for {', '.join(names[:5])}, which a plain tensor file never needs; {NOTHING_RUN}"
        )
    raise UnsafePickleError(f"refused {label}: not plain tensor data ({reason}); {NOTHING_RUN}")

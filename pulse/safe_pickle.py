"""Restricted (allow-list) unpickling for third-party checkpoints.

``pickle.load`` runs whatever callables a pickle names (``os.system``, ``builtins.eval``, ...), so
checkpoints we did not write are read with :func:`restricted_load` instead: every global the pickle
references must be listed in an explicit ``{(module, name): object}`` mapping and resolves to the
given object -- the real thing for harmless data constructors (numpy arrays, ``OrderedDict``) or an
inert stand-in from :func:`stub_class` for classes whose code we must not run (e.g. the ``dnnlib``
classes inside TensorFlow-era StyleGAN pickles). Anything else is refused with
:class:`pickle.UnpicklingError` naming the global, before it is called. Persistent ids (used by
``torch.save``) are refused too; torch files go through ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import _codecs
import collections
import importlib
import io
import os
import pickle
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import IO, Any

__all__ = [
    "NUMPY_ALLOWED",
    "RestrictedUnpickler",
    "restricted_load",
    "stub_class",
]

AllowList = Mapping[tuple[str, str], object]


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
            raise pickle.UnpicklingError(
                f"refused global {module}.{name}: not in the allow-list of this restricted unpickler"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        # Persistent ids hand control to the loader (torch storages, external objects); none is expected.
        raise pickle.UnpicklingError(f"refused persistent id {pid!r}: not supported by the restricted unpickler")


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
        "__module__": f"pulse.safe_pickle.stub:{module}",
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

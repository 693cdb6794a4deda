"""Reading the pickles data sets are distributed as, without letting them run code.

tieredImageNet's ``*_images_png.pkl`` / ``*_labels.pkl`` and CIFAR-100's ``train`` / ``test``
/ ``meta`` are pickles of dicts, lists, strings and NumPy arrays, most written by Python 2. An
ordinary unpickler would call whatever global a tampered file names (``os.system``, say); this
one resolves only the NumPy globals that rebuild arrays, and refuses anything else before it is
called. Python 2 strings are read as latin-1, which keeps array bytes intact.
"""

from __future__ import annotations

import importlib
import os
import pickle
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np


class UnsafePickleError(ValueError):
    """A pickle asked for something other than the NumPy globals that rebuild arrays."""


def _numpy_global(module_names: Sequence[str], name: str) -> Callable[[], Any]:
    def resolve():
        for module_name in module_names:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)
                    module = importlib.import_module(module_name)
                return getattr(module, name)
            except (ImportError, AttributeError):
                continue
        raise pickle.UnpicklingError(f"numpy has no {name} in {' or '.join(module_names)}")

    return resolve


# NumPy 1.x pickles name ``numpy.core``, NumPy 2.x ``numpy._core``; either is rebuilt by whichever
# this NumPy has. None of these can run code: they build arrays, dtypes and scalars from the
# bytes that follow them in the pickle.
_MULTIARRAY = ("numpy._core.multiarray", "numpy.core.multiarray")
_NUMERIC = ("numpy._core.numeric", "numpy.core.numeric")
ALLOWED_GLOBALS: dict[tuple[str, str], Callable[[], Any]] = {
    **{(m, "_reconstruct"): _numpy_global(_MULTIARRAY, "_reconstruct") for m in _MULTIARRAY},
    **{(m, "scalar"): _numpy_global(_MULTIARRAY, "scalar") for m in _MULTIARRAY},
    **{(m, "_frombuffer"): _numpy_global(_NUMERIC, "_frombuffer") for m in _NUMERIC},
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
}
# Python 3 writes ``bytes`` as ``_codecs.encode(text, "latin1")`` under protocol 2; readers of
# pickles written that way (learn2learn's miniImageNet) allow it too.
WITH_PYTHON3_BYTES: dict[tuple[str, str], Callable[[], Any]] = {
    **ALLOWED_GLOBALS,
    ("_codecs", "encode"): _numpy_global(("_codecs",), "encode"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str | os.PathLike, name: str, what: str,
                 allowed: Mapping[tuple[str, str], Callable[[], Any]]) -> None:
        super().__init__(file, encoding="latin1")
        self.source, self.name, self.what, self.allowed = source, name, what, allowed

    def find_class(self, module: str, name: str):
        resolve = self.allowed.get((module, name))
        if resolve is None:
            raise UnsafePickleError(
                f"{self.name}: {self.source} references the global {module}.{name}, which {self.what} never "
                f"needs; refusing to load it (only NumPy array globals are allowed): re-download the file "
                f"from a trusted source"
            )
        return resolve()

    def persistent_load(self, pid):
        raise UnsafePickleError(
            f"{self.name}: {self.source} uses persistent ids, which {self.what} never does; refusing it"
        )


def load_numpy_pickle(path: str | os.PathLike, name: str, what: str,
                      allowed: Mapping[tuple[str, str], Callable[[], Any]] = ALLOWED_GLOBALS) -> Any:
    """Unpickle ``path`` allowing only the NumPy globals that rebuild arrays.

    ``name`` (the data set) and ``what`` (``"a CIFAR-100 batch"``) word the errors: anything
    but those globals raises :class:`UnsafePickleError` before it is called, and a damaged or
    truncated file a one-line ValueError naming it. ``allowed`` widens the globals for files
    known to need more (:data:`WITH_PYTHON3_BYTES`).
    """
    path = Path(path)
    with open(path, "rb") as f:
        return load_numpy_pickle_from(f, path, name, what, allowed)


def load_numpy_pickle_from(file, source: str | os.PathLike, name: str, what: str,
                           allowed: Mapping[tuple[str, str], Callable[[], Any]] = ALLOWED_GLOBALS) -> Any:
    """:func:`load_numpy_pickle` for an open binary file (an archive member); ``source`` names it."""
    try:
        return _NumpyOnlyUnpickler(file, source, name, what, allowed).load()
    except UnsafePickleError:
        raise
    except Exception as err:  # truncated, not a pickle, damaged array data, ...
        reason = " ".join(f"{type(err).__name__}: {err}".split())
        raise ValueError(
            f"{name}: cannot unpickle {source} ({reason}); the file is damaged or not {what}: re-download it"
        ) from None


def text_key(key: Any) -> Any:
    """A dict key as text: Python 2 pickles read with ``encoding='bytes'`` elsewhere give bytes."""
    return key.decode("latin1") if isinstance(key, bytes) else key


def text_keys(mapping: dict) -> dict:
    """``mapping`` with bytes keys decoded, so ``b'data'`` and ``'data'`` are the same key."""
    return {text_key(k): v for k, v in mapping.items()}

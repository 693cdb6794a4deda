"""Checkpoint files: written atomically, read with ``torch.load(weights_only=True)``.

A checkpoint is a dict of tensors and plain values (numbers, strings, lists, tuples, dicts)
tagged with :data:`FORMAT` and :data:`VERSION`. Nothing else is ever needed, so nothing is
allow-listed: a file that asks the unpickler for any other object (which is how a pickle runs
code) is refused before that object is built.
"""

from __future__ import annotations

import os
import pickle
import pickletools
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from ..atomic_files import atomic_writer, write_failure
from .errors import RunError

FORMAT = "fewshot-metaopt-checkpoint"
VERSION = 1
NUMBER = (int, float)
# What each part of a checkpoint must be before anything reads it: a dict maps keys to their
# own schema, a type or tuple of types is checked with isinstance (None allowed where listed).
SCHEMA: dict[str, Any] = {
    "iteration": int,
    "task": {"data": dict},
    "learner": {"model": dict, "rule": dict, "meta_optimizer": dict, "iteration": int},
    "meta_schedule": (dict, type(None)),
    "rng": dict,
    "samplers": {"train": dict},
    "progress": {"iteration": int, "elapsed_s": NUMBER, "best_value": (*NUMBER, type(None)),
                 "best_iteration": (int, type(None)), "metrics_bytes": int, "window": dict},
}
REQUIRED = tuple(SCHEMA)


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write ``payload`` atomically; a failed write keeps the old file and names the new one."""
    try:
        with atomic_writer(path) as f:
            torch.save({"format": FORMAT, "version": VERSION, **payload}, f)
    except RuntimeError as err:  # torch's zip writer reports a failed write (a full disk) so
        raise write_failure(path, err) from None


def _refused(path: Path, err: pickle.UnpicklingError) -> str | None:
    """Why torch's weights-only loader refused a well-formed pickle, or ``None`` when the file
    is simply damaged (the loader raises the same exception type for both)."""
    lines = [line.strip() for line in str(err).splitlines() if "GLOBAL" in line]
    if lines:
        return lines[0]
    if zipfile.is_zipfile(path):
        return None
    try:
        with open(path, "rb") as f:
            for _ in pickletools.genops(f):
                pass
    except Exception:  # pickletools reports a damaged stream as several types
        return None
    return "a pickle with instructions a weights-only load does not run"


def _reason(err: BaseException) -> str:
    """The informative line of a loader's (often long, multi-line) message."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Weights only load failed", "Please file", "Check the"))]
    first_sentence = (useful or lines or [""])[0].split(". ")[0][:160]
    return f"{type(err).__name__}: {first_sentence}" if first_sentence else type(err).__name__


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise RunError(f"checkpoint {path} does not exist" if not path.exists() else f"checkpoint {path} is not a file")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch reports truncation and garbage as several types
        refused = _refused(path, err) if isinstance(err, pickle.UnpicklingError) else None
        if refused is not None:
            raise RunError(
                f"{path}: refused: not a weights-only checkpoint; it holds objects other than tensors and plain "
                f"values, and loading could run code ({refused})"
            ) from None
        raise RunError(f"{path} is truncated or corrupt and cannot be read ({_reason(err)})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise RunError(f"{path} is not a fewshot-metaopt checkpoint")
    if payload.get("version") != VERSION:
        raise RunError(
            f"{path} is a version {payload.get('version')} checkpoint; this fewshot-metaopt reads version {VERSION}"
        )
    missing = [key for key in REQUIRED if key not in payload]
    if missing:
        raise RunError(f"{path} is an incomplete checkpoint: it lacks {', '.join(missing)}")
    _check(path, payload, SCHEMA, "")
    return payload


def _kind(expected: Any) -> str:
    kinds = expected if isinstance(expected, tuple) else (expected,)
    return " or ".join("None" if k is type(None) else k.__name__ for k in kinds)


def _check(path: Path, value: Any, schema: dict[str, Any], where: str) -> None:
    for key, expected in schema.items():
        name = f"{where}{key}"
        if key not in value:
            raise RunError(f"{path} is an incomplete checkpoint: it lacks {name}")
        part = value[key]
        if isinstance(expected, dict):
            if not isinstance(part, dict):
                raise RunError(f"{path} is a damaged checkpoint: {name} is a {type(part).__name__}, expected a dict")
            _check(path, part, expected, f"{name}.")
        elif isinstance(part, bool) or not isinstance(part, expected):
            raise RunError(f"{path} is a damaged checkpoint: {name} is a {type(part).__name__}, "
                           f"expected {_kind(expected)}")


@contextmanager
def applied(path: str | os.PathLike, what: str = "its content does not fit this run") -> Iterator[None]:
    """Turn a failure to apply a checkpoint's content (a state dict that does not fit, a value
    of the wrong kind deep inside) into one line naming the file."""
    try:
        yield
    except (RuntimeError, KeyError, ValueError, TypeError, AttributeError, IndexError) as err:
        # torch lists every mismatch on a line of its own; the first one names the culprit.
        lines = [line.strip().rstrip(".") for line in str(err).splitlines() if line.strip()]
        reason = next((line for line in lines if not line.endswith(":")), type(err).__name__)
        raise RunError(f"{path}: {what} ({reason[:200]})") from None

"""Checkpoint files: written atomically, read with ``torch.load(weights_only=True)``.

A checkpoint is a dict of tensors and plain values (numbers, strings, lists, tuples, dicts)
tagged with :data:`FORMAT` and :data:`VERSION`. Nothing else is ever needed, so nothing is
allow-listed: a file that asks the unpickler for any other object (which is how a pickle runs
code) is refused before that object is built.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from ..atomic_files import atomic_writer
from .errors import RunError

FORMAT = "fewshot-metaopt-checkpoint"
VERSION = 1
REQUIRED = ("iteration", "task", "learner", "meta_schedule", "rng", "samplers", "progress")


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    with atomic_writer(path) as f:
        torch.save({"format": FORMAT, "version": VERSION, **payload}, f)


def _refused_global(err: pickle.UnpicklingError) -> str | None:
    """The line of torch's weights-only message naming the object it refused to build, if any
    (the same exception type reports plain garbage, which names none)."""
    lines = [line.strip() for line in str(err).splitlines() if "GLOBAL" in line]
    return lines[0] if lines else None


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
        refused = _refused_global(err) if isinstance(err, pickle.UnpicklingError) else None
        if refused is not None:
            raise RunError(
                f"{path} holds objects other than tensors and plain values; it is not loaded, since "
                f"loading could run code ({refused})"
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
    return payload

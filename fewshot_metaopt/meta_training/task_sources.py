"""Named episode sources for meta-training a rule over a mixture.

``build(data_root)`` returns the source and a description of what was actually loaded. The
Omniglot entries fall back to the embedded Glyphs characters when ``data_root`` holds no
Omniglot, so a mixture runs anywhere; the description says which data set it is, so that
no result on Glyphs is taken for one on Omniglot.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..datasets import Glyphs, Omniglot, Sinusoid
from ..registry import Registry


@dataclass(frozen=True)
class TaskSource:
    """``build(data_root) -> (source, description)``; ``inputs`` matches an architecture's."""

    build: Callable[[Path | None], tuple[Any, str]]
    inputs: str


TASK_SOURCES: Registry[TaskSource] = Registry("task source")


def has_omniglot(root: Path | None) -> bool:
    return root is not None and ((root / "images_background.zip").exists() or (root / "images_background").is_dir())


def _omniglot_or_glyphs(lake_split: str, glyphs_split: str) -> Callable[[Path | None], tuple[Any, str]]:
    def build(root: Path | None) -> tuple[Any, str]:
        if has_omniglot(root):
            return Omniglot(root, lake_split), f"Omniglot {lake_split} alphabets"
        return Glyphs(split=glyphs_split), f"Glyphs {glyphs_split} characters (no Omniglot at {root})"
    return build


TASK_SOURCES.register("omniglot-background", TaskSource(_omniglot_or_glyphs("background", "train"), "image"))
TASK_SOURCES.register("omniglot-evaluation", TaskSource(_omniglot_or_glyphs("evaluation", "test"), "image"))
TASK_SOURCES.register("glyphs-train", TaskSource(lambda root: (Glyphs(split="train"), "Glyphs train characters"),
                                                 "image"))
TASK_SOURCES.register("sinusoid", TaskSource(lambda root: (Sinusoid(), "sinusoid regression (Finn et al.)"),
                                             "scalar"))

"""learn2learn's random class rotation for Omniglot-like data: every class of an episode turned
by a multiple of 90 degrees drawn for that class.

Drawn per class, as learn2learn's ``RandomClassRotation`` task transform does: a character
turned a quarter is another character (Santoro et al. 2016 made new classes this way, and
Vinyals et al.'s Omniglot split keeps the four turns as four classes), so all images of a
class, support and query alike, turn together. Turning images one by one would instead mix
orientations within a class and ask the model to ignore them.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from .augmentation import PER_CLASS, Augmentation

QUARTER_TURNS = (0, 1, 2, 3)


class ClassRotation(Augmentation):
    """Each class of an episode turned counter-clockwise by one of ``quarter_turns`` quarter
    turns (default all four: learn2learn's ``degrees=[0, 90, 180, 270]``), drawn uniformly per
    class and episode."""

    name = "class_rotation"
    per = PER_CLASS

    def __init__(self, quarter_turns: Sequence[int] = QUARTER_TURNS) -> None:
        turns = list(quarter_turns) if isinstance(quarter_turns, (list, tuple)) else None
        if (not turns or len(set(turns)) != len(turns)
                or any(isinstance(t, bool) or t not in QUARTER_TURNS for t in turns)):
            raise ValueError(f"ClassRotation needs distinct quarter_turns among 0, 1, 2, 3 (0 is upright, 1 a "
                             f"quarter counter-clockwise), got {quarter_turns!r}")
        self.quarter_turns = tuple(int(t) for t in turns)

    def check(self, source: Any) -> None:
        shape = tuple(source.image_shape)
        if shape[-1] != shape[-2]:
            raise ValueError(f"class_rotation needs square images, and {source.name} split {source.split!r} has "
                             f"{shape[-2]}x{shape[-1]}; set its image_size to a square")
        rotated = getattr(source, "class_rotation", None)
        if rotated is not None and bool((rotated % 4 != 0).any()):
            raise ValueError(f"class_rotation would turn the classes of {source.name} split {source.split!r}, which "
                             f"are already turns of each other (two labels of an episode could then be one "
                             f"picture); use a split without rotated classes (Omniglot: background or evaluation)")

    def __call__(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> Tensor:
        ways = int(labels.max()) + 1
        choice = torch.randint(len(self.quarter_turns), (ways,), generator=generator)
        turns = torch.tensor(self.quarter_turns)[choice][labels]
        out = torch.empty_like(images)
        for k in self.quarter_turns:
            rows = turns == k
            out[rows] = torch.rot90(images[rows], k, dims=(-2, -1))
        return out

    def settings(self) -> dict[str, Any]:
        return {"quarter_turns": list(self.quarter_turns)}

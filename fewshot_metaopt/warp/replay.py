"""A bounded replay buffer of points on inner-loop trajectories, for the Warp-Grad objective.

Each point is what one inner step started from: the task-adapted weights (detached), the
inner rule's state, the step index and the episode. Warp-Grad's meta-objective samples points
from here instead of differentiating through whole trajectories, which is why its cost does
not grow with the number of inner steps. The buffer keeps the ``size`` most recent points
(oldest dropped first), so its memory is at most ``size`` copies of the adapted weights (plus
their rule states); episodes are held by reference, not copied.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, fields
from typing import Any, Dict, List

import torch
from torch import Tensor

from ..episodes.episode import Episode
from ..optim.rules.preprocess import state_bytes


@dataclass(frozen=True)
class TrajectoryPoint:
    params: Dict[str, Tensor]
    rule_state: Any
    step: int
    episode: Episode


class ReplayBuffer:
    """The ``size`` most recent trajectory points; uniform sampling from its own generator."""

    def __init__(self, size: int, seed: int = 0) -> None:
        if size < 1:
            raise ValueError(f"the replay buffer needs size >= 1, got {size}")
        self.size = size
        self._points: deque[TrajectoryPoint] = deque(maxlen=size)
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self._points)

    def add(self, point: TrajectoryPoint) -> None:
        self._points.append(point)

    def clear(self) -> None:
        self._points.clear()

    def sample(self, count: int) -> List[TrajectoryPoint]:
        """``count`` distinct points (all of them if fewer are held)."""
        if not self._points:
            raise ValueError("the replay buffer is empty: run inner loops (meta_train_step) before a warp update")
        order = torch.randperm(len(self._points), generator=self.generator)[:count].tolist()
        return [self._points[i] for i in order]

    def state_dict(self) -> dict:
        """Tensors, numbers and plain containers only (loadable with ``weights_only=True``): the
        sampling generator and every point with its episode. Rule states must be ``None`` or
        plain containers of tensors (SGD's is ``None``)."""
        for point in self._points:
            _check_plain(point.rule_state)
        return {
            "size": self.size,
            "generator": self.generator.get_state(),
            "points": [
                {"params": dict(p.params), "rule_state": p.rule_state, "step": p.step,
                 "episode": {f.name: getattr(p.episode, f.name) for f in fields(p.episode)}}
                for p in self._points
            ],
        }

    def load_state_dict(self, state: dict) -> None:
        if int(state["size"]) != self.size:
            raise ValueError(f"replay buffer state holds size {state['size']}, this buffer has size {self.size}")
        # A checkpoint loaded with map_location="cuda" brings the state on the GPU; a
        # generator takes it from a CPU ByteTensor only.
        self.generator.set_state(state["generator"].cpu())
        self._points.clear()
        for p in state["points"]:
            self._points.append(TrajectoryPoint(dict(p["params"]), p["rule_state"], int(p["step"]), Episode(**p["episode"])))

    def nbytes(self) -> int:
        """Bytes of the stored weights and rule states (episodes are shared, not counted)."""
        return state_bytes([(p.params, p.rule_state) for p in self._points])


def _check_plain(tree: Any) -> None:
    if tree is None or isinstance(tree, (Tensor, int, float)):
        return
    if isinstance(tree, dict):
        for value in tree.values():
            _check_plain(value)
        return
    if type(tree) in (list, tuple):
        for value in tree:
            _check_plain(value)
        return
    raise ValueError(
        f"the replay buffer cannot save a rule state of type {type(tree).__name__}; "
        "use a rule whose state is None or plain dicts/lists of tensors"
    )

"""What a meta-gradient strategy may ask of the learner it serves: a small public interface,
so strategies (the task loop, vmapped chunks, Warp-Grad) never reach into the learner's
internals and a new strategy needs nothing else."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence

import torch
from torch import Tensor, nn

from ..engines.func_engine import FuncEngine
from ..episodes.episode import Episode
from ..warp.warp_grad import WarpGradTrainer
from .config import GradientMetaLearnerConfig


class MetaLearner(Protocol):
    config: GradientMetaLearnerConfig
    model: nn.Module
    adapted: List[str]
    device: torch.device
    warp: Optional[WarpGradTrainer]

    @property
    def func_engine(self) -> Optional[FuncEngine]: ...

    @property
    def meta_parameters(self) -> List[Tensor]: ...

    @property
    def training_mode(self) -> str: ...

    def loss(self, output: Tensor, target: Tensor, task: int, phase: str) -> Tensor: ...

    def forward(self, fmodel: Any, x: Tensor, task: int, phase: str) -> Tensor: ...

    def checked(self, loss: Tensor, task: int, phase: str, step: int) -> Tensor: ...

    def inner_loop(self, episode: Episode, steps: int, mode: str, task: int, per_step_query: bool,
                   record: Optional[Callable] = None,
                   batches: Optional[Sequence[Tensor]] = None) -> tuple[Any, Any, list[Tensor]]: ...

    def initial_weights(self, episode: Episode, task: int, mode: str) -> Optional[Dict[str, Tensor]]: ...

    def step_weights(self, steps: int) -> Tensor: ...

    def backward(self, objective: Tensor, inputs: Optional[List[Tensor]] = None) -> None: ...

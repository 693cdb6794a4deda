"""One few-shot task (an :class:`Episode`) and a stack of them (an :class:`EpisodeBatch`)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Sequence

import torch
from torch import Tensor


def _moved(obj, device, non_blocking: bool) -> dict:
    out = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        out[f.name] = value.to(device, non_blocking=non_blocking) if isinstance(value, Tensor) else value
    return out


@dataclass
class Episode:
    """A support set to adapt on and a query set to evaluate on.

    Classification: ``support_x`` is ``(ways * shots, C, H, W)`` float32, ``support_y`` the
    labels ``0..ways-1`` (class-major order), ``query_x``/``query_y`` likewise with
    ``ways * queries`` rows, and ``classes[i]`` the dataset's class id behind label ``i``.
    Regression: ``support_y`` holds targets and ``task_params`` the parameters of the sampled
    function (for the sinusoid: amplitude and phase); ``classes`` is empty.
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    classes: Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))
    task_params: Tensor | None = None

    @property
    def ways(self) -> int:
        return max(int(self.classes.numel()), 1)

    @property
    def shots(self) -> int:
        return self.support_x.shape[0] // self.ways

    @property
    def queries(self) -> int:
        return self.query_x.shape[0] // self.ways

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Episode":
        return Episode(**_moved(self, device, non_blocking))


@dataclass
class EpisodeBatch:
    """Same-shaped episodes stacked along a leading task dimension, for batched engines."""

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    classes: Tensor
    task_params: Tensor | None = None

    def __len__(self) -> int:
        return self.support_x.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "EpisodeBatch":
        return EpisodeBatch(**_moved(self, device, non_blocking))

    def unbind(self) -> list[Episode]:
        params = [None] * len(self) if self.task_params is None else list(self.task_params)
        return [
            Episode(sx, sy, qx, qy, c, p)
            for sx, sy, qx, qy, c, p in zip(
                self.support_x, self.support_y, self.query_x, self.query_y, self.classes, params
            )
        ]


def _resolved(device: torch.device | str) -> torch.device:
    device = torch.device(device)
    if device.type == "cpu":
        return torch.device("cpu")  # CPU tensors report no index, whatever "cpu:N" named
    if device.type == "cuda" and device.index is None:  # pragma: no cover - needs a GPU
        # "cuda" means the current GPU, where .to("cuda") would put a tensor.
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _holds(tensor: Tensor, device: torch.device) -> bool:
    return tensor.device.type == device.type and (device.index is None or tensor.device.index == device.index)


def _tensors(episode: Episode) -> list[Tensor]:
    return [v for v in (getattr(episode, f.name) for f in fields(episode)) if isinstance(v, Tensor)]


def _stackable(episodes: Sequence[Episode]) -> bool:
    """Whether every field is a tensor of one shape, dtype and device in all episodes (or None
    in all), so that one stacked copy per field carries the whole meta-batch."""
    for f in fields(Episode):
        values = [getattr(ep, f.name) for ep in episodes]
        if all(v is None for v in values):
            continue
        if not all(isinstance(v, Tensor) for v in values):
            return False
        first = values[0]
        # dtype too: torch.stack would promote mixed dtypes and change what the model sees.
        if any(v.shape != first.shape or v.dtype != first.dtype or v.device != first.device for v in values):
            return False
    return True


def _to(value: Tensor, device: torch.device) -> Tensor:
    if device.type == "cuda" and value.device.type == "cpu":  # pragma: no cover - needs a GPU
        # From page-locked memory the copy runs asynchronously on the current stream, which
        # orders it before the kernels that read it; pageable memory would block the host.
        host = value if value.is_pinned() else value.pin_memory()
        return host.to(device, non_blocking=True)
    return value.to(device)


def _episode_to(episode: Episode, device: torch.device) -> Episode:
    values = {f.name: getattr(episode, f.name) for f in fields(episode)}
    return Episode(**{name: _to(v, device) if isinstance(v, Tensor) else v for name, v in values.items()})


def _stacked_to(values: list[Tensor], device: torch.device) -> Tensor:
    if device.type == "cuda" and values[0].device.type == "cpu":  # pragma: no cover - needs a GPU
        # Stacked straight into page-locked memory: one host copy, then one asynchronous transfer.
        buffer = torch.empty((len(values), *values[0].shape), dtype=values[0].dtype, pin_memory=True)
        return torch.stack(values, out=buffer).to(device, non_blocking=True)
    return torch.stack(values).to(device)


def episodes_to(episodes: Sequence[Episode], device: torch.device | str) -> list[Episode]:
    """``episodes`` on ``device``: the same objects when all their tensors are already there;
    otherwise one transfer per field for the whole meta-batch when the episodes share shapes,
    dtypes and devices (each episode then holds views of the stacked tensors), else one
    episode at a time. Transfers to a GPU go from page-locked memory and do not block."""
    episodes = list(episodes)
    target = _resolved(device)
    if all(_holds(t, target) for ep in episodes for t in _tensors(ep)):
        return episodes
    if not _stackable(episodes):
        return [_episode_to(ep, target) for ep in episodes]
    moved = {}
    for f in fields(Episode):
        values = [getattr(ep, f.name) for ep in episodes]
        moved[f.name] = [None] * len(episodes) if values[0] is None else _stacked_to(values, target).unbind(0)
    return [Episode(**{name: column[i] for name, column in moved.items()}) for i in range(len(episodes))]


def stack_episodes(episodes: Sequence[Episode]) -> EpisodeBatch:
    """Stack episodes into one :class:`EpisodeBatch`; they must all have the same shapes."""
    if len(episodes) == 0:
        raise ValueError("stack_episodes needs at least one episode, got an empty sequence")
    first = episodes[0]
    for i, ep in enumerate(episodes):
        for name in ("support_x", "support_y", "query_x", "query_y", "classes"):
            a, b = getattr(first, name), getattr(ep, name)
            if a.shape != b.shape:
                raise ValueError(
                    f"cannot stack episodes: episode {i} has {name} of shape {tuple(b.shape)}, "
                    f"episode 0 has {tuple(a.shape)}; sample them with the same ways/shots/queries"
                )
    has_params = [ep.task_params is not None for ep in episodes]
    if any(has_params) and not all(has_params):
        raise ValueError("cannot stack episodes: some have task_params and some do not")
    return EpisodeBatch(
        support_x=torch.stack([ep.support_x for ep in episodes]),
        support_y=torch.stack([ep.support_y for ep in episodes]),
        query_x=torch.stack([ep.query_x for ep in episodes]),
        query_y=torch.stack([ep.query_y for ep in episodes]),
        classes=torch.stack([ep.classes for ep in episodes]),
        task_params=torch.stack([ep.task_params for ep in episodes]) if all(has_params) else None,
    )

"""The sinusoid regression family of MAML (Finn et al. 2017, section 5.1).

A task is ``y = A sin(x - phase)`` with ``A ~ U[0.1, 5]``, ``phase ~ U[0, pi]``,
``x ~ U[-5, 5]``; an episode holds ``shots`` support points and ``queries`` query points of
one task, as ``(n, 1)`` float32 tensors.
"""

from __future__ import annotations

import math

import torch

from ..episodes.episode import Episode
from .base import check_counts


class Sinusoid:
    is_regression = True

    def __init__(
        self,
        amplitude: tuple[float, float] = (0.1, 5.0),
        phase: tuple[float, float] = (0.0, math.pi),
        x_range: tuple[float, float] = (-5.0, 5.0),
        noise_std: float = 0.0,
    ) -> None:
        for name, (lo, hi) in (("amplitude", amplitude), ("phase", phase), ("x_range", x_range)):
            if not lo <= hi:
                raise ValueError(f"Sinusoid {name} must be (low, high) with low <= high, got {(lo, hi)}")
        if noise_std < 0:
            raise ValueError(f"Sinusoid noise_std must be >= 0, got {noise_std}")
        self.amplitude, self.phase, self.x_range = amplitude, phase, x_range
        self.noise_std = noise_std

    def __repr__(self) -> str:
        return f"Sinusoid(amplitude={self.amplitude}, phase={self.phase}, x_range={self.x_range})"

    def validate(self, ways: int, shots: int, queries: int) -> None:
        check_counts(shots, queries)
        if ways != 1:
            raise ValueError(f"Sinusoid is a regression family: ways must be 1, got {ways}")

    @staticmethod
    def _uniform(bounds: tuple[float, float], size: int, generator: torch.Generator) -> torch.Tensor:
        lo, hi = bounds
        return lo + (hi - lo) * torch.rand(size, generator=generator)

    def sample_episode(self, ways: int, shots: int, queries: int, generator: torch.Generator) -> Episode:
        amplitude = self._uniform(self.amplitude, 1, generator)
        phase = self._uniform(self.phase, 1, generator)
        x = self._uniform(self.x_range, shots + queries, generator).unsqueeze(1)
        y = amplitude * torch.sin(x - phase)
        if self.noise_std:
            y = y + self.noise_std * torch.randn(y.shape, generator=generator)
        return Episode(
            support_x=x[:shots],
            support_y=y[:shots],
            query_x=x[shots:],
            query_y=y[shots:],
            task_params=torch.cat([amplitude, phase]),
        )

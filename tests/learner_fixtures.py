"""Tiny float64 models and episodes for exact meta-gradient checks."""

import torch
from torch import nn

from fewshot_metaopt import Episode


def tiny_mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()


def tiny_convnet() -> nn.Sequential:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1),
        nn.BatchNorm2d(2, track_running_stats=False),
        nn.Tanh(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * 2 * 2, 2),
    ).double()


def classification_episodes(n_tasks: int, input_shape, ways: int = 2, shots: int = 2, queries: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    episodes = []
    for _ in range(n_tasks):
        episodes.append(
            Episode(
                support_x=torch.randn(ways * shots, *input_shape, generator=g, dtype=torch.float64),
                support_y=torch.arange(ways).repeat_interleave(shots),
                query_x=torch.randn(ways * queries, *input_shape, generator=g, dtype=torch.float64),
                query_y=torch.arange(ways).repeat_interleave(queries),
                classes=torch.arange(ways),
            )
        )
    return episodes

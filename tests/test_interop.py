"""Episode sources from learn2learn and torchmeta, exercised with fakes of the same shapes.

The real packages are exercised in tests/test_peers_learn2learn.py inside the peers environment.
"""

import random

import pytest
import torch

from fewshot_metaopt import TaskDistributionSampler
from fewshot_metaopt.episodes import (
    Learn2LearnTasks,
    episodes_from_torchmeta,
    iter_torchmeta,
    split_support_query,
)


class FakeTaskset:
    """Mimics learn2learn's TaskDataset.sample(): shuffled (X, y) of ways * (shots + queries)."""

    def __init__(self, ways=5, per_class=4, classes=(3, 17, 42, 8, 11, 60), seed=0):
        self.ways, self.per_class, self.classes = ways, per_class, classes
        self.g = torch.Generator().manual_seed(seed)

    def sample(self):
        chosen = torch.tensor(self.classes)[torch.randperm(len(self.classes), generator=self.g)[: self.ways]]
        y = chosen.repeat_interleave(self.per_class)
        # each example carries its class and its index in its class
        x = torch.stack([y.float(), torch.arange(len(y)).float() % self.per_class], dim=1)
        order = torch.randperm(len(y), generator=self.g)
        return x[order], y[order]


def test_split_support_query_keeps_order_and_remaps_labels():
    y = torch.tensor([9, 4, 9, 4, 9, 4])
    x = torch.arange(6).float().unsqueeze(1)
    ep = split_support_query(x, y, shots=1)
    assert ep.classes.tolist() == [4, 9]
    assert ep.support_x.flatten().tolist() == [1.0, 0.0]
    assert ep.support_y.tolist() == [0, 1]
    assert ep.query_x.flatten().tolist() == [3.0, 5.0, 2.0, 4.0]
    assert ep.query_y.tolist() == [0, 0, 1, 1]


@pytest.mark.parametrize(
    "y, shots, message",
    [
        (torch.tensor([0, 0, 1]), 1, r"unequal sizes \[2, 1\]"),
        (torch.tensor([0, 0, 1, 1]), 2, "2 examples per class, not enough for shots=2"),
    ],
)
def test_split_support_query_errors(y, shots, message):
    with pytest.raises(ValueError, match=message):
        split_support_query(torch.zeros(len(y), 2), y, shots)
    with pytest.raises(ValueError, match="3 inputs but 2 labels"):
        split_support_query(torch.zeros(3, 2), torch.zeros(2), 1)


def test_sampler_accepts_a_learn2learn_taskset():
    sampler = TaskDistributionSampler(FakeTaskset(), ways=5, shots=1, queries=3)
    assert isinstance(sampler.source, Learn2LearnTasks)
    for ep in sampler.sample_batch(5):
        assert ep.support_x.shape == (5, 2) and ep.query_x.shape == (15, 2)
        assert ep.support_y.tolist() == list(range(5))
        # labels point at their original classes
        assert torch.equal(ep.classes[ep.support_y].float(), ep.support_x[:, 0])
        assert torch.equal(ep.classes[ep.query_y].float(), ep.query_x[:, 0])
        support = {tuple(r) for r in ep.support_x.tolist()}
        assert not support & {tuple(r) for r in ep.query_x.tolist()}


class GlobalRandomTaskset:
    """Draws with Python's global ``random``, as learn2learn does."""

    def sample(self):
        classes = random.sample(range(50), 3)
        y = torch.tensor(classes).repeat_interleave(2)
        return y.float().unsqueeze(1) + torch.tensor([[random.random()] for _ in y]), y


def test_learn2learn_draws_are_seeded_by_the_sampler_and_leave_random_alone():
    random.seed(1)
    state = random.getstate()
    a = TaskDistributionSampler(GlobalRandomTaskset(), ways=3, shots=1, queries=1, seed=4)
    b = TaskDistributionSampler(GlobalRandomTaskset(), ways=3, shots=1, queries=1, seed=4)
    c = TaskDistributionSampler(GlobalRandomTaskset(), ways=3, shots=1, queries=1, seed=5)
    xa, xb, xc = a.sample().support_x, b.sample().support_x, c.sample().support_x
    assert torch.equal(xa, xb) and not torch.equal(xa, xc)
    manifest = a.fixed(3)
    assert torch.equal(manifest[2].query_x, manifest[2].query_x)
    assert random.getstate() == state


def test_learn2learn_mismatches_are_clear():
    sampler = TaskDistributionSampler(FakeTaskset(), ways=5, shots=1, queries=5)
    with pytest.raises(ValueError, match="5 ways and 3 queries per class, sampler asks ways=5, queries=5"):
        sampler.sample()
    wrapped = Learn2LearnTasks(FakeTaskset(), shots=2)
    with pytest.raises(ValueError, match="built for shots=2, sampler asks 1"):
        wrapped.validate(5, 1, 3)


def fake_torchmeta_batch(tasks=3, ways=4, shots=2, queries=3):
    g = torch.Generator().manual_seed(0)
    train_y = torch.arange(ways).repeat(shots).expand(tasks, -1)
    test_y = torch.arange(ways).repeat(queries).expand(tasks, -1)
    return {
        "train": (torch.rand(tasks, ways * shots, 1, 28, 28, generator=g), train_y),
        "test": (torch.rand(tasks, ways * queries, 1, 28, 28, generator=g), test_y),
    }


def test_torchmeta_batch_becomes_episodes():
    batch = fake_torchmeta_batch()
    eps = episodes_from_torchmeta(batch)
    assert len(eps) == 3
    ep = eps[1]
    assert ep.support_x.shape == (8, 1, 28, 28) and ep.query_x.shape == (12, 1, 28, 28)
    assert (ep.ways, ep.shots, ep.queries) == (4, 2, 3)
    assert torch.equal(ep.support_x, batch["train"][0][1])
    assert torch.equal(ep.query_y, batch["test"][1][1])
    assert len(list(iter_torchmeta([batch, batch]))) == 6


def test_torchmeta_errors():
    with pytest.raises(ValueError, match="mapping with 'train' and 'test'"):
        episodes_from_torchmeta({"train": None})
    batch = fake_torchmeta_batch(tasks=1, ways=2)
    batch["test"] = (batch["test"][0], batch["test"][1] + 5)
    with pytest.raises(ValueError, match="query labels that its support set lacks"):
        episodes_from_torchmeta(batch)

"""EpisodeDataset under torch's DataLoader: finite, reproducible, the same episodes whatever the
number of workers, none drawn twice, stacked by ``collate_fn=stack_episodes``."""

import hashlib
from collections import Counter

import pytest
import torch
from torch.utils.data import DataLoader

from fewshot_metaopt import EpisodeDataset, GradientMetaLearner, GradientMetaLearnerConfig, stack_episodes
from fewshot_metaopt.datasets import Glyphs, Sinusoid
from fewshot_metaopt.episodes import EpisodeBatch, TaskDistributionSampler
from fewshot_metaopt.models import conv4

WAYS, SHOTS, QUERIES = 3, 1, 2


@pytest.fixture(scope="module")
def glyphs():
    return Glyphs("train", num_characters=30, samples_per_class=6, image_size=16)


def sampler_of(source, **options) -> TaskDistributionSampler:
    return TaskDistributionSampler(source, ways=WAYS, shots=SHOTS, queries=QUERIES, **options)


def fingerprint(episode) -> str:
    """One episode's identity: its classes and every pixel and label."""
    h = hashlib.sha256()
    for tensor in (episode.classes, episode.support_x, episode.support_y, episode.query_x, episode.query_y):
        h.update(tensor.contiguous().numpy().tobytes())
    return h.hexdigest()


def drawn(loader) -> list[str]:
    return [fingerprint(episode) for batch in loader for episode in batch.unbind()]


def test_a_dataset_is_finite_and_says_its_length(glyphs):
    dataset = EpisodeDataset(sampler_of(glyphs), episodes=7)
    assert len(dataset) == 7 and len(list(dataset)) == 7
    assert len(EpisodeDataset(sampler_of(glyphs, episodes_per_epoch=5))) == 5
    assert len(DataLoader(dataset, batch_size=3, collate_fn=stack_episodes)) == 3


def test_a_stream_without_a_length_is_refused(glyphs):
    with pytest.raises(ValueError, match="needs a number of episodes per epoch: pass episodes=N"):
        EpisodeDataset(sampler_of(glyphs))


@pytest.mark.parametrize("options, message", [
    ({"episodes": 0}, "EpisodeDataset needs an integer episodes >= 1, got 0"),
    ({"episodes": 2.5}, "EpisodeDataset needs an integer episodes >= 1, got 2.5"),
    ({"episodes": 4, "epoch": -1}, "EpisodeDataset needs an integer epoch >= 0, got -1"),
    ({"episodes": 4, "seed": "1"}, "EpisodeDataset needs an integer seed, got '1'"),
])
def test_bad_settings_are_one_line_errors(glyphs, options, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        EpisodeDataset(sampler_of(glyphs), **options)
    with pytest.raises(TypeError, match="needs a TaskDistributionSampler, got Glyphs"):
        EpisodeDataset(glyphs, episodes=3)


def test_episodes_are_named_by_seed_epoch_and_index_only(glyphs):
    sampler = sampler_of(glyphs, seed=4)
    state = sampler.state_dict()["generator"].clone()
    dataset = EpisodeDataset(sampler, episodes=6)
    first = [fingerprint(e) for e in dataset]
    assert [fingerprint(e) for e in dataset] == first  # the same epoch again
    assert first == [fingerprint(dataset.episode(i)) for i in range(6)]
    assert torch.equal(sampler.state_dict()["generator"], state)  # the training stream is untouched
    assert len(set(first)) == 6
    assert [fingerprint(e) for e in EpisodeDataset(sampler_of(glyphs, seed=4), episodes=6)] == first
    assert not set(first) & {fingerprint(e) for e in EpisodeDataset(sampler, episodes=6, seed=5)}
    assert not set(first) & {fingerprint(e) for e in sampler.fixed(6)}
    dataset.set_epoch(1)
    second = [fingerprint(e) for e in dataset]
    assert not set(first) & set(second)
    with pytest.raises(IndexError, match="episode index 6 is out of range for 6 episodes"):
        dataset.episode(6)


def test_workers_draw_disjoint_streams_that_make_up_the_same_episodes(glyphs):
    dataset = EpisodeDataset(sampler_of(glyphs, seed=2), episodes=12)
    alone = drawn(DataLoader(dataset, batch_size=2, collate_fn=stack_episodes))
    assert alone == [fingerprint(e) for e in dataset] and len(set(alone)) == 12
    two = DataLoader(dataset, batch_size=2, num_workers=2, collate_fn=stack_episodes)
    with_two = drawn(two)
    assert Counter(with_two) == Counter(alone)  # every episode once, none repeated across workers
    # Worker w of 2 takes episodes w, w + 2, ...; the loader alternates between their batches.
    assert with_two[:4] == [alone[0], alone[2], alone[1], alone[3]]
    assert drawn(two) == with_two  # the same seed and worker count: the same batches in the same order


def test_stack_episodes_collates_a_meta_batch_the_learner_trains_on(glyphs):
    dataset = EpisodeDataset(sampler_of(glyphs), episodes=4)
    batches = list(DataLoader(dataset, batch_size=2, collate_fn=stack_episodes))
    assert [type(b) for b in batches] == [EpisodeBatch, EpisodeBatch]
    assert batches[0].support_x.shape == (2, WAYS * SHOTS, 1, 16, 16)
    assert batches[0].query_y.shape == (2, WAYS * QUERIES)
    torch.manual_seed(0)
    learner = GradientMetaLearner(conv4(WAYS, hidden=4, image_size=16),
                                  GradientMetaLearnerConfig(inner_steps=1))
    result = learner.meta_train_step(batches[0].unbind())
    assert result.tasks == 2 and result.loss > 0


def test_a_regression_family_streams_too():
    dataset = EpisodeDataset(TaskDistributionSampler(Sinusoid(), shots=5, queries=5, seed=1), episodes=3)
    (batch,) = DataLoader(dataset, batch_size=3, collate_fn=stack_episodes)
    assert batch.support_x.shape == (3, 5, 1) and batch.task_params.shape[0] == 3

"""Our sampler over real learn2learn task sets (integration; needs the peers environment).

Skipped unless learn2learn imports, so the core environment never runs (or fails) these.
Set up and run with::

    bash benchmarks/peers/setup.sh
    .peers-venv/bin/python -m pytest tests/test_peers_learn2learn.py -q

learn2learn draws every task from Python's global ``random``; the tests seed it themselves.
"""

from __future__ import annotations

import os
import random
import zipfile
from pathlib import Path

import pytest

l2l = pytest.importorskip("learn2learn")

import torch  # noqa: E402
from torch.utils.data import TensorDataset  # noqa: E402

from fewshot_metaopt import TaskDistributionSampler, stack_episodes  # noqa: E402
from fewshot_metaopt.episodes.interop import split_support_query  # noqa: E402

pytestmark = [
    pytest.mark.peers,
    # learn2learn 0.2.0 renamed TaskDataset to Taskset and warns on the old name; both are tested.
    pytest.mark.filterwarnings("ignore:TaskDataset is deprecated:DeprecationWarning"),
]

REPO = Path(__file__).resolve().parents[1]
OMNIGLOT_ZIPS = REPO.parent / "shared" / "data" / "omniglot"

# Tiny in-memory data set: 8 classes with non-consecutive label values, 10 examples each.
# Every input is filled with its own example id, so an episode row can be traced back.
LABEL_VALUES = [3, 7, 12, 20, 31, 44, 58, 90]
PER_CLASS = 10


def _tiny_dataset() -> tuple[TensorDataset, dict[int, int]]:
    ids = torch.arange(len(LABEL_VALUES) * PER_CLASS)
    labels = torch.tensor(LABEL_VALUES).repeat_interleave(PER_CLASS)
    # Shuffle so the data set is not stored class by class.
    perm = torch.randperm(len(ids), generator=torch.Generator().manual_seed(1))
    ids, labels = ids[perm], labels[perm]
    x = ids.float().view(-1, 1, 1, 1).expand(-1, 1, 3, 3).contiguous()
    id_to_label = {int(i): int(c) for i, c in zip(ids, labels)}
    return TensorDataset(x, labels), id_to_label


def _row_ids(x: torch.Tensor) -> list[int]:
    return [int(v) for v in x[:, 0, 0, 0]]


@pytest.fixture(scope="module")
def tiny():
    dataset, id_to_label = _tiny_dataset()
    return l2l.data.MetaDataset(dataset), id_to_label


def _taskset(meta, ways: int, samples: int, *, remap: bool = False, num_tasks: int = -1, cls: str = "TaskDataset"):
    transforms = [
        l2l.data.transforms.NWays(meta, n=ways),
        l2l.data.transforms.KShots(meta, k=samples),
        l2l.data.transforms.LoadData(meta),
    ]
    if remap:
        transforms += [
            l2l.data.transforms.RemapLabels(meta),
            l2l.data.transforms.ConsecutiveLabels(meta),
        ]
    return getattr(l2l.data, cls)(meta, task_transforms=transforms, num_tasks=num_tasks)


def _check_episode(ep, ways: int, shots: int, queries: int, sample_shape: tuple[int, ...]):
    assert ep.support_x.shape == (ways * shots, *sample_shape)
    assert ep.query_x.shape == (ways * queries, *sample_shape)
    assert ep.support_x.dtype == torch.float32
    assert ep.support_y.dtype == ep.query_y.dtype == torch.long
    # Labels are 0..ways-1, class-major.
    assert torch.equal(ep.support_y, torch.arange(ways).repeat_interleave(shots))
    assert torch.equal(ep.query_y, torch.arange(ways).repeat_interleave(queries))
    assert ep.classes.shape == (ways,)
    assert (ep.ways, ep.shots, ep.queries) == (ways, shots, queries)


@pytest.mark.parametrize("cls", ["TaskDataset", "Taskset"])
@pytest.mark.parametrize("ways,shots,queries", [(5, 1, 3), (3, 2, 5), (8, 4, 6)])
def test_tiny_taskset_episodes_keep_original_classes(tiny, ways, shots, queries, cls):
    meta, id_to_label = tiny
    random.seed(0)
    taskset = _taskset(meta, ways, shots + queries, cls=cls)
    sampler = TaskDistributionSampler(taskset, ways=ways, shots=shots, queries=queries, seed=0)
    seen_class_sets = set()
    for _ in range(20):
        ep = sampler.sample()
        _check_episode(ep, ways, shots, queries, (1, 3, 3))
        # Without RemapLabels, the task's labels are the data set's own: classes keeps them.
        classes = [int(c) for c in ep.classes]
        assert classes == sorted(set(classes)) and set(classes) <= set(LABEL_VALUES)
        seen_class_sets.add(tuple(classes))
        support_ids, query_ids = _row_ids(ep.support_x), _row_ids(ep.query_x)
        # Every row is a distinct example; support and query share none.
        assert len(set(support_ids + query_ids)) == len(support_ids) + len(query_ids)
        for rows, labels in ((support_ids, ep.support_y), (query_ids, ep.query_y)):
            for example, label in zip(rows, labels):
                assert id_to_label[example] == classes[int(label)]
    if ways < len(LABEL_VALUES):
        assert len(seen_class_sets) > 1, "learn2learn kept drawing the same classes"


def test_remapped_taskset_labels_are_consistent(tiny):
    """With RemapLabels + ConsecutiveLabels, learn2learn's labels are already 0..N-1."""
    meta, id_to_label = tiny
    random.seed(1)
    taskset = _taskset(meta, 5, 1 + 4, remap=True)
    sampler = TaskDistributionSampler(taskset, ways=5, shots=1, queries=4, seed=0)
    for _ in range(10):
        ep = sampler.sample()
        _check_episode(ep, 5, 1, 4, (1, 3, 3))
        assert torch.equal(ep.classes, torch.arange(5))
        # Each episode label stands for exactly one original class, and vice versa.
        original = {}
        for rows, labels in ((_row_ids(ep.support_x), ep.support_y), (_row_ids(ep.query_x), ep.query_y)):
            for example, label in zip(rows, labels):
                original.setdefault(int(label), set()).add(id_to_label[example])
        assert all(len(v) == 1 for v in original.values())
        assert len(set.union(*original.values())) == 5


def test_split_support_query_on_raw_learn2learn_task(tiny):
    meta, id_to_label = tiny
    random.seed(2)
    x, y = _taskset(meta, 4, 2 + 3).sample()
    ep = split_support_query(x, y, shots=2)
    _check_episode(ep, 4, 2, 3, (1, 3, 3))
    assert sorted(int(c) for c in ep.classes) == sorted(set(int(v) for v in y))
    # The first `shots` examples of each class (in the task's order) are the support set.
    for i, c in enumerate(ep.classes):
        rows = [int(r) for r in torch.nonzero(y == c).flatten()]
        assert _row_ids(ep.support_x[ep.support_y == i]) == _row_ids(x[rows[:2]])
        assert _row_ids(ep.query_x[ep.query_y == i]) == _row_ids(x[rows[2:]])


def test_batches_stack_and_cached_tasks_work(tiny):
    meta, _ = tiny
    random.seed(3)
    taskset = _taskset(meta, 5, 1 + 2, num_tasks=4)  # learn2learn caches 4 task descriptions
    sampler = TaskDistributionSampler(taskset, ways=5, shots=1, queries=2, seed=0)
    batch = stack_episodes(sampler.sample_batch(6))
    assert batch.support_x.shape == (6, 5, 1, 3, 3)
    assert batch.query_x.shape == (6, 10, 1, 3, 3)
    assert batch.classes.shape == (6, 5)
    assert len({tuple(c.tolist()) for c in batch.classes}) <= 4


def test_python_random_seed_repeats_episodes(tiny):
    meta, _ = tiny
    taskset = _taskset(meta, 5, 1 + 3)
    runs = []
    for _ in range(2):
        random.seed(123)
        sampler = TaskDistributionSampler(taskset, ways=5, shots=1, queries=3, seed=0)
        runs.append([sampler.sample() for _ in range(3)])
    for a, b in zip(*runs):
        assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_x, b.query_x)
        assert torch.equal(a.classes, b.classes)


@pytest.mark.parametrize(
    "ways,queries,match",
    [
        (5, 4, "queries"),  # the task has 3 queries per class
        (5, 2, "queries"),
        (4, 3, "ways"),  # the task has 5 classes
    ],
)
def test_mismatched_sampler_settings_raise(tiny, ways, queries, match):
    meta, _ = tiny
    random.seed(4)
    sampler = TaskDistributionSampler(_taskset(meta, 5, 1 + 3), ways=ways, shots=1, queries=queries, seed=0)
    with pytest.raises(ValueError, match=match):
        sampler.sample()


def test_too_few_examples_for_shots_raises(tiny):
    meta, _ = tiny
    random.seed(5)
    sampler = TaskDistributionSampler(_taskset(meta, 5, 2), ways=5, shots=2, queries=1, seed=0)
    with pytest.raises(ValueError, match="not enough"):
        sampler.sample()


def test_fixed_manifest_is_repeatable(tiny):
    meta, _ = tiny
    random.seed(6)
    sampler = TaskDistributionSampler(_taskset(meta, 5, 1 + 3), ways=5, shots=1, queries=3, seed=0)
    manifest = sampler.fixed(4)
    state = random.getstate()
    first, again = manifest[0], manifest[0]
    assert random.getstate() == state
    assert torch.equal(first.support_x, again.support_x)
    assert torch.equal(first.query_x, again.query_x)
    assert not torch.equal(manifest[1].support_x, first.support_x)


# --- Real Omniglot through learn2learn's FullOmniglot ------------------------------------


@pytest.fixture(scope="module")
def omniglot_root(tmp_path_factory):
    """A few alphabets of each real zip, extracted in torchvision's layout (kept small: learn2learn
    builds its label bookkeeping by loading every image once)."""
    if not all((OMNIGLOT_ZIPS / f"{n}.zip").is_file() for n in ("images_background", "images_evaluation")):
        pytest.skip("../shared/data/omniglot (images_background.zip, images_evaluation.zip) is absent")
    root = tmp_path_factory.mktemp("l2l-omniglot")
    folder = root / "omniglot-py"
    for name, alphabets in (("images_background", 2), ("images_evaluation", 1)):
        with zipfile.ZipFile(OMNIGLOT_ZIPS / f"{name}.zip") as archive:
            members = [m for m in archive.namelist() if m.endswith(".png")]
            keep = sorted({m.split("/")[1] for m in members})[:alphabets]
            archive.extractall(folder, [m for m in members if m.split("/")[1] in keep])
    return root


@pytest.fixture(scope="module")
def omniglot_meta(omniglot_root):
    from PIL.Image import LANCZOS
    from torchvision import transforms
    from torchvision.datasets.omniglot import Omniglot

    # torchvision accepts Omniglot only beside a zip with the upstream md5; the shared zips are
    # repacked copies of the same files, so check for the extracted folder instead.
    original = Omniglot._check_integrity
    Omniglot._check_integrity = lambda self: os.path.isdir(os.path.join(self.root, self._get_target_folder()))
    try:
        dataset = l2l.vision.datasets.FullOmniglot(
            root=str(omniglot_root),
            transform=transforms.Compose([transforms.Resize(28, interpolation=LANCZOS), transforms.ToTensor()]),
        )
    finally:
        Omniglot._check_integrity = original
    return l2l.data.MetaDataset(dataset)


def test_full_omniglot_episodes(omniglot_meta):
    meta = omniglot_meta
    assert len(meta.labels) > 20
    random.seed(7)
    ways, shots, queries = 5, 1, 15
    sampler = TaskDistributionSampler(_taskset(meta, ways, shots + queries), ways=ways, shots=shots, queries=queries, seed=0)
    for _ in range(3):
        ep = sampler.sample()
        _check_episode(ep, ways, shots, queries, (1, 28, 28))
        assert set(int(c) for c in ep.classes) <= set(meta.labels)
        for i, c in enumerate(ep.classes):
            # Every image under label i is one of class classes[i]'s own images, used once.
            own = torch.stack([meta[j][0] for j in meta.labels_to_indices[int(c)]])
            rows = torch.cat([ep.support_x[ep.support_y == i], ep.query_x[ep.query_y == i]])
            matches = [[torch.equal(r, o) for o in own] for r in rows]
            assert all(any(m) for m in matches)
            assert len({m.index(True) for m in matches}) == len(rows)


def test_full_omniglot_standard_transforms(omniglot_meta):
    """learn2learn's benchmark chain (remapped, consecutive, rotated classes) through our sampler."""
    meta = omniglot_meta
    random.seed(8)
    taskset = l2l.data.TaskDataset(
        meta,
        task_transforms=[
            l2l.data.transforms.FusedNWaysKShots(meta, n=5, k=1 + 5),
            l2l.data.transforms.LoadData(meta),
            l2l.data.transforms.RemapLabels(meta),
            l2l.data.transforms.ConsecutiveLabels(meta),
            l2l.vision.transforms.RandomClassRotation(meta, [0.0, 90.0, 180.0, 270.0]),
        ],
    )
    sampler = TaskDistributionSampler(taskset, ways=5, shots=1, queries=5, seed=0)
    ep = sampler.sample()
    _check_episode(ep, 5, 1, 5, (1, 28, 28))
    assert torch.equal(ep.classes, torch.arange(5))
    with pytest.raises(ValueError, match="queries"):
        TaskDistributionSampler(taskset, ways=5, shots=1, queries=15, seed=0).sample()

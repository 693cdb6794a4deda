"""Episode manifest files: a fixed set of episodes as JSON, to score the same episodes later or elsewhere.

:func:`save_manifest` writes the episodes of ``sampler.fixed(n)`` (or a run's test episodes),
:func:`load_manifest` rebuilds the same tensors from the file and the data set. A manifest
names, for each episode, its classes (label ``i`` is the ``i``-th) and, per class, the ids of
its support and query images. An image's id is its position within its class in the order
the data set stores the class's images (each loader's order is in docs/episodes.md), so
another library that lists a class's files in that order can score the same episodes::

    {"format": "fewshot-metaopt episode manifest", "version": 1,
     "dataset": "Glyphs", "split": "test", "image_shape": [1, 28, 28],
     "sampler": {"ways": 5, "shots": 1, "queries": 15, "seed": 0},
     "augmentation": null,
     "episodes": [
       {"seed": 12345, "classes": ["glyph0007", ...], "support": [[3], ...], "query": [[11, 0, ...], ...],
        "pixels_sha256": "9f2c..."},
       ...]}

``pixels_sha256`` is the digest of the episode's stored (uint8) images, so a manifest read
against another copy, version or image size of the data set is an error, not other episodes.
Augmented episodes (a sampler with ``augment``) also record the augmentation and each
episode's ``augment_seed``: this library rebuilds them exactly; another library sees the
images before augmentation.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Sequence, overload

import torch

from ..atomic_files import atomic_write_text
from ..episodes.augmentation_registry import AUGMENTATIONS
from ..episodes.augmented_family import IMAGE_DATASET_METHODS, AugmentedFamily
from ..episodes.episode import Episode
from ..episodes.episode_draw import EpisodeDraw
from ..episodes.sampler import EpisodeManifest

FORMAT = "fewshot-metaopt episode manifest"
VERSION = 1
IMAGE_IDS = ("an image's position within its class, in the order the data set stores the class's images "
             "(docs/episodes.md); support and query list them per class, in label order")


def pixels_digest(pixels: torch.Tensor) -> str:
    return hashlib.sha256(pixels.contiguous().numpy().tobytes()).hexdigest()


def _image_source(source: Any, doing: str) -> Any:
    if not all(hasattr(source, method) for method in IMAGE_DATASET_METHODS):
        raise TypeError(f"{doing} needs an image data set (a ClassImageDataset): a manifest lists classes and "
                        f"images, which {type(source).__name__} episodes do not have")
    return source


def _episode_record(source: Any, draw: EpisodeDraw, seed: int | None) -> dict[str, Any]:
    names = [source.class_names[int(c)] for c in draw.classes]
    record: dict[str, Any] = {
        "seed": seed,
        "classes": names,
        "support": draw.positions[:, : draw.shots].tolist(),
        "query": draw.positions[:, draw.shots :].tolist(),
    }
    if draw.augment_seed is not None:
        record["augment_seed"] = draw.augment_seed
    record["pixels_sha256"] = pixels_digest(source.pixels(draw))
    return record


def save_manifest(episodes: EpisodeManifest, path: str | os.PathLike) -> Path:
    """Write ``episodes`` (``sampler.fixed(n)``, or a slice of it) to ``path`` as JSON, atomically."""
    if not isinstance(episodes, EpisodeManifest):
        raise TypeError(f"save_manifest needs fixed episodes (sampler.fixed(n)), got {type(episodes).__name__}; "
                        f"a list of built episodes no longer knows which images it holds")
    source = _image_source(episodes.source, "save_manifest")
    records = []
    for seed in episodes.seeds:
        draw = source.draw(episodes.ways, episodes.shots, episodes.queries, torch.Generator().manual_seed(seed))
        records.append(_episode_record(source, draw, seed))
    augmentation = source.augmentation if isinstance(source, AugmentedFamily) else None
    header = {
        "format": FORMAT,
        "version": VERSION,
        "dataset": source.name,
        "split": source.split,
        "image_shape": list(source.image_shape),
        "sampler": {"ways": episodes.ways, "shots": episodes.shots, "queries": episodes.queries,
                    "seed": episodes.seed},
        "augmentation": None if augmentation is None else {"name": augmentation.name,
                                                           "settings": augmentation.settings()},
        "image_ids": IMAGE_IDS,
    }
    # A key per line and an episode per line: a 600-episode manifest stays readable and diffable.
    fields = [f"  {json.dumps(key)}: {json.dumps(value)}" for key, value in header.items()]
    episodes_text = ",\n".join(f"    {json.dumps(record)}" for record in records)
    path = Path(path)
    atomic_write_text(path, "{\n" + ",\n".join(fields) + ',\n  "episodes": [\n' + episodes_text + "\n  ]\n}\n")
    return path


class ManifestEpisodes(Sequence[Episode]):
    """The episodes of a manifest file over a data set, built when read (like ``sampler.fixed``).

    Reading an episode checks its stored images against the manifest's digest.
    """

    def __init__(self, source: Any, draws: Sequence[EpisodeDraw], digests: Sequence[str], path: Path,
                 ways: int, shots: int, queries: int, seeds: Sequence[int | None]) -> None:
        self.source, self.path = source, path
        self.draws, self.digests, self.seeds = list(draws), list(digests), list(seeds)
        self.ways, self.shots, self.queries = ways, shots, queries

    def __len__(self) -> int:
        return len(self.draws)

    @overload
    def __getitem__(self, index: int) -> Episode: ...

    @overload
    def __getitem__(self, index: slice) -> "ManifestEpisodes": ...

    def __getitem__(self, index):
        if isinstance(index, slice):
            return ManifestEpisodes(self.source, self.draws[index], self.digests[index], self.path, self.ways,
                                    self.shots, self.queries, self.seeds[index])
        draw = self.draws[index]
        if pixels_digest(self.source.pixels(draw)) != self.digests[index]:
            number = range(len(self))[index]
            raise ValueError(f"{self.path}: the images of episode {number} differ from those the manifest was "
                             f"written from; this {self.source.name} split {self.source.split!r} is another copy, "
                             f"version or image size of the data set")
        return self.source.build_episode(draw)


class _Reader:
    """Checks a manifest's JSON, one line per problem, naming the file and what is wrong."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, message: str) -> ValueError:
        return ValueError(f"{self.path}: {message}")

    def field(self, table: dict, key: str, kind: type | tuple[type, ...], where: str) -> Any:
        if key not in table:
            raise self.fail(f"{where} lacks {key!r}")
        value = table[key]
        if isinstance(value, bool) or not isinstance(value, kind):
            names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            raise self.fail(f"{where}'s {key!r} must be {names}, got {value!r}")
        return value

    def count(self, table: dict, key: str, least: int, where: str) -> int:
        value = self.field(table, key, int, where)
        if value < least:
            raise self.fail(f"{where}'s {key!r} must be at least {least}, got {value}")
        return value

    def document(self) -> dict:
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"episode manifest {self.path} does not exist") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise self.fail(f"not an episode manifest: not valid JSON ({err})") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise self.fail(f"not an episode manifest (it lacks \"format\": \"{FORMAT}\")")
        version = self.field(doc, "version", int, "the manifest")
        if version > VERSION:
            raise self.fail(f"manifest version {version} is newer than this fewshot-metaopt reads ({VERSION}); "
                            f"upgrade fewshot-metaopt")
        return doc

    def augmented(self, doc: dict, source: Any) -> Any:
        spec = doc.get("augmentation")
        if spec is None:
            return source
        if not isinstance(spec, dict):
            raise self.fail(f"the manifest's 'augmentation' must be null or a JSON object, got {spec!r}")
        name = self.field(spec, "name", str, "the augmentation")
        settings = self.field(spec, "settings", dict, "the augmentation")
        if name not in AUGMENTATIONS:
            raise self.fail(f"unknown augmentation {name!r}; this fewshot-metaopt has "
                            f"{', '.join(AUGMENTATIONS.names())}")
        try:
            return AugmentedFamily(source, AUGMENTATIONS.build(name, **settings))
        except (TypeError, ValueError) as err:
            raise self.fail(f"its augmentation {name!r} cannot be rebuilt: {err}") from None

    def ids(self, record: dict, key: str, ways: int, per_class: int, where: str) -> list[list[int]]:
        rows = self.field(record, key, list, where)
        if len(rows) != ways or any(not isinstance(row, list) or len(row) != per_class for row in rows):
            raise self.fail(f"{where}'s {key!r} must list {ways} classes of {per_class} image ids each, got {rows!r}")
        for row in rows:
            for value in row:
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise self.fail(f"{where}'s {key!r} holds {value!r}, which is not an image id "
                                    f"(an integer >= 0)")
        return rows

    def draw(self, record: Any, number: int, source: Any, index_of: dict[str, int], shape: tuple[int, int, int],
             augmented: bool) -> EpisodeDraw:
        where = f"episode {number}"
        if not isinstance(record, dict):
            raise self.fail(f"{where} must be a JSON object, got {record!r}")
        ways, shots, queries = shape
        names = self.field(record, "classes", list, where)
        if len(names) != ways or not all(isinstance(name, str) for name in names):
            raise self.fail(f"{where}'s 'classes' must name {ways} classes, got {names!r}")
        support = self.ids(record, "support", ways, shots, where)
        query = self.ids(record, "query", ways, queries, where)
        sizes = source.class_sizes
        classes = []
        for name, images in zip(names, (s + q for s, q in zip(support, query))):
            if name not in index_of:
                raise self.fail(f"{where} names class {name!r}, which {source.name} split {source.split!r} lacks")
            index = index_of[name]
            if index in classes:
                raise self.fail(f"{where} names class {name!r} twice")
            size = int(sizes[index])
            for image in images:
                if image >= size:
                    raise self.fail(f"{where} names image {image} of class {name!r}, which has {size} images "
                                    f"(ids 0 to {size - 1}) in {source.name} split {source.split!r}")
            if len(set(images)) != len(images):
                raise self.fail(f"{where} names an image of class {name!r} twice: {images}")
            classes.append(index)
        augment_seed = self.field(record, "augment_seed", int, where) if augmented else None
        positions = torch.tensor([s + q for s, q in zip(support, query)], dtype=torch.long).view(ways, shots + queries)
        return EpisodeDraw(torch.tensor(classes, dtype=torch.long), positions, shots, augment_seed)


def load_manifest(path: str | os.PathLike, source: Any) -> ManifestEpisodes:
    """The episodes of the manifest at ``path``, over ``source``: the data set split it was
    written from (the same classes, images and image size; any copy of it), not augmented
    (a manifest that records an augmentation applies it itself)."""
    path = Path(path)
    reader = _Reader(path)
    source = _image_source(source, "load_manifest")
    if isinstance(source, AugmentedFamily):
        raise ValueError(f"load_manifest needs the data set itself, not {source!r}: the manifest says whether and "
                         f"how its episodes are augmented")
    doc = reader.document()
    shape = reader.field(doc, "image_shape", list, "the manifest")
    if list(source.image_shape) != shape:
        raise reader.fail(f"the manifest's images are {tuple(shape)}, those of {source.name} split {source.split!r} "
                          f"are {tuple(source.image_shape)}; load the data set with the image size the manifest "
                          f"was written with")
    sampler = reader.field(doc, "sampler", dict, "the manifest")
    ways, shots = reader.count(sampler, "ways", 1, "the sampler"), reader.count(sampler, "shots", 1, "the sampler")
    queries = reader.count(sampler, "queries", 0, "the sampler")
    family = reader.augmented(doc, source)
    index_of = {name: i for i, name in enumerate(source.class_names)}
    records = reader.field(doc, "episodes", list, "the manifest")
    augmented = family is not source
    draws = [reader.draw(record, i, source, index_of, (ways, shots, queries), augmented)
             for i, record in enumerate(records)]
    digests = [reader.field(record, "pixels_sha256", str, f"episode {i}") for i, record in enumerate(records)]
    seeds = [record.get("seed") for record in records]
    return ManifestEpisodes(family, draws, digests, path, ways, shots, queries, seeds)

"""Glyphs: an embedded, procedurally drawn few-shot image dataset (a demo, not a benchmark).

Each character is a handful of random pen strokes; each of its samples is the same strokes
redrawn by a different "drawer" (a small random affine transform, wobble of the control
points and a pen width), in Omniglot's format: 28x28, strokes bright on black. Everything
comes from the seed through NumPy's PCG64, so every machine draws the same pixels and a
fresh machine needs no download. Characters are split into disjoint train/val/test sets.

It exists so that examples, the quick start and tests run anywhere; report results on
Omniglot or miniImageNet, not on this.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..episodes.sampler import derive_seed
from . import cache
from .base import ClassImageDataset

SPLITS = ("train", "val", "test", "trainval")
_FORMAT = "glyphs-v1"
_SUPERSAMPLE = 4
_SPLIT_STREAM = -1  # character streams use indices >= 0, so the split draw never collides


def _character_strokes(rng: np.random.Generator) -> list[np.ndarray]:
    """2-4 strokes, each a polyline through 2-4 points, inside the unit square."""
    strokes = []
    for _ in range(int(rng.integers(2, 5))):
        n = int(rng.integers(2, 5))
        start = rng.uniform(0.2, 0.8, size=2)
        steps = rng.normal(0.0, 0.22, size=(n - 1, 2))
        points = np.clip(np.vstack([start, start + np.cumsum(steps, axis=0)]), 0.12, 0.88)
        strokes.append(points)
    return strokes


def _smooth(points: np.ndarray, samples: int = 12) -> np.ndarray:
    """A Chaikin-like smoothing through the control points, so strokes curve like pen lines."""
    if len(points) < 3:
        return points
    t = np.linspace(0.0, 1.0, samples)[:, None]
    out = []
    for a, b, c in zip(points[:-2], points[1:-1], points[2:]):
        p0, p2 = (a + b) / 2, (b + c) / 2
        out.append((1 - t) ** 2 * p0 + 2 * (1 - t) * t * b + t**2 * p2)
    return np.vstack([points[:1], *out, points[-1:]])


def _draw(strokes: list[np.ndarray], rng: np.random.Generator, size: int) -> np.ndarray:
    angle = rng.normal(0.0, 0.12)
    scale = rng.uniform(0.85, 1.1)
    shift = rng.normal(0.0, 0.04, size=2)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    big = size * _SUPERSAMPLE
    canvas = Image.new("L", (big, big), 0)
    pen = ImageDraw.Draw(canvas)
    width = int(round(rng.uniform(1.2, 2.2) * _SUPERSAMPLE))
    for points in strokes:
        wobbly = points + rng.normal(0.0, 0.025, size=points.shape)
        placed = (_smooth(wobbly) - 0.5) @ rot.T * scale + 0.5 + shift
        xy = [tuple(p) for p in (placed * big).tolist()]
        pen.line(xy, fill=255, width=width, joint="curve")
    return np.asarray(canvas.resize((size, size), Image.LANCZOS), dtype=np.uint8)


def render_characters(
    indices: list[int], seed: int, samples_per_class: int, image_size: int
) -> np.ndarray:
    """uint8 ``(len(indices), samples_per_class, size, size)``; character ``i`` depends only on ``(seed, i)``."""
    out = np.empty((len(indices), samples_per_class, image_size, image_size), dtype=np.uint8)
    for row, index in enumerate(indices):
        rng = np.random.Generator(np.random.PCG64(derive_seed(seed, index)))
        strokes = _character_strokes(rng)
        for s in range(samples_per_class):
            out[row, s] = _draw(strokes, rng, image_size)
    return out


def split_characters(num_characters: int, seed: int, fractions=(0.6, 0.2, 0.2)) -> dict[str, list[int]]:
    order = np.random.Generator(np.random.PCG64(derive_seed(seed, _SPLIT_STREAM))).permutation(num_characters)
    n_train = int(round(fractions[0] * num_characters))
    n_val = int(round(fractions[1] * num_characters))
    parts = {
        "train": sorted(order[:n_train].tolist()),
        "val": sorted(order[n_train : n_train + n_val].tolist()),
        "test": sorted(order[n_train + n_val :].tolist()),
    }
    parts["trainval"] = sorted(parts["train"] + parts["val"])
    return parts


class Glyphs(ClassImageDataset):
    """Procedural characters: ``split`` in train/val/test/trainval (60/20/20% of the characters).

    Args:
        split: which characters.
        seed: names the whole dataset; the same seed draws the same pixels everywhere.
        num_characters: characters over all splits.
        samples_per_class: drawers per character.
        image_size: side of the square images.
        cache_dir: where the rendered split is kept (default: :func:`default_cache_dir`).
    """

    def __init__(
        self,
        split: str = "train",
        seed: int = 0,
        num_characters: int = 600,
        samples_per_class: int = 20,
        image_size: int = 28,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown Glyphs split {split!r}; choose one of {', '.join(SPLITS)}")
        if num_characters < 5:
            raise ValueError(f"Glyphs needs num_characters >= 5 to split them, got {num_characters}")
        if samples_per_class < 1 or image_size < 8:
            raise ValueError(
                f"Glyphs needs samples_per_class >= 1 and image_size >= 8, got "
                f"{samples_per_class} and {image_size}"
            )
        indices = split_characters(num_characters, seed)[split]
        key = cache.key_of(
            [_FORMAT, str(seed), str(num_characters), str(samples_per_class), str(image_size), split]
        )
        path = cache.resolve_cache_dir(cache_dir) / f"glyphs-{split}-{key}.npz"
        shape = (len(indices), samples_per_class, image_size, image_size)

        def build() -> dict[str, np.ndarray]:
            return {"images": render_characters(indices, seed, samples_per_class, image_size)}

        def check(arrays: dict[str, np.ndarray]) -> str | None:
            images = arrays["images"]
            if images.dtype == np.uint8 and images.shape == shape:
                return None
            return f"images are {images.dtype} {images.shape}, expected uint8 {shape}"

        pixels = cache.cached(path, build, "Glyphs", check)["images"]
        self.cache_path = path
        images = torch.from_numpy(pixels).reshape(-1, 1, image_size, image_size)
        super().__init__(
            images,
            group_sizes=[samples_per_class] * len(indices),
            class_names=[f"glyph{i:04d}" for i in indices],
            name="Glyphs",
            split=split,
        )

"""Episode augmentations: what each does to the pixels, per image or per class, seeded from the
sampler so that the same seed gives the same augmented episodes, and refused where it cannot apply."""

import math

import pytest
import torch
import torch.nn.functional as F

from fewshot_metaopt import EpisodeDataset, TaskDistributionSampler
from fewshot_metaopt.datasets import ClassImageDataset, Sinusoid
from fewshot_metaopt.episodes import (AUGMENTATIONS, AugmentedFamily, ClassRotation, CropFlipJitter,
                                      ResizedCropFlipJitter)
from fewshot_metaopt.episodes.colour_jitter import adjust, grey, jitter
from fewshot_metaopt.episodes.crop_flip_jitter import (CROP_ATTEMPTS, draw_flips, padded_crop, resized_crop,
                                                       resized_crop_boxes)

NAMES = ("crop_flip_jitter", "resized_crop_flip_jitter", "class_rotation")
SEEDED = torch.Generator().manual_seed


def images(classes=6, per_class=8, channels=3, size=12, seed=0):
    return torch.randint(0, 256, (classes * per_class, channels, size, size), dtype=torch.uint8,
                         generator=SEEDED(seed))


def dataset(classes=6, per_class=8, channels=3, size=12, **kwargs):
    return ClassImageDataset(images(classes, per_class, channels, size), [per_class] * classes,
                             [f"class{i}" for i in range(classes)], name="Pictures", split="train", **kwargs)


def one_picture_per_class(classes=5, per_class=6, size=10):
    """Every image of a class is the same picture, so what differs between them is the augmentation's doing."""
    pictures = images(classes, 1, 3, size, seed=1)
    return ClassImageDataset(pictures.repeat_interleave(per_class, dim=0), [per_class] * classes,
                             [f"class{i}" for i in range(classes)], name="Pictures", split="train")


def episodes_equal(a, b):
    return all(torch.equal(getattr(a, k), getattr(b, k)) for k in ("support_x", "support_y", "query_x", "query_y",
                                                                      "classes"))


# ---------------------------------------------------------------------------- reproducibility


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_augmented_episodes_in_every_stream(name):
    data = dataset()

    def streams(seed):
        sampler = TaskDistributionSampler(data, ways=3, shots=2, queries=3, seed=seed, augment=name)
        torch.manual_seed(seed + 123)  # the global RNG plays no part
        return ([sampler.sample() for _ in range(3)], list(sampler.fixed(3)),
                list(EpisodeDataset(sampler, episodes=3)))

    first, again, other = streams(0), streams(0), streams(1)
    for stream, stream_again, stream_other in zip(first, again, other):
        assert all(episodes_equal(a, b) for a, b in zip(stream, stream_again))
        assert not all(torch.equal(a.query_x, b.query_x) for a, b in zip(stream, stream_other))


@pytest.mark.parametrize("name", NAMES)
def test_augmentation_changes_the_pixels_not_the_classes_and_images_drawn(name):
    data = dataset()
    plain = TaskDistributionSampler(data, ways=3, shots=2, queries=3, seed=4).sample()
    augmented = TaskDistributionSampler(data, ways=3, shots=2, queries=3, seed=4, augment=name).sample()
    assert torch.equal(plain.classes, augmented.classes) and torch.equal(plain.query_y, augmented.query_y)
    assert augmented.query_x.shape == plain.query_x.shape and augmented.query_x.dtype == torch.float32
    assert not torch.equal(plain.query_x, augmented.query_x)
    assert 0.0 <= float(augmented.query_x.min()) and float(augmented.query_x.max()) <= 1.0


def test_off_by_default_and_the_sampler_says_which():
    data = dataset()
    assert TaskDistributionSampler(data, seed=0, ways=3, queries=2).augmentation is None
    sampler = TaskDistributionSampler(data, seed=0, ways=3, queries=2, augment=ClassRotation(quarter_turns=(0, 2)))
    assert sampler.augmentation == ClassRotation(quarter_turns=[0, 2]) and isinstance(sampler.source, AugmentedFamily)
    assert sampler.source.class_names == data.class_names and sampler.source.num_classes == 6
    assert "ClassRotation(quarter_turns=[0, 2])" in repr(sampler.source)


def test_resumes_bit_exactly_with_augmentation():
    data = dataset()
    sampler = TaskDistributionSampler(data, ways=3, shots=1, queries=2, seed=0, augment="crop_flip_jitter")
    sampler.sample()
    state = sampler.state_dict()
    expected = [sampler.sample() for _ in range(2)]
    resumed = TaskDistributionSampler(data, ways=3, shots=1, queries=2, seed=0, augment="crop_flip_jitter")
    resumed.load_state_dict(state)
    assert all(episodes_equal(a, b) for a, b in zip(expected, [resumed.sample() for _ in range(2)]))


# ---------------------------------------------------------------------------- per image or per class


def test_natural_image_augmentations_draw_per_image():
    data = one_picture_per_class()
    for name in ("crop_flip_jitter", "resized_crop_flip_jitter"):
        episode = TaskDistributionSampler(data, ways=2, shots=1, queries=5, seed=0, augment=name).sample()
        same_class = episode.query_x[:5]  # five copies of one picture
        assert len({tuple(x.flatten().tolist()) for x in same_class}) == 5, name


def test_class_rotation_turns_each_class_as_one():
    data = one_picture_per_class()
    pictures = data.normalise(data.images[::6])
    sampler = TaskDistributionSampler(data, ways=5, shots=2, queries=4, seed=0, augment="class_rotation")
    seen = set()
    for _ in range(6):
        episode = sampler.sample()
        for label, cls in enumerate(episode.classes.tolist()):
            rows = torch.cat([episode.support_x[episode.support_y == label], episode.query_x[episode.query_y == label]])
            turns = [k for k in range(4) if torch.equal(rows[0], torch.rot90(pictures[cls], k, dims=(-2, -1)))]
            assert len(turns) == 1 and all(torch.equal(row, rows[0]) for row in rows)
            seen.add(turns[0])
    assert seen == {0, 1, 2, 3}


def test_class_rotation_draws_only_the_turns_it_is_given():
    data = one_picture_per_class()
    pictures = data.normalise(data.images[::6])
    episode = TaskDistributionSampler(data, ways=5, shots=1, queries=1, seed=0,
                                      augment=ClassRotation(quarter_turns=(1,))).sample()
    for x, cls in zip(episode.support_x, episode.classes):
        assert torch.equal(x, torch.rot90(pictures[cls], 1, dims=(-2, -1)))


# ---------------------------------------------------------------------------- the pixel operations


def test_padded_crop_is_a_window_of_the_padded_image_mirrored_where_asked():
    x = torch.rand(40, 2, 5, 7, generator=SEEDED(0))
    padding = 2
    flips = draw_flips(40, SEEDED(2))
    assert 10 < int(flips.sum()) < 30
    out = padded_crop(x, padding, flips, SEEDED(1))
    padded = F.pad(x, (padding,) * 4)
    offsets = []
    for image, result, flip in zip(padded, out, flips):
        result = result.flip(-1) if flip else result
        windows = [(i, j) for i in range(2 * padding + 1) for j in range(2 * padding + 1)
                   if torch.equal(image[:, i:i + 5, j:j + 7], result)]
        assert windows, "each crop is one window of its padded image"
        offsets.append(windows[0])
    assert len(set(offsets)) > 1  # each image at an offset of its own


def test_resized_crop_scales_each_box_as_torchvision_does():
    x = torch.rand(3, 3, 8, 8, generator=SEEDED(0))
    no_flips = torch.zeros(3, dtype=torch.bool)
    assert torch.allclose(resized_crop(x, torch.tensor([[0, 0, 8, 8]] * 3), no_flips), x, atol=1e-6)
    boxes = torch.tensor([[0, 0, 4, 4], [2, 4, 4, 4], [1, 1, 6, 3]])
    flips = torch.tensor([False, True, False])
    out = resized_crop(x, boxes, flips)
    for image, (top, left, height, width), flip, result in zip(x, boxes.tolist(), flips, out):
        crop = image[None, :, top:top + height, left:left + width]
        expected = F.interpolate(crop, size=(8, 8), mode="bilinear", align_corners=False, antialias=True)[0]
        assert torch.allclose(result, expected.flip(-1) if flip else expected, atol=1e-6)


def test_resized_crop_boxes_follow_scale_and_ratio():
    boxes = resized_crop_boxes(500, 40, 40, (0.08, 1.0), (3 / 4, 4 / 3), SEEDED(0))
    top, left, height, width = boxes.unbind(1)
    assert bool(((top >= 0) & (left >= 0) & (top + height <= 40) & (left + width <= 40)).all())
    share = (height * width).double() / 1600
    assert 0.06 < float(share.min()) and float(share.max()) <= 1.0 and float(share.std()) > 0.15
    aspect = width.double() / height
    assert 0.6 < float(aspect.min()) and float(aspect.max()) < 1.6
    # No box fits: the whole image, as torchvision's fallback for a ratio range that holds its own.
    fallback = resized_crop_boxes(3, 4, 4, (2.0, 3.0), (3 / 4, 4 / 3), SEEDED(0))
    assert fallback.tolist() == [[0, 0, 4, 4]] * 3
    wide = resized_crop_boxes(1, 4, 12, (2.0, 3.0), (3 / 4, 4 / 3), SEEDED(0))
    assert wide.tolist() == [[0, 3, 4, 5]] and CROP_ATTEMPTS == 10
    tall = resized_crop_boxes(1, 12, 4, (2.0, 3.0), (3 / 4, 4 / 3), SEEDED(0))
    assert tall.tolist() == [[3, 0, 5, 4]]


def test_colour_adjustments_follow_torchvision():
    x = torch.rand(3, 3, 4, 4, generator=SEEDED(0))
    grey_levels = 0.2989 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    assert torch.allclose(grey(x), grey_levels, atol=1e-6)
    f = torch.tensor([0.5, 1.0, 1.4])
    ones = torch.ones(3)

    def alone(index, factor):  # one adjustment, the others at factor 1 (off)
        factors = torch.stack([ones, ones, ones], dim=1)
        factors[:, index] = factor
        return adjust(x, factors, torch.tensor([[index, (index + 1) % 3, (index + 2) % 3]] * 3))

    w = f.view(3, 1, 1, 1)
    assert torch.allclose(alone(0, f), (x * w).clamp(0, 1), atol=1e-6)
    mean = grey_levels.mean(dim=(1, 2, 3), keepdim=True)
    assert torch.allclose(alone(1, f), (w * x + (1 - w) * mean).clamp(0, 1), atol=1e-6)
    assert torch.allclose(alone(2, f), (w * x + (1 - w) * grey_levels).clamp(0, 1), atol=1e-6)
    assert torch.allclose(alone(2, torch.zeros(3)), grey_levels.expand_as(x), atol=1e-6)
    assert torch.equal(alone(0, ones), x)
    one_channel = x[:, :1]
    assert torch.equal(grey(one_channel), one_channel)
    assert torch.equal(adjust(one_channel, torch.tensor([[1.0, 1.0, 0.3]] * 3), torch.tensor([[2, 0, 1]] * 3)),
                       one_channel)  # a grey image has no saturation to change


def test_adjustments_run_in_each_images_order():
    x = torch.rand(2, 3, 4, 4, generator=SEEDED(0))
    factors = torch.tensor([[1.3, 0.6, 1.0], [1.3, 0.6, 1.0]])
    out = adjust(x, factors, torch.tensor([[0, 1, 2], [1, 0, 2]]))
    brightened = (x[:1] * 1.3).clamp(0, 1)
    then_contrast = (0.6 * brightened + 0.4 * grey(brightened).mean()).clamp(0, 1)
    contrasted = (0.6 * x[1:] + 0.4 * grey(x[1:]).mean()).clamp(0, 1)
    then_brightness = (contrasted * 1.3).clamp(0, 1)
    assert torch.allclose(out[:1], then_contrast, atol=1e-6) and torch.allclose(out[1:], then_brightness, atol=1e-6)
    assert not torch.allclose(then_contrast[0], (x[:1] * 1.3).clamp(0, 1))


def test_jitter_draws_factors_per_image_and_leaves_off_what_is_off():
    x = torch.rand(1, 3, 4, 4, generator=SEEDED(0)).expand(8, -1, -1, -1).clone()
    for random_order in (True, False):
        assert torch.equal(jitter(x, (0.0, 0.0, 0.0), SEEDED(0), random_order), x)
        out = jitter(x, (0.4, 0.4, 0.4), SEEDED(0), random_order)
        assert len({tuple(o.flatten().tolist()) for o in out}) == 8
        assert 0 <= float(out.min()) and float(out.max()) <= 1
    only_brightness = jitter(x, (0.4, 0.0, 0.0), SEEDED(3), True)
    ratio = only_brightness / x.clamp(min=1e-6)
    unclipped = only_brightness < 1
    per_image = [r[u].unique() for r, u in zip(ratio, unclipped)]
    assert all(float(r.max() - r.min()) < 1e-5 and 0.6 - 1e-6 <= float(r[0]) <= 1.4 + 1e-6 for r in per_image)


def test_augmentation_sees_pixels_in_unit_range_before_standardisation():
    data = dataset(mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    black_border = CropFlipJitter(padding=11, brightness=0, contrast=0, saturation=0)
    episode = TaskDistributionSampler(data, ways=3, shots=1, queries=4, seed=0, augment=black_border).sample()
    x = torch.cat([episode.support_x, episode.query_x])
    assert torch.isclose(x, torch.tensor(-2.0)).any()  # a black (0) padding pixel: (0 - 0.5) / 0.25
    assert float(x.min()) >= -2.0 - 1e-6 and float(x.max()) <= 2.0 + 1e-6


def test_default_padding_follows_metaoptnet():
    assert CropFlipJitter().padding_for(32) == 4 and CropFlipJitter().padding_for(84) == 8
    assert CropFlipJitter(padding=2).padding_for(84) == 2


# ---------------------------------------------------------------------------- names, settings, refusals


@pytest.mark.parametrize("name", NAMES)
def test_settings_rebuild_the_same_augmentation(name):
    augmentation = AUGMENTATIONS.build(name)
    assert augmentation.name == name and augmentation.per in ("image", "class")
    assert AUGMENTATIONS.build(name, **augmentation.settings()) == augmentation
    assert hash(AUGMENTATIONS.build(name)) == hash(augmentation) and augmentation != "x"


def test_unknown_name_says_what_it_likely_meant():
    with pytest.raises(ValueError, match="unknown augmentation 'class_rotations'.*did you mean 'class_rotation'"):
        TaskDistributionSampler(dataset(), ways=3, queries=2, augment="class_rotations")
    with pytest.raises(TypeError, match="augment must be an Augmentation or one of crop_flip_jitter"):
        TaskDistributionSampler(dataset(), ways=3, queries=2, augment=3)


@pytest.mark.parametrize("build, message", [
    (lambda: CropFlipJitter(padding=-1), "CropFlipJitter needs an integer padding >= 0, got -1"),
    (lambda: CropFlipJitter(brightness=math.nan), "CropFlipJitter needs a finite number brightness, got nan"),
    (lambda: CropFlipJitter(contrast=-0.1), "CropFlipJitter needs contrast in"),
    (lambda: ResizedCropFlipJitter(scale=(0.0, 1.0)), r"ResizedCropFlipJitter needs a scale with 0 < low <= high"),
    (lambda: ResizedCropFlipJitter(scale=(0.5, 1.5)), "ResizedCropFlipJitter needs scale in"),
    (lambda: ResizedCropFlipJitter(ratio=(2.0, 1.0)), "needs a ratio with 0 < low <= high, got \\(2.0, 1.0\\)"),
    (lambda: ResizedCropFlipJitter(ratio=0.5), "needs a ratio of two numbers"),
    (lambda: ClassRotation(quarter_turns=(4,)), "ClassRotation needs distinct quarter_turns among 0, 1, 2, 3"),
    (lambda: ClassRotation(quarter_turns=(1, 1)), "distinct quarter_turns"),
    (lambda: ClassRotation(quarter_turns=()), "distinct quarter_turns"),
    (lambda: ClassRotation(quarter_turns=1), "distinct quarter_turns"),
])
def test_bad_settings_are_one_line_errors(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_what_cannot_be_augmented_is_refused():
    with pytest.raises(TypeError, match="augmentation needs an image data set .*got Sinusoid"):
        TaskDistributionSampler(Sinusoid(), augment="crop_flip_jitter")
    rotated = ClassImageDataset(images(2, 3, 1, 6), [3, 3], ["a/rot000", "a/rot090"], class_group=torch.tensor([0, 0]),
                                class_rotation=torch.tensor([0, 1]), name="Omniglot", split="train")
    with pytest.raises(ValueError, match="would turn the classes of Omniglot split 'train', which are already turns"):
        TaskDistributionSampler(rotated, ways=2, augment="class_rotation")
    wide = ClassImageDataset(torch.zeros(4, 1, 6, 8, dtype=torch.uint8), [2, 2], ["a", "b"], name="Wide", split="x")
    with pytest.raises(ValueError, match="class_rotation needs square images, and Wide split 'x' has 6x8"):
        TaskDistributionSampler(wide, ways=2, augment="class_rotation")
    TaskDistributionSampler(wide, ways=2, shots=1, queries=1, augment="crop_flip_jitter").sample()
    family = AugmentedFamily(dataset(), ClassRotation())
    with pytest.raises(ValueError, match="is augmented already"):
        AugmentedFamily(family, ClassRotation())
    with pytest.raises(TypeError, match="augmentation must be an Augmentation, got str"):
        AugmentedFamily(dataset(), "class_rotation")
    with pytest.raises(ValueError, match="drawn without augmentation"):
        family.build_episode(dataset().draw(2, 1, 1, SEEDED(0)))


# ---------------------------------------------------------------------------- task files


def tiny_task(*overrides, glyphs=True):
    from fewshot_metaopt.runs.task_config import load_task

    base = ["data.image_size=12", "episodes.ways=3", "episodes.queries=2", "episodes.eval_queries=2"]
    if glyphs:
        base += ["data.num_characters=30", "data.samples_per_class=8"]
    return load_task(None, [*base, *overrides])


def test_a_task_augments_its_training_episodes_only_unless_told():
    from fewshot_metaopt.runs.components import manifest, train_sampler
    from fewshot_metaopt.runs.data_sources import open_split

    def samplers(task):
        sources = {role: open_split(task.data, role) for role in ("train", "val", "test")}
        return (train_sampler(task, sources["train"]).augmentation,
                *(manifest(task, sources[role], role, 2).source for role in ("val", "test")))

    train, val, test = samplers(tiny_task())
    assert train is None and not isinstance(val, AugmentedFamily) and not isinstance(test, AugmentedFamily)
    train, val, test = samplers(tiny_task("data.augment=crop_flip_jitter"))
    assert train == CropFlipJitter() and not isinstance(val, AugmentedFamily) and not isinstance(test, AugmentedFamily)
    train, val, test = samplers(tiny_task("data.augment=class_rotation", 'data.augment_splits=["train","test"]'))
    assert train == ClassRotation() and not isinstance(val, AugmentedFamily) and test.augmentation == ClassRotation()
    assert samplers(tiny_task("data.augment=none"))[0] is None


@pytest.mark.parametrize("overrides, message", [
    (["data.augment=class_rotaton"], "unknown data.augment 'class_rotaton'; choose one of none, crop_flip_jitter, "
                                     "resized_crop_flip_jitter, class_rotation; did you mean 'class_rotation'?"),
    (["data.augmnet=class_rotation"], "unknown key 'data.augmnet' .*did you mean data.augment?"),
    (['data.augment_splits=["train"]'], "data.augment_splits in .* is read only with data.augment set"),
    (["data.augment=none", 'data.augment_splits=["test"]'], "is read only with data.augment set"),
    (["data.augment=class_rotation", 'data.augment_splits=["train", "tset"]'],
     "unknown data.augment_splits 'tset'; choose one of train, val, test; did you mean 'test'?"),
    (["data.augment=class_rotation", "data.augment_splits=[]"], "data.augment_splits must list distinct roles"),
    (["data.augment=class_rotation", 'data.augment_splits=["val", "val"]'], "must list distinct roles"),
    (["data.augment=3"], "data.augment in .* must be a string, got 3"),
    (["data.dataset=sinusoid", "model.name=mlp", "model.channels=4", "data.augment=class_rotation"],
     "data.augment in .* does not apply to data.dataset 'sinusoid'"),
    (["data.dataset=omniglot", "data.root=.", "data.augment=class_rotation"],
     "data.augment 'class_rotation' would turn Omniglot's Vinyals classes \\(data.train_split 'train'\\)"),
    (["data.dataset=omniglot", "data.root=.", "data.augment=class_rotation", "data.train_split=background",
      'data.augment_splits=["train", "test"]'], "Vinyals classes \\(data.test_split 'test'\\)"),
])
def test_task_file_keys_are_checked(overrides, message):
    from fewshot_metaopt.runs.errors import RunError

    with pytest.raises(RunError, match=message):
        tiny_task(*overrides, glyphs="data.dataset=omniglot" not in overrides)


def test_lake_splits_of_omniglot_take_class_rotation():
    task = tiny_task("data.dataset=omniglot", "data.root=.", "data.augment=class_rotation",
                     "data.train_split=background", "data.val_split=evaluation", "data.test_split=evaluation",
                     glyphs=False)
    assert task.data.augmented_roles() == ["train"] and task.to_dict()["data"]["augment"] == "class_rotation"


def test_the_cub_task_files_augment_as_the_paper_they_quote():
    from fewshot_metaopt.runs.task_catalog import bundled_task
    from fewshot_metaopt.runs.task_config import load_task

    for name in ("cub-5w1s", "cub-5w5s"):
        data = load_task(bundled_task(name)).data
        assert [data.augmentation(role) for role in ("train", "val", "test")] == ["resized_crop_flip_jitter", None, None]

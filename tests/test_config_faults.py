"""Fault injection: every numeric key a task file can set refuses NaN and the infinities.

The keys come from the settings dataclasses, so a numeric field added without a check fails
here. Each bad value goes in through the task file and through ``--set``; it must come back
as one line naming the key, the value and where it was set, before anything is written.
"""

import math
import re
import types
import typing
from dataclasses import fields

import pytest

from fewshot_metaopt.checks import ConfigError
from fewshot_metaopt.cli import main
from fewshot_metaopt.learners.config import GradientMetaLearnerConfig
from fewshot_metaopt.meta_training.config import MetaOptimizerConfig
from fewshot_metaopt.runs import toml_writer
from fewshot_metaopt.runs.errors import RunError
from fewshot_metaopt.runs.settings import InnerOptimizerSettings, TopLevel
from fewshot_metaopt.runs.task_config import ALL_SECTIONS, load_task

BASE = {"train.iterations": 3}
# The other keys that make a key (or every key of a section) one its section reads; without
# them the loader refuses the key as not applying, which would hide a missing value check.
NEEDS = {
    "data.noise_std": {"data.dataset": "sinusoid", "model.name": "mlp"},
    "data.channels": {"data.dataset": "image_folder"},
    "inner_optimizer": {"inner_optimizer.method": "lstm"},
    "meta_schedule.min_factor": {"meta_schedule.name": "cosine"},
    "meta_schedule.warmup_steps": {"meta_schedule.name": "cosine"},
    "meta_schedule.steps": {"meta_schedule.name": "warmup"},
    "meta_schedule.start": {"meta_schedule.name": "warmup", "meta_schedule.steps": 2},
    "meta_schedule.period": {"meta_schedule.name": "cyclical"},
    "meta_schedule.low": {"meta_schedule.name": "cyclical", "meta_schedule.period": 2.0},
    "meta_schedule.high": {"meta_schedule.name": "cyclical", "meta_schedule.period": 2.0},
    "learner.warp_points": {"learner.algorithm": "warp_maml", "model.name": "warp_conv4"},
    "learner.warp_buffer_size": {"learner.algorithm": "warp_maml", "model.name": "warp_conv4"},
    "learner.vmap_chunk_size": {"learner.vmap_tasks": True},
    "model.dropblock_size": {"model.name": "resnet12", "model.drop_rate": 0.1},
    "model.drop_rate": {"model.name": "resnet12"},
    "learner.imaml_lambda": {"learner.algorithm": "imaml"},
    "learner.cg_steps": {"learner.algorithm": "imaml"},
    "learner.cg_damping": {"learner.algorithm": "imaml"},
    "learner.reptile_batch_size": {"learner.algorithm": "reptile"},
}
# A finite value the key accepts, where 1 is not one.
GOOD = {"model.drop_rate": 0.5}
BAD = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def number_type(hint) -> type | None:
    """``int`` or ``float`` for a numeric field (``X | None`` included), else None."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = args[0] if len(args) == 1 else None
    return hint if hint in (int, float) else None


def numeric_fields(cls: type) -> dict[str, type]:
    hints = typing.get_type_hints(cls)
    return {f.name: kind for f in fields(cls) if (kind := number_type(hints[f.name])) is not None}


def numeric_keys() -> dict[str, type]:
    keys = dict(numeric_fields(TopLevel))
    for section, cls in ALL_SECTIONS.items():
        keys.update({f"{section}.{name}": kind for name, kind in numeric_fields(cls).items()})
    return keys


KEYS = numeric_keys()


def setup(key: str) -> dict:
    """The dotted keys a task needs besides ``key`` for ``key`` to apply."""
    return {**BASE, **NEEDS.get(key.partition(".")[0], {}), **NEEDS.get(key, {})}


def nested(dotted: dict) -> dict:
    values: dict = {}
    for key, value in dotted.items():
        section, dot, name = key.partition(".")
        if dot:
            values.setdefault(section, {})[name] = value
        else:
            values[key] = value
    return values


def write(tmp_path, dotted: dict):
    path = tmp_path / "t.toml"
    path.write_text(toml_writer.dumps(nested(dotted)))
    return path


def test_the_walk_finds_every_section_and_the_rule_keys():
    sections = {key.partition(".")[0] for key in KEYS if "." in key}
    # A section without numeric keys (e.g. [logging]'s switches and names) has nothing to walk.
    assert sections == {s for s, cls in ALL_SECTIONS.items() if numeric_fields(cls)} and "seed" in KEYS
    rule_fields = numeric_fields(MetaOptimizerConfig)
    for name in InnerOptimizerSettings.RULE_KEYS:
        assert name in {f.name for f in fields(MetaOptimizerConfig)}
        if f"inner_optimizer.{name}" in KEYS:
            assert rule_fields[name] is KEYS[f"inner_optimizer.{name}"]
    assert all(key in KEYS if "." in key else key in ALL_SECTIONS for key in NEEDS), "NEEDS names an unknown key"


@pytest.mark.parametrize("key", KEYS)
def test_every_numeric_key_applies_with_its_needs(tmp_path, key):
    """A finite value loads, so the bad values below fail on the value, not on applicability."""
    value = GOOD.get(key, KEYS[key](1))
    task = load_task(write(tmp_path, {**setup(key), key: value}))
    section, _, name = key.rpartition(".")
    assert getattr(getattr(task, section) if section else task, name) == value


def assert_one_line_naming(message: str, key: str, text: str, where: str) -> None:
    assert "\n" not in message and where in message, message
    said = message.replace(where, "")  # a --set origin spells the key; the message must too
    section, _, name = key.rpartition(".")
    assert key in said or (f"[{section}] " in said and re.search(rf"\b{name}\b", said)), message
    assert f"got {text}" in said, message


def refuse(tmp_path, monkeypatch, capsys, path, overrides, key, text, where):
    with pytest.raises(RunError) as caught:
        load_task(path, overrides)
    message = str(caught.value)
    assert_one_line_naming(message, key, text, where)
    monkeypatch.chdir(tmp_path)
    argv = ["train", str(path)] + [arg for o in overrides for arg in ("--set", o)]
    assert main(argv) == 1
    assert capsys.readouterr().err.splitlines() == [f"fewshot-metaopt: error: {message}"]
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no runs/ folder, no run in it


@pytest.mark.parametrize("text", BAD)
@pytest.mark.parametrize("key", KEYS)
def test_a_non_finite_number_in_the_task_file_is_refused(tmp_path, monkeypatch, capsys, key, text):
    path = write(tmp_path, {**setup(key), key: BAD[text]})
    refuse(tmp_path, monkeypatch, capsys, path, [], key, text, str(path))


@pytest.mark.parametrize("text", BAD)
@pytest.mark.parametrize("key", KEYS)
def test_a_non_finite_number_set_on_the_command_line_is_refused(tmp_path, monkeypatch, capsys, key, text):
    path = write(tmp_path, setup(key))
    refuse(tmp_path, monkeypatch, capsys, path, [f"{key}={text}"], key, text, f"--set {key}={text}")


LIBRARY = [(cls, name) for cls in (GradientMetaLearnerConfig, MetaOptimizerConfig) for name in numeric_fields(cls)]


@pytest.mark.parametrize("value", BAD.values(), ids=list(BAD))
@pytest.mark.parametrize("cls, name", LIBRARY, ids=[f"{cls.__name__}.{name}" for cls, name in LIBRARY])
def test_library_configs_refuse_non_finite_numbers_by_name(cls, name, value):
    needs = {k.removeprefix("learner."): v for k, v in NEEDS.get(f"learner.{name}", {}).items()
             if k.startswith("learner.")} if cls is GradientMetaLearnerConfig else {}
    with pytest.raises(ConfigError) as caught:
        cls(**needs, **{name: value})
    assert caught.value.key == name and name in str(caught.value)

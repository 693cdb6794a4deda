"""Configuration errors on the command line: every problem of a task at once, one line each,
with the key or value it most likely meant; ``--debug`` before or after the command."""

import pytest

from fewshot_metaopt.checks import ConfigError, choose, closest
from fewshot_metaopt.cli import main
from fewshot_metaopt.config_keys import from_mapping
from fewshot_metaopt.learners.algorithms import ALGORITHMS
from fewshot_metaopt.learners.config import GradientMetaLearnerConfig
from fewshot_metaopt.runs.errors import RunError, TaskErrors
from fewshot_metaopt.runs.task_config import load_task
from test_cli import TINY_TASK, write_task

KNOWN_ALGORITHMS = ", ".join(ALGORITHMS.names())

MINIMAL = "[train]\niterations = 3\n"


def errors(capsys) -> list[str]:
    """The error lines printed, without their common prefix."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert all(line.startswith("fewshot-metaopt: error: ") for line in lines), lines
    return [line.removeprefix("fewshot-metaopt: error: ") for line in lines]


def problems(tmp_path, text: str, overrides=()) -> list[str]:
    path = tmp_path / "t.toml"
    path.write_text(text)
    with pytest.raises(TaskErrors) as caught:
        load_task(path, overrides)
    return [line.replace(str(path), "{path}") for line in caught.value.problems]


def test_three_bad_keys_are_three_lines_and_nothing_is_written(tmp_path, capsys):
    text = (TINY_TASK.replace("inner_lr = 0.3", "inner_lrr = 0.3").replace("meta_batch = 2", "meta_batch = 0")
            .replace("channels = 4", "channels = 'four'"))
    path = write_task(tmp_path, text)
    assert main(["train", str(path), "--out", str(tmp_path / "run")]) == 1
    lines = errors(capsys)
    assert sorted(lines) == sorted([
        f"unknown key 'learner.inner_lrr' in {path}; did you mean learner.inner_lr?",
        f"model.channels in {path} must be an integer, got 'four'",
        f"{path}: train.meta_batch must be >= 1, got 0",
    ])
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.toml"]


def test_the_file_and_the_overrides_are_reported_together(tmp_path):
    found = problems(tmp_path, "[learner]\nalgorithm = 'meta_sdg'\n" + MINIMAL,
                     ["lerner.meta_lr=0.1", "train.log_every=0", "learner.meta_lr=fast", "nonsense"])
    assert found == [
        "--set needs key=value (for example learner.inner_lr=0.1), got 'nonsense'",
        "unknown key 'lerner.meta_lr' in --set lerner.meta_lr=0.1; did you mean learner.meta_lr?",
        "learner.meta_lr in --set learner.meta_lr=fast must be a number, got 'fast'",
        # A library config's check names its field, not where it was set: every source of its table is named.
        "--set learner.meta_lr=fast and {path}: [learner] unknown algorithm 'meta_sdg'; choose one of "
        f"{KNOWN_ALGORITHMS}; did you mean 'meta_sgd'?",
        "--set train.log_every=0: train.log_every must be >= 1, got 0",
    ]


@pytest.mark.parametrize("text, overrides, expected", [
    ("seeed = 3\n" + MINIMAL, (), "unknown key 'seeed' in {path}; did you mean seed?"),
    ("[trian]\niterations = 3\n" + MINIMAL, (), "unknown key 'trian' in {path}; did you mean [train]?"),
    ("inner_lr = 0.1\n" + MINIMAL, (), "unknown key 'inner_lr' in {path}; did you mean learner.inner_lr?"),
    ("[model]\ninner_lr = 0.1\n" + MINIMAL, (), "unknown key 'model.inner_lr' in {path}; did you mean learner.inner_lr?"),
    ("[model]\ninner_lrr = 0.1\n" + MINIMAL, (), "unknown key 'model.inner_lrr' in {path}; did you mean learner.inner_lr?"),
    (MINIMAL, ["trian.iterations=3"], "unknown key 'trian.iterations' in --set trian.iterations=3; did you mean "
                                      "train.iterations?"),
    (MINIMAL, ["learner.optimizer=sgd"], "unknown key 'learner.optimizer' in --set learner.optimizer=sgd; did you "
                                         "mean learner.meta_optimizer?"),
    (MINIMAL, ["learner.meta_optimizer=adma"], "--set learner.meta_optimizer=adma: [learner] unknown meta_optimizer "
                                               "'adma'; choose one of adam, sgd; did you mean 'adam'?"),
    (MINIMAL, ["model.name=conv"], "--set model.name=conv: unknown model.name 'conv'; choose one of conv4, mlp, "
                                   "warp_conv4, warp_mlp, resnet12, wrn28_10; did you mean 'conv4'?"),
])
def test_an_unknown_name_says_what_it_most_likely_meant(tmp_path, text, overrides, expected):
    assert problems(tmp_path, text, overrides) == [expected]


@pytest.mark.parametrize("text, overrides, expected", [
    ("colour = 1\n" + MINIMAL, (), "unknown key 'colour' in {path}; known: description, name, seed, [data], "),
    ("[model]\nxyz = 1\n" + MINIMAL, (), "unknown key 'model.xyz' in {path}; known: model.name, model.channels, "),
    (MINIMAL, ["colour.hue=1"], "unknown key 'colour.hue' in --set colour.hue=1; sections are data, episodes, "),
    (MINIMAL, ["learner.a.b=1"], "unknown key 'learner.a.b' in --set learner.a.b=1; known: learner.algorithm, "),
    (MINIMAL, ["learner.algorithm=xyz"], f"unknown algorithm 'xyz'; choose one of {KNOWN_ALGORITHMS}"),
])
def test_an_unknown_name_like_no_known_one_lists_the_known_ones(tmp_path, text, overrides, expected):
    (found,) = problems(tmp_path, text, overrides)
    assert expected in found and "did you mean" not in found


def test_every_bad_value_of_one_section_is_reported(tmp_path):
    text = "[learner]\ninner_lr = -1.0\nmeta_lr = -1.0\ninner_steps = 0\n" + MINIMAL
    assert problems(tmp_path, text) == [
        "{path}: [learner] inner_steps must be >= 1 for meta-training, got 0",
        "{path}: [learner] inner_lr must be positive, got -1.0",
        "{path}: [learner] meta_lr must be >= 0, got -1.0",
    ]


def test_a_clash_is_not_blamed_on_defaults_that_stand_in_for_a_refused_value(tmp_path):
    # With the algorithm refused, the learner's default (maml) would clash with nothing the user wrote.
    assert problems(tmp_path, "[learner]\nalgorithm = 'fomam'\nfirst_order = false\n" + MINIMAL) == [
        f"{{path}}: [learner] unknown algorithm 'fomam'; choose one of {KNOWN_ALGORITHMS}; did you mean 'fomaml'?"]
    # A refused key elsewhere leaves the clash between sections unjudged; alone, it is reported.
    text = "[data]\ndataset = 'sinusoid'\n" + MINIMAL
    assert problems(tmp_path, text, ["train.meta_batch=0"]) == [
        "--set train.meta_batch=0: train.meta_batch must be >= 1, got 0"]
    (clash,) = problems(tmp_path, text)
    assert "model.name 'conv4' does not fit data.dataset 'sinusoid'" in clash


def test_a_section_that_is_not_a_table_is_one_problem(tmp_path):
    assert problems(tmp_path, "data = 1\n" + MINIMAL, ["data.root=x"]) == [
        "'data' is a table ([data]); cannot set 'data.root' from --set data.root=x"]
    assert problems(tmp_path, "data = 1\nseeed = 2\n" + MINIMAL) == [
        "'data' in {path} must be a table ([data]), got 1",
        "unknown key 'seeed' in {path}; did you mean seed?"]


def test_one_problem_is_still_a_plain_one_line_run_error(tmp_path):
    path = write_task(tmp_path, "[learner]\ninner_lrr = 1\n" + MINIMAL)
    with pytest.raises(RunError) as caught:
        load_task(path)
    assert str(caught.value) == f"unknown key 'learner.inner_lrr' in {path}; did you mean learner.inner_lr?"
    assert str(TaskErrors(["a", "b"])) == "a\nb"


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_the_traceback_before_or_after_the_command(tmp_path, capsys, where):
    path = str(write_task(tmp_path, "[learner]\ninner_lrr = 1\n" + MINIMAL))
    argv = ["--debug", "train", path] if where == "before" else ["train", path, "--debug"]
    with pytest.raises(TaskErrors, match="did you mean learner.inner_lr"):
        main(argv)
    assert main(["train", path]) == 1
    assert len(errors(capsys)) == 1


def test_library_configs_name_every_unknown_key_and_what_it_meant():
    with pytest.raises(ValueError) as caught:
        GradientMetaLearnerConfig.from_dict({"inner_lrr": 0.1, "metalr": 1e-3}, "tasks/x.toml")
    assert str(caught.value) == ("unknown learner keys 'inner_lrr', 'metalr' in tasks/x.toml; did you mean "
                                 "'inner_lr' for 'inner_lrr', 'meta_lr' for 'metalr'?")
    with pytest.raises(ValueError) as caught:
        GradientMetaLearnerConfig.from_dict({"inner_lrr": 0.1, "colour": 1})
    message = str(caught.value)
    assert message.startswith("unknown learner keys 'colour', 'inner_lrr' in config; did you mean 'inner_lr' for "
                              "'inner_lrr'? known: algorithm, allow_unused, ")
    with pytest.raises(ValueError, match=r"^unknown learner key 'inner_lrr' in config; did you mean 'inner_lr'\?$"):
        from_mapping(GradientMetaLearnerConfig, {"inner_lrr": 1}, "config", "learner")
    with pytest.raises(ValueError, match=r"^unknown learner key 'colour' in config; known: algorithm, "):
        from_mapping(GradientMetaLearnerConfig, {"colour": 1}, "config", "learner")


def test_choices_suggest_the_closest_and_only_a_close_one():
    with pytest.raises(ConfigError, match=r"^unknown loss 'mes'; choose one of auto, cross_entropy, mse; "
                                          r"did you mean 'mse'\?$"):
        choose("loss", "mes", ("auto", "cross_entropy", "mse"))
    with pytest.raises(ConfigError, match=r"^unknown loss 3; choose one of auto, mse$"):
        choose("loss", 3, ("auto", "mse"))
    assert closest("inner_lrr", ["inner_lr", "meta_lr"]) == "inner_lr"
    assert closest("colour", ["inner_lr", "meta_lr"]) is None

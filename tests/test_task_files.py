"""The task files in tasks/ and the checks every task file and --set override goes through."""

import math
import re
import sys
from pathlib import Path

import pytest

from fewshot_metaopt.cli import main
from fewshot_metaopt.runs import toml_writer
from fewshot_metaopt.runs.errors import RunError
from fewshot_metaopt.runs.task_config import build_task, load_task, parse_override, task_from_dict

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TASKS = Path(__file__).resolve().parents[1] / "tasks"
EXPECTED = [
    "cifar_fs-5w1s", "cifar_fs-5w5s", "cub-5w1s", "cub-5w5s", "fc100-5w1s", "fc100-5w5s",
    "glyphs-quickstart", "miniimagenet-5w1s", "miniimagenet-5w1s-resnet12", "miniimagenet-5w5s",
    "miniimagenet-5w5s-resnet12", "omniglot-20w1s", "omniglot-20w1s-warp-leap",
    "omniglot-20w5s", "omniglot-5w1s", "omniglot-5w1s-cpu", "omniglot-5w1s-mamlpp", "omniglot-5w1s-warp-maml",
    "omniglot-5w5s", "sinusoid-10shot",
    "sinusoid-5shot", "tieredimagenet-5w1s", "tieredimagenet-5w5s",
]


def test_every_benchmark_has_a_task_file_named_after_it():
    assert sorted(p.stem for p in TASKS.glob("*.toml")) == EXPECTED
    for path in TASKS.glob("*.toml"):
        task = load_task(path)
        assert task.name == path.stem and task.description and task.evaluation.episodes == 600
        assert task.data.root is None  # data lives outside the repository: --data-root names it


@pytest.mark.parametrize("name, ways, shots, lr, steps, steps_eval, batch", [
    ("omniglot-5w1s", 5, 1, 0.4, 1, 3, 32),
    ("omniglot-5w5s", 5, 5, 0.4, 1, 3, 32),
    ("omniglot-20w1s", 20, 1, 0.1, 5, 5, 16),
    ("omniglot-20w5s", 20, 5, 0.1, 5, 5, 16),
    ("miniimagenet-5w1s", 5, 1, 0.01, 5, 10, 4),
    ("miniimagenet-5w5s", 5, 5, 0.01, 5, 10, 2),
])
def test_image_tasks_carry_the_papers_hyperparameters(name, ways, shots, lr, steps, steps_eval, batch):
    task = load_task(TASKS / f"{name}.toml")
    assert (task.ways, task.episodes.shots, task.episodes.queries) == (ways, shots, 15)
    assert (task.learner.algorithm, task.learner.inner_lr, task.learner.inner_steps) == ("maml", lr, steps)
    assert task.learner.eval_steps == steps_eval and task.train.meta_batch == batch
    assert (task.learner.meta_optimizer, task.learner.meta_lr, task.train.iterations) == ("adam", 0.001, 60000)
    mini = name.startswith("miniimagenet")
    assert task.model.channels == (32 if mini else 64) and task.data.image_size == (84 if mini else 28)
    assert (task.data.train_split, task.data.val_split, task.data.test_split) == ("train", "val", "test")


@pytest.mark.parametrize("shots", [5, 10])
def test_sinusoid_tasks_follow_maml_section_5_1(shots):
    task = load_task(TASKS / f"sinusoid-{shots}shot.toml")
    assert task.data.dataset == "sinusoid" and task.regression and task.ways == 1
    assert (task.episodes.shots, task.episodes.queries) == (shots, shots)
    assert task.model.name == "mlp" and task.model.hidden_layers == [40, 40]
    assert (task.learner.inner_lr, task.learner.inner_steps, task.train.meta_batch) == (0.01, 1, 25)
    assert task.train.iterations == 70000


def test_the_quickstart_task_file_is_the_embedded_quickstart():
    assert load_task(TASKS / "glyphs-quickstart.toml").to_dict() == load_task(None).to_dict()


@pytest.mark.parametrize("name", EXPECTED)
def test_a_resolved_task_written_as_toml_reads_back_the_same(name):
    root = "/data/somewhere" if name.startswith(("omniglot", "miniimagenet")) else None
    task = load_task(TASKS / f"{name}.toml", data_root=root)
    text = toml_writer.dumps(task.to_dict(), header="a header\n\nover lines")
    assert text.startswith("# a header\n#\n# over lines\n")
    assert task_from_dict(tomllib.loads(text), "written").to_dict() == task.to_dict()


def test_overrides_are_toml_values_or_bare_words():
    assert parse_override("learner.inner_lr=0.1") == ("learner.inner_lr", 0.1)
    assert parse_override("model.hidden_layers=[40, 40]") == ("model.hidden_layers", [40, 40])
    assert parse_override("learner.algorithm=anil") == ("learner.algorithm", "anil")
    assert parse_override('name="a b"') == ("name", "a b")
    assert parse_override("data.root=../data/x=y") == ("data.root", "../data/x=y")
    for bad in ("learner.inner_lr", "=3"):
        with pytest.raises(RunError, match="--set needs key=value"):
            parse_override(bad)


def test_overrides_change_the_task():
    task = load_task(None, ["learner.algorithm=anil", "train.iterations=5", "seed=9", "learner.inner_lr=1"])
    assert (task.learner.algorithm, task.train.iterations, task.seed) == ("anil", 5, 9)
    assert task.learner.inner_lr == 1.0 and isinstance(task.learner.inner_lr, float)


def error(text: str = "", overrides=(), tmp_path=None, data_root=None) -> str:
    path = tmp_path / "t.toml"
    path.write_text(text)
    with pytest.raises(RunError) as caught:
        load_task(path, overrides, data_root)
    message = str(caught.value)
    assert "\n" not in message
    return message


MINIMAL = '[train]\niterations = 3\n'


@pytest.mark.parametrize("text, expected", [
    ("colour = 1\n" + MINIMAL, "unknown key 'colour' in {path}; known: description, name, seed, [data]"),
    ("[learner]\ninner_lrr = 1\n" + MINIMAL, "unknown key 'learner.inner_lrr' in {path}; did you mean learner.inner_lr?"),
    ("[learner]\ninner_lr = 'fast'\n" + MINIMAL, "learner.inner_lr in {path} must be a number, got 'fast'"),
    ("[train]\niterations = 2.5\n", "train.iterations in {path} must be an integer, got 2.5"),
    ("[train]\niterations = true\n", "train.iterations in {path} must be an integer, got True"),
    ("seed = '1'\n" + MINIMAL, "seed in {path} must be an integer, got '1'"),
    ("[learner]\nfirst_order = 1\n" + MINIMAL, "learner.first_order in {path} must be true or false, got 1"),
    ("[model]\nname = 'mlp'\nhidden_layers = [40, 'x']\n" + MINIMAL,
     "model.hidden_layers in {path} must be a list of an integer, got [40, 'x']"),
    ("[model]\nname = 'mlp'\nhidden_layers = 40\n" + MINIMAL, "must be a list of an integer, got 40"),
    ("data = 3\n" + MINIMAL, "'data' in {path} must be a table ([data]), got 3"),
    ("[data]\ndownload = true\n" + MINIMAL, "data.download in {path} does not apply to data.dataset 'glyphs'"),
    ("[model]\nhidden_layers = [4]\n" + MINIMAL, "model.hidden_layers in {path} does not apply to model.name 'conv4'"),
    ("[meta_schedule]\nname = 'cosine'\nperiod = 3.0\n" + MINIMAL,
     "meta_schedule.period in {path} does not apply to meta_schedule.name 'cosine'"),
    ("[inner_optimizer]\nhidden_size = 4\n" + MINIMAL,
     "inner_optimizer.hidden_size in {path} does not apply to inner_optimizer.method 'sgd'"),
    ("[data]\ndataset = 'imagenet'\n" + MINIMAL, "{path}: unknown data.dataset 'imagenet'; choose one of glyphs"),
    ("[learner]\nalgorithm = 'leo'\n" + MINIMAL, "{path}: [learner] unknown algorithm 'leo'"),
    ("[train]\nmeta_batch = 2\n", "{path}: the budget needs train.iterations or train.minutes"),
    ("[train]\niterations = 0\n", "{path}: train.iterations must be >= 1, got 0"),
    ("[train]\nminutes = -1.0\n", "{path}: train.minutes must be positive, got -1.0"),
    ("[episodes]\nshots = 0\n" + MINIMAL, "{path}: episodes.shots must be >= 1, got 0"),
    ("[validation]\nevery = -1\n" + MINIMAL, "validation.every must be >= 0"),
    ("[evaluation]\nepisodes = 0\n" + MINIMAL, "evaluation.episodes must be >= 1"),
    ("[model]\nchannels = 0\n" + MINIMAL, "model.channels must be >= 1"),
    ("[model]\nname = 'mlp'\nhidden_layers = []\n" + MINIMAL, "model.hidden_layers must list positive widths"),
    ("[data]\ndataset = 'sinusoid'\nnoise_std = -1.0\n[model]\nname = 'mlp'\n" + MINIMAL,
     "data.noise_std must be >= 0.0"),
    ("[data]\ndataset = 'sinusoid'\n" + MINIMAL,
     "{path}: model.name 'conv4' does not fit data.dataset 'sinusoid' (a regression family); use 'mlp'"),
    ("[model]\nname = 'mlp'\n" + MINIMAL, "model.name 'mlp' does not fit data.dataset 'glyphs' (an image data set)"),
    ("[data]\ndataset = 'sinusoid'\n[model]\nname = 'mlp'\n[episodes]\nways = 5\n" + MINIMAL,
     "{path}: episodes.ways must be 1 for the regression family 'sinusoid', got 5"),
    ("[inner_optimizer]\nmethod = 'warp_grad'\n" + MINIMAL,
     "{path}: inner_optimizer.method 'warp_grad' meta-trains warp layers alone; a run meta-learns a warped model "
     'with learner.algorithm = "warp_maml" or "warp_leap", model.name = "warp_conv4" or "warp_mlp"'),
    ("[inner_optimizer]\nmethod = 'lstm'\nlstm_variant = 'huge'\n" + MINIMAL,
     "{path}: [inner_optimizer] unknown lstm_variant 'huge'"),
    ("[meta_schedule]\nname = 'cosine'\n[train]\nminutes = 1.0\n",
     "{path}: [meta_schedule] cosine decays over train.iterations, which is not set"),
    ("[meta_schedule]\nname = 'warmup'\n" + MINIMAL, "warmup needs meta_schedule.steps"),
    ("[meta_schedule]\nname = 'cyclical'\n" + MINIMAL, "cyclical needs meta_schedule.period"),
    ("[meta_schedule]\nname = 'cyclical'\nperiod = 4.0\nlow = 2.0\nhigh = 1.0\n" + MINIMAL, "Cyclical needs low <= high"),
    ("[meta_schedule]\nname = 'hourly'\n" + MINIMAL, "unknown meta_schedule.name 'hourly'"),
    ("[learner]\ninner_lr = -0.4\n" + MINIMAL, "{path}: [learner] inner_lr must be positive, got -0.4"),
    ("[learner]\nalgorithm = 'meta_sgd'\ninner_lr = -0.4\n" + MINIMAL, "[learner] inner_lr must be positive"),
    ("[learner]\nmeta_lr = -1\n" + MINIMAL, "{path}: [learner] meta_lr must be >= 0, got -1.0"),
    ("[learner]\nmeta_grad_clip = nan\n" + MINIMAL, "{path}: [learner] meta_grad_clip must be finite, got nan"),
    ("[data]\ndataset = 'sinusoid'\nnoise_std = inf\n[model]\nname = 'mlp'\n" + MINIMAL,
     "{path}: data.noise_std must be >= 0.0 and finite, got inf"),
    ("[inner_optimizer]\nmethod = 'lstm'\noutput_scale = 0.0\n" + MINIMAL,
     "{path}: [inner_optimizer] output_scale must be positive, got 0.0"),
    ("name = '../../x'\n" + MINIMAL, "{path}: name must be a plain file name"),
    ("name = \n", "is not valid TOML: "),
])
def test_bad_task_files_are_one_line_errors_naming_key_and_file(tmp_path, text, expected):
    message = error(text, tmp_path=tmp_path)
    assert expected.format(path=tmp_path / "t.toml") in message


def test_overrides_are_checked_like_the_file_and_blamed_by_name(tmp_path):
    assert error(MINIMAL, ["learner.inner_lr=fast"], tmp_path) == (
        "learner.inner_lr in --set learner.inner_lr=fast must be a number, got 'fast'")
    assert error(MINIMAL, ["learner.inner_lrr=1"], tmp_path).startswith(
        "unknown key 'learner.inner_lrr' in --set learner.inner_lrr=1; did you mean learner.inner_lr?")
    assert error(MINIMAL, ["learner.algorithm=leo"], tmp_path).startswith(
        "--set learner.algorithm=leo: [learner] unknown algorithm")
    assert error(MINIMAL, ["train.iterations=0"], tmp_path) == (
        "--set train.iterations=0: train.iterations must be >= 1, got 0")
    assert error(MINIMAL, ["colour.hue=1"], tmp_path).startswith("unknown key 'colour.hue' in --set colour.hue=1; sections are")
    assert error(MINIMAL, ["learner.a.b=1"], tmp_path).startswith("unknown key 'learner.a.b'")
    assert error("data = 1\n" + MINIMAL, ["data.root=x"], tmp_path) == (
        "'data' is a table ([data]); cannot set 'data.root' from --set data.root=x")
    assert error(MINIMAL, [], tmp_path, data_root="/x") == (
        "data.root in --data-root does not apply to data.dataset 'glyphs'")


@pytest.mark.parametrize("name", ["../../x", "/tmp/x", "a/b", "a\\b", ".hidden", "", "x" * 101, "a b", "a:b"])
def test_a_task_name_is_one_plain_folder_name(tmp_path, monkeypatch, capsys, name):
    override = f"name={toml_writer.toml_value(name)}"
    message = error(MINIMAL, [override], tmp_path)
    assert message == (
        f"--set {override}: name must be a plain file name (letters, digits, '-', '_' and '.', at most 100 "
        f"characters, not starting with '.'), since it names the run directory runs/<name>-<date>-<time>; "
        f"got {name!r}")
    monkeypatch.chdir(tmp_path)
    assert main(["train", "t.toml", "--set", override]) == 1
    assert capsys.readouterr().err == f"fewshot-metaopt: error: {message}\n"
    assert [p.name for p in tmp_path.iterdir()] == ["t.toml"]


def test_task_names_may_be_any_plain_folder_name(tmp_path):
    for name in ("omniglot-5w1s", "run_2.v3", "x" * 100, "sinus-é", "-dash"):
        path = tmp_path / "t.toml"
        path.write_text(f"name = {name!r}\n" + MINIMAL)
        assert load_task(path).name == name


def test_a_name_taken_from_the_file_name_says_so(tmp_path):
    path = tmp_path / "my task.toml"
    path.write_text(MINIMAL)
    with pytest.raises(RunError, match=rf"^the file name of {re.escape(str(path))} \(name is not set in it\): "
                                       r"name must be a plain file name .*; got 'my task'$"):
        load_task(path)
    assert load_task(path, ["name=my_task"]).name == "my_task"


def test_a_bad_schedule_value_is_blamed_on_where_it_was_set(tmp_path):
    text = "[meta_schedule]\nname = 'cosine'\n" + MINIMAL
    assert error(text, ["meta_schedule.min_factor=2"], tmp_path) == (
        "--set meta_schedule.min_factor=2: [meta_schedule] Cosine needs min_factor in [0.0, 1.0], got 2.0")
    assert error(text, ["meta_schedule.min_factor=nan"], tmp_path) == (
        "--set meta_schedule.min_factor=nan: [meta_schedule] Cosine needs a finite number min_factor, got nan")
    text = "[meta_schedule]\nname = 'warmup'\nsteps = 2\nstart = -inf\n" + MINIMAL
    assert error(text, tmp_path=tmp_path) == (
        f"{tmp_path / 't.toml'}: [meta_schedule] Warmup needs a finite number start, got -inf")


def test_a_bad_rule_value_is_blamed_on_where_it_was_set(tmp_path):
    assert error("[inner_optimizer]\nmethod = 'l2o'\n" + MINIMAL, ["inner_optimizer.inner_lr=-1"], tmp_path) == (
        "--set inner_optimizer.inner_lr=-1: [inner_optimizer] inner_lr must be positive, got -1.0")


def test_a_section_error_names_the_override_before_the_file(tmp_path):
    message = error("[learner]\ninner_lr = 0.1\n" + MINIMAL, ["learner.algorithm=fomaml", "learner.first_order=false"],
                    tmp_path)
    assert message.startswith(f"--set learner.algorithm=fomaml and --set learner.first_order=false and {tmp_path / 't.toml'}:")


def test_missing_and_unreadable_task_files(tmp_path):
    with pytest.raises(RunError, match="task file .*absent.toml does not exist"):
        load_task(tmp_path / "absent.toml")
    with pytest.raises(RunError, match="is not a file"):
        load_task(tmp_path)
    (tmp_path / "latin1.toml").write_bytes(b"name = '\xe9'\n")
    with pytest.raises(RunError, match="latin1.toml is not valid TOML"):
        load_task(tmp_path / "latin1.toml")


def test_relative_paths_follow_the_file_or_the_current_directory(tmp_path, monkeypatch):
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "o.toml").write_text("[data]\ndataset = 'omniglot'\nroot = '../data/omniglot'\n" + MINIMAL)
    assert load_task(folder / "o.toml").data.root == str(tmp_path / "data" / "omniglot")
    monkeypatch.chdir(folder)
    assert load_task(folder / "o.toml", data_root="here").data.root == str(folder / "here")
    task = load_task(folder / "o.toml", ["data.splits_dir=splits"])
    assert task.data.splits_dir == str(folder / "splits")
    moved = task_from_dict(task.to_dict(), "a run", data_root="elsewhere")
    assert moved.data.root == str(folder / "elsewhere") and moved.data.splits_dir == task.data.splits_dir


def test_a_task_stored_in_a_run_is_validated_too():
    values = load_task(None).to_dict()
    values["learner"]["inner_lr"] = "x"
    with pytest.raises(RunError, match="learner.inner_lr in the stored task must be a number"):
        build_task(values, _origins("the stored task"))


def _origins(source):
    from fewshot_metaopt.runs.task_config import Origins

    return Origins(source)


def test_toml_values_are_written_as_toml_reads_them():
    values = {"s": 'quote " back \\ nl \n tab \t del \x7f é 😀', "t": True, "f": False, "i": -3,
              "x": 1e-05, "big": 1.5e300, "inf": math.inf, "ninf": -math.inf, "l": [1, 2.5, "a"], "e": []}
    read = tomllib.loads(toml_writer.dumps({"table": values}))["table"]
    assert {k: v for k, v in read.items()} == values
    assert math.isnan(tomllib.loads(f"v = {toml_writer.toml_value(math.nan)}")["v"])
    with pytest.raises(TypeError, match="cannot write NoneType None as a TOML value"):
        toml_writer.toml_value(None)


def test_schedules_take_their_settings():
    from fewshot_metaopt.runs.schedule_factory import build_schedule

    task = load_task(None, ["meta_schedule.name=warmup", "meta_schedule.steps=10", "meta_schedule.start=0.5"])
    assert build_schedule(task.meta_schedule, task.train.iterations)(0) == 0.5
    task = load_task(None, ["meta_schedule.name=cyclical", "meta_schedule.period=4", "meta_schedule.mode=cosine"])
    assert build_schedule(task.meta_schedule, None)(2) == pytest.approx(1.0)
    assert task.meta_schedule.period == 4.0

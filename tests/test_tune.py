"""Hyperparameter search: the [search] table and its errors, the configs' default spaces, the
study's pieces (pruners, storage URLs, dead trials queued again) and HyperparameterTuner from
Python on tiny sinusoid tasks."""

import importlib.util
import sys
import time
from pathlib import Path

import optuna
import pytest

from fewshot_metaopt.learners import GradientMetaLearnerConfig
from fewshot_metaopt.meta_training import MetaOptimizerConfig
from fewshot_metaopt.runs import load_task
from fewshot_metaopt.runs.errors import RunError
from fewshot_metaopt.runs.search_space import SearchSpace
from fewshot_metaopt.runs.task_config import ALL_SECTIONS
from fewshot_metaopt.tuning import PRUNERS, SAMPLERS, HyperparameterTuner, default_space
from fewshot_metaopt.tuning import storage as storage_module
from fewshot_metaopt.tuning import trial_objective
from fewshot_metaopt.tuning.optuna_import import optuna as lazy_optuna
from fewshot_metaopt.tuning.storage import open_storage, shown
from fewshot_metaopt.tuning.study_dir import StudyDir, StudySettings
from fewshot_metaopt.tuning.tuner import WorkerPlan, last_line_of, work

# Sinusoid regression with a tiny MLP: a trial of 6 iterations takes well under a second.
SINUSOID = """
name = "sin"
seed = 1

[data]
dataset = "sinusoid"

[episodes]
shots = 5
queries = 5
eval_queries = 10

[model]
name = "mlp"
hidden_layers = [8, 8]

[learner]
inner_lr = 0.01

[train]
iterations = 6
meta_batch = 2
log_every = 2
checkpoint_every = 3

[validation]
every = 2
episodes = 4

[evaluation]
episodes = 4
"""

SEARCH = """
[search]
learner.inner_lr = { log_uniform = [0.001, 0.1] }
learner.algorithm = { choice = ["maml", "meta_sgd"] }
"model.hidden_layers" = { choice = [[8, 8], [16]] }
"""


def task_file(folder: Path, search: str = SEARCH, base: str = SINUSOID) -> Path:
    path = folder / "sin.toml"
    path.write_text(base + search)
    return path


# ---------------------------------------------------------------------------- the [search] table


def test_the_search_table_is_read_with_the_task_and_written_back(tmp_path):
    task = load_task(task_file(tmp_path))
    space = task.search
    assert space.keys() == ["learner.inner_lr", "learner.algorithm", "model.hidden_layers"]
    lr, algorithm, layers = space
    assert (lr.kind, lr.low, lr.high, lr.log, lr.integer) == ("log_uniform", 0.001, 0.1, True, False)
    assert algorithm.choices == ("maml", "meta_sgd")
    assert layers.choices == ([8, 8], [16])
    # The run trains the values the sections set: a run's resolved task holds no search.
    assert "search" not in task.to_dict() and task.learner.inner_lr == 0.01
    again = load_task(task_file(tmp_path, "\n" + space.to_toml()))
    assert again.search == space


def test_values_are_drawn_through_a_trial_and_lists_stored_as_their_text():
    space = SearchSpace.parse({"model": {"hidden_layers": {"choice": [[8, 8], [16]]}},
                               "learner.inner_steps": {"log_int": [1, 4]}}, ALL_SECTIONS)
    fixed = optuna.trial.FixedTrial({"model.hidden_layers": "[16]", "learner.inner_steps": 3})
    assert space.sample(fixed) == {"model.hidden_layers": [16], "learner.inner_steps": 3}


@pytest.mark.parametrize("entry, expected", [
    ('lerner.inner_lr = { log_uniform = [0.01, 1.0] }', "[search] lerner.inner_lr: unknown section 'lerner'"),
    ('learner.inner_rate = { log_uniform = [0.01, 1.0] }', "[search] learner.inner_rate: unknown key; [learner] has"),
    ('inner_lr = { log_uniform = [0.01, 1.0] }', "[search] inner_lr: a [search] key names a task key as section.name"),
    ('learner.inner_lr = 0.1', "[search] learner.inner_lr: needs one distribution"),
    ('learner.inner_lr = { loguniform = [0.01, 1.0] }', "[search] learner.inner_lr: unknown distribution 'loguniform'"),
    ('learner.inner_lr = { log_uniform = [0.0, 1.0] }', "[search] learner.inner_lr: log_uniform needs low > 0"),
    ('learner.inner_lr = { uniform = [1.0, 0.1] }', "[search] learner.inner_lr: uniform needs finite bounds with low < high"),
    ('learner.inner_lr = { uniform = [0.1] }', "[search] learner.inner_lr: uniform needs [low, high], two numbers"),
    ('learner.inner_lr = { int = [1, 3] }', "[search] learner.inner_lr: int draws integers, but learner.inner_lr takes a number"),
    ('learner.inner_steps = { uniform = [1, 3] }', "learner.inner_steps takes an integer; use int = [low, high]"),
    ('learner.inner_steps = { int = [1, 3.5] }', "[search] learner.inner_steps: int needs integer bounds"),
    ('learner.algorithm = { log_uniform = [1, 3] }', "learner.algorithm takes a string; use choice = [...]"),
    ('learner.algorithm = { choice = ["maml"] }', "[search] learner.algorithm: choice needs a list of at least two values"),
    ('learner.algorithm = { choice = ["maml", 3] }', "[search] learner.algorithm: choice value 3 is not a string"),
    ('learner.inner_lr = { choice = [1, 1.0] }', "[search] learner.inner_lr: choice lists 1.0 twice"),
])
def test_a_bad_search_entry_is_one_line_naming_its_key(tmp_path, entry, expected):
    with pytest.raises(RunError) as err:
        load_task(task_file(tmp_path, f"\n[search]\n{entry}\n"))
    message = str(err.value)
    assert expected in message and "\n" not in message
    assert message.startswith(str(tmp_path / "sin.toml"))


def test_an_empty_or_misshapen_search_table_is_refused(tmp_path):
    with pytest.raises(RunError, match=r"\[search\] is empty; give it at least one key"):
        load_task(task_file(tmp_path, "\n[search]\n"))
    with pytest.raises(RunError, match=r"'search' must be a table \(\[search\]\), got 3"):
        load_task(task_file(tmp_path, "", base="search = 3\n" + SINUSOID))


@pytest.mark.parametrize("entry, expected", [
    ('learner.inner_lr = { uniform = [-1.0, 1.0] }',
     "[search] learner.inner_lr at its low end gives an invalid task: [learner] inner_lr must be positive, got -1.0"),
    ('learner.algorithm = { choice = ["maml", "warp_maml"] }',
     "[search] learner.algorithm at choice 'warp_maml' gives an invalid task: learner.algorithm 'warp_maml' needs a "
     "model with warp layers"),
    ('validation.every = { int = [0, 2] }',
     "[search] validation.every at its low end: a search scores its trials on validation, but validation.every is 0"),
])
def test_a_value_of_the_space_that_gives_an_invalid_task_is_refused_before_any_trial(tmp_path, entry, expected):
    path = task_file(tmp_path, f"\n[search]\n{entry}\n")
    with pytest.raises(RunError) as err:
        HyperparameterTuner.create(load_task(path), tmp_path / "study", source=str(path))
    assert expected in str(err.value) and str(err.value).startswith(f"{path}: ")
    assert not (tmp_path / "study").exists()


# ---------------------------------------------------------------------------- default spaces


def test_the_learner_publishes_a_default_space_that_covers_the_published_settings():
    space = GradientMetaLearnerConfig(algorithm="meta_sgd").default_search_space()
    parsed = SearchSpace.parse({"learner": space}, ALL_SECTIONS)
    lr = next(d for d in parsed if d.key == "learner.inner_lr")
    assert lr.low <= 0.01 and 0.4 <= lr.high  # sinusoid's and Omniglot's inner lrs
    assert set(space) == {"inner_lr", "inner_steps", "meta_lr"}


@pytest.mark.parametrize("method, outer, extra", [
    ("meta_sgd", "tbptt", {"unroll_steps"}),
    ("lstm", "tbptt", {"hidden_size", "output_scale", "unroll_steps"}),
    ("l2o", "pes", {"hidden_size", "pes_sigma"}),
    ("warp_grad", "tbptt", {"warp_points"}),
])
def test_the_meta_optimizer_publishes_a_default_space_per_method(method, outer, extra):
    config = MetaOptimizerConfig(method=method, outer_trainer=outer)
    space = config.default_search_space()
    assert set(space) == {"inner_lr", "meta_lr", *extra}
    # Every value of the space is a valid config.
    for key, spec in space.items():
        ((kind, values),) = spec.items()
        for value in values:
            MetaOptimizerConfig(**{"method": method, "outer_trainer": outer, key: value})


def test_without_a_search_table_the_task_searches_its_configs_default_spaces(tmp_path):
    task = load_task(task_file(tmp_path, ""))
    assert default_space(task).keys() == ["learner.inner_lr", "learner.inner_steps", "learner.meta_lr"]
    lstm = load_task(task_file(tmp_path, '\n[inner_optimizer]\nmethod = "lstm"\n'))
    # The rule takes the inner steps, so its own step size is searched instead of the learner's.
    assert default_space(lstm).keys() == ["learner.inner_steps", "learner.meta_lr", "inner_optimizer.inner_lr",
                                          "inner_optimizer.hidden_size", "inner_optimizer.output_scale"]


# ---------------------------------------------------------------------------- study pieces


def test_samplers_and_pruners_by_name(tmp_path):
    task = load_task(task_file(tmp_path))
    assert isinstance(SAMPLERS["tpe"](3), optuna.samplers.TPESampler)
    assert isinstance(SAMPLERS["random"](3), optuna.samplers.RandomSampler)
    assert isinstance(PRUNERS["median"](task, 2), optuna.pruners.MedianPruner)
    assert isinstance(PRUNERS["hyperband"](task, 2), optuna.pruners.HyperbandPruner)
    assert isinstance(PRUNERS["none"](task, 2), optuna.pruners.NopPruner)


def test_a_database_password_is_never_shown_or_stored():
    assert shown("postgresql://tuner:s3cret@db.example/studies") == "postgresql://tuner:***@db.example/studies"
    assert shown("sqlite:///studies/x.db") == "sqlite:///studies/x.db"
    assert shown("not a url") == "not a url"
    if importlib.util.find_spec("psycopg2") is not None:
        pytest.skip("a postgresql driver is installed")
    with pytest.raises(RunError, match=r"postgresql://tuner:\*\*\*@db.example/studies needs its database driver .* "
                                       r"install it \(psycopg2 for postgresql://"):
        open_storage("postgresql://tuner:s3cret@db.example/studies")


def test_a_study_folder_appears_whole(tmp_path):
    """A half-made folder a killed process left is cleared; a failed creation leaves nothing;
    damaged settings are one line."""
    left = tmp_path / ".study.abcd.partial"
    left.mkdir()
    settings = StudySettings("s", None, "mse", "minimize", "tpe", "median", 5, 0, "id")

    def fail(folder):
        raise RuntimeError("no room")

    with pytest.raises(RuntimeError, match="no room"):
        StudyDir.create(tmp_path / "study", settings, "", populate=fail)
    assert list(tmp_path.iterdir()) == []
    folder = StudyDir.create(tmp_path / "study", settings, "")
    assert folder.read_settings() == settings
    folder.release()
    folder.settings_file.write_text("{")
    with pytest.raises(RunError, match=r"study.json is not a study's settings"):
        folder.read_settings()
    folder.task_file.unlink()
    with pytest.raises(RunError, match="is not a study folder: it has no task.toml"):
        StudyDir.open(folder.path)
    with pytest.raises(RunError, match="is not a study folder \\(it is a file\\)"):
        StudyDir.open(folder.settings_file)


def test_without_optuna_the_search_says_which_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(RunError, match=r"needs Optuna, which is not installed: pip install 'fewshot-metaopt\[search\]'"):
        lazy_optuna()


# ---------------------------------------------------------------------------- HyperparameterTuner


def test_bad_search_settings_from_python(tmp_path):
    task = load_task(task_file(tmp_path))
    with pytest.raises(RunError, match="unknown sampler 'grid'; choose one of tpe, random"):
        HyperparameterTuner.create(task, tmp_path / "study", sampler="grid")
    with HyperparameterTuner.create(task, tmp_path / "study") as tuner:
        with pytest.raises(RunError, match="workers must be an integer >= 1, got 0"):
            tuner.optimize(2, workers=0)
        # A worker that finds the study's trials all begun runs none.
        work(WorkerPlan(str(tuner.folder.path), tuner.storage, index=1, trials=1, target=0))
        assert tuner.study().get_trials() == []


def test_a_failed_worker_is_reported_by_the_last_line_of_its_log(tmp_path):
    log = tmp_path / "worker-1.log"
    log.write_text("meta-train:  40%|####      | 2/5\rTraceback (most recent call last):\n  ...\n"
                   "fewshot_metaopt.runs.errors.RunError: data.root is gone\n\n")
    assert last_line_of(str(log)) == ": fewshot_metaopt.runs.errors.RunError: data.root is gone"
    assert last_line_of(str(tmp_path / "never-written.log")) == "" and last_line_of(None) == ""


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_trial_whose_machine_went_silent_is_queued_again_by_another(tmp_path, monkeypatch):
    """Heartbeats: a trial another machine was running, silent past the grace period, is failed
    and run again, with its values, by the next worker to start a trial."""
    # A grace of three beats: the live trial's beats may come late on a loaded machine.
    monkeypatch.setattr(storage_module, "HEARTBEAT_S", 1)
    monkeypatch.setattr(storage_module, "GRACE_S", 3)
    task = load_task(task_file(tmp_path))
    database = f"sqlite:///{tmp_path / 'shared.db'}"
    with HyperparameterTuner.create(task, tmp_path / "a", storage=database, pruner="none") as elsewhere:
        study = elsewhere.study()
        lost = study.ask()  # a trial begun on a machine that then went silent
        task.search.sample(lost)
        open_storage(database).record_heartbeat(lost._trial_id)
    time.sleep(4.5)  # past the grace, at the whole-second resolution of the stored beats
    with HyperparameterTuner.create(task, tmp_path / "b", storage=database, pruner="none") as here:
        lines = []
        here.optimize(2, echo=lines.append)
        rows = here.report().rows
    assert [r.state for r in rows] == ["fail", "complete"]
    assert rows[1].note == "continues trial 0" and rows[1].run_dir == "trials/trial-0001"
    assert here.study().trials[1].params == lost.params


def test_failed_and_interrupted_trials_from_python(tmp_path, monkeypatch):
    """A trial whose values clash fails and the study goes on; a trial stopped by Ctrl-C is
    queued again when the study resumes; a study with no complete trial has no best task."""
    search = '\n[search]\nlearner.algorithm = { choice = ["maml", "fomaml"] }\nlearner.first_order = { choice = [false, true] }\n'
    task = load_task(task_file(tmp_path, search))
    folder = tmp_path / "study"
    with HyperparameterTuner.create(task, folder, sampler="random", pruner="none") as tuner:
        study = tuner.study()
        study.enqueue_trial({"learner.algorithm": "fomaml", "learner.first_order": False})
        study.enqueue_trial({"learner.algorithm": "maml", "learner.first_order": False})
        real = trial_objective.train

        def interrupted(*args, **kwargs):
            raise KeyboardInterrupt

        monkeypatch.setattr(trial_objective, "train", interrupted)
        lines = []
        with pytest.raises(KeyboardInterrupt):
            tuner.optimize(2, echo=lines.append)
        assert lines == ["trial 0 failed: trial 0 (learner.algorithm=fomaml, learner.first_order=False): [learner] "
                         "algorithm 'fomaml' is first-order; first_order=False contradicts it | "
                         "learner.algorithm=fomaml, learner.first_order=False | no run directory"]
        report = tuner.report()
        assert [r.state for r in report.rows] == ["fail", "fail"] and report.best is None
        assert report.best_task is None and not (folder / "best.toml").exists()
        assert report.rows[1].run_dir == "trials/trial-0001"  # named, though never made
        monkeypatch.setattr(trial_objective, "train", real)
    with pytest.raises(RunError, match="is in use by another fewshot-metaopt tune process"):
        with HyperparameterTuner.resume(folder), HyperparameterTuner.resume(folder):
            pass
    with HyperparameterTuner.resume(folder) as tuner:
        lines = []
        tuner.optimize(2, echo=lines.append)
        assert lines[0] == "trials 1 were running when their process ended: queued again, each to continue its run directory"
        report = tuner.report()
    states = {r.number: (r.state, r.note) for r in report.rows}
    assert states[1] == ("fail", "its process ended; queued again as trial 2")
    assert states[2] == ("complete", "continues trial 1")
    assert report.best.number == 2 and (folder / "best.toml").is_file()
    assert len(report.rows) == 3  # the dead trial does not count towards the 2 asked for

"""What ships with the package: the task files (and the names that stand for them), the
metadata, one version, and a built wheel that installs and runs on its own."""

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import fewshot_metaopt
from fewshot_metaopt.cli import main
from fewshot_metaopt.runs.errors import RunError
from fewshot_metaopt.runs.provenance import package_version
from fewshot_metaopt.runs.task_catalog import QUICKSTART, TASKS_FOLDER, bundled_task, bundled_tasks, task_file
from fewshot_metaopt.runs.task_config import load_task

REPO = Path(__file__).resolve().parents[1]
VERSION = fewshot_metaopt.__version__


def test_the_repository_tasks_folder_is_the_packaged_one():
    assert (REPO / "tasks").is_symlink()
    assert (REPO / "tasks").resolve() == TASKS_FOLDER == REPO / "fewshot_metaopt" / "tasks"
    assert sorted(bundled_tasks()) == sorted(p.stem for p in (REPO / "tasks").glob("*.toml"))
    assert QUICKSTART in bundled_tasks() and "omniglot-5w1s" in bundled_tasks()


def test_the_quick_start_is_one_file():
    assert not list((REPO / "fewshot_metaopt" / "runs").glob("*.toml"))
    assert load_task(None).to_dict() == load_task(bundled_task(QUICKSTART)).to_dict()


@pytest.mark.parametrize("text", ["sinusoid-5shot", "sinusoid-5shot.toml"])
def test_a_task_name_stands_for_the_installed_file(text, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert task_file(text) == TASKS_FOLDER / "sinusoid-5shot.toml"
    assert load_task(text).to_dict() == load_task(REPO / "tasks" / "sinusoid-5shot.toml").to_dict()


def test_a_file_in_the_current_folder_wins_over_a_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sinusoid-5shot.toml").write_text('name = "mine"\n')
    assert task_file("sinusoid-5shot.toml") == Path("sinusoid-5shot.toml")
    assert task_file("sinusoid-5shot") == TASKS_FOLDER / "sinusoid-5shot.toml"


def test_paths_are_never_taken_for_names(tmp_path):
    assert task_file(tmp_path / "sinusoid-5shot.toml") == tmp_path / "sinusoid-5shot.toml"
    assert task_file("absent.toml") == Path("absent.toml")  # its reader says it does not exist
    with pytest.raises(RunError, match="task file absent.toml does not exist"):
        load_task("absent.toml")


def test_an_unknown_name_lists_the_installed_tasks():
    with pytest.raises(RunError) as caught:
        task_file("omniglot-5wls")
    message = str(caught.value)
    assert message.startswith("no task is called 'omniglot-5wls'; choose one of cifar_fs-5w1s, ")
    assert "glyphs-quickstart, " in message and "omniglot-5w1s, " in message and "'fewshot-metaopt tasks' describes them" in message


def test_train_takes_a_task_name(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    tiny = ["--set", "train.iterations=1", "--set", "train.meta_batch=2", "--set", "validation.every=0",
            "--set", "evaluation.episodes=2", "--set", "episodes.eval_queries=5", "--set", "learner.inner_steps_eval=1"]
    assert main(["train", "sinusoid-5shot", "--out", "run", *tiny]) == 0
    result = json.loads((tmp_path / "run" / "results.json").read_text())
    assert result["metric"] == "mse" and result["iterations"] == 1
    assert "task sinusoid-5shot: MAML, MLP 40-40" in capsys.readouterr().out


def test_tasks_lists_every_installed_task_with_its_description(capsys):
    assert main(["tasks"]) == 0
    lines = capsys.readouterr().out.splitlines()
    listed = {line.split()[0]: line.split(None, 1)[1] for line in lines[:len(bundled_tasks())]}
    assert list(listed) == list(bundled_tasks())
    assert listed["omniglot-5w1s"] == "MAML, conv4-64, Omniglot 5-way 1-shot (Finn et al. 2017: 98.7%)"
    assert lines[-1] == f"The files are in {TASKS_FOLDER}."


def test_tasks_name_prints_the_file(capsys):
    assert main(["tasks", "omniglot-5w5s"]) == 0
    assert capsys.readouterr().out == (TASKS_FOLDER / "omniglot-5w5s.toml").read_text()


def test_tasks_refuses_an_unknown_name_in_one_line(capsys):
    assert main(["tasks", "omniglot"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fewshot-metaopt: error: no task is called 'omniglot'; choose one of")


def test_restore_is_exported_and_loads_the_run_layer_only_when_asked_for():
    from fewshot_metaopt.runs.restore import Restored, restore

    assert fewshot_metaopt.restore is restore and fewshot_metaopt.Restored is Restored
    assert {"restore", "Restored", "EpisodeDataset"} <= set(fewshot_metaopt.__all__)
    with pytest.raises(AttributeError, match="module 'fewshot_metaopt' has no attribute 'restored'"):
        fewshot_metaopt.restored
    probe = ("import sys, fewshot_metaopt; loaded = 'fewshot_metaopt.runs' in sys.modules; fewshot_metaopt.restore; "
             "print(loaded, 'fewshot_metaopt.runs.restore' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "True"]


# ------------------------------------------------------------------------------- the wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel of a copy of the source tree (so that the build leaves nothing in the tree),
    built with the set-up environment's setuptools (no download)."""
    folder = tmp_path_factory.mktemp("wheel")
    source = folder / "source"
    shutil.copytree(REPO / "fewshot_metaopt", source / "fewshot_metaopt", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(folder / "dist"), str(source)], check=True, capture_output=True)
    (built,) = (folder / "dist").glob("*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """The wheel installed on its own into a throwaway folder (its dependencies are this
    environment's)."""
    target = tmp_path_factory.mktemp("installed")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile",
                    "--target", str(target), str(wheel)], check=True, capture_output=True)
    return target


def run_installed(installed: Path, *args: str, cwd: Path) -> str:
    """The installed ``fewshot-metaopt`` script, importing the package from the wheel's copy
    (the folder comes first on the path; the current folder is not the repository)."""
    env = {**os.environ, "PYTHONPATH": str(installed)}
    done = subprocess.run([str(installed / "bin" / "fewshot-metaopt"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_wheel_holds_the_tasks_the_type_marker_and_the_license(wheel):
    assert wheel.name == f"fewshot_metaopt-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        metadata = zf.read(f"fewshot_metaopt-{VERSION}.dist-info/METADATA").decode()
        entry_points = zf.read(f"fewshot_metaopt-{VERSION}.dist-info/entry_points.txt").decode()
    assert {f"fewshot_metaopt/tasks/{name}.toml" for name in bundled_tasks()} <= names
    assert {"fewshot_metaopt/py.typed", f"fewshot_metaopt-{VERSION}.dist-info/licenses/LICENSE"} <= names
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "tasks/", "docs/"))]
    assert f"\nVersion: {VERSION}\n" in metadata and "\nLicense-Expression: MIT\n" in metadata
    assert "Classifier: Typing :: Typed" in metadata
    assert "fewshot-metaopt = fewshot_metaopt.cli.main:main" in entry_points


def test_the_installed_wheel_lists_its_own_tasks(installed, tmp_path):
    listed = run_installed(installed, "tasks", cwd=tmp_path)
    assert [line.split()[0] for line in listed.splitlines()[:len(bundled_tasks())]] == list(bundled_tasks())
    assert listed.splitlines()[-1] == f"The files are in {installed / 'fewshot_metaopt' / 'tasks'}."


# ------------------------------------------------------------------------------ metadata


def test_one_version_source():
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject
    assert 'version = { attr = "fewshot_metaopt.__version__" }' in pyproject
    assert not re.search(r"^version = \"", pyproject, re.MULTILINE)
    assert package_version() == VERSION  # what run.json and results.json record
    citation = (REPO / "CITATION.cff").read_text()
    assert re.search(r"^version: \"(.*)\"$", citation, re.MULTILINE).group(1) == VERSION


def test_license_and_citation_agree_with_the_metadata():
    assert (REPO / "LICENSE").read_text().startswith("MIT License\n")
    assert 'license = "MIT"' in (REPO / "pyproject.toml").read_text()
    citation = (REPO / "CITATION.cff").read_text()
    assert citation.startswith("cff-version: 1.2.0\n") and "\nlicense: MIT\n" in citation

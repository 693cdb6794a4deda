"""Everything the project writes (run directories, checkpoints, plots, results, the data cache,
downloads) gets the mode the umask gives, as files made with a plain ``open`` or ``mkdir`` do:
a group-readable umask lets a colleague on a shared machine read the results and share the
cache."""

import os
import stat
import zipfile
from pathlib import Path

import pytest

from fewshot_metaopt import atomic_files
from fewshot_metaopt.atomic_files import atomic_write_text, make_temp_dir, make_temp_file
from fewshot_metaopt.cli import main
from fewshot_metaopt.datasets.download import download_file, safe_extract
from fewshot_metaopt.datasets.glyphs import Glyphs
from fewshot_metaopt.tuning.study_dir import StudyDir, StudySettings

TASK = """
name = "tiny"
seed = 1

[data]
dataset = "glyphs"
num_characters = 30
samples_per_class = 6
image_size = 16

[episodes]
ways = 2
shots = 1
queries = 1

[model]
name = "conv4"
channels = 2

[learner]
algorithm = "meta_sgd"
inner_steps_eval = 1

[train]
iterations = 2
meta_batch = 1
log_every = 1
checkpoint_every = 1

[validation]
every = 2
episodes = 2

[evaluation]
episodes = 2
"""


@pytest.fixture(params=[0o022, 0o002], ids=["umask-022", "umask-002"])
def umask(request):
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def modes_below(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): mode(p) for p in sorted(folder.rglob("*"))}


def expected(folder: Path, umask: int) -> dict[str, int]:
    return {str(p.relative_to(folder)): (0o777 if p.is_dir() else 0o666) & ~umask for p in sorted(folder.rglob("*"))}


def test_temporary_files_and_folders_get_the_umask_s_mode(tmp_path, umask):
    fd, path = make_temp_file(tmp_path, prefix=".x.", suffix=".partial")
    os.close(fd)
    folder = make_temp_dir(tmp_path, prefix=".y.", suffix=".partial")
    assert path.name.startswith(".x.") and path.name.endswith(".partial") and path.parent == tmp_path
    assert folder.name.startswith(".y.") and folder.is_dir()
    assert (mode(path), mode(folder)) == (0o666 & ~umask, 0o777 & ~umask)


def test_the_umask_at_the_time_of_writing_counts(tmp_path, umask):
    atomic_write_text(tmp_path / "a.txt", "a")
    os.umask(0o077)  # a mask changed after import, or between two writes, is the one applied
    atomic_write_text(tmp_path / "b.txt", "b")
    assert (mode(tmp_path / "a.txt"), mode(tmp_path / "b.txt")) == (0o666 & ~umask, 0o600)


def test_temporary_names_are_fresh_and_never_reuse_a_taken_one(tmp_path, monkeypatch):
    names = iter(["aa", "aa", "bb"])
    monkeypatch.setattr(atomic_files.secrets, "token_hex", lambda nbytes: next(names))
    fd, first = make_temp_file(tmp_path, prefix="t.")
    os.close(fd)
    assert make_temp_dir(tmp_path, prefix="t.") == tmp_path / "t.bb"  # "t.aa" was taken: tried again
    assert first == tmp_path / "t.aa"


def test_a_folder_full_of_taken_names_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic_files.secrets, "token_hex", lambda nbytes: "same")
    (tmp_path / "t.same").mkdir()
    with pytest.raises(FileExistsError, match=rf"no free temporary name t\.\* in {tmp_path} after 100 tries"):
        make_temp_dir(tmp_path, prefix="t.")


def test_a_run_directory_gets_the_umask_s_modes_throughout(tmp_path, umask, capsys):
    task = tmp_path / "tiny.toml"
    task.write_text(TASK)
    run = tmp_path / "runs" / "tiny"
    assert main(["train", str(task), "--out", str(run)]) == 0
    capsys.readouterr()
    written = modes_below(tmp_path / "runs")
    assert {"tiny/results.json", "tiny/checkpoints/best.pt", "tiny/plots/learning_curves.png",
            "tiny/metrics.jsonl", "tiny/run.json", "tiny/config.toml"} <= set(written)
    assert written == expected(tmp_path / "runs", umask)
    assert mode(run) == 0o777 & ~umask


def test_a_study_folder_gets_the_umask_s_modes(tmp_path, umask):
    settings = StudySettings(study_name="s", storage=None, metric="accuracy", direction="maximize", sampler="tpe",
                             pruner="median", prune_after=5, trials=2, folder_id=StudySettings.new_folder_id())
    StudyDir.create(tmp_path / "studies" / "s", settings, 'name = "t"\n').release()
    written = modes_below(tmp_path / "studies")
    assert {"s", "s/study.json", "s/task.toml"} <= set(written)
    assert written == expected(tmp_path / "studies", umask)


def test_the_data_cache_gets_the_umask_s_modes(tmp_path, umask):
    cache = tmp_path / "cache"
    Glyphs("val", cache_dir=cache, num_characters=30, samples_per_class=6)
    written = modes_below(tmp_path)
    assert any(name.endswith(".npz") for name in written)
    assert written == expected(tmp_path, umask)


def test_downloads_and_extracted_archives_get_the_umask_s_modes(tmp_path, umask):
    archive = tmp_path / "source" / "archive.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("images/a/1.png", b"not really a png")
    os.chmod(archive, 0o600)  # the source's own mode must not carry over
    data = tmp_path / "data"
    download_file(archive.as_uri(), data / "archive.zip")
    safe_extract(data / "archive.zip", data)
    written = modes_below(data)
    assert set(written) == {"archive.zip", "images", "images/a", "images/a/1.png"}
    assert written == expected(data, umask)

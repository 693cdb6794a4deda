"""Ctrl-C during training: a checkpoint at the end of the iteration, the exact command that
continues the run, and a resumed run bit-identical to one never interrupted."""

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from fewshot_metaopt.cli import main
from fewshot_metaopt.runs.interrupts import InterruptGuard
from test_cli import write_task
from test_cli_resume import CLI, KILL_TASK, assert_same_run

SLOW_STEP = """
import time
from fewshot_metaopt.cli import main
from fewshot_metaopt.learners import GradientMetaLearner

# Iterations of a tenth of a second: the signal lands inside one, not between them.
real = GradientMetaLearner.meta_train_step
def slow(self, episodes):
    time.sleep(0.1)
    return real(self, episodes)
GradientMetaLearner.meta_train_step = slow
raise SystemExit(main())
"""


def test_ctrl_c_checkpoints_the_iteration_and_the_printed_resume_finishes_bit_identically(tmp_path):
    task = write_task(tmp_path, KILL_TASK)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert main(["train", str(task), "--out", str(whole), "--threads", "1"]) == 0

    script = tmp_path / "slow_cli.py"
    script.write_text(SLOW_STEP)
    process = subprocess.Popen([sys.executable, str(script), "train", str(task), "--out", str(cut), "--threads", "1"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics, deadline = cut / "metrics.jsonl", time.monotonic() + 240
    # Past the checkpoint at iteration 4 and before the next one at 8.
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 5):
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before it could be interrupted"
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=240)
    assert process.returncode == 130, err
    last = torch.load(cut / "checkpoints/last.pt", weights_only=True)
    stopped_at = last["iteration"]
    assert 5 <= stopped_at < 20 and stopped_at % 4  # written for the interrupt, not one of the every-4 checkpoints
    assert f"interrupted at iteration {stopped_at}" in out
    command = next(line.removeprefix("continue with: ") for line in out.splitlines() if line.startswith("continue with: "))
    assert command == shlex.join(["fewshot-metaopt", "train", "--resume", str(cut), "--threads", "1"])
    assert "Ctrl-C: stopping after this iteration" in err and err.rstrip().endswith("fewshot-metaopt: interrupted")
    assert not (cut / "results.json").exists()
    # The log holds the lines the uninterrupted run writes up to there (log_every is 1), and no other.
    assert last["progress"]["metrics_bytes"] == metrics.stat().st_size
    assert metrics.read_text().count("\n") == stopped_at

    resumed = subprocess.run([*CLI, *shlex.split(command)[1:]], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming at iteration {stopped_at}" in resumed.stdout
    assert_same_run(whole, cut)


@pytest.fixture
def python_sigint_handler():
    """Python's own Ctrl-C handler, as an interactive run has it: a job started in the
    background by a shell without job control (as CI may run the suite) begins with SIGINT
    ignored, and Python then leaves it ignored."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


@pytest.mark.usefixtures("python_sigint_handler")
def test_a_second_ctrl_c_stops_at_once():
    with InterruptGuard() as guard:
        os.kill(os.getpid(), signal.SIGINT)
        assert guard.requested
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
            raise AssertionError("the second Ctrl-C did not interrupt")
        except KeyboardInterrupt:
            pass
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.usefixtures("python_sigint_handler")
def test_outside_the_main_thread_ctrl_c_is_left_as_it_is():
    seen = []

    def train():
        with InterruptGuard() as guard:
            seen.append(signal.getsignal(signal.SIGINT))
            assert not guard.requested

    thread = threading.Thread(target=train)
    thread.start()
    thread.join()
    assert seen == [signal.default_int_handler]


def test_resuming_with_the_printed_command_keeps_the_machine_options(tmp_path):
    from fewshot_metaopt.cli.main import build_parser
    from fewshot_metaopt.cli.train_command import resume_command
    from fewshot_metaopt.runs.run_dir import RunDir

    args = build_parser().parse_args(["train", "--resume", "my runs/a", "--threads", "2", "--data-root", "data"])
    assert resume_command(args, RunDir("my runs/a"), None) == (
        "fewshot-metaopt train --resume 'my runs/a' --threads 2 --data-root data")

    class Group:
        world_size = 4

    args = build_parser().parse_args(["train", "--resume", "r"])
    assert resume_command(args, RunDir("r"), Group()) == "fewshot-metaopt train --resume r --nproc 4"


def test_the_notice_is_skipped_where_stderr_has_no_descriptor(monkeypatch):
    import io

    monkeypatch.setattr(sys, "stderr", io.StringIO())
    with InterruptGuard() as guard:
        os.kill(os.getpid(), signal.SIGINT)
    assert guard.requested and sys.stderr.getvalue() == ""

"""The learned optimizers' cost benchmarks run end to end at toy sizes and print every
configuration asked for, with Adam's step as the reference."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_script(*args: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_step_cost_prints_a_ratio_per_configuration_and_thread_count():
    rules = ["scalable lstm (mlp 16 tanh), eager fp32", "l2o (8x1), eager bf16"]
    out = run_script("benchmarks/learned_step_cost.py", "--layers", "1", "--width", "24", "--threads", "1", "2",
                     "--repeats", "1", "--rules", *rules)
    assert "0.00M parameters" in out and "1 thread(s)" in out and "2 thread(s)" in out
    for name in ["adam (torch.optim)", *rules]:
        lines = [line for line in out.splitlines() if line.strip().startswith(name)]
        assert len(lines) == 2 and all(line.rstrip().endswith("x") for line in lines), out
    assert out.count(" 1.00x") >= 4  # Adam against itself, in CPU and wall time


def test_meta_training_at_scale_reports_time_and_memory_per_rule(tmp_path):
    out = run_script("benchmarks/meta_training_at_scale.py", "--widths", "16", "--window", "2", "--ways", "3",
                     "--shots", "2", "--data-root", str(tmp_path / "absent"), "--rules", "scalable", "l2o")
    rows = [line for line in out.splitlines() if line.startswith(("scalable", "l2o"))]
    assert len(rows) == 2 and all("Glyphs" in row and "failed" not in row for row in rows), out

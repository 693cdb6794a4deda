"""The bf16 and time-to-accuracy benchmark scripts run end to end at toy sizes on generated
data (Glyphs; no real Omniglot needed) and print what their docs publish."""

import json

from script_runner import run_script


def test_precision_gradients_and_lowerings_at_toy_size(tmp_path):
    out = run_script("benchmarks/precision.py", "--threads", "1", "--parts", "gradients,lowerings",
                     "--data-root", str(tmp_path / "absent"), "--glyph-characters", "12", "--width", "4",
                     "--queries", "1", "--meta-batch", "2", "--settings", "5w1s", "--algorithms", "maml,warp_maml",
                     "--engines", "func,higher", "--lowering-repeats", "1", "--warmup", "0")
    assert "Glyphs (generated; Omniglot not found" in out
    rows = [line for line in out.splitlines() if line.startswith("| maml |") or line.startswith("| warp_maml |")]
    assert len(rows) == 4
    # warp_maml runs on the higher engine only: its func row says so, its higher row has figures.
    assert "n/a" in rows[2] and "n/a" not in rows[3]
    fp32_cosine = float(rows[0].split("|")[5])
    assert fp32_cosine > 0.99  # fp32 against the float64 ground truth
    lowering_rows = [line for line in out.splitlines() if line.startswith("| ") and "x |" in line]
    assert len(lowering_rows) == 8  # every subset of the three CPU forms
    assert "Fastest under bf16:" in out


def test_precision_speed_part_runs_engine_speed():
    out = run_script("benchmarks/precision.py", "--threads", "1", "--parts", "speed", "--repeats", "1",
                     "--meta-batch", "1", "--speed-workloads", "omniglot-5w1s-b8-fo")
    assert "ours-func-bf16" in out and "ours-higher-bf16" in out and "ours-func-vmap-bf16" in out


def test_time_to_accuracy_at_toy_size(tmp_path):
    common = ["benchmarks/time_to_accuracy.py", "tasks/glyphs-quickstart.toml", "--threads", "1",
              "--set", "data.num_characters=30", "--set", "data.samples_per_class=4", "--set", "model.channels=4",
              "--set", "train.meta_batch=2", "--set", "episodes.queries=1", "--set", "episodes.eval_queries=1",
              "--set", "validation.episodes=3", "--set", "evaluation.episodes=4", "--set", "learner.precision=bf16"]
    calibration = run_script(*common, "--calibrate", "1")
    assert "CPU s per meta-iteration" in calibration and "train.iterations=" in calibration
    out = run_script(*common, "--set", "train.iterations=3", "--set", "meta_schedule.name=\"cosine\"",
                     "--cpu-seconds", "60", "--validate-every", "0.001", "--target", "0.0",
                     "--json", str(tmp_path / "r.json"))
    assert "after 3 iterations x 2 tasks" in out and "(95% CI, 4 episodes)" in out
    assert "first reached at iteration 1" in out
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["iterations"] == 3 and record["precision"] == "bf16" and len(record["curve"]) == 4
    assert record["train_cpu_s"] <= record["process_cpu_s"]

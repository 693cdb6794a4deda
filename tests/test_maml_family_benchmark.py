"""benchmarks/maml_family.py runs end to end at toy size: every algorithm meta-trains for the
same CPU budget and is scored, and iMAML's autograd memory stays flat in the inner steps while
MAML's grows."""

import json

from script_runner import run_script


def test_the_maml_family_benchmark_runs_at_toy_size(tmp_path):
    out = run_script("benchmarks/maml_family.py", "--data-root", str(tmp_path / "absent"), "--settings", "5w1s",
                     "--algorithms", "maml", "imaml", "--cpu-seconds", "0.3", "--width", "4", "--meta-batch", "2",
                     "--queries", "2", "--test-episodes", "3", "--glyph-characters", "40", "--memory-setting", "5w1s",
                     "--memory-steps", "1", "4", "--json", str(tmp_path / "rows.json"))
    assert "Glyphs (generated; no Omniglot in" in out and "get_cpu_capability()" in out and "load average" in out
    assert "| imaml | lr 0.1, 5 step(s) (5 at test), lambda 2.0, 5 CG steps, damping 11.0 |" in out
    rows = json.loads((tmp_path / "rows.json").read_text())
    accuracy = {row["algorithm"]: row for row in rows["accuracy"]}
    assert set(accuracy) == {"maml", "imaml"}
    assert all(row["train_cpu_s"] >= 0.3 and row["iterations"] >= 1 and row["test_episodes"] == 3
               for row in accuracy.values())
    saved = {(row["algorithm"], row["inner_steps"]): row["saved_peak_mib"] for row in rows["memory"]}
    assert saved["imaml", 1] == saved["imaml", 4] > 0
    assert saved["maml", 4] > 1.5 * saved["maml", 1]
    assert all(row["rss_peak_mib"] >= 0 for row in rows["memory"])

"""The long benchmark scripts still run end to end at toy sizes, and ``learned_vs_adam --work``
resumes: a second run loads every piece and prints the same table, and a meta-training run
resumes from its checkpoint; the learned optimizers' cost benchmarks print every
configuration asked for, with Adam's step as the reference."""

import pytest
import torch

from script_runner import REPO, run_script

OMNIGLOT = REPO.parent / "shared" / "data" / "omniglot"


def table(output: str) -> list[str]:
    return [line for line in output.splitlines() if not line.startswith(("  ", "total"))]


def test_learned_vs_adam_resumes_from_its_work_folder(tmp_path):
    args = ["benchmarks/learned_vs_adam.py", "--threads", "1", "--data-root", str(tmp_path / "absent"),
            "--ways", "3", "--shots", "2", "--regression-shots", "3", "--steps", "3", "--unroll", "2",
            "--meta-iterations", "2", "--validate-every", "1", "--validation-tasks", "1", "--test-tasks", "2",
            "--tune-tasks", "1", "--seeds", "0", "1", "--bootstrap", "20", "--architectures", "conv4-16",
            "mlp-784-64", "--work", str(tmp_path / "work")]
    first = run_script(*args)
    assert "Glyphs train characters (no Omniglot at" in first and "meta-step 2" in first
    assert "mlp-1-40-40 on sinusoid" in first and "| mlp-784-64 (unseen) |" in first
    pieces = sorted(p.name.split("-")[0] for p in (tmp_path / "work").iterdir())
    assert pieces.count("rule") == 6 and pieces.count("train") == 6 and pieces.count("adam") == 2
    assert pieces.count("curve") == 2 * (1 + 6)
    # Curves of the rules are recomputed from the reloaded rules: the table must not change.
    for curve in (tmp_path / "work").glob("curve-conv4_16_l*"):
        curve.unlink()
    second = run_script(*args)
    assert "meta-trained rule loaded" in second and "meta-step 1" not in second
    assert table(second) == table(first)
    # A longer run continues the meta-training runs from their checkpoints and keeps the rule an
    # uninterrupted run keeps.
    longer = [*args[:args.index("--meta-iterations") + 1], "3", *args[args.index("--meta-iterations") + 2:]]
    third = run_script(*longer)
    assert "l2o, seed 0: resumed at meta-step 2" in third and "l2o, seed 0: meta-step 3" in third
    fresh = [*longer[:longer.index("--work") + 1], str(tmp_path / "fresh"), "--rules", "l2o", "--seeds", "0"]
    assert "resumed" not in run_script(*fresh)
    resumed, = (tmp_path / "work").glob("rule-l2o_s0-*-3.pt")
    uninterrupted, = (tmp_path / "fresh").glob("rule-l2o_s0-*-3.pt")
    a, b = (torch.load(path, weights_only=True)["rule"] for path in (resumed, uninterrupted))
    assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)
    # A checkpoint past the requested length is not rewound.
    shorter = [*args[:-2], "--work", str(tmp_path / "fresh"), "--rules", "l2o", "--seeds", "0"]
    assert "past --meta-iterations 2; training afresh" in run_script(*shorter)


def test_learned_vs_adam_meta_trains_with_pes_across_architectures_of_the_mixture(tmp_path):
    out = run_script("benchmarks/learned_vs_adam.py", "--threads", "1", "--data-root", str(tmp_path / "absent"),
                     "--ways", "3", "--shots", "2", "--regression-shots", "3", "--steps", "4", "--unroll", "2",
                     "--meta-iterations", "8", "--validate-every", "3", "--validation-tasks", "1", "--test-tasks", "2",
                     "--tune-tasks", "1", "--seeds", "0", "--rules", "l2o", "--outer-trainer", "pes",
                     "--pes-particles", "2", "--meta-batch", "2", "--bootstrap", "20", "--architectures", "conv4-16")
    assert "'mix', pes" in out and "l2o, seed 0: meta-step 8" in out


@pytest.mark.skipif(not (OMNIGLOT / "images_background.zip").exists() and not (OMNIGLOT / "images_background").is_dir(),
                    reason="needs Omniglot in ../shared/data/omniglot")
def test_warp_grad_long_adaptation_setting_runs_its_baselines():
    out = run_script("benchmarks/warp_grad.py", "accuracy", "--setting", "20w-long", "--algorithms", "none", "fomaml",
                     "--iterations", "1", "--meta-batch", "1", "--width", "4", "--test-episodes", "1", "--threads", "1")
    lines = out.splitlines()
    assert lines[0].startswith("none") and "after 0 iterations" in lines[0]
    assert lines[1].startswith("fomaml") and "after 1 iterations x 1 tasks" in lines[1]


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


def test_optimizers_on_omniglot_runs_every_group_resumes_and_reports(tmp_path):
    """On a generated Omniglot (two background alphabets): the grid, the parameter-free
    optimizers and our three over a learning and an evaluated episode; a second call finds
    every run done; the report has a row per optimizer."""
    from omniglot_fixtures import make_omniglot

    make_omniglot(tmp_path / "omniglot")
    out = tmp_path / "runs.jsonl"
    args = ["benchmarks/optimizers_on_omniglot.py", "--data-root", str(tmp_path / "omniglot"), "--out", str(out),
            "--seeds", "1", "--learn-tasks", "1", "--eval-tasks", "1", "--steps", "4", "--batch", "8",
            "--eval-every", "2", "--tape-meta-steps", "1", "--tape-unroll", "2"]
    first = run_script(*args)
    lines = out.read_text().splitlines()
    assert "MetaNNCombiner" in first and "ControlMetaOptimizer" in first and "DoWG" in first
    assert "episode" not in run_script(*args).split("\n", 1)[1]  # everything was done already
    assert out.read_text().splitlines() == lines
    report = run_script("benchmarks/optimizers_on_omniglot.py", "--report", str(out))
    rows = [line for line in report.splitlines() if line.startswith(("| tuned |", "| free |", "| ours |"))]
    assert len(rows) == 3 + 10 + 6, report

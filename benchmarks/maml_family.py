"""The MAML family side by side on Omniglot at equal CPU time, and iMAML's memory against MAML's.

    .venv/bin/python benchmarks/maml_family.py --threads 1                    # both parts, defaults
    .venv/bin/python benchmarks/maml_family.py --parts accuracy --settings 5w1s --cpu-seconds 180

``accuracy``
    For each setting (Omniglot 5-way 1-shot and 20-way 1-shot, Vinyals split), every algorithm
    meta-trains for the same CPU time (``time.process_time`` of this process around its
    meta-steps, one torch thread), interleaved: the algorithm with the least CPU time so far
    takes the next meta-step, so all of them see the same machine conditions. Each draws the
    same stream of training episodes (one sampler per algorithm, same seed) and starts from the
    same weights. Then each is scored on the same ``--test-episodes`` fixed test episodes
    (mean and 95% CI). The protocol is the CPU one of the repository's other Omniglot
    comparisons (docs/benchmarks.md): conv4 with ``--width`` channels, meta-batch
    ``--meta-batch``, Adam ``--meta-lr``; each contender's inner loop is in ``CONTENDERS``
    (any other registered algorithm runs with the setting's inner loop).

``memory``
    One meta-step of MAML (second order) and of iMAML on ``--memory-setting`` as the inner steps
    go through ``--memory-steps``, each in a fresh process: the peak resident memory during the
    step above the memory before it (``/proc/self/clear_refs`` resets the high-water mark), and
    the peak bytes autograd held for backward at once (tensors saved for backward, each storage
    counted once). The episodes are random tensors of Omniglot's shapes: memory depends on
    shapes only.

Without Omniglot in ``--data-root`` (default ``../shared/data/omniglot`` beside the repository)
the generated Glyphs set stands in, and the output says so. The default budget, 3 CPU minutes
per algorithm per setting, fits a shared 2-core machine in about an hour; the papers train for
hours on a GPU, so read the ranking at this budget, not the papers' figures.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import weakref
from datetime import datetime, timezone
from pathlib import Path

import torch

from fewshot_metaopt import GradientMetaLearner, GradientMetaLearnerConfig, TaskDistributionSampler
from fewshot_metaopt.datasets import Glyphs, Omniglot
from fewshot_metaopt.episodes import Episode
from fewshot_metaopt.learners import ALGORITHMS
from fewshot_metaopt.models import conv4

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from precision import machine as cpu_and_torch  # noqa: E402
DEFAULT_DATA = REPO.parent / "shared" / "data" / "omniglot"

# Finn et al.'s inner loops: 5-way lr 0.4, 1 step (3 at test); 20-way lr 0.1, 5 steps.
SETTINGS = {
    "5w1s": dict(ways=5, shots=1, inner_lr=0.4, inner_steps=1, inner_steps_eval=3),
    "20w1s": dict(ways=20, shots=1, inner_lr=0.1, inner_steps=5, inner_steps_eval=5),
}
# The contenders by label: the algorithm and what it changes in each setting's learner config.
# iMAML takes the reference code's inner lr (0.1), lambda 2 and 5 CG steps, 5 inner steps (its
# meta-gradient's cost does not grow with them), and damping 11: the reference solves
# (1 + 1) I + H / (lambda + 10), which is (1 + 11) I + H / lambda up to a constant factor at
# lambda 2. Undamped, the system is indefinite on these batch-norm networks (the support
# Hessian's lowest eigenvalues lie far below -lambda); imaml_undamped shows what that costs.
# Reptile: 5 plain SGD steps at lr 0.4 (10 at test), the pseudo-gradient handed to Adam.
IMAML = dict(inner_lr=0.1, inner_steps=5, inner_steps_eval=5, imaml_lambda=2.0, cg_steps=5, cg_damping=11.0)
CONTENDERS = {
    "maml": ("maml", {}),
    "fomaml": ("fomaml", {}),
    "meta_sgd": ("meta_sgd", {}),
    "reptile": ("reptile", dict(inner_lr=0.4, inner_steps=5, inner_steps_eval=10)),
    "imaml": ("imaml", IMAML),
    "imaml_undamped": ("imaml", {**IMAML, "cg_damping": 0.0}),
    "proto_maml": ("proto_maml", {}),
}
DEFAULT_ALGORITHMS = ["maml", "fomaml", "meta_sgd", "reptile", "imaml", "proto_maml"]


def machine() -> str:
    """The CPU and torch's settings (benchmarks/precision.py), the core count and the load."""
    try:
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:  # pragma: no cover - not Linux
        load = "unknown"
    return f"{cpu_and_torch()}; {os.cpu_count()} cores; load average {load}"


def splits(data_root: Path, glyph_characters: int):
    """The train and test splits and their description: real Omniglot when present, else Glyphs."""
    if (data_root / "images_background.zip").exists() or (data_root / "images_background").is_dir():
        return Omniglot(data_root, "train"), Omniglot(data_root, "test"), "real Omniglot, Vinyals split"
    return (Glyphs(split="train", num_characters=glyph_characters), Glyphs(split="test", num_characters=glyph_characters),
            f"Glyphs (generated; no Omniglot in {data_root})")


def learner_config(label: str, setting: str, args) -> GradientMetaLearnerConfig:
    """The setting's inner loop and ``args``' outer loop, with what the contender changes."""
    s = SETTINGS[setting]
    algorithm, changes = CONTENDERS[label] if label in CONTENDERS else (label, {})
    values = dict(algorithm=algorithm, inner_lr=s["inner_lr"], inner_steps=s["inner_steps"],
                  inner_steps_eval=s["inner_steps_eval"], meta_lr=args.meta_lr)
    return GradientMetaLearnerConfig(**{**values, **changes})


def describe(config: GradientMetaLearnerConfig) -> str:
    text = f"lr {config.inner_lr}, {config.inner_steps} step(s) ({config.eval_steps} at test)"
    if config.method.proximal:
        text += f", lambda {config.imaml_lambda}, {config.cg_steps} CG steps, damping {config.cg_damping}"
    return text


# ------------------------------------------------------------------------------------- accuracy


class Contender:
    """One algorithm's learner, its own training stream and the CPU time it has used."""

    def __init__(self, label: str, setting: str, train, args) -> None:
        s = SETTINGS[setting]
        self.algorithm, self.config = label, learner_config(label, setting, args)
        torch.manual_seed(args.seed)  # the same initial weights for every algorithm
        self.learner = GradientMetaLearner(conv4(s["ways"], hidden=args.width), self.config)
        self.sampler = TaskDistributionSampler(train, ways=s["ways"], shots=s["shots"], queries=args.queries,
                                               seed=args.seed)
        self.cpu, self.iterations, self.last_loss = 0.0, 0, float("nan")

    def step(self, meta_batch: int) -> None:
        episodes = self.sampler.sample_batch(meta_batch)
        start = time.process_time()
        result = self.learner.meta_train_step(episodes)
        self.cpu += time.process_time() - start
        self.iterations += 1
        self.last_loss = result.loss


def compare(setting: str, train, test_split, args) -> list[dict]:
    s = SETTINGS[setting]
    contenders = [Contender(name, setting, train, args) for name in args.algorithms]
    print(f"\n{setting}: {', '.join(f'{c.algorithm} ({describe(c.config)})' for c in contenders)}", flush=True)
    next_report = args.report_every
    while True:
        waiting = [c for c in contenders if c.cpu < args.cpu_seconds]
        if not waiting:
            break
        min(waiting, key=lambda c: c.cpu).step(args.meta_batch)
        spent = min(c.cpu for c in contenders)
        if args.report_every and spent >= next_report:
            next_report += args.report_every
            print(f"  {spent:.0f} CPU s each: " + ", ".join(f"{c.algorithm} {c.iterations} it (loss {c.last_loss:.3f})"
                                                           for c in contenders), flush=True)
    test = TaskDistributionSampler(test_split, ways=s["ways"], shots=s["shots"], queries=args.queries,
                                   seed=args.seed).fixed(args.test_episodes)
    rows = []
    for c in contenders:
        start = time.process_time()
        scored = c.learner.evaluate(test)
        rows.append(dict(setting=setting, algorithm=c.algorithm, inner=describe(c.config), iterations=c.iterations,
                         train_cpu_s=round(c.cpu, 1), cpu_s_per_iteration=round(c.cpu / c.iterations, 3),
                         test_accuracy=scored.mean, ci95=scored.ci95, test_episodes=len(scored.values),
                         test_cpu_s=round(time.process_time() - start, 1)))
        print(f"  {c.algorithm}: {100 * scored.mean:.2f}% ± {100 * scored.ci95:.2f}% after {c.iterations} iterations",
              flush=True)
    return rows


def accuracy_table(rows: list[dict]) -> str:
    lines = ["| algorithm | inner loop | meta-iterations | CPU s / iteration | test accuracy (95% CI) |",
             "| --- | --- | --- | --- | --- |"]
    best = max(r["test_accuracy"] for r in rows)
    for r in rows:
        score = f"{100 * r['test_accuracy']:.2f}% ± {100 * r['ci95']:.2f}%"
        if r["test_accuracy"] == best:
            score = f"**{score}**"
        lines.append(f"| {r['algorithm']} | {r['inner']} | {r['iterations']} | {r['cpu_s_per_iteration']:.2f} | {score} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------- memory


class SavedTensorPeak:
    """The most bytes autograd holds for backward at once, each storage counted once."""

    def __init__(self) -> None:
        self.live: dict[int, list[int]] = {}
        self.peak = 0

    def _pack(self, tensor):
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        self.live.setdefault(key, [storage.nbytes(), 0])[1] += 1
        self.peak = max(self.peak, sum(size for size, _ in self.live.values()))
        held = _Held(tensor)
        weakref.finalize(held, self._release, key)
        return held

    def _release(self, key: int) -> None:
        entry = self.live[key]
        entry[1] -= 1
        if entry[1] == 0:
            del self.live[key]

    def measure(self, step) -> int:
        with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda held: held.tensor):
            step()
        return self.peak


class _Held:
    def __init__(self, tensor) -> None:
        self.tensor = tensor


def _status_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1))


def probe(algorithm: str, setting: str, steps: int, args) -> dict:
    """One meta-step in this (fresh) process: peak RSS above the start, and peak saved bytes."""
    s = SETTINGS[setting]
    config = learner_config(algorithm, setting, args)
    config = GradientMetaLearnerConfig(**{**config.__dict__, "inner_steps": steps, "inner_steps_eval": steps})
    torch.manual_seed(args.seed)
    learner = GradientMetaLearner(conv4(s["ways"], hidden=args.width), config)
    g = torch.Generator().manual_seed(args.seed)
    ways, shots, queries = s["ways"], s["shots"], args.queries
    episodes = [Episode(support_x=torch.rand(ways * shots, 1, 28, 28, generator=g),
                        support_y=torch.arange(ways).repeat_interleave(shots),
                        query_x=torch.rand(ways * queries, 1, 28, 28, generator=g),
                        query_y=torch.arange(ways).repeat_interleave(queries)) for _ in range(args.meta_batch)]
    # No warm-up step: the allocator keeps what a step freed, which would hide the next step's peak.
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    start = time.process_time()
    saved = SavedTensorPeak().measure(lambda: learner.accumulate_meta_gradient(episodes))
    cpu = time.process_time() - start
    return dict(algorithm=algorithm, setting=setting, inner_steps=steps, rss_peak_mib=(_status_kib("VmHWM") - before) / 1024,
                saved_peak_mib=saved / 2**20, cpu_s=cpu)


def memory(args) -> list[dict]:
    rows = []
    for steps in args.memory_steps:
        for algorithm in args.memory_algorithms:
            command = [sys.executable, str(Path(__file__).resolve()), "--probe", algorithm, str(steps),
                       "--memory-setting", args.memory_setting, "--width", str(args.width),
                       "--meta-batch", str(args.meta_batch), "--queries", str(args.queries), "--threads", str(args.threads),
                       "--seed", str(args.seed), "--meta-lr", str(args.meta_lr)]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"the memory probe of {algorithm} with {steps} steps failed:\n{done.stderr}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"  {algorithm}, {steps} inner step(s): peak RSS +{r['rss_peak_mib']:.1f} MiB, "
                  f"saved for backward {r['saved_peak_mib']:.1f} MiB, {r['cpu_s']:.2f} CPU s", flush=True)
    return rows


def memory_table(rows: list[dict]) -> str:
    algorithms = list(dict.fromkeys(r["algorithm"] for r in rows))
    header = " | ".join(f"{a}: peak RSS / saved for backward / CPU s" for a in algorithms)
    lines = [f"| inner steps | {header} |", "| --- |" + " --- |" * len(algorithms)]
    for steps in dict.fromkeys(r["inner_steps"] for r in rows):
        cells = []
        for a in algorithms:
            r = next(r for r in rows if r["algorithm"] == a and r["inner_steps"] == steps)
            cells.append(f"{r['rss_peak_mib']:.0f} MiB / {r['saved_peak_mib']:.1f} MiB / {r['cpu_s']:.2f}")
        lines.append(f"| {steps} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- main


def parse(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", choices=["accuracy", "memory"], default=["accuracy", "memory"])
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=["5w1s", "20w1s"])
    parser.add_argument("--algorithms", nargs="+", default=DEFAULT_ALGORITHMS,
                        help=f"contenders: any of {', '.join(dict.fromkeys([*CONTENDERS, *ALGORITHMS]))} "
                             "(default: %(default)s)")
    parser.add_argument("--cpu-seconds", type=float, default=180.0,
                        help="meta-training CPU seconds per algorithm per setting (default: %(default)s)")
    parser.add_argument("--test-episodes", type=int, default=600)
    parser.add_argument("--width", type=int, default=32, help="conv4 channels (default: %(default)s)")
    parser.add_argument("--meta-batch", type=int, default=4)
    parser.add_argument("--meta-lr", type=float, default=3e-3)
    parser.add_argument("--queries", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--glyph-characters", type=int, default=200, help="Glyphs characters when Omniglot is absent")
    parser.add_argument("--report-every", type=float, default=60.0, help="progress line every this many CPU seconds")
    parser.add_argument("--memory-setting", choices=sorted(SETTINGS), default="20w1s")
    parser.add_argument("--memory-steps", type=int, nargs="+", default=[1, 5, 20])
    parser.add_argument("--memory-algorithms", nargs="+", default=["maml", "imaml"])
    parser.add_argument("--json", type=Path, default=None, help="also write every row here")
    parser.add_argument("--probe", nargs=2, metavar=("ALGORITHM", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    known = dict.fromkeys([*CONTENDERS, *ALGORITHMS])
    unknown = [name for name in [*args.algorithms, *args.memory_algorithms] if name not in known]
    if unknown:
        parser.error(f"unknown contender(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    if args.probe:
        print(json.dumps(probe(args.probe[0], args.memory_setting, int(args.probe[1]), args)))
        return 0
    started = datetime.now(timezone.utc)
    print(f"{started:%Y-%m-%d %H:%M} UTC; {machine()}")
    print("command: " + " ".join(["benchmarks/maml_family.py", *(sys.argv[1:] if argv is None else argv)]))
    rows: dict[str, list[dict]] = {}
    if "accuracy" in args.parts:
        train, test, source = splits(args.data_root, args.glyph_characters)
        print(f"data: {source}; conv4-{args.width}, meta-batch {args.meta_batch}, Adam {args.meta_lr}, "
              f"{args.queries} queries, {args.cpu_seconds:g} CPU s of meta-training per algorithm, "
              f"{args.test_episodes} test episodes")
        rows["accuracy"] = []
        for setting in args.settings:
            found = compare(setting, train, test, args)
            rows["accuracy"] += found
            print(f"\n### {setting}\n\n{accuracy_table(found)}", flush=True)
    if "memory" in args.parts:
        print(f"\nmemory: one meta-step on {args.memory_setting} shapes, conv4-{args.width}, "
              f"meta-batch {args.meta_batch}", flush=True)
        rows["memory"] = memory(args)
        print(f"\n{memory_table(rows['memory'])}")
    print(f"\nfinished {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; load average "
          f"{' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

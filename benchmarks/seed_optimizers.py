"""The seed optimizers against their baselines on small deterministic problems.

    nice -n 19 .venv/bin/python benchmarks/seed_optimizers.py --threads 1 [--seeds 3] [--steps 300]

Problems (full batch, one task per seed, the same tasks for every optimizer):

* ``quadratic`` — a random quadratic in 20 coordinates, condition number 1000, from 0;
* ``sinusoid``  — MAML's sinusoid MLP (1-40-40-1, ReLU) fitting 50 points of one sinusoid;
* ``glyphs``    — an MLP (196-64-10, ReLU) classifying 10 procedural characters, 5 images each,
  14x14 pixels (:class:`~fewshot_metaopt.datasets.Glyphs`).

Baselines: SGD and Adam, each with the learning rate of a log grid that gives the lowest mean
final loss over the seeds (tuned on the evaluation tasks themselves: the most favourable
setting for the baselines). Then, per problem:

* seed 000 — the fixed 0.5/0.5 mix and MetaNNCombiner, both over SGD and Adam at their tuned
  learning rates (meta_lr 1e-3, the default, and 1e-2);
* seed 002 — AdaptiveSGDWithTape with the tuned SGD lr as its base: untrained (= that SGD),
  and after ``meta_train_on_tasks`` on other tasks of the same family (20 inner steps);
* seed 003 — ControlMetaOptimizer over ``--episodes`` consecutive training runs from the same
  start, M kept between them: its defaults (lr 0.1, wd 1e-4, H 16, HH 2, Adam-scaled
  disturbances, M-optimizer SGD 1e-5 with M's gradient clipped at 10, M learning from step
  H + HH), the same with m_lr 1e-3, and with the tuned Adam lr and m_lr 1e-3.

Reported: the median (over seeds) final loss after ``--steps`` steps, and the median number of
steps to reach the target (``--target`` x the initial loss; "-" when half the seeds or more
never reach it); for seed 003 the median final loss of each episode ("inf": diverged).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from typing import Any, Callable

import torch
from torch import nn

from fewshot_metaopt.datasets import Glyphs, Sinusoid
from fewshot_metaopt.models import mlp
from fewshot_metaopt.torch_optim import AdaptiveSGDWithTape, ControlMetaOptimizer, MetaNNCombiner
from fewshot_metaopt.meta_training import EpisodeTasks, QuadraticTasks, meta_train_on_tasks
from fewshot_metaopt.optim import TapeSGDRule

SGD_GRID = [1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0]
ADAM_GRID = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1]
TAPE_INNER_STEPS = 20
EVAL_STREAM, META_STREAM = 0, 10_000  # tasks for meta-training never meet the evaluated ones


def families() -> dict[str, Any]:
    glyphs = Glyphs(split="train", num_characters=40, samples_per_class=5, image_size=14)
    return {
        "quadratic": QuadraticTasks(dim=20, condition=1000.0),
        "sinusoid": EpisodeTasks(Sinusoid(), lambda: mlp(1, 1), ways=1, shots=50),
        "glyphs": EpisodeTasks(glyphs, lambda: nn.Sequential(nn.Flatten(), mlp(196, 10, hidden=(64,))), ways=10, shots=5),
    }


def task_for(family: Any, seed: int) -> Any:
    return family.sample(torch.Generator().manual_seed(EVAL_STREAM + seed))


def train(task: Any, make: Callable[[list], Any], steps: int, control: bool = False) -> list[float]:
    """Losses before each step (and after the last) of one optimizer from the task's start;
    stops at the first non-finite loss and pads with inf."""
    params = {name: nn.Parameter(p.detach().clone()) for name, p in task.params.items()}
    opt = make(list(params.items()))
    return run(task, params, opt, steps, control)


def run(task: Any, params: dict, opt: Any, steps: int, control: bool) -> list[float]:
    losses = []
    for _ in range(steps):
        try:
            if control:
                loss = opt.step(())  # full batch: the batch is the task itself
            else:
                def closure():
                    opt.zero_grad()
                    value = task.loss(params)
                    value.backward()
                    return value

                loss = opt.step(closure)
        except ValueError:  # a diverged run: the optimizers refuse non-finite losses
            break
        value = float(loss.detach())
        if not math.isfinite(value):
            break
        losses.append(value)
    with torch.no_grad():
        final = float(task.loss(params))
    losses.append(final if math.isfinite(final) and len(losses) == steps else math.inf)
    return losses + [math.inf] * (steps + 1 - len(losses))


def steps_to(losses: list[float], target: float) -> float:
    return next((i for i, v in enumerate(losses) if v <= target), math.inf)


def tune(tasks: list, kind: str, steps: int) -> tuple[float, list[list[float]]]:
    grid = SGD_GRID if kind == "sgd" else ADAM_GRID
    best = None
    for lr in grid:
        make = (lambda p, lr=lr: torch.optim.SGD([t for _, t in p], lr=lr)) if kind == "sgd" else (
            lambda p, lr=lr: torch.optim.Adam([t for _, t in p], lr=lr)
        )
        runs = [train(task, make, steps) for task in tasks]
        score = statistics.fmean(r[-1] for r in runs)
        if best is None or score < best[0]:
            best = (score, lr, runs)
    return best[1], best[2]


def summary(name: str, runs: list[list[float]], targets: list[float], seconds: float) -> str:
    finals = [r[-1] for r in runs]
    reached = sorted(steps_to(r, t) for r, t in zip(runs, targets))
    median_steps = statistics.median_low(reached)
    shown = "-" if math.isinf(median_steps) else str(median_steps)
    spread = f"{min(finals):.3g} - {max(finals):.3g}"
    return f"| {name} | {statistics.median(finals):.4g} | {spread} | {shown} | {seconds:.1f} |"


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--episodes", type=int, default=5)
    parser.add_argument("--target", type=float, default=1e-2, help="the target as a fraction of the initial loss")
    parser.add_argument("--meta-steps", type=int, default=60, help="meta-steps of the tape rule's training")
    parser.add_argument("--problems", nargs="+", default=["quadratic", "sinusoid", "glyphs"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 for steady timings)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.seeds} seeds, {args.steps} steps")
    all_families = families()
    for problem in args.problems:
        family = all_families[problem]
        tasks = [task_for(family, seed) for seed in range(args.seeds)]
        (sgd_lr, sgd_runs), sgd_s = timed(lambda: tune(tasks, "sgd", args.steps))
        (adam_lr, adam_runs), adam_s = timed(lambda: tune(tasks, "adam", args.steps))
        targets = [args.target * run[0] for run in sgd_runs]
        per_run = len(SGD_GRID) * args.seeds
        print(f"\n### {problem}: initial loss {statistics.median(r[0] for r in sgd_runs):.4g} (target: x {args.target:g}), "
              f"tuned SGD lr {sgd_lr:g}, tuned Adam lr {adam_lr:g}\n")
        print("| optimizer | median final loss | min - max | steps to target | s per run |")
        print("| --- | --- | --- | --- | --- |")
        print(summary(f"SGD lr {sgd_lr:g} (tuned)", sgd_runs, targets, sgd_s / per_run))
        print(summary(f"Adam lr {adam_lr:g} (tuned)", adam_runs, targets, adam_s / (len(ADAM_GRID) * args.seeds)))

        # Seed 000: the fixed mix and the learned combiner over the tuned SGD and Adam.
        for label, options in (
            ("0.5/0.5 mix (000 baseline)", {"learn": False}),
            ("MetaNNCombiner meta_lr 1e-3", {"meta_lr": 1e-3}),
            ("MetaNNCombiner meta_lr 1e-2", {"meta_lr": 1e-2}),
        ):
            def make(p, options=options):
                torch.manual_seed(0)
                return MetaNNCombiner(p, sgd_lr=sgd_lr, adam_lr=adam_lr, **options)

            runs, s = timed(lambda: [train(task, make, args.steps) for task in tasks])
            print(summary(label, runs, targets, s / args.seeds))

        # Seed 002: the tape rule from the tuned SGD, untrained and meta-trained on other tasks.
        torch.manual_seed(0)
        rule = TapeSGDRule(lr=sgd_lr)
        untrained, s = timed(lambda: [train(task, lambda p: AdaptiveSGDWithTape(p, rule=rule), args.steps) for task in tasks])
        print(summary("AdaptiveSGDWithTape, untrained", untrained, targets, s / args.seeds))
        try:
            history, meta_s = timed(lambda: meta_train_on_tasks(
                rule, family, meta_steps=args.meta_steps, inner_steps=TAPE_INNER_STEPS, meta_lr=1e-2, seed=META_STREAM,
            ))
            runs, s = timed(lambda: [train(task, lambda p: AdaptiveSGDWithTape(p, rule=rule), args.steps) for task in tasks])
            print(summary(f"AdaptiveSGDWithTape, meta-trained ({meta_s:.0f} s)", runs, targets, s / args.seeds))
            lr = rule.get_learned_lr()
            print(f"\n(tape meta-loss {statistics.fmean(history[:5]):.4g} -> {statistics.fmean(history[-5:]):.4g} "
                  f"over {args.meta_steps} meta-steps; effective lr of the last step {statistics.fmean(lr.values()):.3g})")
        except ValueError as err:
            print(f"| AdaptiveSGDWithTape, meta-trained | meta-training failed: {err} | | | |")

        # Seed 003: consecutive episodes from the same start, M kept.
        print("\n| ControlMetaOptimizer | " + " | ".join(f"episode {e + 1}" for e in range(args.episodes)) + " | s per episode |")
        print("| --- |" + " --- |" * (args.episodes + 1))
        for label, options in (
            ("defaults (m_lr 1e-5)", {}),
            ("m_lr 1e-3", {"m_lr": 1e-3}),
            # The played step is Adam's (Adam-scaled disturbances), so its tuned lr is Adam's.
            (f"lr {adam_lr:g} (tuned Adam's), m_lr 1e-3", {"lr": adam_lr, "m_lr": 1e-3}),
        ):
            finals = [[] for _ in range(args.episodes)]
            start = time.perf_counter()
            for task in tasks:
                params = {name: nn.Parameter(p.detach().clone()) for name, p in task.params.items()}
                opt = ControlMetaOptimizer(list(params.items()), lambda p, batch, task=task: task.loss(p), **options)
                for episode in range(args.episodes):
                    with torch.no_grad():
                        for name, p in params.items():
                            p.copy_(task.params[name])
                    opt.start_episode()
                    finals[episode].append(run(task, params, opt, args.steps, control=True)[-1])
            seconds = (time.perf_counter() - start) / (args.seeds * args.episodes)
            cells = " | ".join(f"{statistics.median(f):.4g}" for f in finals)
            print(f"| {label} | {cells} | {seconds:.1f} |")


if __name__ == "__main__":
    main()

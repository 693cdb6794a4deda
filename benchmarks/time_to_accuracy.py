"""Accuracy within a CPU-time budget, and CPU seconds to reach a validation target.

    .venv/bin/python benchmarks/time_to_accuracy.py tasks/omniglot-5w1s-cpu.toml \\
        --data-root ../shared/data/omniglot --cpu-seconds 1500 --target 0.98 --threads 1

Builds the task exactly as ``fewshot-metaopt train`` does (the same model initialisation,
training stream, validation and test manifests: ``fewshot_metaopt.runs.trainer.Trainer``),
then meta-trains until the training CPU time (``time.process_time`` of this process, so one
torch thread is one core) reaches ``--cpu-seconds`` or the task's ``train.iterations`` are done,
whichever comes first. Every ``--validate-every`` CPU seconds of training it scores the
validation manifest; validation time is not charged to the budget but is reported. At the end
it tests the final weights (the weights at the budget) on the task's test manifest
(``evaluation.episodes``, mean ± 95% CI) and prints:

* accuracy at the budget (test) and the last validation score;
* training CPU seconds (and iterations) to the first validation score at or above ``--target``;
* training, validation and test CPU seconds, and the process's total.

A cosine meta-lr schedule decays over ``train.iterations``: set it (``--set
train.iterations=N``) from a measured per-iteration cost so that the schedule ends near the
budget; ``--calibrate K`` times K iterations and prints that N.

``--peer learn2learn`` trains learn2learn's MAML or MetaSGD (``algorithm`` maml or meta_sgd
of the task) on the same conv4, episodes, budget and manifests instead of our learner; it needs
the peers environment (``bash benchmarks/peers/setup.sh``; run with
``PYTHONPATH=. .peers-venv/bin/python``).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from fewshot_metaopt.runs.task_config import load_task
from fewshot_metaopt.runs.trainer import Trainer


def validate(learner, manifest) -> tuple[float, float]:
    result = learner.evaluate(manifest)
    return float(result.mean), float(result.ci95)


class Learn2LearnPeer:
    """learn2learn's MAML / MetaSGD with our learner's ``meta_train_step`` and ``evaluate``
    faces, so that the loop below drives both alike. Not exercised by the test suite (the core
    environment has no learn2learn)."""

    def __init__(self, task, model) -> None:
        import learn2learn as l2l  # noqa: PLC0415  (the peers environment only)

        c = task.learner
        if c.algorithm == "meta_sgd":
            self.meta = l2l.algorithms.MetaSGD(model, lr=c.inner_lr, first_order=c.first_order)
        elif c.algorithm in ("maml", "fomaml"):
            self.meta = l2l.algorithms.MAML(model, lr=c.inner_lr, first_order=c.first_order or c.algorithm == "fomaml")
        else:
            raise SystemExit(f"--peer learn2learn runs maml, fomaml or meta_sgd, not {c.algorithm!r}")
        self.steps, self.steps_eval = c.inner_steps, c.inner_steps_eval or c.inner_steps
        self.optimizer = torch.optim.Adam(self.meta.parameters(), lr=c.meta_lr)
        self.precision = c.precision

    def _forward(self, learner, x):
        if self.precision == "bf16":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return learner(x).float()
        return learner(x)

    def meta_train_step(self, episodes):
        self.optimizer.zero_grad()
        total = 0.0
        for ep in episodes:
            learner = self.meta.clone()
            for _ in range(self.steps):
                learner.adapt(F.cross_entropy(self._forward(learner, ep.support_x), ep.support_y))
            loss = F.cross_entropy(self._forward(learner, ep.query_x), ep.query_y) / len(episodes)
            loss.backward()
            total += float(loss)
        self.optimizer.step()
        return type("Result", (), {"loss": total})()

    def evaluate(self, episodes):
        scores = []
        for ep in episodes:
            learner = self.meta.clone()
            for _ in range(self.steps_eval):
                learner.adapt(F.cross_entropy(self._forward(learner, ep.support_x), ep.support_y))
            with torch.no_grad():
                scores.append(float((self._forward(learner, ep.query_x).argmax(1) == ep.query_y).float().mean()))
        values = torch.tensor(scores, dtype=torch.float64)
        ci = 1.96 * float(values.std(unbiased=True)) / len(scores) ** 0.5 if len(scores) > 1 else 0.0
        return type("Evaluation", (), {"mean": float(values.mean()), "ci95": ci, "values": scores})()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", help="a task file (tasks/*.toml)")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a task-file key, as fewshot-metaopt train --set")
    parser.add_argument("--cpu-seconds", type=float, default=1500.0, help="training CPU budget (25 min)")
    parser.add_argument("--validate-every", type=float, default=150.0,
                        help="CPU seconds of training between validations (0: only at the end)")
    parser.add_argument("--target", type=float, default=0.98, help="validation accuracy to time")
    parser.add_argument("--calibrate", type=int, default=0, metavar="K",
                        help="only time K meta-iterations (after one warm-up); print train.iterations for the budget")
    parser.add_argument("--peer", choices=["learn2learn"], default=None,
                        help="train this library's implementation instead of ours (peers environment)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None, help="also write the result here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    process_start = time.process_time()

    task = load_task(args.task, args.overrides, args.data_root)
    trainer = Trainer(task, "cpu", echo=lambda line: None)
    learner = trainer.learner
    scheduler = trainer.scheduler
    if args.peer == "learn2learn":
        learner, scheduler = Learn2LearnPeer(task, copy.deepcopy(trainer.learner.model)), None
    meta_batch = task.train.meta_batch
    label = f"{task.name} ({task.learner.algorithm}, {task.learner.precision}" + \
            (f", {args.peer})" if args.peer else ")")

    if args.calibrate:
        learner.meta_train_step(trainer.sampler.sample_batch(meta_batch))
        start = time.process_time()
        for _ in range(args.calibrate):
            learner.meta_train_step(trainer.sampler.sample_batch(meta_batch))
        per = (time.process_time() - start) / args.calibrate
        print(f"{label}: {per:.3f} CPU s per meta-iteration (meta-batch {meta_batch}, {args.calibrate} timed); "
              f"{args.cpu_seconds:g} CPU s is about train.iterations={int(args.cpu_seconds / per)}")
        return 0

    train_cpu = val_cpu = 0.0
    iterations, curve, reached = 0, [], None
    limit = task.train.iterations
    next_validation = args.validate_every if args.validate_every > 0 else float("inf")
    while train_cpu < args.cpu_seconds and (limit is None or iterations < limit):
        start = time.process_time()
        result = learner.meta_train_step(trainer.sampler.sample_batch(meta_batch))
        if scheduler is not None:
            scheduler.step()
        train_cpu += time.process_time() - start
        iterations += 1
        if train_cpu >= next_validation:
            next_validation += args.validate_every
            start = time.process_time()
            mean, ci = validate(learner, trainer.val)
            val_cpu += time.process_time() - start
            curve.append(dict(iteration=iterations, train_cpu_s=round(train_cpu, 1), val=mean, ci95=ci,
                              loss=float(result.loss)))
            if reached is None and mean >= args.target:
                reached = curve[-1]
            print(f"  {iterations} it, {train_cpu:.0f} CPU s: validation {100 * mean:.2f}% ± {100 * ci:.2f}% "
                  f"(loss {float(result.loss):.3f})", file=sys.stderr, flush=True)
    start = time.process_time()
    mean, ci = validate(learner, trainer.val)
    val_cpu += time.process_time() - start
    curve.append(dict(iteration=iterations, train_cpu_s=round(train_cpu, 1), val=mean, ci95=ci))
    if reached is None and mean >= args.target:
        reached = curve[-1]
    start = time.process_time()
    test = learner.evaluate(trainer.test)
    test_cpu = time.process_time() - start
    record = dict(
        task=task.name, algorithm=task.learner.algorithm, precision=task.learner.precision, peer=args.peer,
        overrides=args.overrides, meta_batch=meta_batch, iterations=iterations, cpu_budget_s=args.cpu_seconds,
        train_cpu_s=round(train_cpu, 1), validation_cpu_s=round(val_cpu, 1), test_cpu_s=round(test_cpu, 1),
        process_cpu_s=round(time.process_time() - process_start, 1),
        test_accuracy=float(test.mean), test_ci95=float(test.ci95), test_episodes=len(test.values),
        final_validation=mean, target=args.target,
        target_reached_at=reached, curve=curve, threads=torch.get_num_threads(), torch=torch.__version__,
        date=time.strftime("%Y-%m-%d %H:%M"),
    )
    print(f"{label}: test {100 * test.mean:.2f}% ± {100 * test.ci95:.2f}% (95% CI, {len(test.values)} episodes) "
          f"after {iterations} iterations x {meta_batch} tasks, {train_cpu:.0f} training CPU s "
          f"(budget {args.cpu_seconds:g}); validation {100 * mean:.2f}%")
    if reached is not None:
        print(f"validation target {100 * args.target:g}% first reached at iteration {reached['iteration']}, "
              f"{reached['train_cpu_s']:.0f} training CPU s")
    else:
        print(f"validation target {100 * args.target:g}% not reached (best {100 * max(c['val'] for c in curve):.2f}%)")
    print(f"CPU seconds: training {train_cpu:.0f}, validation {val_cpu:.0f}, test {test_cpu:.0f}, "
          f"process {record['process_cpu_s']:.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

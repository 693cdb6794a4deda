"""Learned inner optimizers against tuned Adam: steps to a target training loss on held-out
Omniglot alphabets, on architectures in meta-training and on architectures kept out of it.

    .venv/bin/python benchmarks/learned_vs_adam.py --threads 1 --work runs/learned-vs-adam \\
        [--meta-train-on mix|conv4-16] [--seeds 0 1 2] [--test-tasks 32] [--outer-trainer tbptt|pes]

Protocol:

* A task is an N-way classification problem of ``--shots`` images per class from one side of
  Lake et al.'s Omniglot split; the network is trained from a fresh random initialisation on
  those images (full batch, cross-entropy) for ``--steps`` steps. Meta-training, lr tuning and
  validation use the 30 background alphabets; test tasks the 20 held-out evaluation alphabets
  (no shared alphabet, no shared character).
* Adam is tuned per architecture on a log grid of learning rates (``--tune-tasks``
  background tasks; the lr with the fewest mean per-task steps to ``--target``, ties to the
  lower mean final loss).
* Each learned optimizer (faithful LSTM, scalable LSTM, L2O) starts as a hand-designed method
  at conv4-16's tuned Adam lr (``rule_init="descent"``) and is meta-trained with
  ``meta_train_on_mixture`` (fewshot_metaopt/meta_training/task_mixture.py): every meta-step
  draws one (architecture, task source) pair of the mixture by weight, a fresh initialisation
  and ``--meta-batch`` episodes, and calls ``MetaOptimizer.meta_train_step`` (truncated BPTT in
  windows of ``--unroll`` steps over ``--steps`` steps, meta-loss = the training losses along
  the window; or, with ``--outer-trainer pes``, persistent evolution strategies where the
  checkout's MetaOptimizerConfig has ``outer_trainer``: a meta-step is then one truncation of
  ``--pes-particles`` antithetic pairs, and a draw of the mixture serves the
  ``ceil(steps / unroll)`` meta-steps of its pairs' runs; give ``--meta-batch`` the number of
  particles so that each pair has its own episode). ``--meta-train-on mix`` is the mixture
  below; ``conv4-16`` meta-trains on conv4-16 and background alphabets only. Every
  ``--validate-every`` meta-steps the rule is scored on fixed validation draws of each pair
  (mean training loss along a run, relative to the untrained rule's, averaged over pairs);
  the best-scoring rule is kept. Each rule is meta-trained once per seed of ``--seeds`` (the
  seed sets the rule's random initialisation and the mixture's draws).
* On ``--test-tasks`` held-out tasks every optimizer trains the same initialisations. Per
  task: the first step whose training loss is at most ``--target`` (a task that never gets
  there counts as ``steps + 1`` and is reported as unreached, so a rule's mean is then a
  lower bound). Reported per architecture: tuned Adam's mean steps and each rule's (the mean
  over seeds per task), as mean +- 1.96 standard errors over tasks; the speed-up, Adam's
  mean steps / the rule's, with a 95% interval from a bootstrap that resamples tasks (paired:
  the same tasks for Adam and the rule) and meta-training seeds, ``--bootstrap`` resamples;
  and each seed's own speed-up.

The mixture (``--meta-train-on mix``): conv4-8, conv4-16 and conv4-24, an MLP 784-32-32 on
flattened images and a residual net of width 16 with 2 blocks, each on background-alphabet
classification, and MAML's sinusoid regressor (MLP 1-40-40, MSE) on the sinusoid family,
weights 1 each. The default test architectures are conv4-16 (in the mixture) and three
architectures in no mixture: conv4-32 (wider than any conv4 in it), an MLP 784-64 (one wider
hidden layer instead of two) and a residual net of width 16 with 3 blocks (deeper). Without Omniglot at ``--data-root`` the embedded Glyphs data
set stands in (train vs test characters), and the output says so.

With ``--work DIR`` every finished piece (a tuned Adam lr, a meta-training run checkpointed at
each validation, a meta-trained rule, a held-out curve set) is kept in DIR under a name that
carries the settings it depends on, so an interrupted run resumes where it stopped and a later
run with more rules or seeds reuses what is done.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from fewshot_metaopt import MetaOptimizer, MetaOptimizerConfig, TaskDistributionSampler
from fewshot_metaopt.episodes.sampler import derive_seed
from fewshot_metaopt.losses import task_loss
from fewshot_metaopt.meta_training.architectures import ARCHITECTURES
from fewshot_metaopt.meta_training.task_mixture import TaskMixture, meta_train_on_mixture
from fewshot_metaopt.meta_training.task_sources import TASK_SOURCES
from fewshot_metaopt.optim import AdamRule, UpdateRule

REPO = Path(__file__).resolve().parents[1]
ADAM_GRID = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)
RULES = {
    "lstm (faithful)": dict(method="lstm", lstm_variant="faithful"),
    "lstm (scalable)": dict(method="lstm", lstm_variant="scalable"),
    "l2o": dict(method="l2o"),
}
REFERENCE = "conv4-16"  # the rules start at its tuned Adam lr, whatever they meta-train on
MIXTURES = {
    "mix": [("conv4-8", "omniglot-background"), ("conv4-16", "omniglot-background"),
            ("conv4-24", "omniglot-background"), ("mlp-784-32-32", "omniglot-background"),
            ("residual-16x2", "omniglot-background"), ("mlp-1-40-40", "sinusoid")],
    "conv4-16": [("conv4-16", "omniglot-background")],
}
TEST_ARCHITECTURES = ["conv4-16", "conv4-32", "mlp-784-64", "residual-16x3"]
OUTER_TRAINERS = ("tbptt", "pes")


def has_outer_trainers() -> bool:
    return "outer_trainer" in MetaOptimizerConfig.__dataclass_fields__


def trajectory(make_model: Callable[[], nn.Module], init_seed: int, episode, rule: UpdateRule,
               steps: int) -> List[float]:
    """Training losses before each step and after the last (``steps + 1`` values); a
    non-finite loss ends the run, and the rest of the curve is ``inf``."""
    torch.manual_seed(init_seed)
    model = make_model()
    params = {n: p.detach().requires_grad_() for n, p in model.named_parameters()}
    state = rule.init(params)
    losses = []
    for step in range(steps + 1):
        loss = task_loss(functional_call(model, params, (episode.support_x,)), episode.support_y)
        losses.append(float(loss.detach()))
        if step == steps:
            break
        if not math.isfinite(losses[-1]):
            return losses + [math.inf] * (steps - step)
        grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()))))
        with torch.no_grad():
            params, state = rule.update(params, grads, state, step, loss=loss.detach())
        params = {n: p.detach().requires_grad_() for n, p in params.items()}
    return losses


def image_model(arch: str, ways: int) -> Callable[[], nn.Module]:
    return lambda: ARCHITECTURES[arch].build(ways)


def curves(arch: str, tasks, rule: UpdateRule, steps: int, ways: int) -> List[List[float]]:
    return [trajectory(image_model(arch, ways), seed, episode, rule, steps) for seed, episode in tasks]


def steps_to(curve: List[float], target: float) -> int | None:
    return next((k for k, value in enumerate(curve) if value <= target), None)


def task_steps(task_curves: List[List[float]], target: float, steps: int) -> np.ndarray:
    """Per task, the first step at or below ``target``; ``steps + 1`` where it never gets there."""
    return np.array([reached if (reached := steps_to(c, target)) is not None else steps + 1 for c in task_curves],
                    dtype=float)


def mean_ci(values: np.ndarray) -> tuple[float, float]:
    """The mean and 1.96 standard errors of the mean."""
    half = 1.96 * values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else math.nan
    return float(values.mean()), float(half)


def speedup_interval(adam: np.ndarray, rule: np.ndarray, resamples: int, seed: int) -> tuple[float, float]:
    """95% percentile interval of mean(adam) / mean(rule), resampling tasks (the same for both)
    and the rows of ``rule`` (meta-training seeds) with replacement."""
    rng = np.random.default_rng(seed)
    seeds, tasks = rule.shape
    ratios = np.empty(resamples)
    for b in range(resamples):
        t, s = rng.integers(0, tasks, tasks), rng.integers(0, seeds, seeds)
        ratios[b] = adam[t].mean() / rule[np.ix_(s, t)].mean()
    low, high = np.percentile(ratios, [2.5, 97.5])
    return float(low), float(high)


class Work:
    """Finished pieces of a run, kept under names that carry every setting they depend on."""

    def __init__(self, root: str | None, args, data_tag: str) -> None:
        self.root = Path(root) if root else None
        self.task_tag = "-".join(str(v) for v in (data_tag, args.ways, args.shots, args.steps, args.target, args.seed))
        self.adam_tag = f"{self.task_tag}-{args.tune_tasks}-{len(ADAM_GRID)}"
        trainer = args.outer_trainer if args.outer_trainer == "tbptt" else \
            f"pes{args.pes_particles}-{args.pes_sigma:g}"
        # A meta-training run's checkpoints do not depend on its length, so a longer run continues a
        # shorter one; the rule it keeps (the best validated) does.
        self.train_tag = "-".join(str(v) for v in (
            self.task_tag, args.meta_train_on, args.regression_shots, args.unroll, args.meta_batch,
            f"{args.meta_lr:g}", args.validate_every, args.validation_tasks, trainer))
        self.meta_tag = f"{self.train_tag}-{args.meta_iterations}"
        self.test_tag = f"{args.test_tasks}"
        if self.root:
            self.root.mkdir(parents=True, exist_ok=True)

    def path(self, kind: str, name: str, tag: str, suffix: str = "json") -> Path | None:
        slug = "".join(c if c.isalnum() else "_" for c in name)
        return self.root / f"{kind}-{slug}-{tag}.{suffix}" if self.root else None

    def load_json(self, path: Path | None):
        return json.loads(path.read_text()) if path is not None and path.exists() else None

    def save_json(self, path: Path | None, value) -> None:
        if path is not None:
            partial = path.with_suffix(".partial")
            partial.write_text(json.dumps(value))
            partial.replace(path)

    def save_torch(self, path: Path | None, value) -> None:
        if path is not None:
            torch.save(value, path.with_suffix(".partial"))
            path.with_suffix(".partial").replace(path)


def tuned_adam(arch: str, tune, args, work: Work) -> float:
    path = work.path("adam", arch, work.adam_tag)
    cached = work.load_json(path)
    if cached is None:
        scores = {}
        for lr in ADAM_GRID:
            task_curves = curves(arch, tune, AdamRule(lr=lr), args.steps, args.ways)
            finals = [c[-1] if math.isfinite(c[-1]) else math.inf for c in task_curves]
            scores[lr] = (float(task_steps(task_curves, args.target, args.steps).mean()), sum(finals) / len(finals))
        lr = min(scores, key=lambda lr: scores[lr])
        cached = {"lr": lr, "scores": [[k, *v] for k, v in scores.items()]}
        work.save_json(path, cached)
    edge = " (at the grid's edge)" if cached["lr"] in (ADAM_GRID[0], ADAM_GRID[-1]) else ""
    print(f"Adam on {arch}: tuned lr {cached['lr']:g}{edge} (mean steps to target, mean final loss by lr: "
          + ", ".join(f"{lr:g}: {k:.1f}, {v:.3g}" for lr, k, v in cached["scores"]) + ")", flush=True)
    return cached["lr"]


def rule_config(spec: dict, lr: float, seed: int, args) -> MetaOptimizerConfig:
    extra = {}
    if has_outer_trainers():
        extra = dict(outer_trainer=args.outer_trainer)
        if args.outer_trainer == "pes":
            extra.update(pes_particles=args.pes_particles, pes_sigma=args.pes_sigma, pes_seed=seed)
    return MetaOptimizerConfig(
        **spec, inner_lr=lr, inner_steps=args.steps, unroll_steps=args.unroll, meta_lr=args.meta_lr,
        meta_loss="support", gradient_clipping=1.0, **extra,
    )


class Validation:
    """Fixed draws of every pair of the mixture; a rule's score is its mean training loss
    along a run relative to the untrained rule's, averaged over pairs (1.0 = untrained)."""

    def __init__(self, mixture: TaskMixture, args) -> None:
        self.steps, self.sets = args.steps, []
        for index, component in enumerate(mixture.components):
            draws = []
            for k in range(args.validation_tasks):
                generator = torch.Generator().manual_seed(derive_seed(args.seed + 20, index, k))
                episode = component.source.sample_episode(component.ways, component.shots, component.queries,
                                                          generator)
                draws.append((derive_seed(args.seed + 21, index, k), episode))
            self.sets.append((component.make_model, draws))
        self.reference: List[float] | None = None

    def areas(self, rule: UpdateRule) -> List[float]:
        return [sum(sum(trajectory(make, seed, episode, rule, self.steps)) for seed, episode in draws)
                for make, draws in self.sets]

    def score(self, rule: UpdateRule) -> float:
        areas = self.areas(rule)
        if self.reference is None:
            self.reference = areas
        return sum(a / r for a, r in zip(areas, self.reference)) / len(areas)


def release_finished_particles(mo: MetaOptimizer, args) -> None:
    """PES refuses a network of another shape while it holds particle pairs, finished ones
    too; a finished pair restarts from scratch at the next call anyway, so forgetting it
    changes nothing but lets the next draw of the mixture bring another architecture."""
    if args.outer_trainer == "pes":
        trainer = mo.outer_trainer
        trainer.pairs = [None if pair is not None and pair.steps >= args.steps else pair for pair in trainer.pairs]


def meta_train(name: str, seed: int, lr: float, mixture: TaskMixture, args, work: Work) -> tuple[UpdateRule, dict]:
    """The rule ``name`` meta-trained with seed ``seed`` (resumed from its checkpoint in the
    work folder when there is one); returns the best-validated rule and the run's log."""
    torch.manual_seed(seed)
    mo = MetaOptimizer(ARCHITECTURES[REFERENCE].build(args.ways), rule_config(RULES[name], lr, seed, args))
    validation = Validation(mixture, args)
    checkpoint = work.path("train", f"{name}-s{seed}", work.train_tag, "pt")
    began = time.perf_counter()
    if checkpoint is not None and checkpoint.exists() and \
            torch.load(checkpoint, weights_only=True)["done"] > args.meta_iterations:
        print(f"  {name}, seed {seed}: the checkpoint in {checkpoint.parent} is past --meta-iterations "
              f"{args.meta_iterations}; training afresh without checkpoints", flush=True)
        checkpoint = None
    # PES keeps its particles across meta-steps: a draw serves until they have all finished.
    calls = math.ceil(args.steps / args.unroll) if args.outer_trainer == "pes" else 1
    if checkpoint is not None and checkpoint.exists():
        saved = torch.load(checkpoint, weights_only=True)
        if "training" in saved:
            mo.load_training_state_dict(saved["training"])
        else:
            mo.rule.load_state_dict(saved["rule"])
            mo.meta_optimizer.load_state_dict(saved["adam"])
        done, log, best, best_state = saved["done"], saved["log"], saved["best"], saved["best_rule"]
        validation.reference, spent = saved["reference"], saved["seconds"]
        print(f"  {name}, seed {seed}: resumed at meta-step {done} (best {best:.4f})", flush=True)
    else:
        done, spent = 0, 0.0
        best, best_state = validation.score(mo.rule), copy.deepcopy(mo.rule.state_dict())
        log = {"validation": [(0, best)], "meta_loss": [], "components": [], "stopped": None}
        print(f"  {name}, seed {seed}: validation {best:.4f} untrained", flush=True)
    while done < args.meta_iterations and log["stopped"] is None:
        chunk = min(args.validate_every, args.meta_iterations - done)
        try:
            history = []
            for step in range(done, done + chunk):
                history += meta_train_on_mixture(mo, mixture, 1, args.meta_batch, seed=seed, first_step=step,
                                                 calls_per_draw=calls)
                release_finished_particles(mo, args)
        except FloatingPointError as err:
            log["stopped"] = f"meta-steps {done}..{done + chunk - 1}: {err}"
            print(f"  {name}, seed {seed}: {log['stopped']}; keeping the best rule so far", flush=True)
            break
        done += chunk
        log["meta_loss"] += [h.result.meta_loss for h in history]
        log["components"] += [h.component for h in history]
        value = validation.score(mo.rule)
        log["validation"].append((done, value))
        if value < best:
            best, best_state = value, copy.deepcopy(mo.rule.state_dict())
        elapsed = spent + time.perf_counter() - began
        print(f"  {name}, seed {seed}: meta-step {done}: validation {value:.4f} (best {best:.4f}), "
              f"{elapsed / 60:.1f} min", flush=True)
        state = {"done": done, "log": log, "best": best, "best_rule": best_state,
                 "reference": validation.reference, "seconds": elapsed}
        if hasattr(mo, "training_state_dict"):
            state["training"] = mo.training_state_dict()
        else:
            state.update(rule=mo.rule.state_dict(), adam=mo.meta_optimizer.state_dict())
        work.save_torch(checkpoint, state)
    log["seconds"] = spent + time.perf_counter() - began
    mo.rule.load_state_dict(best_state)
    return mo.rule, log


def trained_rule(name: str, seed: int, lr: float, mixture: TaskMixture, args, work: Work) -> tuple[UpdateRule, dict]:
    path = work.path("rule", f"{name}-s{seed}", work.meta_tag, "pt")
    if path is not None and path.exists():
        saved = torch.load(path, weights_only=True)
        rule = MetaOptimizer(ARCHITECTURES[REFERENCE].build(args.ways),
                             rule_config(RULES[name], lr, seed, args)).rule
        rule.load_state_dict(saved["rule"])
        print(f"  {name}, seed {seed}: meta-trained rule loaded from {path}", flush=True)
        return rule, saved["log"]
    rule, log = meta_train(name, seed, lr, mixture, args, work)
    work.save_torch(path, {"rule": rule.state_dict(), "log": log})
    return rule, log


def held_out_curves(arch: str, label: str, rule: UpdateRule, test, args, work: Work, tag: str) -> List[List[float]]:
    path = work.path("curve", f"{arch}-{label}", f"{tag}-{work.test_tag}")
    cached = work.load_json(path)
    if cached is None:
        began = time.perf_counter()
        cached = curves(arch, test, rule, args.steps, args.ways)
        work.save_json(path, cached)
        print(f"  {arch}, {label}: {len(test)} held-out tasks in {time.perf_counter() - began:.0f} s", flush=True)
    return cached


def cell(row: dict) -> str:
    steps = f"{row['steps']:.1f} ± {row['steps_ci']:.1f}"
    unreached = f", {row['unreached']} of {row['runs']} runs unreached" if row["unreached"] else ""
    if "speedup" not in row:
        return steps + unreached
    return f"{steps} ({row['speedup']:.2f}x [{row['speedup_low']:.2f}, {row['speedup_high']:.2f}]{unreached})"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "data" / "omniglot"))
    parser.add_argument("--ways", type=int, default=10)
    parser.add_argument("--shots", type=int, default=5, help="training images per class")
    parser.add_argument("--regression-shots", type=int, default=10, help="points per sinusoid task in the mixture")
    parser.add_argument("--steps", type=int, default=40, help="optimisation steps per task")
    parser.add_argument("--unroll", type=int, default=20, help="truncated-BPTT window")
    parser.add_argument("--target", type=float, default=0.1, help="the training loss to reach")
    parser.add_argument("--meta-train-on", default="mix", choices=list(MIXTURES))
    parser.add_argument("--meta-iterations", type=int, default=150)
    parser.add_argument("--meta-batch", type=int, default=1, help="episodes per meta-step (all of one pair)")
    parser.add_argument("--meta-lr", type=float, default=1e-3)
    parser.add_argument("--outer-trainer", default="tbptt", choices=OUTER_TRAINERS)
    parser.add_argument("--pes-particles", type=int, default=4)
    parser.add_argument("--pes-sigma", type=float, default=0.01)
    parser.add_argument("--validate-every", type=int, default=25)
    parser.add_argument("--tune-tasks", type=int, default=4)
    parser.add_argument("--validation-tasks", type=int, default=1, help="per pair of the mixture")
    parser.add_argument("--test-tasks", type=int, default=32)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="meta-training seeds")
    parser.add_argument("--rules", nargs="+", default=list(RULES), choices=list(RULES))
    parser.add_argument("--architectures", nargs="+", default=TEST_ARCHITECTURES, choices=ARCHITECTURES.names(),
                        help="test architectures (image ones)")
    parser.add_argument("--bootstrap", type=int, default=2000, help="resamples of the speed-up interval")
    parser.add_argument("--seed", type=int, default=0, help="names the tuning, validation and test tasks")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--work", default=None, help="keep finished pieces here and resume from them")
    args = parser.parse_args()
    if args.outer_trainer != "tbptt" and not has_outer_trainers():
        parser.error(f"--outer-trainer {args.outer_trainer}: this checkout's MetaOptimizerConfig has no "
                     "outer_trainer; use --outer-trainer tbptt")
    for name in args.architectures:
        if ARCHITECTURES[name].inputs != "image":
            parser.error(f"--architectures {name}: test tasks are Omniglot images; choose an image architecture")
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds {' '.join(map(str, args.seeds))}: a seed is repeated; list each once")
    return args


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    began = time.perf_counter()
    root = Path(args.data_root)
    background, background_name = TASK_SOURCES["omniglot-background"].build(root)
    evaluation, evaluation_name = TASK_SOURCES["omniglot-evaluation"].build(root)
    make = lambda ds: TaskDistributionSampler(ds, ways=args.ways, shots=args.shots, queries=1, seed=args.seed)  # noqa: E731
    tune = list(enumerate(make(background).fixed(args.tune_tasks, seed=args.seed + 10), start=1000))
    test = list(enumerate(make(evaluation).fixed(args.test_tasks, seed=args.seed + 30), start=3000))
    mixture = TaskMixture.from_names(MIXTURES[args.meta_train_on], data_root=root, ways=args.ways,
                                     shots=args.shots, regression_shots=args.regression_shots)
    seen = {name.split(" on ")[0] for name in (c.name for c in mixture.components)}
    print(f"tuning and meta-training: {background_name}; test: {evaluation_name}; {args.ways}-way, "
          f"{args.shots} images per class, {args.steps} steps per task, target {args.target:g}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)", flush=True)
    print(f"meta-training on '{args.meta_train_on}', {args.outer_trainer}:\n  " + "\n  ".join(mixture.describe()),
          flush=True)

    work = Work(args.work, args, "omniglot" if background_name.startswith("Omniglot") else "glyphs")
    tuned = {REFERENCE: tuned_adam(REFERENCE, tune, args, work)}
    rules, logs = {}, {}
    # Seed by seed, so that a run cut short has every rule at the seeds it finished.
    for seed in args.seeds:
        for name in args.rules:
            rules[name, seed], logs[f"{name}, seed {seed}"] = trained_rule(name, seed, tuned[REFERENCE], mixture,
                                                                           args, work)

    results = {"data": {"meta_training": background_name, "test": evaluation_name}, "args": vars(args),
               "mixture": mixture.describe(), "adam_lr": tuned, "meta_training": logs, "held_out": {}}
    rows_by_arch = {}
    for arch in args.architectures:
        if arch not in tuned:
            tuned[arch] = tuned_adam(arch, tune, args, work)
        adam_curves = held_out_curves(arch, "adam (tuned)", AdamRule(lr=tuned[arch]), test, args, work,
                                      work.adam_tag)
        adam = task_steps(adam_curves, args.target, args.steps)
        mean, half = mean_ci(adam)
        rows = {"adam (tuned)": {"steps": mean, "steps_ci": half, "unreached": int((adam > args.steps).sum()),
                                 "runs": len(adam),
                                 "final_loss": float(np.mean([c[-1] for c in adam_curves]))}}
        for name in args.rules:
            per_seed = [held_out_curves(arch, f"{name}-s{seed}", rules[name, seed], test, args, work, work.meta_tag)
                        for seed in args.seeds]
            steps = np.stack([task_steps(c, args.target, args.steps) for c in per_seed])
            mean, half = mean_ci(steps.mean(0))
            low, high = speedup_interval(adam, steps, args.bootstrap, seed=args.seed)
            rows[name] = {
                "steps": mean, "steps_ci": half, "unreached": int((steps > args.steps).sum()), "runs": steps.size,
                "speedup": float(adam.mean() / steps.mean()), "speedup_low": low, "speedup_high": high,
                "speedup_per_seed": [float(adam.mean() / s.mean()) for s in steps],
                "final_loss": float(np.mean([c[-1] for seed_curves in per_seed for c in seed_curves])),
            }
        rows_by_arch[arch] = rows
        results["held_out"][arch] = {"seen": arch in seen, "adam_lr": tuned[arch], "rows": rows}

    print(f"\nheld-out tasks: {args.test_tasks}, target training loss {args.target:g}, steps to target as mean ± "
          f"1.96 SE over tasks (rules: mean over {len(args.seeds)} seeds per task), speed-up = Adam's mean / the "
          f"rule's with a 95% bootstrap interval over tasks and seeds; '{args.meta_train_on}', {args.outer_trainer}")
    print("| architecture | tuned Adam lr | Adam steps | " + " | ".join(args.rules) + " |")
    print("| --- | --- | --- | " + " | ".join("---" for _ in args.rules) + " |")
    for arch, rows in rows_by_arch.items():
        label = f"{arch} ({'in meta-training' if arch in seen else 'unseen'})"
        print(f"| {label} | {tuned[arch]:g} | {cell(rows['adam (tuned)'])} | "
              + " | ".join(cell(rows[name]) for name in args.rules) + " |")
    print("\nspeed-up of each meta-training seed (seeds " + ", ".join(map(str, args.seeds)) + "):")
    for arch, rows in rows_by_arch.items():
        print(f"  {arch}: " + "; ".join(f"{name} " + ", ".join(f"{v:.2f}x" for v in rows[name]["speedup_per_seed"])
                                       for name in args.rules))
    unseen = [a for a in rows_by_arch if a not in seen]
    trained = [a for a in rows_by_arch if a in seen]
    for name in args.rules:
        worst = min((rows_by_arch[a][name]["speedup"], a) for a in unseen) if unseen else None
        if worst:
            print(f"goal, {name}: >= 1.2x on every unseen architecture: "
                  f"{'met' if worst[0] >= 1.2 else 'missed'} (lowest {worst[0]:.2f}x, {worst[1]})")
    for arch in trained:
        best = max((rows_by_arch[arch][name]["speedup"], name) for name in args.rules)
        print(f"goal, {arch}: best rule >= 2x: {'met' if best[0] >= 2 else 'missed'} ({best[1]}, {best[0]:.2f}x)")
    results["minutes"] = (time.perf_counter() - began) / 60
    print(f"\ntotal {results['minutes']:.1f} min")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()

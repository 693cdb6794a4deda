"""Learned inner optimizers against tuned Adam: steps to a target training loss on held-out
Omniglot alphabets, and transfer to architectures the optimizers never saw.

    .venv/bin/python benchmarks/learned_vs_adam.py --threads 1 [--meta-iterations 60] [--steps 100]

Protocol (the Phase 50.4 spec's measurements 1 and 2):

* A task is an N-way classification problem of ``--shots`` images per class drawn from one
  side of Lake et al.'s Omniglot split; the optimisee is trained from a fresh random
  initialisation on those images (full batch, cross-entropy) for ``--steps`` steps. Tasks for
  meta-training and lr tuning come from the background alphabets, evaluation tasks from the
  held-out evaluation alphabets (no shared alphabet, no shared character).
* Adam is tuned per architecture on a log grid of learning rates (background tasks, fewest
  steps for the mean training loss to reach ``--target``; ties go to the lower final loss).
* Each learned optimizer (faithful LSTM, scalable LSTM, L2O) starts as a hand-designed method
  at the conv net's tuned Adam lr (``rule_init="descent"``) and is meta-trained on conv4-16
  with :meth:`MetaOptimizer.meta_train_step` (truncated BPTT, windows of ``--unroll`` steps,
  meta-loss = sum of the training losses along the window); the rule with the lowest mean
  training loss on a fixed set of background validation tasks is kept.
* On held-out tasks every optimizer trains the same initialisations. Reported per
  architecture: mean training loss after a quarter, half and all of the steps, and the number
  of steps the mean loss curve needs to reach ``--target`` (``speed-up`` = tuned Adam's steps /
  the optimizer's; the spec asks for 1.25, i.e. 20% fewer steps; ``>T`` means never within
  the budget). A fixed target keeps the comparison away from the last digits of a loss that
  tends to zero.

Architectures: conv4-16 (meta-training), and unseen: an MLP (784-128-64), a wider conv4-32 and
a small residual conv net. Without ``../shared/data/omniglot`` the script falls back to the
embedded Glyphs data set (train vs test characters).

The run is long on a CPU. With ``--work DIR`` every finished piece (a tuned Adam lr, a
meta-trained rule, a held-out curve) is kept in DIR under a name that carries the settings, so
an interrupted run resumes where it stopped, and shards started side by side with disjoint
``--rules`` share the tuning; the last invocation over all rules prints the whole table.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from fewshot_metaopt import MetaOptimizer, MetaOptimizerConfig, TaskDistributionSampler
from fewshot_metaopt.datasets import Glyphs, Omniglot
from fewshot_metaopt.models import conv4, mlp
from fewshot_metaopt.optim import AdamRule, UpdateRule

REPO = Path(__file__).resolve().parents[1]
ADAM_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)
RULES = {
    "lstm (faithful)": dict(method="lstm", lstm_variant="faithful"),
    "lstm (scalable)": dict(method="lstm", lstm_variant="scalable"),
    "l2o": dict(method="l2o"),
}


class ResidualNet(nn.Module):
    """A small residual conv net: stem, two residual blocks with batch norm, pooled head."""

    def __init__(self, ways: int, width: int = 32) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, stride=2, padding=1), nn.ReLU())
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(width, width, 3, padding=1),
                nn.BatchNorm2d(width, track_running_stats=False),
                nn.ReLU(),
                nn.Conv2d(width, width, 3, padding=1),
                nn.BatchNorm2d(width, track_running_stats=False),
            )
            for _ in range(2)
        )
        self.head = nn.Linear(width, ways)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = F.relu(x + block(x))
        return self.head(x.mean((2, 3)))


ARCHITECTURES: Dict[str, Callable[[int], nn.Module]] = {
    "conv4-16": lambda ways: conv4(ways, hidden=16),
    "mlp 784-128-64": lambda ways: nn.Sequential(nn.Flatten(), mlp(784, ways, hidden=(128, 64))),
    "conv4-32 (wider)": lambda ways: conv4(ways, hidden=32),
    "residual": lambda ways: ResidualNet(ways),
}


def samplers(args) -> tuple:
    root = Path(args.data_root)
    if (root / "images_background.zip").exists() or (root / "images_background").is_dir():
        seen, held_out, name = Omniglot(root, "background"), Omniglot(root, "evaluation"), "Omniglot (Lake split)"
    else:
        seen, held_out, name = Glyphs(split="train"), Glyphs(split="test"), "Glyphs (Omniglot not found)"
    make = lambda ds, seed: TaskDistributionSampler(ds, ways=args.ways, shots=args.shots, queries=1, seed=seed)  # noqa: E731
    return make(seen, args.seed), make(held_out, args.seed + 1), name


def trajectory(arch: str, init_seed: int, episode, rule: UpdateRule, steps: int) -> List[float]:
    """Training losses before each step and after the last (``steps + 1`` values); a
    non-finite loss ends the run, and the rest of the curve is ``inf``."""
    torch.manual_seed(init_seed)
    model = ARCHITECTURES[arch](episode.ways)
    params = {n: p.detach().requires_grad_() for n, p in model.named_parameters()}
    state = rule.init(params)
    losses = []
    for step in range(steps + 1):
        loss = F.cross_entropy(functional_call(model, params, (episode.support_x,)), episode.support_y)
        losses.append(float(loss.detach()))
        if step == steps:
            break
        if not math.isfinite(losses[-1]):
            return losses + [math.inf] * (steps - step)
        grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()))))
        with torch.no_grad():
            params, state = rule.update(params, grads, state, step)
        params = {n: p.detach().requires_grad_() for n, p in params.items()}
    return losses


def mean_curve(arch: str, tasks, rule: UpdateRule, steps: int) -> List[float]:
    curves = [trajectory(arch, seed, episode, rule, steps) for seed, episode in tasks]
    return [sum(values) / len(values) for values in zip(*curves)]


def steps_to(curve: List[float], target: float) -> int | None:
    return next((k for k, value in enumerate(curve) if value <= target), None)


def tune_adam(arch: str, tasks, steps: int, target: float) -> tuple[float, Dict[float, tuple]]:
    """The grid lr whose mean curve reaches ``target`` first (then: lowest final loss)."""
    scores = {}
    for lr in ADAM_GRID:
        curve = mean_curve(arch, tasks, AdamRule(lr=lr), steps)
        reached = steps_to(curve, target)
        final = curve[-1] if math.isfinite(curve[-1]) else math.inf
        scores[lr] = (reached if reached is not None else math.inf, final)
    return min(scores, key=lambda lr: scores[lr]), scores


class Work:
    """Finished pieces of a run, kept under names that carry every setting they depend on."""

    def __init__(self, root: str | None, args) -> None:
        self.root = Path(root) if root else None
        keys = ("ways", "shots", "steps", "target", "tune_tasks", "seed")
        self.tag = "-".join(str(getattr(args, key)) for key in keys)
        self.meta_tag = self.tag + f"-{args.unroll}-{args.meta_iterations}-{args.meta_batch}-{args.meta_lr:g}" \
            f"-{args.validate_every}-{args.validation_tasks}"
        self.test_tag = f"{args.test_tasks}"
        if self.root:
            self.root.mkdir(parents=True, exist_ok=True)

    def path(self, kind: str, name: str, tag: str) -> Path | None:
        slug = "".join(c if c.isalnum() else "_" for c in name)
        return self.root / f"{kind}-{slug}-{tag}.{'pt' if kind == 'rule' else 'json'}" if self.root else None

    def load_json(self, path: Path | None):
        return json.loads(path.read_text()) if path is not None and path.exists() else None

    def save_json(self, path: Path | None, value) -> None:
        if path is not None:
            partial = path.with_suffix(".partial")
            partial.write_text(json.dumps(value))
            partial.replace(path)


def tuned_adam(arch: str, tune, args, work: Work) -> float:
    path = work.path("adam", arch, work.tag)
    cached = work.load_json(path)
    if cached is None:
        lr, scores = tune_adam(arch, tune, args.steps, args.target)
        cached = {"lr": lr, "scores": [[k, *v] for k, v in scores.items()]}
        work.save_json(path, cached)
    print(f"Adam on {arch}: tuned lr {cached['lr']:g} (steps to target, final loss by lr: "
          + ", ".join(f"{lr:g}: {k}, {v:.3g}" for lr, k, v in cached["scores"]) + ")", flush=True)
    return cached["lr"]


def rule_config(spec: dict, lr: float, args) -> MetaOptimizerConfig:
    return MetaOptimizerConfig(
        **spec, inner_lr=lr, inner_steps=args.steps, unroll_steps=args.unroll, meta_lr=args.meta_lr,
        meta_loss="support", gradient_clipping=1.0,
    )


def trained_rule(name: str, lr: float, sampler, validation, args, work: Work) -> tuple[UpdateRule, list]:
    path = work.path("rule", name, work.meta_tag)
    if path is not None and path.exists():
        saved = torch.load(path, weights_only=True)
        rule = MetaOptimizer(ARCHITECTURES["conv4-16"](args.ways), rule_config(RULES[name], lr, args)).rule
        rule.load_state_dict(saved["rule"])
        print(f"  {name}: meta-trained rule loaded from {path}", flush=True)
        return rule, saved["log"]
    rule, log = meta_train(name, RULES[name], lr, sampler, validation, args)
    if path is not None:
        torch.save({"rule": rule.state_dict(), "log": log}, path.with_suffix(".partial"))
        path.with_suffix(".partial").replace(path)
    return rule, log


def held_out_curve(arch: str, name: str, rule: UpdateRule, test, args, work: Work) -> List[float]:
    tag = (work.tag if name == "adam (tuned)" else work.meta_tag) + "-" + work.test_tag
    path = work.path("curve", f"{arch}-{name}", tag)
    curve = work.load_json(path)
    if curve is None:
        curve = mean_curve(arch, test, rule, args.steps)
        work.save_json(path, curve)
    return curve


def meta_train(name: str, spec: dict, lr: float, sampler, validation, args) -> tuple[UpdateRule, list]:
    arch = "conv4-16"
    torch.manual_seed(args.seed)
    model = ARCHITECTURES[arch](args.ways)
    mo = MetaOptimizer(model, rule_config(spec, lr, args))
    score = lambda: sum(mean_curve(arch, validation, mo.rule, args.steps)) / (args.steps + 1)  # noqa: E731
    best, best_rule = score(), copy.deepcopy(mo.rule)
    log = [(0, best)]
    print(f"  {name}: validation mean loss along the run {best:.4f} untrained", flush=True)
    for it in range(1, args.meta_iterations + 1):
        torch.manual_seed(args.seed * 100_003 + it)
        start = ARCHITECTURES[arch](args.ways)  # a fresh initialisation for every meta-step
        try:
            mo.meta_train_step(sampler.sample_batch(args.meta_batch), start)
        except FloatingPointError as err:
            print(f"  {name}: meta-step {it} failed ({err}); keeping the best rule so far")
            break
        if it % args.validate_every == 0 or it == args.meta_iterations:
            value = score()
            log.append((it, value))
            if value < best:
                best, best_rule = value, copy.deepcopy(mo.rule)
            print(f"  {name}: meta-step {it}: validation {value:.4f} (best {best:.4f})", flush=True)
    return best_rule, log


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "data" / "omniglot"))
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=10, help="training images per class")
    parser.add_argument("--steps", type=int, default=100, help="optimisation steps per task")
    parser.add_argument("--unroll", type=int, default=20, help="truncated-BPTT window")
    parser.add_argument("--target", type=float, default=0.1, help="the training loss to reach")
    parser.add_argument("--meta-iterations", type=int, default=60)
    parser.add_argument("--meta-batch", type=int, default=2)
    parser.add_argument("--meta-lr", type=float, default=1e-3)
    parser.add_argument("--validate-every", type=int, default=10)
    parser.add_argument("--tune-tasks", type=int, default=4)
    parser.add_argument("--validation-tasks", type=int, default=4)
    parser.add_argument("--test-tasks", type=int, default=10)
    parser.add_argument("--rules", nargs="+", default=list(RULES), choices=list(RULES))
    parser.add_argument("--architectures", nargs="+", default=list(ARCHITECTURES), choices=list(ARCHITECTURES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--work", default=None, help="keep finished pieces here and resume from them")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    began = time.perf_counter()
    seen, held_out, data_name = samplers(args)
    tune = list(enumerate(seen.fixed(args.tune_tasks, seed=args.seed + 10), start=1000))
    validation = list(enumerate(seen.fixed(args.validation_tasks, seed=args.seed + 20), start=2000))
    test = list(enumerate(held_out.fixed(args.test_tasks, seed=args.seed + 30), start=3000))
    print(f"{data_name}: {args.ways}-way, {args.shots} images per class, {args.steps} steps per task, "
          f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)", flush=True)

    work = Work(args.work, args)
    # conv4-16 first: the rules start at its tuned lr; the other architectures are tuned just
    # before their held-out runs, so a shard that only meta-trains reaches its work sooner.
    tuned = {"conv4-16": tuned_adam("conv4-16", tune, args, work)}
    rules, logs = {}, {}
    for name in args.rules:
        rules[name], logs[name] = trained_rule(name, tuned["conv4-16"], seen, validation, args, work)

    results = {"data": data_name, "args": vars(args), "adam_lr": tuned, "meta_training": logs, "held_out": {}}
    quarter, half = args.steps // 4, args.steps // 2
    for arch in args.architectures:
        if arch not in tuned:
            tuned[arch] = tuned_adam(arch, tune, args, work)
        adam = held_out_curve(arch, "adam (tuned)", AdamRule(lr=tuned[arch]), test, args, work)
        target = args.target
        reference = steps_to(adam, target)
        print(f"\nheld-out tasks, {arch} ({'meta-trained on it' if arch == 'conv4-16' else 'unseen'}); "
              f"target training loss {target:g}")
        print(f"{'optimizer':<18} {f'loss@{quarter}':>10} {f'loss@{half}':>10} {f'loss@{args.steps}':>10} "
              f"{'steps to target':>16} {'speed-up':>9}")
        rows = {}
        for name, rule in [("adam (tuned)", AdamRule(lr=tuned[arch])), *rules.items()]:
            curve = adam if name == "adam (tuned)" else held_out_curve(arch, name, rule, test, args, work)
            reached = steps_to(curve, target)
            speedup = None if reached is None or reference is None else reference / max(reached, 1)
            rows[name] = {"curve": curve, "steps_to_target": reached, "speedup": speedup}
            print(f"{name:<18} {curve[quarter]:>10.4f} {curve[half]:>10.4f} {curve[-1]:>10.4f} "
                  f"{reached if reached is not None else f'>{args.steps}':>16} "
                  f"{f'{speedup:.2f}x' if speedup is not None else '-':>9}")
        results["held_out"][arch] = {"target": target, "rows": rows}
    print(f"\ntotal {(time.perf_counter() - began) / 60:.1f} min")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()

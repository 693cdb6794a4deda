"""How long an unroll a learned optimizer can be meta-trained through and stay stable.

    .venv/bin/python benchmarks/unroll_stability.py [--unrolls 20 50 100 200] [--meta-steps 10]

For each unroll length T, a fresh learned optimizer (``--method``, default the scalable LSTM)
is meta-trained for ``--meta-steps`` steps on sinusoid regression with an MLP (40-40), each
meta-step one window of T inner steps (no truncation inside it) over ``--tasks`` episodes,
meta-loss = sum of the support losses along the window (the paper's). The rule is scored
before and after meta-training on ``--probe`` fixed tasks: the mean support loss along a
T-step run from the same initial weights. Stable means: every meta-gradient finite, and the
probe score after meta-training below the score before. The mean support loss at the initial
weights is printed for scale.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from fewshot_metaopt import MetaOptimizer, MetaOptimizerConfig, TaskDistributionSampler
from fewshot_metaopt.datasets import Sinusoid
from fewshot_metaopt.models import mlp


def probe_score(mo: MetaOptimizer, model, episodes, steps: int) -> float:
    """Mean support loss along ``steps`` rule steps from the model's weights, over ``episodes``
    (``inf`` if a run blows up)."""
    total = 0.0
    for episode in episodes:
        params = {n: p.detach().requires_grad_() for n, p in model.named_parameters()}
        state = mo.rule.init(params)
        for step in range(steps):
            loss = torch.nn.functional.mse_loss(torch.func.functional_call(model, params, (episode.support_x,)),
                                                episode.support_y)
            if not torch.isfinite(loss):
                return math.inf
            grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()))))
            with torch.no_grad():
                params, state = mo.rule.update(params, grads, state, step)
            params = {n: p.detach().requires_grad_() for n, p in params.items()}
            total += float(loss.detach()) / (steps * len(episodes))
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--unrolls", type=int, nargs="+", default=[20, 50, 100, 200])
    parser.add_argument("--meta-steps", type=int, default=10)
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--probe", type=int, default=8, help="fixed tasks scoring the rule before and after")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--method", default="lstm", choices=["lstm", "l2o", "meta_sgd"])
    parser.add_argument("--variant", default="scalable", choices=["scalable", "faithful"])
    parser.add_argument("--meta-lr", type=float, default=3e-3)
    parser.add_argument("--output-scale", type=float, default=0.1, help="the LSTM's output scale (paper: 0.1)")
    parser.add_argument("--init", default="descent", choices=["descent", "random"],
                        help="the rule's initialisation (descent: starts as a hand-designed method)")
    parser.add_argument("--inner-lr", type=float, default=0.01, help="the untrained rule's step size")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{args.method} ({args.variant}, init {args.init}, inner lr {args.inner_lr}, output scale {args.output_scale}), sinusoid MLP 40-40, {args.tasks} tasks "
          f"x {args.meta_steps} meta-steps, meta lr {args.meta_lr}, torch {torch.__version__}")
    print(f"{'unroll':>6} {'loss at start':>14} {'probe before':>13} {'probe after':>12} {'max grad norm':>14} "
          f"{'stable':>7} {'s':>6}")
    for unroll in args.unrolls:
        torch.manual_seed(args.seed)
        model = mlp(1, 1)
        config = MetaOptimizerConfig(
            method=args.method, lstm_variant=args.variant, inner_steps=unroll, unroll_steps=unroll,
            meta_lr=args.meta_lr, meta_loss="support", output_scale=args.output_scale,
            rule_init=args.init, inner_lr=args.inner_lr,
        )
        mo = MetaOptimizer(model, config)
        sampler = TaskDistributionSampler(Sinusoid(), shots=10, queries=10, seed=args.seed)
        probe = list(sampler.fixed(args.probe, seed=args.seed + 1))
        with torch.no_grad():
            initial = sum(float(torch.nn.functional.mse_loss(model(e.support_x), e.support_y)) for e in probe) / len(probe)
        before = probe_score(mo, model, probe, unroll)
        start = time.perf_counter()
        losses, norms, failure = [], [], ""
        for _ in range(args.meta_steps):
            try:
                result = mo.meta_train_step(sampler.sample_batch(args.tasks), model)
            except FloatingPointError as err:
                failure = str(err)
                break
            losses.append(result.meta_loss)
            norms.append(result.grad_norm)
        seconds = time.perf_counter() - start
        after = probe_score(mo, model, probe, unroll)
        stable = not failure and all(math.isfinite(x) for x in norms) and after < before
        print(f"{unroll:>6} {initial:>14.4f} {before:>13.4f} {after:>12.4f} {max(norms, default=math.nan):>14.3g} "
              f"{'yes' if stable else 'no':>7} {seconds:>6.0f}" + (f"  ({failure})" if failure else ""))


if __name__ == "__main__":
    main()

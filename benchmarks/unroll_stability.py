"""How long an unroll a learned optimizer can be meta-trained through and stay stable.

    .venv/bin/python benchmarks/unroll_stability.py [--unrolls 20 50 100 200] [--meta-steps 10]

For each unroll length T, a fresh learned optimizer (``--method``, default the scalable LSTM)
is meta-trained for ``--meta-steps`` steps on sinusoid regression with an MLP (40-40), each
meta-step one window of T inner steps (no truncation inside it) over ``--tasks`` episodes,
meta-loss = sum of the support losses along the window (the paper's). Stable means: every
meta-gradient norm finite, and the mean meta-loss of the last three meta-steps below that of
the first three. The mean support loss at the initial weights is printed for scale: a
meta-loss far above it means the optimizer's steps still make the loss grow along the unroll.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from fewshot_metaopt import MetaOptimizer, MetaOptimizerConfig, TaskDistributionSampler
from fewshot_metaopt.datasets import Sinusoid
from fewshot_metaopt.models import mlp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--unrolls", type=int, nargs="+", default=[20, 50, 100, 200])
    parser.add_argument("--meta-steps", type=int, default=10)
    parser.add_argument("--tasks", type=int, default=2)
    parser.add_argument("--method", default="lstm", choices=["lstm", "l2o", "meta_sgd"])
    parser.add_argument("--variant", default="scalable", choices=["scalable", "faithful"])
    parser.add_argument("--meta-lr", type=float, default=3e-3)
    parser.add_argument("--output-scale", type=float, default=0.1, help="the LSTM's output scale (paper: 0.1)")
    parser.add_argument("--init", default="descent", choices=["descent", "random"],
                        help="the rule's initialisation (descent: starts as a hand-designed method)")
    parser.add_argument("--inner-lr", type=float, default=0.01, help="the untrained rule's step size")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"{args.method} ({args.variant}, init {args.init}, inner lr {args.inner_lr}, output scale {args.output_scale}), sinusoid MLP 40-40, {args.tasks} tasks "
          f"x {args.meta_steps} meta-steps, meta lr {args.meta_lr}, torch {torch.__version__}")
    print(f"{'unroll':>6} {'loss at start':>14} {'first meta-loss':>16} {'last meta-loss':>15} {'max grad norm':>14} "
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
        with torch.no_grad():
            probe = sampler.fixed(20, seed=args.seed + 1)
            initial = sum(float(torch.nn.functional.mse_loss(model(e.support_x), e.support_y)) for e in probe) / 20
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
        k = min(3, len(losses))
        first = sum(losses[:k]) / k if k else math.nan
        last = sum(losses[-k:]) / k if k else math.nan
        stable = not failure and all(math.isfinite(x) for x in norms) and last < first
        print(f"{unroll:>6} {initial:>14.4f} {first:>16.4f} {last:>15.4f} {max(norms, default=math.nan):>14.3g} "
              f"{'yes' if stable else 'no':>7} {seconds:>6.0f}" + (f"  ({failure})" if failure else ""))


if __name__ == "__main__":
    main()

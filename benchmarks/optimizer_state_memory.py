"""Optimizer state per parameter, and time per step, of every rule on a 10M+ parameter model.

    .venv/bin/python benchmarks/optimizer_state_memory.py [--params 12] [--repeats 3]

The model is a stack of square linear layers with about ``--params`` million parameters.
For each rule it prints the bytes of its state after ``init`` divided by the parameters'
bytes (the spec's bar for the LSTM: at most 2x) and the median wall time of one
``update`` (no autograd graph: the step a meta-trained optimizer takes when it is used).
The faithful LSTM's 80x state does not fit next to its activations at this size on a 24 GiB
machine, so its state is sized on the ``meta`` device (shapes only, no memory) and its step is
timed at ``--faithful-params`` million parameters instead.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from fewshot_metaopt.optim.rules import AdamRule, L2ORule, LSTMRule, ScalableLSTMRule
from fewshot_metaopt.optim.rules.preprocess import param_bytes, state_bytes


def square_stack(millions: float, width: int = 2048) -> dict[str, torch.Tensor]:
    layers = max(1, round(millions * 1e6 / (width * width + width)))
    return {
        name: p.detach()
        for name, p in nn.Sequential(*[nn.Linear(width, width) for _ in range(layers)]).named_parameters()
    }


def median_step_seconds(rule, params, repeats: int) -> float:
    grads = {n: torch.randn_like(p) * 1e-3 for n, p in params.items()}
    state = rule.init(params)
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            params_next, state = rule.update(params, grads, state, 0)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=float, default=12.0, help="model size, millions of parameters")
    parser.add_argument("--faithful-params", type=float, default=4.0, help="size for timing the faithful LSTM (one 2048x2048 layer is 4.2 M)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)

    params = square_stack(args.params)
    n = sum(p.numel() for p in params.values())
    print(f"model: {len(params)} tensors, {n / 1e6:.2f} M parameters, {param_bytes(params) / 2**20:.0f} MiB (float32); "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'rule':<24} {'state / params':>15} {'state MiB':>10} {'s per step':>11}")
    rules = {
        "adam": AdamRule(),
        "lstm (scalable)": ScalableLSTMRule(),
        "l2o": L2ORule(),
    }
    for name, rule in rules.items():
        ratio = state_bytes(rule.init(params)) / param_bytes(params)
        seconds = median_step_seconds(rule, params, args.repeats)
        print(f"{name:<24} {ratio:>14.3f}x {ratio * param_bytes(params) / 2**20:>10.0f} {seconds:>11.3f}")

    faithful = LSTMRule()
    meta_params = {k: torch.empty_like(v, device="meta") for k, v in params.items()}
    ratio = state_bytes(faithful.init(meta_params)) / param_bytes(params)
    small = square_stack(args.faithful_params)
    small_n = sum(p.numel() for p in small.values())
    seconds = median_step_seconds(faithful, small, args.repeats)
    print(f"{'lstm (faithful)':<24} {ratio:>14.3f}x {ratio * param_bytes(params) / 2**20:>10.0f} "
          f"{seconds:>11.3f}  (step timed at {small_n / 1e6:.2f} M parameters)")


if __name__ == "__main__":
    main()

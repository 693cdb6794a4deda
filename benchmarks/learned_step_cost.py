"""What one step of a meta-trained learned optimizer costs at 8-13M parameters, against
``torch.optim.Adam``'s step on the same tensors, in one process.

    .venv/bin/python benchmarks/learned_step_cost.py --threads 1 2 [--layers 4 --width 1448] [--repeats 7]

The model is a stack of ``--layers`` square linear layers (4 x 1448 is 8.4M parameters,
3 x 2048 12.6M). Gradients are given (standard normal x 1e-3) and no autograd graph is
built: the step a meta-trained optimizer takes when it trains a model. Every configuration
and Adam (``torch.optim.Adam`` with its defaults, which is the multi-tensor ``foreach``
step) take turns, one step each per round, and the figure is the median over
``--repeats`` rounds of the **CPU time** of the step (``time.process_time``; with two
threads it counts both, and the time threads spend waiting for each other), so other load
on the machine shifts all of them alike; the wall time is printed beside it. The ratio is
the configuration's median over Adam's median in the same thread count.

Configurations: each rule at its default size and at a small coordinate network, evaluated
eagerly or compiled (``compile=True``), with float32 or bfloat16 matrix products
(``network_precision``). ``--rules`` picks among them. Compiling happens before timing.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, Dict

import torch
from torch import nn

from fewshot_metaopt.optim import L2ORule, ScalableLSTMRule
from precision import machine

CONFIGS: Dict[str, Callable[[dict], object]] = {}


def config(name: str):
    def register(make):
        CONFIGS[name] = make
        return make
    return register


SCALABLE_NETWORKS = [(16, "tanh"), (16, "relu"), (8, "relu"), (4, "relu")]  # the first is the default
L2O_NETWORKS = [(32, 2), (16, 1), (8, 1)]  # (width, hidden layers); the first is the default
EVALUATIONS = {"eager fp32": dict(), "eager bf16": dict(network_precision="bf16"), "compiled fp32": dict(compile=True)}

for how, kw in EVALUATIONS.items():
    for width, activation in SCALABLE_NETWORKS:
        config(f"scalable lstm (mlp {width} {activation}), {how}")(
            lambda params, kw=kw, width=width, activation=activation: ScalableLSTMRule(
                mlp_hidden=width, activation=activation, **kw))
    for width, layers in L2O_NETWORKS:
        if layers > 1 and kw.get("compile"):
            continue  # compiled kernels take at most one hidden layer
        config(f"l2o ({width}x{layers}), {how}")(
            lambda params, kw=kw, width=width, layers=layers: L2ORule(hidden_size=width, hidden_layers=layers, **kw))


class AdamStep:
    def __init__(self, params: dict, grads: dict) -> None:
        self.tensors = [nn.Parameter(p.clone()) for p in params.values()]
        for t, g in zip(self.tensors, grads.values()):
            t.grad = g
        self.optimizer = torch.optim.Adam(self.tensors, lr=1e-3)

    def __call__(self) -> None:
        self.optimizer.step()


class RuleStep:
    def __init__(self, rule, params: dict, grads: dict) -> None:
        self.rule, self.params, self.grads = rule, params, grads
        self.state, self.step = rule.init(params), 0

    def __call__(self) -> None:
        with torch.no_grad():
            _, self.state = self.rule.update(self.params, self.grads, self.state, self.step)
        self.step += 1


def seconds(fn: Callable[[], None]) -> tuple[float, float]:
    """CPU and wall seconds of ``fn()``."""
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=1448)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--rules", nargs="+", default=list(CONFIGS), choices=list(CONFIGS), metavar="CONFIG")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(args.width, args.width) for _ in range(args.layers)])
    params = {n: p.detach() for n, p in model.named_parameters()}
    grads = {n: torch.randn_like(p) * 1e-3 for n, p in params.items()}
    count = sum(p.numel() for p in params.values())
    print(f"{args.layers} x {args.width}^2 linear layers: {count / 1e6:.2f}M parameters; "
          f"{machine()}; {time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    for threads in args.threads:
        torch.set_num_threads(threads)
        steps = {"adam (torch.optim)": AdamStep(params, grads)}
        steps.update({name: RuleStep(CONFIGS[name](params), params, grads) for name in args.rules})
        for step in steps.values():  # warm-up: compilation, allocator, first-step state
            step()
            step()
        times: Dict[str, list] = {name: [] for name in steps}
        for _ in range(args.repeats):
            for name, step in steps.items():
                times[name].append(seconds(step))
        medians = {name: [statistics.median(v) for v in zip(*values)] for name, values in times.items()}
        adam_cpu, adam_wall = medians["adam (torch.optim)"]
        print(f"\n{threads} thread(s); seconds per step (median of {args.repeats}) and ratio to Adam's step: "
              f"CPU time, then wall time (wall time depends on the machine's load)")
        for name, (cpu, wall) in medians.items():
            print(f"  {name:<42} {cpu:8.4f} s CPU {cpu / adam_cpu:7.2f}x  {wall:8.4f} s wall {wall / adam_wall:7.2f}x",
                  flush=True)


if __name__ == "__main__":
    main()

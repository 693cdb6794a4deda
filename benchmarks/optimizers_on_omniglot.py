"""The three extra optimizers on a real training workload: supervised classification of the
characters of each of Omniglot's 30 background alphabets (Lake et al.), a task per alphabet,
against tuned SGD, SGD with momentum and Adam and against the parameter-free optimizers
(benchmarks/parameter_free.py); three seeds, 95% intervals.

    pip install -e ".[parameter-free]"
    nice -n 19 .venv/bin/python benchmarks/optimizers_on_omniglot.py --net conv4 --out results/omniglot-opt.jsonl
    nice -n 19 .venv/bin/python benchmarks/optimizers_on_omniglot.py --net resnet --out results/omniglot-opt.jsonl
    .venv/bin/python benchmarks/optimizers_on_omniglot.py --report results/omniglot-opt.jsonl

A task: one alphabet's characters (14 to 55 of them), drawings 1-16 of each to train, 17-20
to validate. Networks: conv4 with 32 channels and a residual net (a strided stem and two
residual blocks at 32 channels), both with a 55-way head, the largest alphabet's, of which a
task uses its first ``n`` outputs (the same parameter shapes for every task, so an optimizer
carries over from one task to the next unchanged). ``--steps`` steps of batch ``--batch``,
validation accuracy every ``--eval-every`` steps. One thread; CPU time
(``time.process_time``) of the training steps alone.

Each seed orders the alphabets by a permutation of its own: the first ``--learn-tasks`` are
learning episodes, the next ``--eval-tasks`` are evaluated. Our three learn across training
runs, so they train on every episode in order from fresh initialisations, carrying what they
learned (the combiner's MLP and its optimizer, the tape rule, the control matrix M and its
optimizer); the combiner and the control optimizer learn online all along, the tape rule is
meta-trained between episodes (``meta_train_on_tasks``: ``--tape-meta-steps`` meta-steps of
``--tape-unroll``-step unrolls from fresh initialisations on the alphabet just trained).
Every other optimizer runs the evaluated episodes only, from the same initialisations and
batches. A seed's figure is the mean over its evaluated tasks; intervals are over seeds.

The baselines' learning rates are tuned over a log grid on the evaluated tasks themselves
(best mean final validation accuracy over all seeds: the most favourable setting for them;
every grid point is reported). The parameter-free optimizers run at their packages'
documented settings, untuned.

Each finished run appends one JSON line to ``--out`` (one write, flushed), so an interrupted
benchmark resumes where it stopped and several processes can share the file.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

sys.path.insert(0, str(Path(__file__).resolve().parent))
from parameter_free import PARAMETER_FREE, averager  # noqa: E402
from precision import machine  # noqa: E402

from fewshot_metaopt.datasets import Omniglot  # noqa: E402
from fewshot_metaopt.meta_training import meta_train_on_tasks  # noqa: E402
from fewshot_metaopt.models import ResidualConvNet, conv4  # noqa: E402
from fewshot_metaopt.optim import TapeSGDRule  # noqa: E402
from fewshot_metaopt.torch_optim import AdaptiveSGDWithTape, ControlMetaOptimizer, MetaNNCombiner  # noqa: E402

HEAD = 55  # the largest background alphabet
TRAIN_PER_CLASS = 16
GRIDS = {
    "SGD": [0.01, 0.03, 0.1, 0.3, 1.0],
    "SGD+momentum 0.9": [0.001, 0.003, 0.01, 0.03, 0.1, 0.3],
    "Adam": [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2],
}
NETS: dict[str, Callable[[], nn.Module]] = {
    "conv4": lambda: conv4(HEAD, hidden=32),
    "resnet": lambda: ResidualConvNet(HEAD, width=32, blocks=2),
}
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


# ----------------------------------------------------------------------------- data


@dataclass
class Task:
    """One alphabet: its characters are the classes, the first ``classes`` of the head."""

    name: str
    classes: int
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor

    def batches(self, seed: int, batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Endless shuffled epochs, the same for every optimizer at this seed."""
        generator = torch.Generator().manual_seed(seed)
        while True:
            order = torch.randperm(self.train_x.shape[0], generator=generator)
            for start in range(0, order.numel() - batch + 1, batch):
                index = order[start:start + batch]
                yield self.train_x[index], self.train_y[index]


def load(root: str) -> list[Task]:
    ds = Omniglot(root, split="background")
    images = ds.images.float().div_(255.0)
    images = (images - images.mean()) / images.std()
    per_class = images.shape[0] // ds.num_classes
    alphabets: dict[str, list[int]] = {}
    for index, name in enumerate(ds.class_names):
        alphabets.setdefault(name.split("/")[0], []).append(index)
    tasks = []
    for name, classes in alphabets.items():
        rows = torch.cat([torch.arange(c * per_class, (c + 1) * per_class) for c in classes])
        labels = torch.arange(len(classes)).repeat_interleave(per_class)
        within = torch.arange(rows.numel()) % per_class
        train, val = within < TRAIN_PER_CLASS, within >= TRAIN_PER_CLASS
        tasks.append(Task(name, len(classes), images[rows[train]], labels[train], images[rows[val]], labels[val]))
    return tasks


def task_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, classes: int) -> torch.Tensor:
    return F.cross_entropy(model(x)[:, :classes], y)


@torch.no_grad()
def evaluate(model: nn.Module, task: Task) -> tuple[float, float]:
    """Validation accuracy and loss (batch norm normalises with the validation set's
    statistics: the networks keep no running statistics)."""
    logits = model(task.val_x)[:, :task.classes]
    loss = float(F.cross_entropy(logits, task.val_y))
    return float((logits.argmax(1) == task.val_y).float().mean()), loss


# ----------------------------------------------------------------------------- drivers


class Driver:
    """One optimizer in a training loop on one task: ``step`` trains on a batch and returns
    the loss; ``evaluated`` yields the model to validate."""

    def __init__(self, model: nn.Module, opt: Any, classes: int) -> None:
        self.model, self.opt, self.classes = model, opt, classes

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        def closure():
            self.opt.zero_grad()
            loss = task_loss(self.model, x, y, self.classes)
            loss.backward()
            return loss

        return float(self.opt.step(closure).detach())

    @contextlib.contextmanager
    def evaluated(self) -> Iterator[nn.Module]:
        yield self.model


class ClosureFreeDriver(Driver):
    """Backward first, then ``step()`` (optimizers whose ``step`` returns nothing useful)."""

    def step(self, x, y):
        self.opt.zero_grad()
        loss = task_loss(self.model, x, y, self.classes)
        loss.backward()
        self.opt.step()
        return float(loss.detach())


class AveragedDriver(ClosureFreeDriver):
    def __init__(self, model, opt, classes):
        super().__init__(model, opt, classes)
        self.average = averager(model)

    def step(self, x, y):
        loss = super().step(x, y)
        self.average.step()
        return loss

    @contextlib.contextmanager
    def evaluated(self):
        yield self.average.averaged_model


class ScheduleFreeDriver(ClosureFreeDriver):
    def step(self, x, y):
        self.opt.train()
        return super().step(x, y)

    @contextlib.contextmanager
    def evaluated(self):
        self.opt.eval()
        try:
            yield self.model
        finally:
            self.opt.train()


class ControlDriver(Driver):
    def step(self, x, y):
        return float(self.opt.step((x, y, self.classes)))


class TapeDriver(ClosureFreeDriver):
    def step(self, x, y):
        self.opt.zero_grad()
        loss = task_loss(self.model, x, y, self.classes)
        loss.backward()
        self.opt.step(loss=loss)
        return float(loss.detach())


# ----------------------------------------------------------------------------- one run


def fresh_model(net: str, seed: int, episode: int) -> nn.Module:
    torch.manual_seed(1000 * seed + episode)
    return NETS[net]()


def train_run(driver: Driver, task: Task, args: argparse.Namespace, stream_seed: int) -> dict[str, Any]:
    curve, losses, cpu, diverged = [], [], 0.0, None
    batches = task.batches(stream_seed, args.batch)
    for step in range(1, args.steps + 1):
        x, y = next(batches)
        start = time.process_time()
        try:
            loss = driver.step(x, y)
        except (ValueError, RuntimeError) as err:  # the rule optimizers refuse non-finite values
            diverged = f"step {step}: {str(err).splitlines()[0][:160]}"
            break
        cpu += time.process_time() - start
        if not math.isfinite(loss):
            diverged = f"step {step}: loss {loss}"
            break
        losses.append(loss)
        if step % args.eval_every == 0 or step == args.steps:
            with driver.evaluated() as model:
                acc, val_loss = evaluate(model, task)
            curve.append([step, round(cpu, 3), acc, val_loss])
    if diverged:
        with driver.evaluated() as model:
            acc, val_loss = evaluate(model, task)
        acc = acc if math.isfinite(val_loss) else 1.0 / task.classes
    else:
        acc, val_loss = curve[-1][2], curve[-1][3]
    tail = losses[-args.eval_every:]
    return {
        "task": task.name,
        "final_acc": acc,
        "final_val_loss": val_loss if math.isfinite(val_loss) else None,
        "train_loss": statistics.fmean(tail) if tail and not diverged else None,
        "curve": curve,
        "steps_done": len(losses),
        "ms_per_step": 1000 * cpu / max(len(losses), 1),
        "diverged": diverged,
    }


# ----------------------------------------------------------------------------- the entries


def loss_fn_for(model: nn.Module) -> Callable[[dict, Any], torch.Tensor]:
    """The control optimizer's ``loss_fn``: its batches carry their task's class count."""
    def loss_fn(params, batch):
        x, y, classes = batch
        return F.cross_entropy(functional_call(model, params, (x,))[:, :classes], y)

    return loss_fn


class MinibatchTask:
    """A fresh network trained on successive batches of one alphabet: the tape rule's
    meta-training task (each ``loss`` call takes the next batch)."""

    def __init__(self, model: nn.Module, task: Task, batch: int, seed: int) -> None:
        self.model, self.classes = model, task.classes
        self.params = {name: p.detach() for name, p in model.named_parameters()}
        self.stream = task.batches(seed, batch)

    def loss(self, params):
        x, y = next(self.stream)
        return F.cross_entropy(functional_call(self.model, params, (x,))[:, :self.classes], y)


class MinibatchTasks:
    def __init__(self, net: str, task: Task, batch: int) -> None:
        self.net, self.task, self.batch = net, task, batch

    def sample(self, generator: torch.Generator) -> MinibatchTask:
        seed = int(torch.randint(0, 2**31, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = NETS[self.net]()
        return MinibatchTask(model, self.task, self.batch, seed)


@dataclass
class Context:
    net: str
    args: argparse.Namespace
    seed: int


@dataclass
class Ours:
    """One of our optimizers over consecutive episodes: ``build(model, tuned)`` makes it once,
    ``driver`` drives it, ``between(opt, task, episode, ctx)`` runs after every episode."""

    build: Callable[[nn.Module, dict], Any]
    driver: type[Driver]
    setting: Callable[[dict], str]
    between: Callable[[Any, Task, int, Context], None] | None = None


def tape_meta_train(opt: AdaptiveSGDWithTape, task: Task, episode: int, ctx: Context) -> None:
    meta_train_on_tasks(
        opt.rule, MinibatchTasks(ctx.net, task, ctx.args.batch), meta_steps=ctx.args.tape_meta_steps,
        inner_steps=ctx.args.tape_unroll, meta_lr=1e-2, seed=10_000 + 100 * ctx.seed + episode,
    )


OURS: dict[str, Ours] = {
    "MetaNNCombiner (defaults)": Ours(
        lambda model, tuned: MetaNNCombiner(model.parameters()), Driver, lambda tuned: "sgd_lr 0.01, adam_lr 1e-3"),
    "MetaNNCombiner (tuned SGD/Adam lrs)": Ours(
        lambda model, tuned: MetaNNCombiner(model.parameters(), sgd_lr=tuned["SGD"], adam_lr=tuned["Adam"]),
        Driver, lambda tuned: f"sgd_lr {tuned['SGD']:g}, adam_lr {tuned['Adam']:g}"),
    "AdaptiveSGDWithTape (defaults)": Ours(
        lambda model, tuned: AdaptiveSGDWithTape(model.parameters(), rule=TapeSGDRule()), TapeDriver,
        lambda tuned: "lr 0.1, meta-trained between episodes", tape_meta_train),
    "AdaptiveSGDWithTape (tuned SGD lr)": Ours(
        lambda model, tuned: AdaptiveSGDWithTape(model.parameters(), rule=TapeSGDRule(lr=tuned["SGD"])), TapeDriver,
        lambda tuned: f"lr {tuned['SGD']:g}, meta-trained between episodes", tape_meta_train),
    "ControlMetaOptimizer (defaults)": Ours(
        lambda model, tuned: ControlMetaOptimizer(model, loss_fn_for(model)), ControlDriver,
        lambda tuned: "lr 0.1, m_lr 1e-5"),
    "ControlMetaOptimizer (tuned Adam lr)": Ours(
        lambda model, tuned: ControlMetaOptimizer(model, loss_fn_for(model), lr=tuned["Adam"], m_lr=1e-3),
        ControlDriver, lambda tuned: f"lr {tuned['Adam']:g}, m_lr 1e-3"),
}


def baseline(kind: str, model: nn.Module, lr: float) -> Any:
    if kind == "SGD":
        return torch.optim.SGD(model.parameters(), lr=lr)
    if kind == "SGD+momentum 0.9":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    return torch.optim.Adam(model.parameters(), lr=lr)


def free_driver(entry: Any) -> type[Driver]:
    if entry.averaged:
        return AveragedDriver
    if entry.schedule_free:
        return ScheduleFreeDriver
    return Driver if entry.closure else ClosureFreeDriver


# ----------------------------------------------------------------------------- records


def read_records(path: Path) -> list[dict]:
    """The runs of a results file, one per (net, optimizer, setting, seed, episode): a run done
    twice (a learning sequence redone from its first episode after a kill) counts once, the
    later one."""
    if not path.exists():
        return []
    records: dict[tuple, dict] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill: that run is simply redone
                continue
            records[(r["net"], r["group"], r["optimizer"], r["setting"], r["seed"], r["episode"])] = r
    return list(records.values())


def append_record(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # One write of one whole line: concurrent writers' lines never interleave.
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def has(records: list[dict], **match: Any) -> bool:
    return any(all(r.get(k) == v for k, v in match.items()) for r in records)


def tuned_lrs(records: list[dict], net: str) -> dict[str, float]:
    tuned = {}
    for kind, grid in GRIDS.items():
        scores = {}
        for lr in grid:
            runs = [r["final_acc"] for r in records if r["net"] == net and r["group"] == "grid"
                    and r["optimizer"] == kind and r["lr"] == lr]
            if not runs:
                raise SystemExit(f"the {kind} grid on {net} is not complete; run --groups grid first")
            scores[lr] = statistics.fmean(runs)
        tuned[kind] = max(scores, key=scores.get)
    return tuned


def schedule(tasks: list[Task], seed: int, args: argparse.Namespace) -> list[Task]:
    """The seed's episodes: ``--learn-tasks`` learning alphabets, then the evaluated ones."""
    order = torch.randperm(len(tasks), generator=torch.Generator().manual_seed(seed)).tolist()
    return [tasks[i] for i in order[:args.learn_tasks + args.eval_tasks]]


# ----------------------------------------------------------------------------- running


def run_all(args: argparse.Namespace) -> None:
    out = Path(args.out)
    tasks = load(args.data_root)
    base = {"net": args.net, "steps": args.steps, "batch": args.batch, "machine": machine(),
            "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__}
    evaluated = range(args.learn_tasks, args.learn_tasks + args.eval_tasks)

    def wanted(name: str) -> bool:
        return not args.only or any(part.lower() in name.lower() for part in args.only)

    def record(group, optimizer, setting, seed, episode, result, lr=None):
        append_record(out, {**base, "group": group, "optimizer": optimizer, "setting": setting, "lr": lr,
                            "seed": seed, "episode": episode, "evaluated": episode in evaluated, **result})
        print(f"[{args.net}] {optimizer} ({setting}) seed {seed} episode {episode} {result['task']}: val acc "
              f"{result['final_acc']:.4f}, {result['ms_per_step']:.1f} ms/step"
              + (f", diverged at {result['diverged']}" if result["diverged"] else ""), flush=True)

    def baseline_runs(group, name, setting, make, driver, lr=None):
        for seed in range(args.seeds):
            episodes = schedule(tasks, seed, args)
            for episode in evaluated:
                if has(read_records(out), net=args.net, optimizer=name, setting=setting, seed=seed, episode=episode):
                    continue
                model = fresh_model(args.net, seed, episode)
                task = episodes[episode]
                result = train_run(driver(model, make(model), task.classes), task, args, 1000 * seed + episode)
                record(group, name, setting, seed, episode, result, lr)

    if "grid" in args.groups:
        for kind, grid in GRIDS.items():
            for lr in grid:
                if wanted(kind):
                    baseline_runs("grid", kind, f"lr {lr:g}", lambda m, kind=kind, lr=lr: baseline(kind, m, lr),
                                  ClosureFreeDriver, lr)
    if "free" in args.groups:
        for name, entry in PARAMETER_FREE.items():
            if wanted(name):
                baseline_runs("free", name, f"{entry.package} defaults", entry.build, free_driver(entry))
    if "ours" in args.groups:
        tuned = tuned_lrs(read_records(out), args.net)
        for name, entry in OURS.items():
            if not wanted(name):
                continue
            for seed in range(args.seeds):
                if has(read_records(out), net=args.net, optimizer=name, seed=seed, episode=evaluated[-1]):
                    continue
                ctx = Context(args.net, args, seed)
                model = fresh_model(args.net, seed, 0)
                opt = entry.build(model, tuned)
                for episode, task in enumerate(schedule(tasks, seed, args)):
                    if episode:
                        with torch.no_grad():
                            model.load_state_dict(fresh_model(args.net, seed, episode).state_dict())
                        opt.start_episode()
                    result = train_run(entry.driver(model, opt, task.classes), task, args, 1000 * seed + episode)
                    record("ours", name, entry.setting(tuned), seed, episode, result)
                    if entry.between is not None and episode != evaluated[-1]:
                        entry.between(opt, task, episode, ctx)


# ----------------------------------------------------------------------------- report


def interval(values: list[float], digits: str = ".3g") -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    if len(values) < 2:
        return format(mean, digits)
    half = T_975.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))
    return f"{format(mean, digits)} ± {format(half, '.2g')}"


def to_target(r: dict, target: float) -> tuple[float, float]:
    for step, cpu, acc, _ in r["curve"]:
        if acc >= target:
            return step, cpu
    return math.inf, math.inf


def per_seed(rs: list[dict], value: Callable[[dict], float | None]) -> list[float]:
    """The mean over each seed's evaluated tasks, one number per seed."""
    out = []
    for seed in sorted({r["seed"] for r in rs}):
        values = [value(r) for r in rs if r["seed"] == seed]
        if values and all(v is not None for v in values):
            out.append(statistics.fmean(values))
    return out


def paired(r: dict, reference: dict[tuple[int, int], float]) -> float | None:
    key = (r["seed"], r["episode"])
    return 100 * (r["final_acc"] - reference[key]) if key in reference else None


def report(path: Path, target_fraction: float) -> None:
    records = read_records(path)
    for net in sorted({r["net"] for r in records}):
        mine = [r for r in records if r["net"] == net]
        meta = mine[0]
        print(f"\n### {net}: {meta['steps']} steps of batch {meta['batch']}; {meta['machine']}\n")
        grid = [r for r in mine if r["group"] == "grid"]
        width = max(len(lrs) for lrs in GRIDS.values())
        print("| grid: mean final val acc % over every evaluated task | " + " | ".join(
            "lr: acc" for _ in range(width)) + " |")
        print("| --- |" + " --- |" * width)
        tuned = {}
        for kind, lrs in GRIDS.items():
            scores = {lr: statistics.fmean(r["final_acc"] for r in grid if r["optimizer"] == kind and r["lr"] == lr)
                      for lr in lrs if any(r["optimizer"] == kind and r["lr"] == lr for r in grid)}
            if not scores:
                continue
            tuned[kind] = max(scores, key=scores.get)
            edge = " (the grid's edge)" if tuned[kind] in (lrs[0], lrs[-1]) else ""
            print(f"| {kind}{edge} | " + " | ".join(f"{lr:g}: {100 * v:.1f}" for lr, v in scores.items()) + " |")
        rows: dict[tuple[str, str, str], list[dict]] = {}
        for r in mine:
            if not r["evaluated"]:
                continue
            if r["group"] == "grid":
                if r["lr"] != tuned.get(r["optimizer"]):
                    continue
                key = ("tuned", r["optimizer"], f"lr {r['lr']:g} (tuned)")
            else:
                key = (r["group"], r["optimizer"], r["setting"])
            rows.setdefault(key, []).append(r)
        # A task's target: the fraction of the best tuned baseline's final accuracy on it.
        targets: dict[tuple[int, int], float] = {}
        for (group, _, _), rs in rows.items():
            if group == "tuned":
                for r in rs:
                    k = (r["seed"], r["episode"])
                    targets[k] = max(targets.get(k, 0.0), target_fraction * r["final_acc"])
        print(f"\nTarget on each task: {target_fraction:g} x the best tuned baseline's final accuracy on it. "
              "Values: mean ± 95% interval over seeds of each seed's mean over its evaluated tasks; "
              "steps and CPU seconds to the target: median over every evaluated task.\n")
        # Paired against the best parameter-free optimizer: the same tasks, inits and batches.
        free = {key: rs for key, rs in rows.items() if key[0] == "free"}
        best_free = max(free, key=lambda k: statistics.fmean(r["final_acc"] for r in free[k]), default=None)
        reference = {(r["seed"], r["episode"]): r["final_acc"] for r in free.get(best_free, [])}
        if best_free is not None:
            print(f"Paired difference: accuracy minus {best_free[1]}'s (the best parameter-free optimizer) on "
                  "the same task, in points, per seed then over seeds.\n")
        print("| group | optimizer | setting | runs | final val acc % | vs best parameter-free (points) "
              "| final train loss | steps to target | CPU s to target | ms/step | diverged |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        order = {"tuned": 0, "free": 1, "ours": 2}
        for key in sorted(rows, key=lambda k: (order[k[0]], k[1], k[2])):
            rs = rows[key]
            reached = [to_target(r, targets.get((r["seed"], r["episode"]), math.inf)) for r in rs]
            median_steps = statistics.median_low(sorted(s for s, _ in reached))
            median_cpu = statistics.median_low(sorted(c for _, c in reached))
            print(f"| {key[0]} | {key[1]} | {key[2]} | {len(rs)} | "
                  f"{interval(per_seed(rs, lambda r: 100 * r['final_acc']), '.1f')} | "
                  f"{interval(per_seed(rs, lambda r: paired(r, reference)), '+.1f')} | "
                  f"{interval(per_seed(rs, lambda r: r['train_loss']))} | "
                  f"{'-' if math.isinf(median_steps) else int(median_steps)} | "
                  f"{'-' if math.isinf(median_cpu) else f'{median_cpu:.1f}'} | "
                  f"{statistics.fmean(r['ms_per_step'] for r in rs):.1f} | "
                  f"{sum(1 for r in rs if r['diverged'])}/{len(rs)} |")
        ours = sorted({r["optimizer"] for r in mine if r["group"] == "ours"})
        if ours:
            episodes = sorted({r["episode"] for r in mine if r["group"] == "ours"})
            print("\n| ours: val acc % on every episode (mean over seeds) | "
                  + " | ".join(f"{e + 1}{' (eval)' if any(r['evaluated'] and r['episode'] == e for r in mine) else ''}"
                               for e in episodes) + " |")
            print("| --- |" + " --- |" * len(episodes))
            for name in ours:
                cells = [f"{100 * statistics.fmean(r['final_acc'] for r in mine if r['optimizer'] == name and r['episode'] == e):.1f}"
                         for e in episodes if any(r["optimizer"] == name and r["episode"] == e for r in mine)]
                print(f"| {name} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--net", choices=sorted(NETS), default="conv4")
    parser.add_argument("--data-root", default=str(Path(__file__).resolve().parents[1].parent / "shared/data/omniglot"))
    parser.add_argument("--out", default="results/omniglot-optimizers.jsonl")
    parser.add_argument("--groups", nargs="+", default=["grid", "free", "ours"], choices=["grid", "free", "ours"])
    parser.add_argument("--only", nargs="*", default=[], help="run only optimizers whose name contains one of these")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--learn-tasks", type=int, default=3)
    parser.add_argument("--eval-tasks", type=int, default=3)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--tape-meta-steps", type=int, default=20)
    parser.add_argument("--tape-unroll", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report", metavar="JSONL", help="print the tables of a results file and stop")
    parser.add_argument("--target", type=float, default=0.9, help="the target as a fraction of the best tuned baseline")
    args = parser.parse_args()
    if args.report:
        report(Path(args.report), args.target)
        return
    torch.set_num_threads(args.threads)
    print(f"Python {platform.python_version()}; {machine()}", flush=True)
    run_all(args)


if __name__ == "__main__":
    main()

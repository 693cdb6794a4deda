"""The inner learning rates of a meta-learner, per parameter tensor: a table and a violin plot.

Rules with learning-rate tensors (:class:`~fewshot_metaopt.optim.LearnedLR`: MAML's fixed lr,
Meta-SGD's per-parameter ones, MAML++'s per-step ones) report those tensors. Learned
optimizers (LSTM, L2O) have no learning rate of their own; for them the report gives the
effective lr of one inner step, ``mean|update| / mean|gradient|`` per tensor, measured while
adapting to one episode. Warp-Grad models descend with a fixed lr whose gradients the warp
layers precondition; for them the report gives the lr that would move each adapted tensor as
far in the model with its warps removed (:func:`~fewshot_metaopt.warp.warp_effective_lr`).

Tensors are shown by readable names (:func:`~fewshot_metaopt.models.parameter_display_names`:
conv4's ``0.0.weight`` is ``block1.conv.weight``), with the parameter's own name beside it.
A tensor whose support-set gradient is zero (a conv bias followed by batch norm: the norm's
mean subtraction cancels it) is never moved by the inner loop, and its learned lr gets no
meta-gradient either; the report flags it, and flags a learned lr still at its initial value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import torch
from torch import Tensor

from ..atomic_files import atomic_writer
from ..learners import GradientMetaLearner
from ..losses import task_loss
from ..optim.learned_lr import LearnedLR
from ..warp import warp_effective_lr

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
COLUMNS = ("tensor", "shape", "mean", "min", "q05", "q25", "median", "q75", "q95", "max")
STATISTICS = COLUMNS[2:]
# A gradient below this fraction of the largest tensor's is zero up to float rounding: conv
# biases before batch norm measure 1e-6 of it in float32, the smallest real gradients of
# conv4 on Omniglot-like data well above 1e-2.
ROUNDING = 1e-5
# A learned lr within this relative distance of its initial value has not moved: one float32
# ulp of 0.4 is 6e-8 of it, the first meta-step of Meta-SGD moves it by 1e-3 or more.
UNMOVED = 1e-6
NO_GRADIENT = "no gradient"
NEVER_MOVED = "never moved"


def lr_tensors(learner: GradientMetaLearner) -> tuple[dict[str, Tensor], bool]:
    """The rule's learning-rate tensors and whether they are learned (empty for learned optimizers)."""
    found = [m for m in learner.rule.modules() if isinstance(m, LearnedLR)]
    if not found:
        return {}, False
    return found[0].tensors(), found[0].learned


def initial_lr(learner: GradientMetaLearner) -> float | None:
    """The value the rule's learning rates start at (MAML's fixed lr, Meta-SGD's initial one),
    or None for rules without learning rates."""
    found = [m for m in learner.rule.modules() if isinstance(m, LearnedLR)]
    return found[0].init if found else None


def never_moved(tensors: dict[str, Tensor], init: float) -> set[str]:
    """The tensors whose every learned lr is still ``init`` (up to rounding)."""
    return {name for name, values in tensors.items()
            if float((values.detach().double() - init).abs().max()) <= UNMOVED * abs(init)}


def gradient_free(learner: GradientMetaLearner, episodes: Iterable[Any], names: Iterable[str]) -> set[str]:
    """Of the adapted tensors ``names``, those whose support-set gradient at the meta-learned
    initialisation is zero (below ``ROUNDING`` of the largest tensor's) on every one of
    ``episodes``: the inner loop never moves them, whatever their lr."""
    params = dict(learner.model.named_parameters())
    names = list(names)
    largest = dict.fromkeys(names, 0.0)
    with torch.enable_grad():
        for episode in episodes:
            episode = episode.to(learner.device)
            loss = task_loss(learner.model(episode.support_x), episode.support_y, learner.config.loss)
            grads = torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True)
            for name, grad in zip(names, grads):
                if grad is not None:
                    largest[name] = max(largest[name], float(grad.detach().abs().max()))
    scale = max(largest.values(), default=0.0)
    return {name for name, value in largest.items() if value <= ROUNDING * scale}


def notes(names: Iterable[str], no_gradient: set[str], unmoved: set[str]) -> dict[str, str]:
    """What the table and the plot say of each flagged tensor."""
    said = {}
    for name in names:
        flags = [flag for flag, found in ((NO_GRADIENT, no_gradient), (NEVER_MOVED, unmoved)) if name in found]
        if flags:
            said[name] = ", lr ".join(flags)
    return said


def effective_lrs(learner: GradientMetaLearner, episode: Any) -> dict[str, Tensor]:
    """Effective lr per tensor of the last inner step while adapting to ``episode``."""
    learner.adapt(episode)
    return {name: torch.tensor(value) for name, value in learner.get_learned_lr().items()}


def warped_lrs(learner: GradientMetaLearner, episode: Any) -> dict[str, Tensor]:
    """Per adapted tensor of a warped model, ``inner_lr * mean|warped grad| / mean|unwarped grad|``
    on ``episode``'s support set at the meta-learned initialisation."""
    config = learner.config
    values = warp_effective_lr(learner.model, episode.to(learner.device), config.inner_lr, config.loss)
    return {name: torch.tensor(value) for name, value in values.items()}


def lr_rows(tensors: dict[str, Tensor], labels: dict[str, str] | None = None,
            flagged: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """One row of statistics per tensor; ``labels`` gives a tensor a readable name (its own is
    kept as ``parameter``), ``flagged`` a note."""
    labels, flagged = labels or {}, flagged or {}
    rows = []
    for name, tensor in tensors.items():
        values = tensor.detach().double().flatten()
        quantiles = torch.quantile(values, torch.tensor(QUANTILES, dtype=torch.float64)).tolist()
        rows.append({
            "tensor": labels.get(name, name),
            "parameter": name,
            "shape": "x".join(map(str, tensor.shape)) or "scalar",
            "mean": float(values.mean()),
            "min": float(values.min()),
            **dict(zip(COLUMNS[4:9], quantiles)),
            "max": float(values.max()),
            "note": flagged.get(name, ""),
        })
    return rows


def format_table(rows: Iterable[dict[str, Any]]) -> str:
    """The rows as aligned text; a ``parameter`` column when a readable name differs from the
    parameter's own, a ``note`` column when a tensor is flagged."""
    rows = list(rows)
    columns = list(COLUMNS)
    if any(row.get("parameter", row["tensor"]) != row["tensor"] for row in rows):
        columns.append("parameter")
    if any(row.get("note") for row in rows):
        columns.append("note")
    cells = [columns] + [[f"{row[c]:.4g}" if c in STATISTICS else str(row[c]) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    numeric = [c in STATISTICS for c in columns]
    lines = ["  ".join(cell.rjust(width) if right else cell.ljust(width)
                       for cell, width, right in zip(line, widths, numeric)).rstrip()
             for line in cells]
    return "\n".join([lines[0], "-" * max(map(len, lines)), *lines[1:]])


def plot_lrs(tensors: dict[str, Tensor], path: Path, title: str, reference: tuple[float, str] | None = None,
             flagged: dict[str, str] | None = None, ylabel: str = "inner learning rate") -> Path:
    """One violin per tensor (a dot where the tensor holds a single value), named by its key in
    ``tensors``; ``reference`` draws a dashed line at a value (the initial lr) with its label,
    and a ``flagged`` tensor is drawn in red with its note written above it."""
    from matplotlib.figure import Figure  # imported here: it costs every command a second at startup

    flagged = flagged or {}
    names = list(tensors)
    values = {name: tensors[name].detach().double().flatten() for name in names}
    # A violin needs spread: constant tensors (a fixed lr, a bias left at its start, give or
    # take a rounding step) are dots.
    spread = [i for i, n in enumerate(names, start=1)
              if float(values[n].max() - values[n].min()) > UNMOVED * float(values[n].abs().max())]
    fig = Figure(figsize=(max(6.0, 0.55 * len(names) + 2), 5.2), layout="constrained")
    ax = fig.subplots()
    if spread:
        parts = ax.violinplot([values[names[i - 1]].numpy() for i in spread], positions=spread, showmeans=True,
                              widths=0.8)
        for body, i in zip(parts["bodies"], spread):
            if names[i - 1] in flagged:
                body.set_facecolor("tab:red")
    for i, name in enumerate(names, start=1):
        if i not in spread:
            ax.plot([i], [float(values[name][0])], "o", color="tab:red" if name in flagged else "tab:blue")
    if reference is not None:
        ax.axhline(reference[0], color="0.4", linestyle="--", linewidth=1, label=reference[1])
        ax.legend(loc="lower right")
    ax.set_xticks(range(1, len(names) + 1), names, rotation=45, ha="right")
    for tick, name in zip(ax.get_xticklabels(), names):
        if name in flagged:
            tick.set_color("tab:red")
    # Each note stands beside its tensor from the top edge down (x in data, y in axes units),
    # clear of the tensor's own dot or violin.
    for i, name in enumerate(names, start=1):
        if name in flagged:
            ax.text(i + 0.12, 0.98, flagged[name], transform=ax.get_xaxis_transform(), rotation=90, va="top",
                    ha="left", fontsize=7, color="tab:red")
    low = min(float(v.min()) for v in values.values()) if values else 0.0
    high = max(float(v.max()) for v in values.values()) if values else 0.0
    if low > 0 and high > 100 * low:  # effective lrs of gradient-free tensors run to 1e6
        ax.set_yscale("log")
    ax.set(xlabel="parameter tensor", ylabel=ylabel, title=title)
    ax.grid(axis="y", alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path) as f:
        fig.savefig(f, format="png", dpi=110)
    return path

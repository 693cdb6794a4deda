"""The inner learning rates of a meta-learner, per parameter tensor: a table and a violin plot.

Rules with learning-rate tensors (:class:`~fewshot_metaopt.optim.LearnedLR`: MAML's fixed lr,
Meta-SGD's per-parameter ones, MAML++'s per-step ones) report those tensors. Learned
optimizers (LSTM, L2O) have no learning rate of their own; for them the report gives the
effective lr of one inner step, ``mean|update| / mean|gradient|`` per tensor, measured while
adapting to one episode. Warp-Grad models descend with a fixed lr whose gradients the warp
layers precondition; for them the report gives the lr that would move each adapted tensor as
far in the model with its warps removed (:func:`~fewshot_metaopt.warp.warp_effective_lr`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import torch
from torch import Tensor

from ..learners import GradientMetaLearner
from ..optim.learned_lr import LearnedLR
from ..warp import warp_effective_lr
from ..atomic_files import atomic_writer

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
COLUMNS = ("tensor", "shape", "mean", "min", "q05", "q25", "median", "q75", "q95", "max")


def lr_tensors(learner: GradientMetaLearner) -> tuple[dict[str, Tensor], bool]:
    """The rule's learning-rate tensors and whether they are learned (empty for learned optimizers)."""
    found = [m for m in learner.rule.modules() if isinstance(m, LearnedLR)]
    if not found:
        return {}, False
    return found[0].tensors(), found[0].learned


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


def lr_rows(tensors: dict[str, Tensor]) -> list[dict[str, Any]]:
    rows = []
    for name, tensor in tensors.items():
        values = tensor.detach().double().flatten()
        quantiles = torch.quantile(values, torch.tensor(QUANTILES, dtype=torch.float64)).tolist()
        rows.append({
            "tensor": name,
            "shape": "x".join(map(str, tensor.shape)) or "scalar",
            "mean": float(values.mean()),
            "min": float(values.min()),
            **dict(zip(COLUMNS[4:9], quantiles)),
            "max": float(values.max()),
        })
    return rows


def format_table(rows: Iterable[dict[str, Any]]) -> str:
    cells = [list(COLUMNS)] + [
        [row["tensor"], row["shape"], *(f"{row[c]:.4g}" for c in COLUMNS[2:])] for row in rows
    ]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
             for line in cells]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def plot_lrs(tensors: dict[str, Tensor], path: Path, title: str) -> Path:
    """One violin per tensor (a dot where the tensor holds a single value)."""
    from matplotlib.figure import Figure  # imported here: it costs every command a second at startup

    names = list(tensors)
    values = {name: tensors[name].detach().double().flatten() for name in names}
    # A violin needs spread: constant tensors (a fixed lr, a bias left at its start) are dots.
    spread = [i for i, n in enumerate(names, start=1) if float(values[n].max() - values[n].min()) > 0]
    flat = [i for i in range(1, len(names) + 1) if i not in spread]
    fig = Figure(figsize=(max(6.0, 0.55 * len(names) + 2), 4.8), layout="constrained")
    ax = fig.subplots()
    if spread:
        ax.violinplot([values[names[i - 1]].numpy() for i in spread], positions=spread, showmeans=True, widths=0.8)
    if flat:
        ax.plot(flat, [float(values[names[i - 1]][0]) for i in flat], "o", color="tab:blue")
    ax.set_xticks(range(1, len(names) + 1), names, rotation=45, ha="right")
    ax.set(ylabel="inner learning rate", title=title)
    ax.grid(axis="y", alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path) as f:
        fig.savefig(f, format="png", dpi=110)
    return path

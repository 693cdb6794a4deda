"""What a study found: the table of trials, the best task file and the study's plot.

* ``trials.csv`` — one row per trial: its number, state (complete, pruned, fail, running,
  waiting), objective (for a pruned trial, its last validation score), the iterations its run
  reached, its values and its run directory, and a note (the error of a failed trial, the dead
  trial a queued-again one continues).
* ``best.toml`` — the task with the best complete trial's values: a task file ready for
  ``fewshot-metaopt train`` (absent until a trial completes).
* ``plots/study.png`` — left, the optimisation history (each trial's score, pruned trials at
  their last score, the best so far); right, each searched key's importance (PED-ANOVA over
  the complete trials, Watanabe et al. 2023; it needs a few of them).
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomic_files import atomic_write_text, atomic_writer
from ..runs.search_space import SearchSpace
from ..runs.task_config import TaskConfig
from ..runs.toml_writer import dumps
from .optuna_import import optuna
from .recovery import retried_number
from .study_dir import StudyDir, StudySettings
from .trial_objective import describe_values, trial_task


@dataclass(frozen=True)
class TrialRow:
    number: int
    state: str
    value: float | None
    iterations: int | None
    params: dict[str, Any]
    run_dir: str | None
    note: str


@dataclass(frozen=True)
class StudyReport:
    """The trials (in number order), the best complete one (None before any completes), the
    importance of each searched key (empty until enough trials are complete to tell the keys apart) and the files
    written."""

    metric: str
    direction: str
    keys: list[str]
    rows: list[TrialRow]
    best: TrialRow | None
    importances: dict[str, float]
    table: Path
    best_task: Path | None
    plot: Path

    def text(self) -> str:
        """The table of trials, aligned for a terminal."""
        header = ["trial", "state", self.metric, "iterations", *self.keys, "run directory", "note"]
        lines = [header, *([str(r.number), r.state, _number(r.value), _number(r.iterations),
                            *(_number(r.params.get(k)) for k in self.keys), r.run_dir or "", r.note]
                           for r in self.rows)]
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines)


def _number(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _row(trial: Any, retried_by: dict[int, int], state_names: dict[Any, str]) -> TrialRow:
    retried = retried_number(trial)
    value = trial.value
    if value is None and trial.intermediate_values:
        value = trial.intermediate_values[max(trial.intermediate_values)]
    notes = []
    if trial.user_attrs.get("error"):
        notes.append(trial.user_attrs["error"])
    if trial.number in retried_by:
        notes.append(f"its process ended; queued again as trial {retried_by[trial.number]}")
    if retried is not None:
        notes.append(f"continues trial {retried}")
    return TrialRow(trial.number, state_names[trial.state], value, trial.user_attrs.get("iterations"),
                    dict(trial.params), trial.user_attrs.get("run_dir"), "; ".join(notes))


def _importances(study: Any, complete: int) -> dict[str, float]:
    if complete < 2:
        return {}
    module = optuna()
    # PED-ANOVA needs no scikit-learn (Optuna's fANOVA does) and draws nothing at random.
    evaluator = getattr(module.importance, "PedAnovaImportanceEvaluator", None)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # experimental; "too few trials to tell the keys apart"
            found = module.importance.get_param_importances(study, evaluator=evaluator and evaluator())
    except (ImportError, ValueError, RuntimeError, ZeroDivisionError):  # no scikit-learn; scores all equal
        return {}
    found = {key: value for key, value in found.items() if math.isfinite(value)}
    if len(found) > 1 and max(found.values()) - min(found.values()) < 1e-12:
        return {}  # equal shares: the evaluator could not tell the keys apart, which says nothing
    return found


def write_report(folder: StudyDir, settings: StudySettings, study: Any, base: TaskConfig,
                 space: SearchSpace) -> StudyReport:
    module = optuna()
    state = module.trial.TrialState
    names = {state.COMPLETE: "complete", state.PRUNED: "pruned", state.FAIL: "fail", state.RUNNING: "running",
             state.WAITING: "waiting"}
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    retried_by = {}
    for trial in trials:
        number = retried_number(trial)
        if number is not None:
            retried_by[number] = trial.number
    rows = [_row(t, retried_by, names) for t in trials]
    complete = [r for r in rows if r.state == "complete"]
    best = None
    if complete:
        pick = max if settings.direction == "maximize" else min
        best = pick(complete, key=lambda r: r.value)
    keys = space.keys()
    _write_table(folder.table, rows, keys, settings.metric)
    best_task = _write_best(folder, settings, best, base, space) if best is not None else None
    if best is None:
        folder.best.unlink(missing_ok=True)  # a best.toml left from another study of the same folder name
    importances = _importances(study, len(complete))
    _plot(folder.plot, rows, settings, importances)
    return StudyReport(settings.metric, settings.direction, keys, rows, best, importances, folder.table, best_task,
                       folder.plot)


def _write_table(path: Path, rows: list[TrialRow], keys: list[str], metric: str) -> None:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["trial", "state", metric, "iterations", *keys, "run_dir", "note"])
    for r in rows:
        writer.writerow([r.number, r.state, "" if r.value is None else repr(r.value),
                         "" if r.iterations is None else r.iterations,
                         *("" if r.params.get(k) is None else r.params[k] for k in keys), r.run_dir or "", r.note])
    atomic_write_text(path, out.getvalue())


def _write_best(folder: StudyDir, settings: StudySettings, best: TrialRow, base: TaskConfig,
                space: SearchSpace) -> Path:
    values = space.sample(optuna().trial.FixedTrial(best.params))
    task = trial_task(base, values, best.number)
    header = (f"The best trial of the study {settings.study_name!r}: trial {best.number}, validation "
              f"{settings.metric} {best.value:.4f}.\nIts values: {describe_values(values)}.\n"
              f"Train it with: fewshot-metaopt train {folder.best}")
    atomic_write_text(folder.best, dumps(task.to_dict(), header=header))
    return folder.best


def _plot(path: Path, rows: list[TrialRow], settings: StudySettings, importances: dict[str, float]) -> None:
    from matplotlib.figure import Figure  # imported here: it costs a second

    fig = Figure(figsize=(12, 4.5), layout="constrained")
    fig.suptitle(f"study {settings.study_name}: {len(rows)} trials")
    history, importance = fig.subplots(1, 2, width_ratios=[3, 2])
    for state, style in (("complete", dict(color="tab:blue", marker="o", label="complete")),
                         ("pruned", dict(color="tab:gray", marker="x", label="pruned (last score)"))):
        points = [(r.number, r.value) for r in rows if r.state == state and r.value is not None]
        if points:
            history.scatter(*zip(*points), **style)
    pick = max if settings.direction == "maximize" else min
    best, xs, ys = None, [], []
    for r in rows:
        if r.state == "complete":
            best = r.value if best is None else pick(best, r.value)
            xs.append(r.number)
            ys.append(best)
    if xs:
        last = rows[-1].number
        history.step([*xs, last], [*ys, ys[-1]], where="post", color="tab:red", label="best so far")
    history.set(xlabel="trial", ylabel=f"validation {settings.metric} ({settings.direction}d)",
                title="optimisation history")
    history.grid(alpha=0.3)
    if history.get_legend_handles_labels()[0]:
        history.legend()
    if importances:
        names = list(importances)[::-1]
        importance.barh(names, [importances[n] for n in names], color="tab:blue")
        importance.set(xlabel="importance (PED-ANOVA, normalised)", title="parameter importances")
    else:
        importance.set_axis_off()
        importance.text(0.5, 0.5, "parameter importances need more complete trials\nwith different scores",
                        ha="center", va="center", transform=importance.transAxes)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path) as f:
        fig.savefig(f, format="png", dpi=110)


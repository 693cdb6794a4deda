"""Weights & Biases logging of a run (``[logging] wandb = true``).

The same series as TensorBoard (``train/*`` per iteration, ``validation/*``, learned-lr
histograms, ``test/*`` in the summary, the plots as images), with the resolved task as the W&B
config. ``wandb_mode = "offline"`` writes ``RUN_DIR/wandb`` without a network (``wandb sync``
uploads it later). The W&B run id is kept in ``RUN_DIR/trackers.json``, so ``--resume`` goes
on in the same W&B run; W&B drops steps it has already seen, which a bit-exact resume repeats
unchanged.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, Mapping

from .callbacks import FAILED, Callback, IterationEnd, RunEnd, Validation
from .extras import require
from .tracker_ids import remember_id, tracker_id

DEFAULT_PROJECT = "fewshot-metaopt"


class WandbCallback(Callback):
    """Logs into the W&B run of the run directory ``folder`` (made on first use)."""

    def __init__(self, folder: Path, name: str, config: Mapping[str, Any], project: str | None = None,
                 entity: str | None = None, mode: str | None = None) -> None:
        self.wandb = require("wandb", "wandb", "logging.wandb")
        folder = Path(folder)
        run_id = tracker_id(folder, "wandb") or uuid.uuid4().hex[:16]
        self.run = self.wandb.init(
            project=project or DEFAULT_PROJECT, entity=entity, name=name, id=run_id, resume="allow",
            dir=str(folder), config=dict(config), mode=mode,
            # Each run of a search in one process is its own W&B run; W&B leaves the console
            # (the progress bar, Ctrl-C) alone.
            reinit="create_new", settings=self.wandb.Settings(console="off", silent=True),
        )
        remember_id(folder, "wandb", self.run.id)

    def on_iteration_end(self, record: IterationEnd) -> None:
        self.run.log(record.train_series(), step=record.iteration)

    def on_validation(self, record: Validation) -> None:
        values: dict[str, Any] = {f"validation/{record.metric}": record.mean,
                                  f"validation/{record.metric}_ci95": record.ci95}
        for name, lrs in record.learned_lrs.items():
            values[f"learned_lr/{name}"] = self.wandb.Histogram(lrs.double().flatten().numpy())
        self.run.log(values, step=record.iteration)

    def on_finish(self, record: RunEnd) -> None:
        try:
            self.run.summary["status"] = record.status
            if record.result is not None:
                self.run.summary[f"test/{record.result.metric}"] = record.result.mean
                self.run.summary[f"test/{record.result.metric}_ci95"] = record.result.ci95
                plots = {f"plots/{p.stem}": self.wandb.Image(str(p)) for p in sorted((record.run / "plots").glob("*.png"))}
                if plots:
                    self.run.log(plots, step=record.iteration)
        finally:
            self.run.finish(exit_code=1 if record.status == FAILED else 0)

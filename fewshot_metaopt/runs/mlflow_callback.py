"""MLflow logging of a run (``[logging] mlflow = true``).

Into the tracking store ``mlflow_tracking_uri`` names (default: MLflow's own setting, the
``MLFLOW_TRACKING_URI`` variable or its local default), under the experiment
``mlflow_experiment`` (default: the task's name): the task's keys as parameters, the
``train/*`` and ``validation/*`` metrics by iteration, ``test/*`` at the end, and the run's
plots and ``results.json`` as artifacts. The MLflow run id is kept in ``RUN_DIR/trackers.json``,
so ``--resume`` goes on in the same MLflow run. A client of its own is used, not MLflow's
global active run, so runs in one process (a search) do not mix.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping

from .callbacks import FAILED, FINISHED, INTERRUPTED, STOPPED, Callback, IterationEnd, RunEnd, Validation
from .extras import require
from .tracker_ids import remember_id, tracker_id

# How MLflow names the way a run ended.
RUN_STATUS = {FINISHED: "FINISHED", STOPPED: "FINISHED", INTERRUPTED: "KILLED", FAILED: "FAILED"}
# MLflow refuses longer parameter values.
MAX_PARAM = 500


def task_params(task: Mapping[str, Any]) -> dict[str, str]:
    """``{"learner.inner_lr": "0.4", ...}``: the task's keys, one parameter each."""
    params = {}
    for key, value in task.items():
        items = value.items() if isinstance(value, dict) else [(None, value)]
        for name, item in items:
            params[key if name is None else f"{key}.{name}"] = str(item)[:MAX_PARAM]
    return params


class MlflowCallback(Callback):
    """Logs into the MLflow run of the run directory ``folder`` (made on first use)."""

    def __init__(self, folder: Path, name: str, task: Mapping[str, Any], tracking_uri: str | None = None,
                 experiment: str | None = None) -> None:
        require("mlflow", "mlflow", "logging.mlflow")
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient

        self._metric = Metric
        folder = Path(folder)
        self.client = MlflowClient(tracking_uri)
        run_id = tracker_id(folder, "mlflow")
        if run_id is None:
            name_of_experiment = experiment or str(task.get("name", "fewshot-metaopt"))
            found = self.client.get_experiment_by_name(name_of_experiment)
            experiment_id = found.experiment_id if found is not None else self.client.create_experiment(name_of_experiment)
            run = self.client.create_run(experiment_id, run_name=name, tags={"fewshot_metaopt.run_dir": str(folder)})
            run_id = run.info.run_id
            params = [Param(k, v) for k, v in task_params(task).items()]
            for start in range(0, len(params), 100):  # MLflow takes at most 100 parameters per batch
                self.client.log_batch(run_id, params=params[start:start + 100])
            remember_id(folder, "mlflow", run_id)
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id

    def _log(self, values: Mapping[str, float], step: int) -> None:
        stamp = int(time.time() * 1000)
        metrics = [self._metric(k, float(v), stamp, step) for k, v in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def on_iteration_end(self, record: IterationEnd) -> None:
        self._log(record.train_series(), record.iteration)

    def on_validation(self, record: Validation) -> None:
        self._log({f"validation/{record.metric}": record.mean, f"validation/{record.metric}_ci95": record.ci95},
                  record.iteration)

    def on_finish(self, record: RunEnd) -> None:
        try:
            if record.result is not None:
                self._log({f"test/{record.result.metric}": record.result.mean,
                           f"test/{record.result.metric}_ci95": record.result.ci95}, record.iteration)
                for path in [*sorted((record.run / "plots").glob("*.png")), record.run / "results.json"]:
                    if path.is_file():
                        self.client.log_artifact(self.run_id, str(path))
            self.client.set_tag(self.run_id, "fewshot_metaopt.status", record.status)
        finally:
            self.client.set_terminated(self.run_id, status=RUN_STATUS[record.status])

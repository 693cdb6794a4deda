"""TensorBoard logging of a run (``[logging] tensorboard = true``): ``RUN_DIR/tensorboard``.

Scalars per iteration (``train/loss``, ``train/accuracy``, ``train/grad_norm``,
``train/meta_lr``), the validation score and its 95% CI, a histogram of the inner rule's
learned learning rates per adapted tensor at each validation, the test score, and the run's
plots (the learning curves) as images at the end. A resumed run purges what the first one
logged after its checkpoint, so TensorBoard shows each iteration once.
"""

from __future__ import annotations

import math
from pathlib import Path

from .callbacks import Callback, CheckpointWritten, IterationEnd, RunEnd, Validation
from .extras import require

FOLDER = "tensorboard"


def _image(path: Path):
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


class TensorBoardCallback(Callback):
    """Writes TensorBoard event files into ``log_dir``; ``resumed_at`` is the iteration a
    resumed run continues from (0 for a new run)."""

    def __init__(self, log_dir: Path, resumed_at: int = 0) -> None:
        tensorboard = require("torch.utils.tensorboard", "tensorboard", "logging.tensorboard")
        self.log_dir = Path(log_dir)
        # Events of the steps after the checkpoint are dropped: the resumed run writes them again
        # (all of them for a run that starts again from 0; in a new run there is nothing to drop).
        self.writer = tensorboard.SummaryWriter(str(self.log_dir), purge_step=resumed_at + 1)

    def on_iteration_end(self, record: IterationEnd) -> None:
        w, step = self.writer, record.iteration
        w.add_scalar("train/loss", record.loss, step)
        if record.accuracy is not None:
            w.add_scalar("train/accuracy", record.accuracy, step)
        if math.isfinite(record.grad_norm):
            w.add_scalar("train/grad_norm", record.grad_norm, step)
        w.add_scalar("train/meta_lr", record.meta_lr, step)

    def on_validation(self, record: Validation) -> None:
        w, step = self.writer, record.iteration
        w.add_scalar(f"validation/{record.metric}", record.mean, step)
        w.add_scalar(f"validation/{record.metric}_ci95", record.ci95, step)
        for name, lrs in record.learned_lrs.items():
            w.add_histogram(f"learned_lr/{name}", lrs.double().flatten(), step)

    def on_checkpoint(self, record: CheckpointWritten) -> None:
        # What TensorBoard shows keeps up with what a resume would start from.
        self.writer.flush()

    def on_finish(self, record: RunEnd) -> None:
        try:
            if record.result is not None:
                self.writer.add_scalar(f"test/{record.result.metric}", record.result.mean, record.iteration)
                self.writer.add_scalar(f"test/{record.result.metric}_ci95", record.result.ci95, record.iteration)
                for plot in sorted((record.run / "plots").glob("*.png")):
                    self.writer.add_image(f"plots/{plot.stem}", _image(plot), record.iteration, dataformats="HWC")
        finally:
            self.writer.close()

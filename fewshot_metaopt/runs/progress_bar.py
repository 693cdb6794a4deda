"""The meta-training progress bar, whose time left follows whichever budget binds.

tqdm's time left is (total - done) / rate. With ``train.iterations`` as the total, a run that
the ``minutes`` budget will stop long before would show the time its iterations would take
(a 20-minute run with 60,000 iterations showed 12 hours). So, with a minutes budget, the total
is the number of iterations the run will reach: those done, plus the rate of this process
times the minutes left, capped by ``train.iterations``; tqdm's time left then counts down the
minutes.
"""

from __future__ import annotations

import math
import time

from tqdm.auto import tqdm


def projected_total(iterations: int | None, minutes: float | None, done: int, elapsed_s: float,
                    session_iterations: int, session_s: float) -> int | None:
    """The iteration the run will stop at, as far as one can tell: ``iterations`` without a
    minutes budget (None without either: no total); with one, ``done`` plus this session's
    rate (``session_iterations`` in ``session_s``) times the seconds left, at most
    ``iterations``."""
    if minutes is None or session_iterations == 0 or session_s <= 0:
        return iterations
    left_s = max(0.0, 60 * minutes - elapsed_s)
    reached = done + math.floor(session_iterations / session_s * left_s)
    return reached if iterations is None else min(iterations, reached)


class TrainingBar:
    """``bar.advance(iteration, elapsed_s, postfix)`` after each iteration."""

    def __init__(self, iterations: int | None, minutes: float | None, start: int, enabled: bool) -> None:
        self.iterations, self.minutes, self.start = iterations, minutes, start
        self.session_started = time.monotonic()
        self.bar = tqdm(total=projected_total(iterations, minutes, start, 0.0, 0, 0.0), initial=start,
                        desc="meta-train", unit="it", mininterval=1.0, disable=not enabled)

    def advance(self, iteration: int, elapsed_s: float, postfix: dict[str, str]) -> None:
        if self.minutes is not None:
            total = projected_total(self.iterations, self.minutes, iteration, elapsed_s, iteration - self.start,
                                    time.monotonic() - self.session_started)
            # Never below what is done: tqdm would show more than 100%.
            self.bar.total = max(total or 0, iteration)
        self.bar.update(iteration - self.bar.n)
        self.bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        self.bar.close()

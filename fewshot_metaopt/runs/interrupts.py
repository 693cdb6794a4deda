"""Ctrl-C during training: stop at the end of the iteration, with a checkpoint.

A KeyboardInterrupt raised wherever the signal lands could leave the iteration half done (the
meta-batch drawn, the outer step not taken), and a checkpoint of that state would not resume
bit-identically. So the first Ctrl-C only asks the loop to stop: it finishes the iteration,
writes ``last.pt`` and raises :class:`Interrupted`. A second Ctrl-C raises KeyboardInterrupt
at once, as Python does by default; the run then keeps its previous checkpoint.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType

NOTICE = ("\nCtrl-C: stopping after this iteration with a checkpoint (Ctrl-C again to quit at once, "
          "resuming from the previous checkpoint)\n")


class Interrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C at a clean iteration boundary; ``iteration`` is in ``last.pt``."""

    def __init__(self, iteration: int, checkpoint: str) -> None:
        super().__init__(f"interrupted at iteration {iteration}; {checkpoint} holds it")
        self.iteration = iteration
        self.checkpoint = checkpoint


def _notify(text: str) -> None:
    # Written straight to the file descriptor: a handler that called print() while the main
    # thread was inside a print() of its own would fail with a reentrant-call error.
    try:
        os.write(sys.stderr.fileno(), text.encode())
    except (AttributeError, OSError, ValueError):  # a stderr without a descriptor (captured)
        pass


class InterruptGuard:
    """``with InterruptGuard() as guard:`` ... ``guard.requested`` turns true on the first
    SIGINT. Outside the main thread (where Python delivers signals) it installs nothing and
    Ctrl-C behaves as usual."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None
        self._installed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        _notify(NOTICE)

    def __enter__(self) -> "InterruptGuard":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False

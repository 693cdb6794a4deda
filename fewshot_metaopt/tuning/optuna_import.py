"""Optuna, imported on first use: it is the ``search`` extra, not a dependency of the package,
so ``import fewshot_metaopt`` and every other command work without it."""

from __future__ import annotations

from types import ModuleType

from ..runs.errors import RunError

INSTALL = "pip install 'fewshot-metaopt[search]'"


def optuna() -> ModuleType:
    """The ``optuna`` module, or a one-line :class:`RunError` saying how to install it."""
    try:
        import optuna as module
    except ImportError:
        raise RunError(f"hyperparameter search needs Optuna, which is not installed: {INSTALL}") from None
    return module


def quiet_optuna() -> None:
    """Optuna's log lines off but for errors (a caller that reports each trial itself)."""
    module = optuna()
    module.logging.set_verbosity(module.logging.ERROR)

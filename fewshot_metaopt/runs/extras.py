"""Optional dependencies: imported when a run asks for them, with a one-line error naming the
extra that installs them. The core package never imports them."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from .errors import RunError


def _missing(module: str, extra: str, wanted_by: str) -> RunError:
    return RunError(f"{wanted_by} needs the {module!r} package, which is not installed: "
                    f"pip install 'fewshot-metaopt[{extra}]' (or set it to false)")


def check_installed(module: str, extra: str, wanted_by: str) -> None:
    """Refuse now, before anything is written, what :func:`require` would refuse later."""
    if importlib.util.find_spec(module) is None:
        raise _missing(module, extra, wanted_by)


def require(module: str, extra: str, wanted_by: str) -> ModuleType:
    """``import module``, or a RunError saying ``pip install 'fewshot-metaopt[extra]'``."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise _missing(module, extra, wanted_by) from None

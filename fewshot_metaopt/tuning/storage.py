"""Where a study's trials are kept: SQLite in the study folder by default (nothing to start),
or any database Optuna's RDB storage takes (``postgresql://...``, ``mysql://...``) for workers
on several machines.

SQLite lets one process write at a time. The workers on one machine share the file, so each
connection waits up to :data:`SQLITE_TIMEOUT_S` for the others' writes instead of failing with
"database is locked" (Optuna's advice for SQLite under several processes). Every running trial
writes a heartbeat every :data:`HEARTBEAT_S`; a trial whose heartbeat stops for
:data:`GRACE_S` (its process or machine died) is failed by the next worker to start a trial and
queued again with the same values (see :mod:`.recovery`).
"""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path
from typing import Any, Callable

from ..runs.errors import RunError
from .optuna_import import optuna

DEFAULT_FILE = "study.db"
SQLITE_TIMEOUT_S = 60
HEARTBEAT_S = 60
GRACE_S = 180
DRIVERS = "psycopg2 for postgresql://, PyMySQL for mysql+pymysql://"


def sqlite_url(folder: Path) -> str:
    return f"sqlite:///{(Path(folder) / DEFAULT_FILE).resolve()}"


def shown(url: str) -> str:
    """``url`` with its password, if it has one, replaced by ``***`` (safe to print and store)."""
    from sqlalchemy.engine import make_url  # Optuna's own dependency

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a URL sqlalchemy cannot parse is reported when it is opened
        return url


def open_storage(url: str, on_stale: Callable[[Any, Any], None] | None = None):
    """Optuna's RDB storage of ``url``, with heartbeats; ``on_stale(study, trial)`` is called for
    each trial failed because its heartbeat stopped."""
    module = optuna()
    engine: dict[str, Any] = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if url.startswith("sqlite") else {
        "pool_pre_ping": True}
    # Optuna 4.9 renamed the stale trials' callback; the old name still works before it.
    parameters = inspect.signature(module.storages.RDBStorage).parameters
    callback = "heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in parameters else \
        "failed_trial_callback"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", module.exceptions.ExperimentalWarning)  # heartbeats are "experimental"
            return module.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S,
                                              grace_period=GRACE_S, **{callback: on_stale})
    except ImportError as err:
        raise RunError(f"the study storage {shown(url)} needs its database driver ({err}); install it "
                       f"({DRIVERS})") from None
    except Exception as err:  # noqa: BLE001 - sqlalchemy's errors for a bad URL or an unreachable server
        reason = " ".join(str(err).split())
        raise RunError(f"cannot open the study storage {shown(url)}: {reason}") from None

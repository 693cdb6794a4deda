"""Writing a resolved task back as TOML, so that a run's ``config.toml`` is itself a task file.

Only what a task holds: top-level scalars, then one table per section of scalars and flat
lists. Reading stays with :mod:`tomllib`.
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        # JSON escapes are TOML's, except that TOML also forbids a raw DEL.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as a TOML value")


def dumps(values: Mapping[str, Any], header: str = "") -> str:
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    tables = {k: v for k, v in values.items() if isinstance(v, Mapping)}
    lines += [f"{k} = {toml_value(v)}" for k, v in values.items() if k not in tables]
    for name, table in tables.items():
        lines += ["", f"[{name}]"]
        lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"

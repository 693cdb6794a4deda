"""The inner-loop engines by the names ``GradientMetaLearnerConfig.engine`` resolves to."""

from __future__ import annotations

from ..registry import Registry
from .func_engine import FuncEngine
from .higher_engine import HigherEngine

ENGINES: Registry[type] = Registry("engine")
ENGINES.register("higher", HigherEngine)
ENGINES.register("func", FuncEngine)

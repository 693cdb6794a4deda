"""The two coordinatewise LSTM optimizers by the names configs give them."""

from __future__ import annotations

from typing import Any

from ...registry import Registry
from .base import UpdateRule
from .lstm_faithful import LSTMRule
from .lstm_scalable import ScalableLSTMRule

LSTM_RULES: Registry[type] = Registry("LSTM variant")
LSTM_RULES.register("faithful", LSTMRule)  # Andrychowicz et al. 2016: 2 x layers x hidden floats per coordinate
LSTM_RULES.register("scalable", ScalableLSTMRule)  # at most 2 floats per coordinate, an LSTM per tensor
LSTM_VARIANTS = LSTM_RULES.names()


def lstm_rule(variant: str = "faithful", **kwargs: Any) -> UpdateRule:
    """The LSTM rule named ``variant``, built from ``kwargs``."""
    return LSTM_RULES.build(variant, **kwargs)

"""Pure update rules (see :mod:`.base` for the contract)."""

from .adam import AdamRule, AdamSlot
from .base import Params, UpdateRule, step_rule
from .l2o import L2ORule, L2OSlot
from .lstm_faithful import LSTMRule
from .lstm_scalable import ScalableLSTMRule, ScalableSlot
from .lstm_variants import LSTM_VARIANTS, lstm_rule
from .preprocess import log_sign_preprocess, param_bytes, state_bytes
from .sgd import SGDRule

__all__ = [
    "AdamRule",
    "AdamSlot",
    "L2ORule",
    "L2OSlot",
    "LSTMRule",
    "LSTM_VARIANTS",
    "Params",
    "SGDRule",
    "ScalableLSTMRule",
    "ScalableSlot",
    "UpdateRule",
    "log_sign_preprocess",
    "lstm_rule",
    "param_bytes",
    "state_bytes",
    "step_rule",
]

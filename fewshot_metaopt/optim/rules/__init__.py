"""Pure update rules (see :mod:`.base` for the contract)."""

from .adam import AdamRule, AdamSlot
from .base import Params, UpdateRule
from .l2o import L2ORule, L2OSlot
from .lstm_faithful import LSTMRule
from .lstm_scalable import LSTM_VARIANTS, ScalableLSTMRule, ScalableSlot, lstm_rule
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
]

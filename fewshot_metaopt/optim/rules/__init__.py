"""Pure update rules (see :mod:`.base` for the contract)."""

from .base import Params, UpdateRule
from .sgd import SGDRule

__all__ = ["Params", "SGDRule", "UpdateRule"]

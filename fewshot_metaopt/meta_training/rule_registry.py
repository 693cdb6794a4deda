"""The learned inner-loop rules a :class:`~.config.MetaOptimizerConfig` names by ``method``.

Each entry builds the rule for a base model from the config; adding a method is one rule
file in ``optim/rules/`` and one registration line here.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from ..optim.rules.base import UpdateRule
from ..optim.rules.l2o import L2ORule
from ..optim.rules.lstm_variants import lstm_rule
from ..optim.rules.sgd import SGDRule
from ..registry import Registry
from ..warp.warp_grad import WarpGradRule, require_warped

# ``builder(config, model, dtype)``; ``config`` is a MetaOptimizerConfig, which reads its
# choices of ``method`` from this table (so this module cannot import it back).
RuleBuilder = Callable[[Any, nn.Module, torch.dtype], UpdateRule]
RULES: Registry[RuleBuilder] = Registry("method")


def _shapes(model: nn.Module) -> dict[str, torch.Size]:
    return {name: p.shape for name, p in model.named_parameters()}


@RULES.register("meta_sgd")
def _meta_sgd(config: Any, model: nn.Module, dtype: torch.dtype) -> UpdateRule:
    granularity = "per_parameter" if config.preconditioning else "scalar"
    return SGDRule.for_params(_shapes(model), lr=config.inner_lr, granularity=granularity, dtype=dtype)


@RULES.register("lstm")
def _lstm(config: Any, model: nn.Module, dtype: torch.dtype) -> UpdateRule:
    return lstm_rule(
        variant=config.lstm_variant, hidden_size=config.hidden_size, num_layers=config.num_layers,
        output_scale=config.output_scale, second_order=config.second_order,
        init=config.rule_init, init_lr=config.inner_lr,
    ).to(dtype)


@RULES.register("l2o")
def _l2o(config: Any, model: nn.Module, dtype: torch.dtype) -> UpdateRule:
    return L2ORule(hidden_size=config.hidden_size, hidden_layers=config.num_layers,
                   second_order=config.second_order, init=config.rule_init, step_mult=config.inner_lr).to(dtype)


@RULES.register("warp_grad")
def _warp_grad(config: Any, model: nn.Module, dtype: torch.dtype) -> UpdateRule:
    model = require_warped(model, "method 'warp_grad'")
    shapes = _shapes(model)
    adapted = {n: shapes[n] for n in model.adapted_parameter_names()}
    return WarpGradRule(model, SGDRule.for_params(adapted, lr=config.inner_lr, dtype=dtype))


def build_rule(config: Any, model: nn.Module, dtype: torch.dtype) -> UpdateRule:
    """The rule ``config.method`` names, for ``model``'s parameters, in ``dtype``."""
    return RULES[config.method](config, model, dtype)

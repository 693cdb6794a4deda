"""The learned inner-loop rules a :class:`~.config.MetaOptimizerConfig` names by ``method``.

Each entry builds the rule for a base model from the config; adding a method is one rule
file in ``optim/rules/`` and one registration line here.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch
from torch import nn

from ..optim.rules.base import UpdateRule
from ..optim.rules.l2o import L2ORule
from ..checks import ConfigError
from ..optim.rules.lstm_variants import LSTM_RULES, lstm_rule
from ..optim.rules.sgd import SGDRule
from ..registry import Registry
from ..warp.warp_grad import WarpGradRule, require_warped

# ``builder(config, model, dtype)``; ``config`` is a MetaOptimizerConfig, which reads its
# choices of ``method`` from this table (so this module cannot import it back).
RuleBuilder = Callable[[Any, nn.Module, torch.dtype], UpdateRule]
RULES: Registry[RuleBuilder] = Registry("method")


def _shapes(model: nn.Module) -> dict[str, torch.Size]:
    return {name: p.shape for name, p in model.named_parameters()}


def rule_options(config: Any, constructor: Callable, **settings: Any) -> dict[str, Any]:
    """``settings`` (what the config's own keys set) with ``config.rule_options`` added: any
    other keyword of the rule's ``constructor`` (e.g. ``mlp_hidden``, ``activation``,
    ``compile``, ``chunk_size``, ``network_precision``). A key the constructor does not take,
    or one a config key already sets, is a one-line error naming it."""
    accepted = set(inspect.signature(constructor).parameters) - {"self"}
    for key in config.rule_options:
        if key in settings:
            raise ConfigError("rule_options", f"rule_options {key!r} is set by the config itself; set it there")
        if key not in accepted:
            raise ConfigError("rule_options", f"rule_options {key!r} is not an option of method {config.method!r} "
                              f"({constructor.__qualname__}); choose among {', '.join(sorted(accepted - set(settings)))}")
    return {**settings, **config.rule_options}


@RULES.register("meta_sgd")
def _meta_sgd(config: Any, model: nn.Module, dtype: torch.dtype) -> UpdateRule:
    granularity = "per_parameter" if config.preconditioning else "scalar"
    options = rule_options(config, SGDRule.for_params, shapes=None, lr=config.inner_lr, granularity=granularity,
                           dtype=dtype)
    return SGDRule.for_params(**{**options, "shapes": _shapes(model)})


@RULES.register("lstm")
def _lstm(config: Any, model: nn.Module, dtype: torch.dtype) -> UpdateRule:
    options = rule_options(
        config, LSTM_RULES[config.lstm_variant], hidden_size=config.hidden_size, num_layers=config.num_layers,
        output_scale=config.output_scale, second_order=config.second_order, init=config.rule_init,
        init_lr=config.inner_lr,
    )
    return lstm_rule(variant=config.lstm_variant, **options).to(dtype)


@RULES.register("l2o")
def _l2o(config: Any, model: nn.Module, dtype: torch.dtype) -> UpdateRule:
    options = rule_options(config, L2ORule, hidden_size=config.hidden_size, hidden_layers=config.num_layers,
                           second_order=config.second_order, init=config.rule_init, step_mult=config.inner_lr)
    return L2ORule(**options).to(dtype)


@RULES.register("warp_grad")
def _warp_grad(config: Any, model: nn.Module, dtype: torch.dtype) -> UpdateRule:
    model = require_warped(model, "method 'warp_grad'")
    rule_options(config, WarpGradRule, model=model, inner=None)
    shapes = _shapes(model)
    adapted = {n: shapes[n] for n in model.adapted_parameter_names()}
    return WarpGradRule(model, SGDRule.for_params(adapted, lr=config.inner_lr, dtype=dtype))


def build_rule(config: Any, model: nn.Module, dtype: torch.dtype) -> UpdateRule:
    """The rule ``config.method`` names, for ``model``'s parameters, in ``dtype``."""
    return RULES[config.method](config, model, dtype)

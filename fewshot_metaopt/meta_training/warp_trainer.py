"""Meta-training a ``warp_grad`` :class:`~.meta_optimizer.MetaOptimizer`: trajectories into the
replay buffer, one warp update from sampled points (Flennerhag et al. 2020), and under
``warp_init="leap"`` one Leap update of the adapted layers' initialisation."""

from __future__ import annotations

from typing import Dict, List

import torch

from ..episodes.episode import Episode
from ..distributed import MetaBatchGroup
from ..engines.precision import lower_scale_after_overflow, resolve_precision
from ..optim.outer_step import clipped_step
from ..optim.rules.base import UpdateRule
from ..warp.effective_lr import warp_effective_lr
from ..warp.layers import WarpedModel
from ..warp.objective import accumulate_leap_gradient
from ..warp.warp_grad import WarpGradTrainer
from .config import MetaOptimizerConfig
from .results import MetaOptTrainResult


class WarpRuleTrainer:
    """Trains the warp layers of ``model`` (``rule``'s parameters) with ``optimizer``, and with
    ``warp_init="leap"`` the adapted layers' initialisation with an Adam of its own."""

    def __init__(self, model: WarpedModel, rule: UpdateRule, optimizer: torch.optim.Optimizer,
                 config: MetaOptimizerConfig) -> None:
        self.model, self.rule, self.optimizer, self.config = model, rule, optimizer, config
        eval_batch = "query" if config.meta_loss == "query" else "support"
        device = next(model.parameters()).device
        self.precision = resolve_precision(config.precision, device)
        self.scaler = self.precision.scaler(device)
        self.warp = WarpGradTrainer(model, rule, config.warp_buffer_size, config.warp_points, config.loss,
                                    "support", eval_batch, precision=self.precision)
        params = dict(model.named_parameters())
        self.init_optimizer = torch.optim.Adam([params[n] for n in model.adapted_parameter_names()],
                                               lr=config.meta_lr)
        self.effective_lr: Dict[str, float] = {}
        self.group: MetaBatchGroup | None = None

    def train_step(self, episodes: List[Episode]) -> MetaOptTrainResult:
        cfg = self.config
        while True:
            if self.scaler is not None:
                self.warp.loss_scale = float(self.scaler.get_scale())
            self.optimizer.zero_grad(set_to_none=True)
            try:
                runs = [self.warp.run_task(ep, cfg.inner_steps, task) for task, ep in enumerate(episodes)]
                meta_loss = self.warp.accumulate_warp_gradient(list(self.rule.parameters()), self._backward)
                break
            except FloatingPointError:
                # fp16: an inner gradient may have overflowed at this loss scale; try a lower one.
                if not lower_scale_after_overflow(self.scaler):
                    raise
        if self.group is not None:
            # Every rank's buffer holds every rank's points (WarpGradTrainer.share_points), so
            # the warp gradients agree; the mean keeps the ranks bit for bit in step.
            _, (meta_loss,) = self.group.reduce_mean_gradient(self.rule.parameters(), 1, [meta_loss])
            meta_loss /= self.group.world_size
        grad_norm = clipped_step(
            self.optimizer, self.rule.parameters(), cfg.gradient_clipping,
            lambda norm: FloatingPointError(f"warp meta-gradient norm is {norm}; nothing was updated (lower meta_lr)"),
            self.scaler,
        )
        if cfg.warp_init == "leap":
            accumulate_leap_gradient(self.model, [run.trajectory for run in runs])
            if self.group is not None:
                self.group.reduce_mean_gradient(self.init_optimizer.param_groups[0]["params"], len(runs))
            self.init_optimizer.step()
            self.init_optimizer.zero_grad(set_to_none=True)
        self.effective_lr = warp_effective_lr(self.model, episodes[0], cfg.inner_lr, cfg.loss)
        return MetaOptTrainResult(
            meta_loss=meta_loss, final_loss=sum(r.query_loss for r in runs) / len(runs),
            grad_norm=grad_norm, windows=1, inner_steps=cfg.inner_steps,
        )

    def _backward(self, objective: torch.Tensor, inputs: List[torch.Tensor]) -> None:
        (objective if self.scaler is None else self.scaler.scale(objective)).backward(inputs=inputs)

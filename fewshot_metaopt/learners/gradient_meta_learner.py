"""MAML, first-order MAML, Meta-SGD, ANIL, Proto-MAML, Reptile and iMAML as one learner over an
update rule.

Meta-objective, for tasks ``i`` with support set ``S_i`` and query set ``Q_i``::

    theta_i' = U^k(theta; S_i)                     k steps of the inner update rule U
    L(theta, phi) = mean_i  L_Q_i(theta_i')        phi: the rule's own meta-parameters

MAML differentiates through ``U^k`` (second order); first-order MAML treats the inner
gradients as constants; Meta-SGD learns a per-parameter inner learning rate inside ``U``;
ANIL adapts only the head. The inner loop runs on an engine that drives the update rule: the
functional engine (``torch.func``, the default) or ``higher`` with our rule registered as a
differentiable optimizer; any rule with the update-rule contract plugs into both.

>>> learner = GradientMetaLearner(conv4(5), GradientMetaLearnerConfig(algorithm="meta_sgd"))
>>> result = learner.meta_train_step(sampler.sample_batch(32))
>>> learner.evaluate(sampler.fixed(600)).mean
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn

from ..distributed import MetaBatchGroup
from ..engines.choice import ENGINES
from ..engines.func_engine import FuncEngine
from ..engines.precision import lower_scale_after_overflow, resolve_precision
from ..episodes.episode import Episode, episodes_to
from ..losses import task_loss
from ..models.inner_step import scoring
from ..optim.learned_lr import learned_lr_of, learned_lr_tensors_of
from ..optim.moved_state import follow_parameters, mapped_tree, placed_like
from ..optim.outer_step import OUTER_OPTIMIZERS, clipped_step
from ..optim.rules.base import UpdateRule
from ..optim.rules.sgd import SGDRule
from ..warp.warp_grad import WarpGradTrainer, require_warped
from .config import GradientMetaLearnerConfig
from .errors import NonFiniteLossError
from .prototype_head import PrototypeHead
from .proximal import proximal_term
from .results import EvaluationResult, MetaTrainResult
from .strategies import strategy_for


def head_parameter_names(model: nn.Module) -> list[str]:
    """Names of the parameters of the model's last child that has any (its head)."""
    owners = [name for name, child in model.named_children() if any(True for _ in child.parameters())]
    if not owners:
        return [name for name, _ in model.named_parameters()]
    return [name for name, _ in model.named_parameters() if name.split(".")[0] == owners[-1]]


# Which parameters each algorithm's inner loop adapts, by ``Algorithm.adapts``.
ADAPTED = {
    "all": lambda model: [name for name, _ in model.named_parameters()],
    "head": head_parameter_names,
    "warp": lambda model: model.adapted_parameter_names(),
}


class GradientMetaLearner:
    """Gradient-based meta-learning of ``model`` (see the module docstring).

    Args:
        model: the network whose initialisation is meta-learned; never modified by adaptation.
        config: a :class:`GradientMetaLearnerConfig`.
        inner_optimizer: an update rule for the inner loop (default: SGD with the config's
            learning-rate granularity, which is MAML or Meta-SGD).
        adapted_parameters: names of the parameters the inner loop adapts (default: all, or
            the head for ANIL).
    """

    def __init__(
        self,
        model: nn.Module,
        config: GradientMetaLearnerConfig | None = None,
        inner_optimizer: UpdateRule | None = None,
        adapted_parameters: Sequence[str] | None = None,
    ) -> None:
        self.model = model
        self.config = config = config or GradientMetaLearnerConfig()
        params = dict(model.named_parameters())
        if not params:
            raise ValueError("the model has no parameters to meta-learn")
        warped = config.method.warped
        if warped:
            model = require_warped(model, f"algorithm {config.algorithm!r}")
        if adapted_parameters is None:
            adapted_parameters = ADAPTED[config.method.adapts](model)
        unknown = [n for n in adapted_parameters if n not in params]
        if unknown or not adapted_parameters:
            raise ValueError(f"adapted_parameters names no parameter of the model: {unknown or '[]'}")
        self.adapted = list(adapted_parameters)
        if warped and set(self.adapted) & set(model.warp_parameter_names()):
            raise ValueError("warp parameters cannot be adapted in the inner loop: "
                             f"{sorted(set(self.adapted) & set(model.warp_parameter_names()))}")
        reference = next(iter(params.values()))
        self.device = reference.device
        if inner_optimizer is None:
            inner_optimizer = SGDRule.for_params(
                {n: params[n].shape for n in self.adapted},
                lr=config.inner_lr,
                granularity=config.granularity,
                steps=config.inner_steps,
                dtype=reference.dtype,
            )
        self.rule = inner_optimizer.to(device=reference.device, dtype=reference.dtype)
        self.precision = resolve_precision(config.precision, reference.device)
        self.scaler = self.precision.scaler(reference.device)
        self.engine = ENGINES[config.inner_engine](model, self.rule, self.adapted, self.precision)
        self.prototype_head = self._prototype_head()
        meta_params = list(model.parameters()) + list(self.rule.parameters())
        self.meta_optimizer: torch.optim.Optimizer = OUTER_OPTIMIZERS[config.meta_optimizer](meta_params,
                                                                                           lr=config.meta_lr)
        self.iteration = 0
        self.group: MetaBatchGroup | None = None
        self.warp = None
        if warped:
            self.warp = WarpGradTrainer(model, self.rule, config.warp_buffer_size, config.warp_points, config.loss,
                                        precision=self.precision)

    def _prototype_head(self) -> PrototypeHead | None:
        """Proto-MAML's head builder, the model run in the learner's precision; else None."""
        if not self.config.method.prototype_head:
            return None
        return PrototypeHead(self.model, self.precision.wrap(self.model, self.device))

    @property
    def func_engine(self) -> FuncEngine | None:
        """The torch.func engine when it runs the inner loop (the vmapped strategy needs it)."""
        return self.engine if isinstance(self.engine, FuncEngine) else None

    # ------------------------------------------------------- what the meta-gradient strategies use

    def loss(self, output: Tensor, target: Tensor, task: int, phase: str) -> Tensor:
        """The task loss; labels out of range are an error naming the task and phase."""
        return task_loss(output, target, self.config.loss, where=f"task {task}: {phase}")

    def forward(self, fmodel, x: Tensor, task: int, phase: str) -> Tensor:
        """``fmodel(x)``; inputs that do not fit the model are an error naming the task and phase."""
        try:
            return fmodel(x)
        except RuntimeError as err:
            raise ValueError(
                f"task {task}: {phase} inputs of shape {tuple(x.shape)} do not fit the model: {err}"
            ) from err

    def checked(self, loss: Tensor, task: int, phase: str, step: int) -> Tensor:
        """``loss``, or :class:`NonFiniteLossError` when it is NaN or infinite."""
        if not torch.isfinite(loss):
            raise NonFiniteLossError(task, phase, step, float(loss.detach()))
        return loss

    def initial_weights(self, episode: Episode, task: int, mode: str) -> dict[str, Tensor] | None:
        """The weights ``episode``'s inner loop starts from where they are not the model's own:
        Proto-MAML's head from the support prototypes (in the graph of the body unless ``mode``
        is ``eval``); ``None`` for the other algorithms."""
        if self.prototype_head is None:
            return None
        evaluating = mode == "eval"
        with torch.no_grad() if evaluating else nullcontext():
            weights = self.prototype_head(episode.support_x, episode.support_y, task, evaluating)
        # Without a graph the engines still differentiate the support loss with regard to them.
        return {name: w.requires_grad_() for name, w in weights.items()} if evaluating else weights

    def inner_loop(self, episode: Episode, steps: int, mode: str, task: int, per_step_query: bool, record=None,
                   batches: Sequence[Tensor] | None = None):
        """Adapt on the support set; returns the adapted model, the rule's state and the query
        losses after every step but the last when ``per_step_query``. ``record(params,
        rule_state, step)`` sees the weights each step starts from. ``batches[step]`` indexes
        the support examples step ``step`` descends on (Reptile's mini-batches; ``None``: all).
        For iMAML the loss descended is the support loss plus the proximal term
        (:mod:`.proximal`); Proto-MAML starts from :meth:`initial_weights`.

        The support losses are checked for finiteness once, after the loop: a check reads the
        value on the host, which on an accelerator waits for every queued kernel, so one check
        per task instead of one per step. A non-finite loss still names its step (the steps
        after it ran on non-finite weights, to no effect). With ``record`` each loss is
        checked before its point is recorded, so that no non-finite point enters a buffer.
        """
        seen: list[Tensor] = []
        proximal = (proximal_term(self.model, self.adapted, self.config.imaml_lambda, differentiable=mode != "eval")
                    if self.config.method.proximal else None)

        def support_loss(fmodel, step: int) -> Tensor:
            x, y = (episode.support_x, episode.support_y) if batches is None else (
                episode.support_x[batches[step]], episode.support_y[batches[step]])
            out = self.forward(fmodel, x, task, "support")
            loss = self.loss(out, y, task, "support")
            if proximal is not None:
                loss = loss + proximal(fmodel)
            if record is not None:
                return self.checked(loss, task, "support", step)
            seen.append(loss.detach())
            return loss

        def query_loss(fmodel) -> Tensor:
            return self.loss(self.forward(fmodel, episode.query_x, task, "query"), episode.query_y, task, "query")

        adapted = self.engine.inner_loop(steps, mode, support_loss, query_loss if per_step_query else None,
                                         self.config.allow_unused, record, self.initial_weights(episode, task, mode))
        if seen and not bool(torch.isfinite(torch.stack(seen)).all()):
            step = next(k for k, value in enumerate(seen) if not torch.isfinite(value))
            self.checked(seen[step], task, "support", step)
        return adapted

    @property
    def training_mode(self) -> str:
        """The inner-loop mode of this meta-iteration: ``first_order`` or ``second_order``
        (first-order before ``first_order_until`` iterations, MAML++'s annealing)."""
        return "first_order" if self.config.first_order_at(self.iteration) else "second_order"

    def backward(self, objective: Tensor, inputs: list[Tensor] | None = None) -> None:
        """Add ``objective``'s gradient to the meta-parameters' ``.grad`` (scaled under fp16,
        unscaled again before the outer step)."""
        if self.scaler is not None:
            objective = self.scaler.scale(objective)
        objective.backward(inputs=inputs)

    @property
    def loss_scale(self) -> float:
        """The factor on every loss differentiated this meta-step (1 but under fp16)."""
        return 1.0 if self.scaler is None else float(self.scaler.get_scale())

    def step_weights(self, steps: int) -> Tensor:
        """MAML++ multi-step loss weights: uniform, annealed towards the last step."""
        uniform = torch.full((steps,), 1.0 / steps)
        anneal = self.config.multi_step_anneal_iters
        if anneal == 0 or steps == 1:
            return uniform
        last = torch.zeros(steps)
        last[-1] = 1.0
        progress = min(self.iteration / anneal, 1.0)
        return (1 - progress) * uniform + progress * last

    def adapt(self, episode: Episode, steps: int | None = None, differentiable: bool = False):
        """The model adapted to ``episode``'s support set, as a functional model.

        Call it on inputs: ``fmodel(x)``. The original parameters and buffers are untouched.
        ``differentiable=True`` keeps the graph back to the meta-parameters; without it the task
        is adapted to be scored (per-step batch norm uses its running statistics, DropBlock
        drops nothing; see :mod:`fewshot_metaopt.models.inner_step`).
        """
        steps = self.config.eval_steps if steps is None else steps
        episode = episode.to(self.device)
        mode = self.training_mode if differentiable else "eval"
        with torch.enable_grad(), nullcontext() if differentiable else scoring():
            fmodel, _, _ = self.inner_loop(episode, steps, mode, task=0, per_step_query=False)
        return fmodel

    # ----------------------------------------------------------------------------- outer loop

    @property
    def meta_parameters(self) -> list[Tensor]:
        return [p for group in self.meta_optimizer.param_groups for p in group["params"]]

    def accumulate_meta_gradient(self, episodes: Iterable[Episode]) -> MetaTrainResult:
        """Add the meta-gradient of the mean query loss over ``episodes`` to the ``.grad`` of
        every meta-parameter, without updating anything (``grad_norm`` is reported as NaN)."""
        episodes = list(episodes)
        if not episodes:
            raise ValueError("a meta-batch needs at least one episode, got none")
        self.engine.loss_scale = self.loss_scale
        if self.warp is not None:
            self.warp.loss_scale = self.engine.loss_scale
        return strategy_for(self.config)(self, episodes_to(episodes, self.device))

    def meta_train_step(self, episodes: Iterable[Episode]) -> MetaTrainResult:
        """One outer update from a meta-batch of episodes. Distributed (:meth:`distribute`),
        every rank passes the same whole meta-batch and adapts its share of it."""
        self.meta_optimizer.zero_grad(set_to_none=True)
        episodes = list(episodes)
        total = len(episodes)
        if self.group is not None:
            episodes = self.group.share(episodes, "meta-batch")
        failure: FloatingPointError | None = None
        overflow = False
        try:
            result = self.accumulate_meta_gradient(episodes)
        except FloatingPointError as err:
            # Under fp16 a non-finite loss may be an overflow of the loss scale; distributed, every
            # rank must learn of a failure on any of them, or the others wait for it.
            overflow = isinstance(err, NonFiniteLossError) and self._scale_may_overflow()
            if self.group is None and not overflow:
                raise
            failure = None if overflow else err
            self.meta_optimizer.zero_grad(set_to_none=True)
            result = MetaTrainResult(loss=math.nan, accuracy=None, grad_norm=math.nan, tasks=0,
                                     skipped_tasks=len(episodes))
        if self.group is not None:
            result, failed_anywhere, overflow = self._reduce(result, failure is not None, overflow)
            if failed_anywhere:
                raise failure or FloatingPointError(
                    f"another process's share of the meta-batch failed at iteration {self.iteration}; see its error")
        if overflow:
            lower_scale_after_overflow(self.scaler)
            self.meta_optimizer.zero_grad(set_to_none=True)
            self.iteration += 1
            return MetaTrainResult(loss=math.nan, accuracy=None, grad_norm=math.nan, tasks=0, skipped_tasks=total)
        result.grad_norm = clipped_step(
            self.meta_optimizer, self.meta_parameters, self.config.meta_grad_clip,
            lambda norm: FloatingPointError(f"meta-gradient norm is {norm} at iteration {self.iteration}; nothing was "
                                            "updated (lower meta_lr or inner_lr, or set meta_grad_clip)"),
            self.scaler,
        )
        self.iteration += 1
        return result

    def _scale_may_overflow(self) -> bool:
        return self.scaler is not None and self.scaler.get_scale() > 1.0

    # -------------------------------------------------------------- parameters and placement

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """The meta-parameters by name, as a module holding ``model`` and ``rule`` names them
        (``model.0.weight``, ``rule.lrs.values.0``); each once."""
        seen: set[int] = set()
        for prefix, module in (("model", self.model), ("rule", self.rule)):
            for name, parameter in module.named_parameters(prefix=prefix):
                if id(parameter) not in seen:
                    seen.add(id(parameter))
                    yield name, parameter

    def parameters(self) -> Iterator[nn.Parameter]:
        """The meta-parameters: the model's initialisation and the inner rule's own."""
        return (parameter for _, parameter in self.named_parameters())

    def to(self, *args, **kwargs) -> "GradientMetaLearner":
        """Move or cast the learner, with ``nn.Module.to``'s arguments (``learner.to("cuda")``,
        ``learner.to("cpu", torch.float64)``); returns it.

        The model and the inner rule move as modules do; the outer optimizer's moments, the
        loss scaler and the Warp-Grad replay buffer follow them, and the inner loop runs where
        the model now is. Episodes are moved to the learner's device as they arrive.
        """
        # Where the arguments lead (Tensor.to reads them as Module.to does), so that a precision
        # the target cannot run is refused before anything moves.
        target = torch.empty(0, device=self.device).to(*args, **kwargs).device
        precision = resolve_precision(self.config.precision, target)
        owners = (self.model, self.rule)
        before = [p for module in owners for p in module.parameters()]
        for module in owners:
            module.to(*args, **kwargs)
        after = [p for module in owners for p in module.parameters()]
        follow_parameters(self.meta_optimizer, before, after)
        reference = after[0]
        self.device, self.precision = reference.device, precision
        scaler = precision.scaler(reference.device)
        if scaler is not None and self.scaler is not None:  # pragma: no cover - fp16 needs a GPU
            scaler.load_state_dict(self.scaler.state_dict())  # the loss scale carries over
        self.scaler = scaler
        self.engine = ENGINES[self.config.inner_engine](self.model, self.rule, self.adapted, self.precision)
        self.prototype_head = self._prototype_head()
        if self.warp is not None:
            warp = WarpGradTrainer(self.model, self.rule, self.config.warp_buffer_size, self.config.warp_points,
                                   self.config.loss, precision=self.precision)
            warp.load_state_dict(mapped_tree(placed_like(reference), self.warp.state_dict()))
            warp.group = self.warp.group
            self.warp = warp
        return self

    def distribute(self, group: MetaBatchGroup | None) -> "GradientMetaLearner":
        """Share meta-batches and evaluations over ``group`` (``None``: run alone again); see
        :mod:`fewshot_metaopt.distributed`. Every rank must start from the same weights (build
        the model from the same seed, or load the same checkpoint)."""
        self.group = group
        if self.warp is not None:
            self.warp.group = group
        return self

    def _reduce(self, result: MetaTrainResult, failed: bool, overflow: bool) -> tuple[MetaTrainResult, bool, bool]:
        """The step's meta-gradient and figures over every rank; whether any rank failed or
        overflowed."""
        kept = result.tasks
        scored = kept if result.accuracy is not None else 0
        sums = [result.loss * kept if kept else 0.0, (result.accuracy or 0.0) * scored, scored,
                result.skipped_tasks, float(failed), float(overflow), (result.warp_loss or 0.0) * kept]
        kept, (loss, correct, scored, skipped, failures, overflows, warp) = self.group.reduce_mean_gradient(
            self.meta_parameters, kept, sums)
        reduced = MetaTrainResult(
            loss=loss / kept if kept else math.nan, accuracy=correct / scored if scored else None,
            grad_norm=math.nan, tasks=kept, skipped_tasks=int(round(skipped)),
            warp_loss=warp / kept if result.warp_loss is not None and kept else None,
        )
        return reduced, failures > 0, overflows > 0 and failures == 0

    def evaluate(self, episodes: Iterable[Episode], steps: int | None = None) -> EvaluationResult:
        """Adapt to each episode and score its query set: accuracy, or MSE for regression.
        Distributed, the ranks score every ``world_size``-th episode each and gather the scores."""
        if self.group is None:  # lazily: a progress bar around ``episodes`` then advances as they are scored
            scores = [self._score(task, episode, steps) for task, episode in enumerate(episodes)]
        else:
            episodes = list(episodes)
            mine = [self._score(task, episode, steps) for task, episode in enumerate(self.group.strided(episodes))]
            scores = self.group.gather(mine, len(episodes))
        if not scores:
            raise ValueError("evaluate needs at least one episode, got none")
        metric = "mse" if any(kind == "mse" for kind, _, _ in scores) else "accuracy"
        return EvaluationResult(metric=metric, values=[v for _, v, _ in scores], losses=[l for _, _, l in scores])

    def _score(self, task: int, episode: Episode, steps: int | None) -> tuple[str, float, float]:
        fmodel = self.adapt(episode, steps)
        episode = episode.to(self.device)
        with torch.no_grad():
            output = self.forward(fmodel, episode.query_x, task, "query")
            loss = float(self.loss(output, episode.query_y, task, "query"))
        if episode.query_y.is_floating_point():
            return "mse", loss, loss
        return "accuracy", float((output.argmax(-1) == episode.query_y).float().mean()), loss

    # ----------------------------------------------------------------------------- inspection

    def get_learned_lr(self) -> dict[str, float]:
        """Mean inner learning rate per adapted parameter tensor (fixed ones for MAML)."""
        return learned_lr_of(self.rule)

    def learned_lr_tensors(self) -> dict[str, Tensor]:
        """The full learned learning rates per adapted tensor (for histograms)."""
        return learned_lr_tensors_of(self.rule)

    def state_dict(self) -> dict:
        """Everything a resumed run needs: weights, rule, outer optimizer, iteration, and for
        the Warp-Grad algorithms the replay buffer (plain tensors: ``weights_only`` loads it)."""
        state = {
            "model": self.model.state_dict(),
            "rule": self.rule.state_dict(),
            "meta_optimizer": self.meta_optimizer.state_dict(),
            "iteration": self.iteration,
        }
        if self.warp is not None:
            state["warp"] = self.warp.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.rule.load_state_dict(state["rule"])
        self.meta_optimizer.load_state_dict(state["meta_optimizer"])
        self.iteration = int(state["iteration"])
        if self.warp is not None:
            if "warp" not in state:
                raise ValueError("this state has no Warp-Grad replay buffer; it was saved by a learner "
                                 f"that is not {self.config.algorithm!r}")
            self.warp.load_state_dict(state["warp"])

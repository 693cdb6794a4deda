"""iMAML's meta-gradient (Rajeswaran et al. 2019): implicit differentiation of the proximal
inner solution, solved by conjugate gradient on Hessian-vector products.

The inner loop (any rule, any number of steps, on either engine) approximately minimises
``L_S(phi) + lambda/2 ||phi - theta||^2`` (:mod:`.proximal`) and keeps no graph. At its
solution ``phi*`` the stationarity condition ``grad L_S(phi*) + lambda (phi* - theta) = 0``
gives, by the implicit function theorem,

    d phi* / d theta = (I + H / lambda)^-1,        H = Hessian of L_S at phi*,

so the meta-gradient of the query loss is ``x = (I + H / lambda)^-1 grad L_Q(phi*)``: ``cg_steps``
conjugate-gradient steps on ``((1 + cg_damping) I + H / lambda) x = grad L_Q(phi*)``, each one
Hessian-vector product through one support forward pass. Nothing depends on how ``phi*`` was
reached, so memory and the meta-gradient's cost do not grow with ``inner_steps``.

Parameters the inner loop does not adapt (``adapted_parameters``) enter both losses directly:
their meta-gradient is ``dL_Q/dtheta_f - (d^2 L_S / dtheta_f dphi) x / lambda``, the second term
one vector-Jacobian product of the support gradient.
"""

from __future__ import annotations

from typing import List

import torch
from torch import Tensor

from ..engines.func_engine import unused_parameters_error
from ..episodes.episode import Episode
from .conjugate_gradient import conjugate_gradient
from .errors import NonFiniteLossError
from .interface import MetaLearner
from .results import MetaTrainResult
from .tally import MetaBatchTally


def _filled(grads, targets: List[Tensor], names: List[str], allow_unused: bool, required: bool) -> List[Tensor]:
    """Gradients with ``None`` (a parameter the loss does not reach) as zeros; for the support
    loss an error naming them unless ``allow_unused``."""
    missing = [n for n, g in zip(names, grads) if g is None]
    if missing and required and not allow_unused:
        raise unused_parameters_error(missing)
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, targets)]


def accumulate_implicit_meta_gradient(learner: MetaLearner, episodes: List[Episode]) -> MetaTrainResult:
    cfg = learner.config
    model_params = dict(learner.model.named_parameters())
    names = list(model_params)
    adapted = list(learner.adapted)
    fixed = [n for n in names if n not in set(adapted)]
    own = {id(p) for p in model_params.values()}
    theirs = [p for p in learner.meta_parameters if id(p) not in own]
    if any(p.requires_grad for p in theirs):
        raise ValueError(f"algorithm {cfg.algorithm!r} meta-learns the initialisation only: the inner rule's own "
                         f"parameters ({len(theirs)} tensors) get no implicit meta-gradient; use the default SGD rule")
    inputs = [model_params[n] for n in names]
    tally, skipped = MetaBatchTally(), 0
    for task, episode in enumerate(episodes):
        episode = episode.to(learner.device)
        try:
            objective, query, output = _task_objective(learner, episode, task, names, adapted, fixed)
        except NonFiniteLossError:
            if not cfg.skip_nonfinite_tasks:
                raise
            skipped += 1
            continue
        learner.backward(objective / len(episodes), inputs=inputs)
        tally.add(query, output, episode.query_y)
    return tally.result(learner.meta_parameters, len(episodes), skipped)


def _task_objective(learner: MetaLearner, episode: Episode, task: int, names: List[str], adapted: List[str],
                    fixed: List[str]) -> tuple[Tensor, float, Tensor]:
    """A scalar whose gradient with respect to the model's parameters is this task's implicit
    meta-gradient; the query loss; the query outputs."""
    cfg = learner.config
    theta = dict(learner.model.named_parameters())
    fmodel, _, _ = learner.inner_loop(episode, cfg.inner_steps, "eval", task, per_step_query=False)
    solution = dict(zip(names, fmodel.fast_params))
    phi = [solution[n].detach().requires_grad_() for n in adapted]
    at_phi = dict(zip(adapted, phi))
    weights = [at_phi.get(n, theta[n]) for n in names]

    def model_at_solution(x: Tensor) -> Tensor:
        return fmodel(x, params=weights)

    output = learner.forward(model_at_solution, episode.query_x, task, "query")
    query = learner.checked(learner.loss(output, episode.query_y, task, "query"), task, "query", cfg.inner_steps)
    support_output = learner.forward(model_at_solution, episode.support_x, task, "support")
    support = learner.loss(support_output, episode.support_y, task, "support")
    query_grads = _filled(torch.autograd.grad(query, phi, retain_graph=bool(fixed), allow_unused=True),
                          phi, adapted, cfg.allow_unused, required=False)
    support_grads = torch.autograd.grad(support, phi, create_graph=True, allow_unused=True)
    support_grads = _filled(support_grads, phi, adapted, cfg.allow_unused, required=True)
    in_graph = [i for i, g in enumerate(support_grads) if g.requires_grad]
    lam, damping = cfg.imaml_lambda, cfg.cg_damping

    def matvec(vectors: List[Tensor]) -> List[Tensor]:
        # Hessian-vector products; a support gradient that is a constant (a parameter the loss
        # does not reach, with allow_unused) adds no curvature.
        products = [torch.zeros_like(v) for v in vectors]
        if in_graph:
            found = torch.autograd.grad([support_grads[i] for i in in_graph], phi,
                                        grad_outputs=[vectors[i] for i in in_graph], retain_graph=True,
                                        allow_unused=True, materialize_grads=True)
            products = list(found)
        return [(1.0 + damping) * v + hv / lam for v, hv in zip(vectors, products)]

    solved = conjugate_gradient(matvec, query_grads, cfg.cg_steps)
    objective = sum((theta[n] * x).sum() for n, x in zip(adapted, solved))
    if fixed:
        # The non-adapted parameters' share: their direct gradient minus the vector-Jacobian
        # product of the support gradient with x / lambda (see the module docstring).
        coupling = sum((g * (x / lam)).sum() for g, x in zip(support_grads, solved))
        objective = objective + query - coupling
    return objective, float(query.detach()), output.detach()

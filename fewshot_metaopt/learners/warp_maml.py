"""Warp-MAML and Warp-Leap: the meta-gradient of one outer step of a warped learner.

Two parameter sets learn from two objectives (Flennerhag et al. 2020):

* the warp layers from the Warp-Grad objective (:mod:`fewshot_metaopt.warp.objective`), over
  points sampled from the replay buffer that this step's inner loops filled;
* the adapted layers' initialisation (and the inner rule's meta-parameters, e.g. Meta-SGD's
  lrs) from MAML's query-loss meta-gradient (``warp_maml``: its backward pass stops at the
  warps, which MAML's gradient would otherwise also reach), or from the simplified Leap
  gradient of the trajectories (``warp_leap``: no differentiation through the inner loop, so
  the cost per outer step is the inner steps plus ``warp_points`` second-order steps).
"""

from __future__ import annotations

from typing import List

from ..episodes.episode import Episode
from ..warp.objective import accumulate_leap_gradient
from .interface import MetaLearner
from .results import MetaTrainResult


def accumulate_warp_meta_gradient(learner: MetaLearner, episodes: List[Episode]) -> MetaTrainResult:
    cfg, warp, model = learner.config, learner.warp, learner.model
    warp_params = list(model.warp_parameters())
    warp_ids = {id(p) for p in warp_params}
    init_params = [p for p in learner.meta_parameters if id(p) not in warp_ids]
    total_loss, correct, count = 0.0, 0, 0
    episodes = [ep.to(learner.device) for ep in episodes]
    if cfg.method.warp_init == "maml":
        mode = learner.training_mode
        for task, episode in enumerate(episodes):
            def record(params, rule_state, step, episode=episode):
                warp.record_point(params, rule_state, step, episode)

            fmodel, _, _ = learner.inner_loop(episode, cfg.inner_steps, mode, task, per_step_query=False, record=record)
            output = learner.forward(fmodel, episode.query_x, task, "query")
            loss = learner.checked(learner.loss(output, episode.query_y, task, "query"), task, "query", cfg.inner_steps)
            learner.backward(loss / len(episodes), inputs=init_params)
            total_loss += loss.item()
            if not episode.query_y.is_floating_point():
                correct += int((output.argmax(-1) == episode.query_y).sum())
                count += episode.query_y.numel()
        accuracy = correct / count if count else None
    else:
        runs = [warp.run_task(episode, cfg.inner_steps, task) for task, episode in enumerate(episodes)]
        accumulate_leap_gradient(model, [run.trajectory for run in runs])
        total_loss = sum(run.query_loss for run in runs)
        scored = [run.query_accuracy for run in runs if run.query_accuracy is not None]
        accuracy = sum(scored) / len(scored) if scored else None
    warp_loss = warp.accumulate_warp_gradient(warp_params, learner.backward)
    return MetaTrainResult(loss=total_loss / len(episodes), accuracy=accuracy, grad_norm=float("nan"),
                           tasks=len(episodes), warp_loss=warp_loss)

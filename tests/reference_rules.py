"""The per-tensor forms of the learned rules' updates, as they were before the chunked,
batched evaluation: the reference the chunked forms must equal (to 1e-10 in float64, same
updates and same meta-gradients). Each function reads the weights of a live rule, so both
forms are compared on the same meta-parameters."""

from __future__ import annotations

import math

import torch

from fewshot_metaopt.optim.rules.l2o import L2OSlot
from fewshot_metaopt.optim.rules.lstm_faithful import lstm_cell
from fewshot_metaopt.optim.rules.lstm_scalable import ACTIVATIONS, ScalableSlot
from fewshot_metaopt.optim.rules.loss_feature import loss_feature
from fewshot_metaopt.optim.rules.combiner import CombinerState
from fewshot_metaopt.optim.rules.preprocess import log_sign_preprocess, safe_sqrt


def scalable_update(rule, params, grads, state, step):
    new, new_state = dict(params), dict(state)
    dtype = rule.coord_out.weight.dtype
    beta1, beta2 = torch.sigmoid(rule.decay_logits).unbind()
    names = list(grads)
    features, stats, accumulators = [], [], []
    for name in names:
        g = grads[name] if rule.second_order else grads[name].detach()
        g = g.to(dtype)
        slot = state[name]
        t = slot.step + 1
        m = beta1 * slot.m + (1 - beta1) * g
        g2 = g * g + rule.eps1
        if g2.dim() < 2:
            v = beta2 * slot.v + (1 - beta2) * g2
            estimate = v
        else:
            row, col = slot.v
            flat = g2.reshape(g2.shape[0], -1)
            row = beta2 * row + (1 - beta2) * flat.mean(1)
            col = beta2 * col + (1 - beta2) * flat.mean(0)
            estimate = (row[:, None] * col[None, :] / row.mean()).reshape(g2.shape)
            v = (row, col)
        inv = torch.rsqrt(estimate / (1 - beta2**t) + rule.eps)
        x = torch.cat(
            [
                log_sign_preprocess(g, rule.preprocess_p).reshape(-1, 2),
                (m / (1 - beta1**t) * inv).reshape(-1, 1),
                (g * inv).reshape(-1, 1),
            ],
            dim=1,
        )
        size = torch.full((1,), math.log(g.numel()) / 10, dtype=dtype, device=g.device)
        stats.append(torch.cat([x.mean(0), torch.sqrt(x.var(0, correction=0) + 1e-8), size]))
        features.append(x)
        accumulators.append((t, m, v))
    h_in = torch.stack(stats)
    context = []
    for layer, cell in enumerate(rule.cells):
        h = torch.stack([state[n].context[layer][0] for n in names])
        c = torch.stack([state[n].context[layer][1] for n in names])
        h, c = lstm_cell(cell, h_in, (h, c))
        context.append(list(zip(h.unbind(), c.unbind())))
        h_in = h
    biases = rule.context_bias(h_in)
    scales = torch.exp(rule.context_scale(h_in).squeeze(-1)) * rule.output_scale
    for i, name in enumerate(names):
        p = params[name]
        hidden = ACTIVATIONS[rule.activation](rule.coord_in(features[i]) + biases[i])  # tanh as published
        y = rule.coord_out(hidden).squeeze(-1) + features[i] @ rule.nominal
        new[name] = p + (scales[i] * y).reshape(p.shape).to(p.dtype)
        t, m, v = accumulators[i]
        new_state[name] = ScalableSlot(t, m, v, [context[layer][i] for layer in range(rule.num_layers)])
    return new, new_state


def l2o_update(rule, params, grads, state, step):
    new, new_state = dict(params), dict(state)
    dtype = rule.mlp[-1].weight.dtype
    for name, grad in grads.items():
        p, slot = params[name], state[name]
        g = (grad if rule.second_order else grad.detach()).to(dtype)
        momenta = tuple(b * m + (1 - b) * g for b, m in zip(rule.decays, slot.momenta))
        v = rule.rms_decay * slot.v + (1 - rule.rms_decay) * g * g
        inv = torch.rsqrt(v + rule.eps)
        columns = [g, p.to(dtype), *momenta, safe_sqrt(v), g * inv, *(m * inv for m in momenta)]
        f = torch.stack([c.reshape(-1) for c in columns], dim=1)
        f = f * torch.rsqrt(rule.norm_eps + f.square().mean(0, keepdim=True))
        taus = torch.tensor(rule.timescales, dtype=dtype, device=f.device)
        embedding = torch.tanh(step / taus - 1.0).expand(f.shape[0], -1)
        out = rule.mlp(torch.cat([f, embedding], dim=1))
        direction, magnitude = out[:, 0] + f @ rule.nominal, out[:, 1]
        delta = (direction * torch.exp(magnitude * rule.exp_mult) * rule.step_mult).reshape(p.shape).to(p.dtype)
        new[name] = p - delta
        new_state[name] = L2OSlot(momenta, v)
    return new, new_state


def combiner_update(rule, params, grads, state, step, loss=None):
    proposed, pool_states = [], []
    for pool_rule, rule_state in zip(rule.pool, state.pool):
        candidate, rule_state = pool_rule.update(params, grads, rule_state, step, loss=loss)
        proposed.append(candidate)
        pool_states.append(rule_state)
    new = dict(params)
    for name in grads:
        p = params[name]
        proposals = torch.stack([(candidate[name] - p).reshape(-1) for candidate in proposed], dim=1)
        scale = torch.sqrt(proposals.square().mean() + rule.eps**2)
        n = proposals.shape[0]
        feature = loss_feature(loss, like=p)
        features = torch.cat([proposals / scale, feature.expand(n, 1), torch.log(scale).expand(n, 1)], dim=1)
        weights = rule.mix + rule.mlp(features.to(rule.mix.dtype))
        new[name] = p + (weights.to(proposals.dtype) * proposals).sum(dim=1).reshape(p.shape)
    return new, CombinerState(tuple(pool_states))

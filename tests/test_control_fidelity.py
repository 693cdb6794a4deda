"""ControlMetaOptimizer against the reference's equations, derived by hand.

The reference is ``make_jax_metaopt`` in ``meta_opt/optimizers/metaopt.py`` of the authors'
repository (``edogariu/meta_opt``, July 2024). Per step ``t``, with its histories oldest first:

* from ``t >= H + HH`` on, a rollout from the parameters of ``HH`` steps ago: for ``h < HH``,
  a fresh gradient of batch ``t - HH + h``, rescaled by a copy of the current Adam state,
  ``p <- (1 - wd) p - lr w~ + sum_k M[k] D[h + k]`` over its ``H + HH`` stored disturbances
  ``D`` (the window one older than the one played), the cost of batch ``t`` at the end, and
  one step of M's optimizer on the clipped gradient of that cost;
* then ``w = adam(clip(g))``, ``D <- append(D, w)`` and
  ``theta <- theta - wd theta - lr w + sum_k M[k] D[-H:][k]`` with the new ``M``.

Here every step of that is written in plain float64 on a 2-D quadratic
``f_s(p) = p' A_s p / 2 - b_s' p``, whose gradient ``A_s p - b_s`` and Hessian ``A_s`` are known,
and M's gradient is carried forward by hand (forward-mode chain rule through the rollout,
Adam's moments included) rather than by autograd. ``replay="reference"`` must match it to
1e-10; the default ``replay="exact"`` must match it with the two documented changes (each
replayed step reads the window it played, and the rescaler starts from its state of ``HH``
steps ago).
"""

import math

import pytest
import torch

from fewshot_metaopt.torch_optim import ControlMetaOptimizer

F64 = torch.float64
H, HH, LR, WD, M_LR, STEPS = 2, 2, 0.1, 0.01, 0.05, 9


def batch_of(s):
    """Step ``s``'s quadratic: a positive definite ``A_s`` and a ``b_s``, both moving with s."""
    A = torch.tensor([[2.0 + 0.3 * math.sin(s), 0.4], [0.4, 1.0 + 0.2 * math.cos(s)]], dtype=F64)
    b = torch.tensor([0.5 * math.cos(s), -0.3 * math.sin(s) + 0.2], dtype=F64)
    return A, b


def quadratic(params, batch):
    A, b = batch
    p = params["theta"]
    return 0.5 * p @ A @ p - b @ p


def m_size(shape):
    return {"scalar": H, "diagonal": 2 * H, "full": 4 * H}[shape]


def control(M, shape, window):
    """``sum_k M[k] window[k]`` (reference order: ``window[k]`` oldest first); ``M`` flat."""
    if shape == "scalar":
        return sum(M[k] * window[k] for k in range(H))
    if shape == "diagonal":
        return sum(M[2 * k : 2 * k + 2] * window[k] for k in range(H))
    return sum(M[4 * k : 4 * k + 4].view(2, 2) @ window[k] for k in range(H))


def control_jacobian(shape, window):
    """d control / d M, a (2, m_size) matrix: the control is linear in M."""
    J = torch.zeros(2, m_size(shape), dtype=F64)
    for k in range(H):
        if shape == "scalar":
            J[:, k] = window[k]
        else:
            for i in range(2):
                if shape == "diagonal":
                    J[i, 2 * k + i] = window[k][i]
                else:
                    J[i, 4 * k + 2 * i : 4 * k + 2 * i + 2] = window[k]
    return J


class Adam:
    """optax.scale_by_adam with optional elementwise clipping before it, and its derivative."""

    def __init__(self, betas, clip, eps=1e-8):
        self.betas, self.clip, self.eps = betas, clip, eps

    def start(self):
        return (torch.zeros(2, dtype=F64), torch.zeros(2, dtype=F64), 0)

    def __call__(self, g, state, dg=None, dstate=None):
        """``w``, the next state and, given dg = dg/dM (2, n) and the state's derivative,
        dw/dM and the next state's derivative."""
        if self.clip is not None:
            inside = (g.abs() < self.clip).to(F64)
            g = g.clamp(-self.clip, self.clip)
            dg = None if dg is None else inside[:, None] * dg
        if self.betas is None:
            return g, state, dg, dstate
        b1, b2 = self.betas
        m, v, count = state
        count += 1
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        c1, c2 = 1 - b1**count, 1 - b2**count
        s = torch.sqrt(v / c2)
        w = (m / c1) / (s + self.eps)
        if dg is None:
            return w, (m, v, count), None, None
        dm0, dv0 = dstate
        dm = b1 * dm0 + (1 - b1) * dg
        dv = b2 * dv0 + 2 * (1 - b2) * g[:, None] * dg
        ds = dv / (2 * c2 * s[:, None])
        dw = dm / (c1 * (s + self.eps)[:, None]) - (m / c1 / (s + self.eps) ** 2)[:, None] * ds
        return w, (m, v, count), dw, (dm, dv)


def reference_run(shape, betas, grad_clip, m_grad_clip, replay):
    """The reference's trajectory: parameters after each step, M after each step (reference
    order) and each rollout's cost. ``replay="exact"`` applies the two documented changes."""
    transform = Adam(betas, grad_clip)
    n = m_size(shape)
    M = torch.zeros(n, dtype=F64)
    D = torch.zeros(H + HH, 2, dtype=F64)  # disturbances, oldest first
    params = [torch.zeros(2, dtype=F64)] * HH  # parameters of the last HH steps, oldest first
    batches = [None] * HH
    states = [transform.start()] * HH  # rescaler states before each of the last HH steps
    state = transform.start()
    theta = torch.tensor([1.0, -2.0], dtype=F64)
    thetas, Ms, costs = [], [], []
    for t in range(STEPS):
        A_t, b_t = batch_of(t)
        if t >= H + HH:
            p, J = params[0].clone(), torch.zeros(2, n, dtype=F64)
            if replay == "reference":
                ts, lag = state, 0  # the current rescaler state; D[h:h + H] is the older window
            else:
                ts, lag = states[0], 1  # the state of HH steps ago; the window each step played
            dts = (torch.zeros(2, n, dtype=F64), torch.zeros(2, n, dtype=F64))
            for h in range(HH):
                A, b = batches[h]
                g, dg = A @ p - b, A @ J
                w, ts, dw, dts = transform(g, ts, dg, dts)
                window = D[h + lag : h + lag + H]
                p = (1 - WD) * p - LR * w + control(M, shape, window)
                J = (1 - WD) * J - LR * dw + control_jacobian(shape, window)
            costs.append(float(0.5 * p @ A_t @ p - b_t @ p))
            grad = (A_t @ p - b_t) @ J
            if m_grad_clip is not None:
                grad = grad.clamp(-m_grad_clip, m_grad_clip)
            M = M - M_LR * grad
        params, batches, states = params[1:] + [theta], batches[1:] + [(A_t, b_t)], states[1:] + [state]
        w, state, _, _ = transform(A_t @ theta - b_t, state)
        D = torch.cat([D[1:], w[None]])
        theta = theta - WD * theta - LR * w + control(M, shape, D[-H:])
        thetas.append(theta)
        Ms.append(M)
    return thetas, Ms, costs


def ours_in_reference_order(M, shape):
    """Our M_i multiplies the i-th newest disturbance; the reference's M[k] the k-th oldest."""
    return M.flip(0).reshape(-1)


@pytest.mark.parametrize("replay", ["reference", "exact"])
@pytest.mark.parametrize(
    "shape, betas, grad_clip, m_grad_clip",
    [
        ("scalar", None, None, None),  # the reference's SGD-based configuration
        ("scalar", (0.9, 0.999), None, 10.0),  # our defaults
        ("diagonal", (0.8, 0.9), 0.5, 0.05),  # both clips bind on some steps
        ("full", (0.9, 0.99), None, None),
    ],
)
def test_steps_equal_the_reference_equations(replay, shape, betas, grad_clip, m_grad_clip):
    thetas, Ms, costs = reference_run(shape, betas, grad_clip, m_grad_clip, replay)
    theta = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=F64))
    opt = ControlMetaOptimizer(
        [("theta", theta)], quadratic, lr=LR, weight_decay=WD, history=H, rollout=HH, m_shape=shape, m_lr=M_LR,
        m_optimizer="sgd", m_grad_clip=m_grad_clip, grad_clip=grad_clip, adam_betas=betas, replay=replay,
    )
    seen = []
    for t in range(STEPS):
        opt.step(batch_of(t))
        torch.testing.assert_close(theta.detach(), thetas[t], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(ours_in_reference_order(opt.rule.M.detach(), shape), Ms[t], rtol=1e-10, atol=1e-12)
        if t >= H + HH:
            seen.append(float(opt.last_counterfactual_loss))
    assert seen == pytest.approx(costs, rel=1e-10, abs=1e-12)
    assert len(costs) == STEPS - H - HH
    assert float(Ms[-1].abs().max()) > 1e-3  # M moved, so later rollouts and steps depend on it


def test_the_two_replays_differ_as_documented():
    """Only where the history or the rescaler state is read differently: the hand-derived
    trajectories of the two replays part after the first update of M."""
    ref, _, ref_costs = reference_run("scalar", (0.9, 0.999), None, None, "reference")
    exact, _, exact_costs = reference_run("scalar", (0.9, 0.999), None, None, "exact")
    assert all(torch.equal(a, b) for a, b in zip(ref[: H + HH], exact[: H + HH]))
    assert float((ref[-1] - exact[-1]).abs().max()) > 1e-6
    assert abs(ref_costs[0] - exact_costs[0]) > 1e-6

r"""Update directions: the part of an optimizer that does not know about weight decay.

A direction turns a gradient into ``u_t`` (the step is ``w ← w − lr_t·u_t``) and keeps its
own state. Functions are pure and work on a tensor or a :class:`TensorList`.

Adam (Kingma & Ba; torch's conventions)::

    m_t = β₁·m_{t−1} + (1 − β₁)·g_t          (torch: m.lerp_(g, 1 − β₁))
    v_t = β₂·v_{t−1} + (1 − β₂)·g_t²
    v_max = max(v_max, v_t)                  (amsgrad; v̂ uses v_max)
    D_t = sqrt(v_t) / sqrt(1 − β₂^t) + ε     (= ε + sqrt(v̂_t))
    u_t = m_t / (1 − β₁^t) / D_t

SGD with momentum μ, dampening δ (torch's conventions; the buffer starts as g on the first step)::

    b_t = μ·b_{t−1} + (1 − δ)·g_t            (b_1 = g_1)
    u_t = g_t + μ·b_t (nesterov) or b_t      (u_t = g_t without momentum)
"""
from __future__ import annotations


def adam_moments(g, m, v, v_max, beta1, beta2):
    """New ``(m, v, v_max)``; ``v_max`` is ``None`` without amsgrad."""
    m = m.lerp(g, 1 - beta1)
    v = v * beta2 + g * g * (1 - beta2)
    if v_max is not None:
        v_max = v_max.maximum(v)
    return m, v, v_max


def adam_direction(m, v_used, beta1, beta2, eps, step):
    """``(u_t, D_t)`` from the updated moments; ``step`` counts this step (1 on the first)."""
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    D = v_used.sqrt() / bias_correction2.sqrt() + eps
    return m / bias_correction1 / D, D


def adam_vhat(v_used, beta2, step):
    """Bias-corrected second moment ``v̂_t`` (what the stable form averages)."""
    return v_used / (1 - beta2**step)


def sgd_momentum(g, buf, keep, gain):
    """New momentum buffer ``keep·b + gain·g``: ``(0, 1)`` on the first step, ``(μ, 1 − δ)`` after."""
    return buf * keep + g * gain


def sgd_direction(g, buf, momentum, nesterov):
    """``u_t``: the gradient, the buffer, or Nesterov's ``g + μ·b``."""
    if buf is None:
        return g
    return g + buf * momentum if nesterov else buf

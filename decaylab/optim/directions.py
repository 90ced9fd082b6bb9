r"""Update directions: the part of an optimizer that does not know about weight decay.

A direction turns a gradient into ``u_t`` (the step is ``w ← w − lr_t·u_t``) and keeps its
own state. Functions are pure and work on a tensor or a :class:`TensorList`.

Adam (Kingma & Ba; torch's conventions)::

    m_t = m_{t−1} + (1 − β₁)·(g_t − m_{t−1})  (torch: m.lerp_(g, 1 − β₁))
    v_t = β₂·v_{t−1} + (1 − β₂)·g_t²
    v_max = max(v_max, v_t)                  (amsgrad; v̂ uses v_max)
    D_t = sqrt(v_t) / sqrt(1 − β₂^t) + ε     (= ε + sqrt(v̂_t))
    u_t = m_t / (1 − β₁^t) / D_t

SGD with momentum μ, dampening δ (torch's conventions; the buffer starts as g on the first step)::

    b_t = μ·b_{t−1} + (1 − δ)·g_t            (b_1 = g_1)
    u_t = g_t + μ·b_t (nesterov) or b_t      (u_t = g_t without momentum)
"""
from __future__ import annotations

import math


def adam_moments(g, m, v, v_max, beta1, beta2):
    """New ``(m, v, v_max)``; ``v_max`` is ``None`` without amsgrad."""
    m = m + (g - m) * (1 - beta1)  # = torch's m.lerp_(g, 1 − β₁) for β₁ > 0.5, without lerp's blend
    v = v * beta2 + g * g * (1 - beta2)
    if v_max is not None:
        v_max = v_max.maximum(v)
    return m, v, v_max


def adam_bias_corrections(beta1, beta2, step):
    """``(1 / (1 − β₁^t), 1 / sqrt(1 − β₂^t))``; ``step`` counts this step (1 on the first).

    Reciprocals, so that the elementwise loop multiplies where it would divide.
    """
    return 1 / (1 - beta1**step), 1 / _sqrt(1 - beta2**step)


def _sqrt(x):
    return math.sqrt(x) if isinstance(x, (int, float)) else x.sqrt()


def adam_direction(m, v_used, beta1, beta2, eps, step):
    """``(u_t, D_t)`` from the updated moments; ``step`` counts this step (1 on the first)."""
    return adam_direction_corrected(m, v_used, eps, *adam_bias_corrections(beta1, beta2, step))


def adam_direction_corrected(m, v_used, eps, inv_bias_correction1, inv_bias_correction2_sqrt):
    """:func:`adam_direction` with the bias corrections given as :func:`adam_bias_corrections` makes them.

    The kernels compute them once per tensor and step, outside the elementwise loop (a ``β^t`` or
    a ``sqrt`` of a scalar inside a compiled loop is evaluated per element), and the loop has one
    division per element.
    """
    D = v_used.sqrt() * inv_bias_correction2_sqrt + eps
    return m * inv_bias_correction1 / D, D


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

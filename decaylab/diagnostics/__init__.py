"""Instruments that show what weight decay does to a run.

Attach a :class:`Monitor` to a model and optimizer; it samples each instrument at its interval
after ``optimizer.step()`` and writes plain records to its sinks::

    from decaylab.diagnostics import Monitor, WeightNorm, EffectiveLR, AngularUpdate, JSONLSink

    with Monitor(model, opt, [WeightNorm(), EffectiveLR(), AngularUpdate(interval=10)],
                 sinks=[JSONLSink("run.jsonl")]) as monitor:
        for x, y in loader:
            loss = loss_fn(model(x), y); opt.zero_grad(); loss.backward(); opt.step()
            monitor.log(loss=loss.item())

Cheap instruments (every step): :class:`WeightNorm`, :class:`EffectiveLR`, :class:`AngularUpdate`
(with the rotational-equilibrium prediction), :class:`DecayUnderflow`, :class:`EMATimescale`,
:class:`AdamBufferMixing`. Expensive ones (at an interval): :class:`JacobianNorm`,
:class:`HessianTrace`, :class:`ScaleInvariantSharpness`, :class:`GradientNoiseScale`,
:class:`EMADistance`. With stacked models (``K`` along dim 0) every value is one per model.
"""
from .base import Context, Instrument
from .curvature import (
    HessianTrace,
    JacobianNorm,
    ScaleInvariantSharpness,
    StackedFunctional,
    hessian_trace,
    hutchinson_samples,
    jacobian_norm,
    jacobian_norms,
    scale_invariant_sharpness,
)
from .ema import (
    EMADistance,
    SnapshotEnsemble,
    WeightEMA,
    ensemble_ema_tvd,
    ensemble_predict,
    recompute_batchnorm,
    snapshot,
    total_variation_distance,
)
from .mixing import AdamBufferMixing, coupled_l2_groups
from .monitor import Monitor
from .noise import GradientNoiseScale, gradient_noise_scale
from .sinks import CSVSink, JSONLSink, Sink, TensorBoardSink, read_csv, read_jsonl
from .weights import (
    AngularUpdate,
    DecayUnderflow,
    EffectiveLR,
    EMATimescale,
    WeightNorm,
    ema_timescale,
    equilibrium_angular_update,
    equilibrium_weight_rms,
    rotation_angle,
)

__all__ = [
    "Context", "Instrument", "Monitor",
    "WeightNorm", "EffectiveLR", "AngularUpdate", "DecayUnderflow", "EMATimescale", "AdamBufferMixing",
    "JacobianNorm", "HessianTrace", "ScaleInvariantSharpness", "GradientNoiseScale", "EMADistance",
    "StackedFunctional", "WeightEMA", "SnapshotEnsemble",
    "jacobian_norm", "jacobian_norms", "hessian_trace", "hutchinson_samples", "scale_invariant_sharpness",
    "gradient_noise_scale", "ema_timescale", "equilibrium_angular_update", "equilibrium_weight_rms",
    "rotation_angle", "coupled_l2_groups",
    "recompute_batchnorm", "snapshot", "ensemble_predict", "total_variation_distance", "ensemble_ema_tvd",
    "Sink", "JSONLSink", "CSVSink", "TensorBoardSink", "read_jsonl", "read_csv",
]

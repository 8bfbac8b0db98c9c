"""Pure loss functions over tensors."""

from summon.losses.boosting import (
    OUTPUTS,
    adaboost_step,
    barrier_loss,
    bounded,
    centre,
    edge,
    residual_log_weights,
    row_edges,
)
from summon.losses.easy import defer_surrogate, selective_kd, uniform_kl
from summon.losses.kd import IGNORE_INDEX, cross_entropy, kd_kl, mix

__all__ = ["IGNORE_INDEX", "OUTPUTS", "adaboost_step", "barrier_loss", "bounded", "centre", "cross_entropy", "defer_surrogate", "edge",
           "kd_kl", "mix", "residual_log_weights", "row_edges", "selective_kd", "uniform_kl"]

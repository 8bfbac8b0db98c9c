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
from summon.losses.multi_teacher import (
    bernoulli_log_prob,
    confidence_weights,
    per_teacher_kd,
    reinforce_loss,
    selection_weights,
    student_rewards,
    teacher_cross_entropy,
    weighted_kd,
)

__all__ = ["IGNORE_INDEX", "OUTPUTS", "adaboost_step", "barrier_loss", "bernoulli_log_prob", "bounded", "centre",
           "confidence_weights", "cross_entropy", "defer_surrogate", "edge", "kd_kl", "mix", "per_teacher_kd",
           "reinforce_loss", "residual_log_weights", "row_edges", "selection_weights", "selective_kd",
           "student_rewards", "teacher_cross_entropy", "uniform_kl", "weighted_kd"]

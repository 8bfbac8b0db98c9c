"""Pure loss functions over tensors."""

from summon.losses.easy import defer_surrogate, selective_kd, uniform_kl
from summon.losses.kd import IGNORE_INDEX, cross_entropy, kd_kl, mix

__all__ = ["IGNORE_INDEX", "cross_entropy", "defer_surrogate", "kd_kl", "mix", "selective_kd", "uniform_kl"]

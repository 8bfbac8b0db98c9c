"""Pure loss functions over tensors."""

from summon.losses.kd import IGNORE_INDEX, cross_entropy, kd_kl, mix

__all__ = ["IGNORE_INDEX", "cross_entropy", "kd_kl", "mix"]

"""Training methods: each is a config dataclass plus a ``step(model, batch, cfg) -> dict`` function.

``step`` returns ``loss`` (to back-propagate), ``output`` (the logits) and named parts that the
training loop logs (parts named ``*_seconds`` are also summed per epoch). Register new methods in
:data:`METHODS`. A method with ``online_teacher`` gets the frozen teacher model as ``step(..., teacher=)``
instead of cached teacher logits in the batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from summon.methods import crf_finetune, early_exit, easy_kd, finetune, kd, progressive, structured_kd
from summon.registry import Registry


@dataclass(frozen=True)
class Method:
    name: str
    config_cls: type
    step: Callable[..., dict[str, Any]]
    needs_teacher: bool
    summary: str
    epoch_start: Callable[[Any], None] | None = None  # called before each epoch with an EpochContext
    online_teacher: bool = False  # step(model, batch, cfg, teacher=frozen teacher model), no logit cache
    ensemble: bool = False  # trains several models in rounds (summon.train.progressive) instead of ``model``


METHODS: Registry[Method] = Registry("method")
METHODS.register("finetune", Method("finetune", finetune.FinetuneConfig, finetune.step, False,
                                    "cross-entropy on gold labels"))
METHODS.register("kd", Method("kd", kd.KDConfig, kd.step, True,
                              "Hinton KD: T²·KL to cached teacher logits mixed with cross-entropy by alpha"))
METHODS.register("early_exit", Method("early_exit", early_exit.EarlyExitConfig, early_exit.step, False,
                                      "Right Tool: sum of the exits' cross-entropies (optionally distilling the last exit)"))
METHODS.register("easy_kd", Method("easy_kd", easy_kd.EasyKDConfig, easy_kd.step, True,
                                   "Titans (reconstructed): distil on easy inputs, defer the hardest budget share",
                                   epoch_start=easy_kd.epoch_start))
METHODS.register("crf_finetune", Method("crf_finetune", crf_finetune.CRFFinetuneConfig, crf_finetune.step, False,
                                        "CRF tagger: negative log-likelihood of the gold tags (needs model.crf)"))
METHODS.register("structured_kd", Method(
    "structured_kd", structured_kd.StructuredKDConfig, structured_kd.step, True,
    "Sub-structured KD for CRF taggers (Lin et al. 2022) and its baselines: marginal KL, top-k paths",
    online_teacher=True))
METHODS.register("progressive", Method(
    "progressive", progressive.ProgressiveConfig, progressive.step, True,
    "B-DISTIL (reconstructed): boosting rounds build an anytime ensemble of small students (method_args.candidates)",
    epoch_start=progressive.epoch_start, ensemble=True))

__all__ = ["METHODS", "Method"]

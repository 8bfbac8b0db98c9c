"""Training methods: each is a config dataclass plus a ``step(model, batch, cfg) -> dict`` function.

``step`` returns ``loss`` (to back-propagate), ``output`` (the logits) and named parts that the
training loop logs (parts named ``*_seconds`` are also summed per epoch). Register new methods in
:data:`METHODS`. A method with ``online_teacher`` gets the frozen teacher model as ``step(..., teacher=)``
instead of cached teacher logits in the batch; if it also has ``teacher_rows`` and its config says
``teacher_outputs: cached``, the loop caches those rows' outputs once and puts them in the batch instead. A method with ``multi_teacher`` reads the run's ``teachers:``
(each row's ``teacher_logits`` is [K, C]); one with ``method_module`` gets a module of its own on the student
(see :mod:`summon.methods.hooks`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from summon.core.registry import Registry
from summon.methods import (
    crf_finetune,
    early_exit,
    easy_kd,
    finetune,
    kd,
    multi_teacher_kd,
    progressive,
    structured_kd,
)
from summon.methods.hooks import METHOD_MODULE, METHOD_MODULE_FILE


@dataclass(frozen=True)
class Method:
    name: str
    config_cls: type
    step: Callable[..., dict[str, Any]]
    needs_teacher: bool
    summary: str
    epoch_start: Callable[[Any], None] | None = None  # called before each epoch with an EpochContext
    online_teacher: bool = False  # step(model, batch, cfg, teacher=frozen teacher model), no logit cache
    ensemble: bool = False  # trains several models in rounds (summon.training.progressive) instead of ``model``
    multi_teacher: bool = False  # distils the run's ``teachers:`` (rows carry teacher_logits [K, C])
    # method_module(method_cfg, built, num_teachers) -> nn.Module | None: trainable state of the method's own,
    # attached to the student as ``METHOD_MODULE``; its parameters train at its ``lr`` attribute (default train.lr)
    method_module: Callable[[Any, Any, int], Any] | None = None
    # teacher_rows(teacher model, batch, method_cfg) -> per-row dicts of arrays: what an online-teacher method
    # reads from its teacher, cached once before training when the config says ``teacher_outputs: cached``
    teacher_rows: Callable[[Any, Any, Any], list[dict[str, Any]]] | None = None
    # uses_teacher(method_cfg) -> bool: a method that needs no teacher but reads cached teacher logits when its
    # config asks (early exit's distill_teacher)
    uses_teacher: Callable[[Any], bool] | None = None

    def wants_teacher_logits(self, method_cfg: Any) -> bool:
        """Whether rows carry cached ``teacher_logits`` (always for distilling methods, else when the config asks)."""
        return self.needs_teacher or (self.uses_teacher is not None and method_cfg is not None
                                     and self.uses_teacher(method_cfg))

    def runs_teacher_online(self, method_cfg: Any) -> bool:
        """Whether ``step`` gets the teacher model every batch (else its outputs come cached in the batch)."""
        if not self.online_teacher:
            return False
        return self.teacher_rows is None or getattr(method_cfg, "teacher_outputs", "online") == "online"

    def caches_teacher_rows(self, method_cfg: Any) -> bool:
        return self.online_teacher and not self.runs_teacher_online(method_cfg)


METHODS: Registry[Method] = Registry("method")
METHODS.register("finetune", Method("finetune", finetune.FinetuneConfig, finetune.step, False,
                                    "cross-entropy on gold labels"))
METHODS.register("kd", Method("kd", kd.KDConfig, kd.step, True,
                              "Hinton KD: T²·KL to cached teacher logits mixed with cross-entropy by alpha"))
METHODS.register("early_exit", Method("early_exit", early_exit.EarlyExitConfig, early_exit.step, False,
                                      "Right Tool: sum of the exits' cross-entropies (optionally distilling the last "
                                      "exit or a teacher, or with neighbouring exits kept consistent)",
                                      uses_teacher=early_exit.uses_teacher))
METHODS.register("easy_kd", Method("easy_kd", easy_kd.EasyKDConfig, easy_kd.step, True,
                                   "Titans (reconstructed): distil on easy inputs, defer the hardest budget share",
                                   epoch_start=easy_kd.epoch_start))
METHODS.register("crf_finetune", Method("crf_finetune", crf_finetune.CRFFinetuneConfig, crf_finetune.step, False,
                                        "CRF tagger: negative log-likelihood of the gold tags (needs model.crf)"))
METHODS.register("structured_kd", Method(
    "structured_kd", structured_kd.StructuredKDConfig, structured_kd.step, True,
    "Sub-structured KD for CRF taggers (Lin et al. 2022) and its baselines: marginal KL, top-k paths",
    online_teacher=True, teacher_rows=structured_kd.teacher_rows))
METHODS.register("progressive", Method(
    "progressive", progressive.ProgressiveConfig, progressive.step, True,
    "B-DISTIL (reconstructed): boosting rounds build an anytime ensemble of small students (method_args.candidates)",
    epoch_start=progressive.epoch_start, ensemble=True))
METHODS.register("multi_teacher_kd", Method(
    "multi_teacher_kd", multi_teacher_kd.MultiTeacherConfig, multi_teacher_kd.step, True,
    "RL-KD (reconstructed): several teachers weighted per example, uniformly, by confidence or by a REINFORCE policy",
    epoch_start=multi_teacher_kd.epoch_start, multi_teacher=True, method_module=multi_teacher_kd.build_state))

__all__ = ["METHODS", "METHOD_MODULE", "METHOD_MODULE_FILE", "Method"]

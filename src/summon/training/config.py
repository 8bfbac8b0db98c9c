"""Typed configuration of a training run; YAML recipes are its serialization (see :mod:`summon.core.config`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, is_dataclass
from typing import Any, Literal

from summon.core.config import ConfigError, chosen_by, from_dict
from summon.data.spec import DatasetSpec
from summon.methods import METHODS
from summon.models.build import AnyModelConfig, ModelConfig

TRACKERS = ("tensorboard", "mlflow", "wandb", "comet_ml", "aim", "clearml", "dvclive")


@dataclass
class DataConfig:
    """Splits to train and evaluate on, and where the local data catalog lives."""

    train: DatasetSpec
    eval: DatasetSpec | None = None  # model selection and the final report; its labels default to train's
    data_dir: str | None = None  # local catalog folder (default: $SUMMON_DATA_DIR)


@dataclass
class TrainConfig:
    """Optimisation, evaluation and checkpointing.

    ``batch_size`` is the global batch per forward pass; with N processes each gets ``batch_size / N`` rows,
    so a run on one process and on N processes sees the same batches. One optimizer step covers
    ``batch_size × grad_accum`` rows.
    """

    epochs: int = 1
    max_steps: int | None = None  # stop after this many optimizer steps (overrides epochs when smaller)
    batch_size: int = 32
    eval_batch_size: int = 128
    lr: float = 5e-5
    head_lr: float | None = None  # learning rate of the new task head (default: lr)
    weight_decay: float = 0.01  # on the encoder's weight matrices (never on biases and norms)
    head_weight_decay: float | None = None  # on the new head's weights and CRF transitions (default: weight_decay)
    warmup_ratio: float = 0.06
    # linear: every group warms up and decays linearly from its own rate (lr, head_lr). efficient_kd_code: the
    # released sub-structured KD script's behaviour: every group runs at lr (its loop overwrites head_lr before
    # each step) and the warm-up/decay factor is applied twice (its loop and BertAdam each apply it): squared.
    lr_schedule: Literal["linear", "efficient_kd_code"] = "linear"
    grad_accum: int = 1
    max_grad_norm: float | None = 1.0
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"  # auto: bf16/fp16 on GPU, none on CPU
    eval_every: int | None = None  # optimizer steps between evaluations (default: once per epoch)
    save_every: int = 200  # optimizer steps between checkpoints (a run killed resumes from the last one)
    log_every: int = 20
    seed: int = 42
    metric: Literal["auto", "accuracy", "macro_f1", "f1", "nll"] = "auto"  # for best-checkpoint choice
    progress: bool = True
    # trackers accelerate logs the training metrics to, beside metrics.jsonl (tensorboard and mlflow work offline,
    # under <output_dir>/trackers; wandb offline with WANDB_MODE=offline): e.g. [tensorboard]
    report_to: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        problems = [
            *_below_one({"epochs": self.epochs, "batch_size": self.batch_size, "eval_batch_size": self.eval_batch_size,
                         "grad_accum": self.grad_accum, "save_every": self.save_every, "log_every": self.log_every,
                         "max_steps": self.max_steps, "eval_every": self.eval_every}),
            *_not_positive("lr", self.lr, "e.g. 5e-5"),
            *_not_positive("head_lr", self.head_lr, "e.g. 1e-3, or null to use lr"),
            *_not_positive("max_grad_norm", self.max_grad_norm,
                           "e.g. 1.0, or null for no clipping: a norm of 0 or less flips or zeroes the gradients"),
        ]
        if not _real(self.weight_decay) or self.weight_decay < 0:
            problems.append(f"weight_decay: must be 0 or more, got {self.weight_decay!r} (give e.g. 0.01, or 0 for "
                            "none: a negative decay pushes the weights to grow)")
        if self.head_weight_decay is not None and (not _real(self.head_weight_decay) or self.head_weight_decay < 0):
            problems.append(f"head_weight_decay: must be 0 or more, got {self.head_weight_decay!r} (or null to use "
                            "weight_decay)")
        unknown = [name for name in self.report_to if name not in TRACKERS] if isinstance(self.report_to, list) \
            else [self.report_to]
        if unknown:
            problems.append(f"report_to: unknown tracker(s) {', '.join(map(repr, unknown))}; choose from "
                            f"{', '.join(TRACKERS)} (a list, e.g. [tensorboard])")
        if self.lr_schedule not in ("linear", "efficient_kd_code"):
            problems.append(f"lr_schedule: must be 'linear' or 'efficient_kd_code', got {self.lr_schedule!r}")
        if not _real(self.warmup_ratio) or not 0.0 <= self.warmup_ratio < 1.0:
            problems.append(f"warmup_ratio: must be in [0, 1) (a share of the training steps), got {self.warmup_ratio!r}")
        if problems:
            raise ValueError("; ".join(problems))


def _real(value: Any) -> bool:
    """A finite int or float (not a bool, NaN or infinity)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _below_one(values: Mapping[str, Any]) -> list[str]:
    """One problem per count that is given (not None) but is not an integer of at least 1."""
    return [f"{name}: must be a whole number of at least 1, got {value!r}" for name, value in values.items()
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1)]


def _not_positive(name: str, value: Any, hint: str) -> list[str]:
    """The problem with ``value`` if it is given (not None) but is not a finite number above 0."""
    if value is None or (_real(value) and value > 0):
        return []
    return [f"{name}: must be a finite number above 0, got {value!r} (give {hint})"]


@dataclass
class CostConfig:
    """What to measure about the trained model's cost (FLOPs always; latency optional)."""

    latency: bool = True
    batch_sizes: list[int] = field(default_factory=lambda: [1, 32, 128])
    max_seconds: float = 10.0  # time budget for latency over all batch sizes
    flop_examples: int = 512  # eval examples whose FLOPs are counted

    def __post_init__(self) -> None:
        problems = []
        sizes = self.batch_sizes
        if not isinstance(sizes, list | tuple) or any(isinstance(b, bool) or not isinstance(b, int) or b < 1
                                                        for b in sizes):
            problems.append(f"batch_sizes: must be a list of whole numbers of at least 1, got {sizes!r}")
        elif not sizes and self.latency:
            problems.append("batch_sizes: empty, so no latency can be timed (give e.g. [1, 32], or latency: false)")
        problems += _not_positive("max_seconds", self.max_seconds, "the seconds latency timing may take, e.g. 10")
        problems += _below_one({"flop_examples": self.flop_examples})
        if problems:
            raise ValueError("; ".join(problems))


def method_config_class(method: str) -> type:
    """The config dataclass of ``method`` (a ValueError with "did you mean" for an unknown name)."""
    return METHODS.get(method).config_cls


def method_config(method: str, args: Any) -> Any:
    """``args`` as ``method``'s config dataclass: an instance passes through, a mapping (or None) is parsed.

    Raises:
        ConfigError: Listing every problem in a mapping, each under ``method_args.``.
        TypeError: If ``args`` is another method's config or neither a mapping nor a dataclass.
    """
    cls = method_config_class(method)
    if isinstance(args, cls):
        return args
    if args is None or isinstance(args, Mapping):
        try:
            return from_dict(cls, dict(args or {}), source="method_args")
        except ConfigError as err:
            raise ConfigError([f"method_args.{e}" for e in err.errors], source="method_args") from None
    what = type(args).__name__ if is_dataclass(args) else f"a {type(args).__name__}"
    raise TypeError(f"method_args: method '{method}' takes a {cls.__name__} or a mapping, got {what}")


def teachers_problem(method: str, teachers: Any) -> str | None:
    """What is wrong with ``teachers:`` for ``method`` (None when nothing is)."""
    several = METHODS.get(method).multi_teacher
    if teachers is None:
        return (f"method '{method}' distils several teachers: list at least 2 (saved predictor folders, Hugging "
                "Face classifier folders or hf:HUB_IDs)") if several else None
    if not several:
        return (f"method '{method}' reads one teacher at most: give it as teacher: and remove teachers:, or use "
                "method multi_teacher_kd")
    if not isinstance(teachers, list) or any(not isinstance(t, str) or not t.strip() for t in teachers):
        return f"expected a list of teacher paths or hf:HUB_IDs, got {teachers!r}"
    if len(teachers) < 2:
        return (f"method '{method}' distils several teachers: list at least 2, got {len(teachers)} (for one "
                "teacher use method kd)")
    repeated = sorted({t for t in teachers if teachers.count(t) > 1})
    if repeated:
        return f"{', '.join(repeated)} listed more than once (each teacher is one pass and one voice)"
    return None


@dataclass
class RunConfig:
    """A whole training run: ``summon train RECIPE.yaml`` builds one of these from the recipe.

    ``model`` is one of the model kinds (chosen by its ``kind``) and ``method_args`` the method's own config
    dataclass (chosen by ``method``, e.g. :class:`~summon.methods.kd.KDConfig`), both with every default
    filled in, so the dry run, the saved config and the resume check see the complete settings.
    """

    method: str
    output_dir: str
    data: DataConfig
    model: AnyModelConfig | None = None  # required, except by methods that build their own (progressive)
    train: TrainConfig = field(default_factory=TrainConfig)
    teacher: str | None = None  # a saved predictor directory, a Hugging Face classifier folder, or hf:HUB_ID
    # Several teachers, each like ``teacher`` (method multi_teacher_kd). ``teacher`` then only names the model
    # truncated/random/copy students are made from (default: the first of these).
    teachers: list[str] | None = None
    method_args: Any = field(default=None, metadata=chosen_by("method", method_config_class))
    cost: CostConfig = field(default_factory=CostConfig)
    cache_dir: str | None = None  # teacher-output cache (default: $SUMMON_CACHE or ~/.cache/summon)
    description: str = ""

    def __post_init__(self) -> None:
        self.method_args = method_config(self.method, self.method_args)
        if self.model is None:
            if not METHODS.get(self.method).ensemble:
                raise ValueError("model: required (the model to train, e.g. {kind: pretrained, name: minilm-l6})")
            if not self.method_args.candidates:
                raise ValueError(f"method_args.candidates: method '{self.method}' needs at least one candidate model")
        elif not isinstance(self.model, ModelConfig):
            raise TypeError(f"model: expected a model config (ModelConfig(kind=...)), got {type(self.model).__name__}")
        problem = teachers_problem(self.method, self.teachers)
        if problem:
            raise ValueError(f"teachers: {problem}")

    @property
    def trains_ensemble(self) -> bool:
        """Whether this run builds an ensemble in rounds (summon.training.progressive) rather than one ``model``."""
        return self.model is None and METHODS.get(self.method).ensemble

"""The one training loop, on ``accelerate``: read it top to bottom in :func:`train`.

Every method plugs in as a config dataclass plus ``step(model, batch, cfg) -> {"loss", "output", ...}``.
The loop owns everything else: AdamW with linear warm-up and decay (or, with ``train.lr_schedule:
efficient_kd_code``, the released sub-structured KD script's schedule), gradient accumulation, clipping,
mixed precision where the device supports it, evaluation every N steps keeping the best model, JSONL
metrics (with each epoch's seconds split into the step's timed parts and the backward pass), a progress
bar, and checkpoints that a killed run resumes from (same command, same output dir).

Batches are global: ``train.batch_size`` rows are split across processes (``split_batches=True``), so
``accelerate launch --num_processes N`` trains on the same batches as one process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from safetensors.torch import save_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from summon.core.config import dump_yaml, to_dict
from summon.core.files import LOCK_FILE, check_destination, exclusive, follow_umask
from summon.data.features import FeatureDataset, collate
from summon.data.spec import TaskData
from summon.measure.profile import measure_costs
from summon.measure.task import MAIN_METRIC, higher_is_better, score
from summon.measure.timing import SECONDS_SUFFIX, clock
from summon.methods import METHOD_MODULE, METHOD_MODULE_FILE, METHODS, Method
from summon.methods.hooks import method_module
from summon.methods.multi_teacher_kd import RECORDS as TEACHER_WEIGHTS
from summon.models.build import Built, Source, build_model, needs_source
from summon.models.hf import HF_PREFIX
from summon.models.inference import predict_logits
from summon.predictors.predictor import Predictor, load_predictor
from summon.predictors.saved import save_predictor, update_manifest
from summon.training.checkpoint import Checkpointer, TrainerState, data_fingerprint, fixed_part
from summon.training.config import RunConfig, method_config
from summon.training.progressive import train_ensemble
from summon.training.sources import build_data, build_teacher, multi_teacher_logits
from summon.training.structured_cache import crf_teacher_rows
from summon.training.teacher_cache import teacher_logits

logger = logging.getLogger(__name__)


class EpochBatches:
    """Deterministic shuffled batches of one epoch, resumable at any batch.

    The order of epoch ``e`` depends only on ``seed + e``. :meth:`position` chooses the epoch and how many
    batches to skip (the data position restored from a checkpoint). Not named ``set_epoch`` on purpose:
    accelerate calls that with its own counter.
    """

    def __init__(self, size: int, batch_size: int, seed: int):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.epoch, self.skip = 0, 0

    def position(self, epoch: int, skip: int) -> None:
        self.epoch, self.skip = epoch, skip

    def __iter__(self):
        order = np.random.default_rng(self.seed + self.epoch).permutation(self.size).tolist()
        for start in range(self.skip * self.batch_size, self.size, self.batch_size):
            yield order[start:start + self.batch_size]

    def __len__(self) -> int:
        return max(0, math.ceil(self.size / self.batch_size) - self.skip)


@dataclass
class EpochContext:
    """What a method's ``epoch_start`` hook sees (see :mod:`summon.methods.easy_kd`)."""

    epoch: int
    model: torch.nn.Module  # unwrapped
    train_set: FeatureDataset
    method_cfg: Any
    output_dir: Path
    pad_id: int
    is_main_process: bool
    wait_for_everyone: Any


@dataclass
class Run:
    """Everything :func:`train` builds before the loop starts."""

    cfg: RunConfig
    method: Method
    method_cfg: Any
    train_data: TaskData
    eval_data: TaskData | None
    built: Built
    train_set: FeatureDataset
    eval_features: list[dict] | None
    teacher: Predictor | None
    output_dir: Path
    teacher_fingerprints: list[str] | None = None  # one per ``teachers:`` entry (multi-teacher methods)


# --- building -------------------------------------------------------------------------------------


def typed_config(cfg: RunConfig) -> RunConfig:
    """``cfg`` with ``method_args`` as the method's config dataclass (a copy when it was set as a mapping
    after the config was built), so the loop, the checkpoint check and the saved config see typed settings."""
    typed = method_config(cfg.method, cfg.method_args)
    return cfg if typed is cfg.method_args else dataclasses.replace(cfg, method_args=typed)


def build_method(cfg: RunConfig) -> tuple[Method, Any]:
    """The method and its typed config (``cfg.method_args``, parsed when the run config was built)."""
    return METHODS.get(cfg.method), method_config(cfg.method, cfg.method_args)


def build_features(built: Built, data: TaskData, teacher_rows: list[np.ndarray] | list[dict] | None = None,
                   features: list[dict] | None = None) -> list[dict]:
    """The featurized rows of ``data`` (``features`` when already encoded), each with its teacher outputs:
    ``teacher_logits`` (an array per row) or the named arrays of a CRF teacher (a dict per row, see
    :mod:`summon.training.structured_cache`)."""
    if features is None:
        features = built.featurizer.encode(data.examples, data.task)
    if teacher_rows is not None:
        for feat, row in zip(features, teacher_rows, strict=True):
            if isinstance(row, dict):
                feat.update(row)
            else:
                feat["teacher_logits"] = row
    return features


def check_same_tokenizer(teacher: Predictor, built: Built) -> None:
    """An online teacher reads the student's batches, so both must tokenize alike."""
    ours, theirs = getattr(built.featurizer, "tokenizer", None), getattr(teacher.featurizer, "tokenizer", None)
    if ours is None or theirs is None or ours.get_vocab() != theirs.get_vocab():
        raise ValueError("teacher: an online teacher reads the student's batches, so it needs the same tokenizer; "
                         "build the student from the teacher (model.kind: truncated/copy, no model.name)")


def build_run(cfg: RunConfig) -> Run:
    method, method_cfg = build_method(cfg)
    train_data, eval_data = build_data(cfg)
    teacher = build_teacher(cfg, method, train_data, method_cfg)
    source = None
    if teacher is not None and needs_source(cfg.model):
        source = Source.of(teacher.model, getattr(teacher.featurizer, "tokenizer", None))
    built = build_model(cfg.model, train_data.task, len(train_data.labels), source=source, labels=train_data.labels)
    rows, fingerprints, features = None, None, None
    if method.online_teacher:
        check_same_tokenizer(teacher, built)
        if method.caches_teacher_rows(method_cfg):  # computed once over the student's rows, as online
            features = built.featurizer.encode(train_data.examples, train_data.task)
            rows = crf_teacher_rows(teacher, features, train_data, method.teacher_rows, method_cfg,
                                    featurizer_config=built.featurizer.to_config(), pad_id=built.featurizer.pad_id,
                                    cache_dir=cfg.cache_dir, batch_size=cfg.train.eval_batch_size)
    elif method.multi_teacher:
        rows, fingerprints = multi_teacher_logits(cfg, train_data, teacher)
    elif method.wants_teacher_logits(method_cfg):
        rows = teacher_logits(teacher, train_data, cache_dir=cfg.cache_dir, batch_size=cfg.train.eval_batch_size)
    if method.method_module is not None:
        num_teachers = len(cfg.teachers) if cfg.teachers else 1
        attach_method_module(built.model, method.method_module(method_cfg, built, num_teachers))
    train_set = FeatureDataset(build_features(built, train_data, rows, features))
    eval_features = build_features(built, eval_data) if eval_data is not None else None
    return Run(cfg, method, method_cfg, train_data, eval_data, built, train_set, eval_features, teacher,
               Path(cfg.output_dir), fingerprints)


def attach_method_module(model: torch.nn.Module, module: torch.nn.Module | None) -> None:
    """Register the method's own module on the student (``METHOD_MODULE``): trained and checkpointed with it,
    left out of the saved predictor (:func:`save_model`)."""
    if module is None:
        return
    if hasattr(model, METHOD_MODULE):
        raise ValueError(f"the student already has an attribute {METHOD_MODULE!r}, reserved for the method's module")
    model.add_module(METHOD_MODULE, module)


@contextmanager
def without_method_module(model: torch.nn.Module) -> Iterator[torch.nn.Module | None]:
    """The student as a plain predictor: its method module detached while the block runs, then put back."""
    module = method_module(model)
    if module is None:
        yield None
        return
    delattr(model, METHOD_MODULE)
    try:
        yield module
    finally:
        model.add_module(METHOD_MODULE, module)


def build_accelerator(cfg: RunConfig) -> Accelerator:
    precision = cfg.train.mixed_precision
    if precision == "auto":
        precision = "no"
        if torch.cuda.is_available():
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    # cpu=True on machines without CUDA makes several launched processes train together over gloo
    # (`accelerate launch --multi_gpu --num_processes N` or torchrun) instead of each running alone.
    trackers = check_trackers(cfg.train.report_to)
    return Accelerator(mixed_precision=precision, gradient_accumulation_steps=cfg.train.grad_accum,
                       dataloader_config=DataLoaderConfiguration(split_batches=True),
                       step_scheduler_with_optimizer=False, cpu=not torch.cuda.is_available(),
                       log_with=trackers or None, project_dir=str(Path(cfg.output_dir) / TRACKERS_DIR))


TRACKER_PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb", "comet_ml": "comet_ml",
                    "aim": "aim", "clearml": "clearml", "dvclive": "dvclive"}


def check_trackers(names: list[str]) -> list[str]:
    """``train.report_to`` when every tracker's package is importable; else a ``ValueError`` naming what to install
    (accelerate itself would only warn and log nowhere)."""
    missing = [name for name in names if importlib.util.find_spec(TRACKER_PACKAGES[name]) is None]
    if missing:
        raise ValueError(f"train.report_to: {', '.join(missing)} needs its package: pip install "
                         f"{' '.join(TRACKER_PACKAGES[m] for m in missing)} (or drop it from report_to)")
    return list(names)


def build_optimizer(model: torch.nn.Module, cfg: RunConfig, total_steps: int):
    """AdamW without weight decay on biases and norms; the new head (and CRF) may get its own learning rate and weight
    decay on its matrices (``head_lr``, ``head_weight_decay``: the emission weights and CRF transitions), and a
    method's module
    its own group (at its ``lr`` attribute, default ``train.lr``; no weight decay). The schedule is
    ``train.lr_schedule`` (:func:`lr_factors`)."""
    groups: dict[tuple[float, float, bool], list[torch.nn.Parameter]] = {}
    module_lr = getattr(method_module(model), "lr", None) or cfg.train.lr
    head_decay = cfg.train.head_weight_decay
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.startswith(METHOD_MODULE + "."):
            groups.setdefault((module_lr, 0.0, True), []).append(param)
            continue
        new = name.startswith(("head.", "crf."))
        decay = 0.0 if param.ndim < 2 else cfg.train.weight_decay
        if new and head_decay is not None and param.ndim >= 2:
            decay = head_decay
        lr = cfg.train.head_lr if cfg.train.head_lr and new else cfg.train.lr
        groups.setdefault((lr, decay, False), []).append(param)
    optimizer = torch.optim.AdamW([{"params": p, "lr": lr, "weight_decay": wd} for (lr, wd, _), p in groups.items()])
    warmup = int(cfg.train.warmup_ratio * total_steps)
    if cfg.train.lr_schedule == "linear":
        return optimizer, get_linear_schedule_with_warmup(optimizer, warmup, total_steps)
    factors = [partial(lr_factors, warmup=warmup, total=total_steps, scale=cfg.train.lr / lr) for (lr, _, _) in groups]
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factors)


def lr_factors(step: int, *, warmup: int, total: int, scale: float) -> float:
    """The released sub-structured KD script's schedule (``lr_schedule: efficient_kd_code``), as a multiple of a
    group's own rate: the linear warm-up/decay factor ``f`` (as ``linear``) squared, because its loop sets every
    group to ``lr·f`` before each optimizer step and BertAdam multiplies by its own ``f`` again; and every group
    runs at ``lr`` (``scale = lr / group rate``), so ``head_lr`` never counts (``train_distil_bert_crf.py``
    overwrites the CRF/linear group's 5e-3 before the first step)."""
    if step < warmup:
        factor = step / max(1, warmup)
    else:
        factor = max(0.0, (total - step) / max(1, total - warmup))
    return factor * factor * scale


# --- evaluation and saving ------------------------------------------------------------------------


def main_metric(run: Run) -> str:
    chosen = run.cfg.train.metric
    return MAIN_METRIC[run.train_data.task] if chosen == "auto" else chosen


def evaluate(run: Run, model: torch.nn.Module) -> dict[str, float]:
    rows = predict_logits(model, run.eval_features, run.eval_data.task, pad_id=run.built.featurizer.pad_id,
                          batch_size=run.cfg.train.eval_batch_size)
    if run.built.architecture.get("defer_output"):  # score the classes; the defer logit is for the cascade
        rows = [row[: len(run.eval_data.labels)] for row in rows]
    return score(run.eval_data.task, run.eval_data.labels, run.eval_data.examples, rows)


def save_model(run: Run, model: torch.nn.Module, state: TrainerState, metrics: dict | None) -> None:
    """Save the student as a predictor (``<output_dir>/model``); a method's module goes beside it, not in it."""
    training = {"method": run.cfg.method, "method_args": to_dict(run.method_cfg), "step": state.step,
                "train_data": run.train_data.source, "train_examples": len(run.train_data),
                "teacher": run.cfg.teacher, "teacher_fingerprint": run.teacher.fingerprint if run.teacher else None,
                "config": to_dict(run.cfg)}
    if run.cfg.teachers:
        training.update(teachers=list(run.cfg.teachers), teacher_fingerprints=run.teacher_fingerprints)
    extra = {"training": training, "metrics": {"eval": metrics, "eval_data": run.eval_data.source} if metrics else {}}
    with without_method_module(model) as module:
        save_predictor(run.output_dir / "model", model, run.built.featurizer, run.train_data.task,
                       run.train_data.labels, run.built.architecture, extra=extra)
    if module is not None:
        save_method_module(module, run.output_dir / METHOD_MODULE_FILE, run.cfg.method, state.step)


def save_method_module(module: torch.nn.Module, path: Path, method: str, step: int) -> None:
    """The module's parameters and buffers as safetensors (written atomically); nothing when it has no parameters."""
    if not any(True for _ in module.parameters()):
        return
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in [*module.named_parameters(),
                                                                        *module.named_buffers()]}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"method": method, "step": str(step)})
    follow_umask(tmp)  # safetensors writes owner-only
    os.replace(tmp, path)


class MetricsLog:
    """Appends one JSON object per line to ``metrics.jsonl`` (main process only), and hands each record's numbers
    at a training step to accelerate's trackers (``train.report_to``: TensorBoard, MLflow, W&B, ...) as
    ``name/key`` scalars."""

    def __init__(self, path: Path, enabled: bool, accelerator: Accelerator | None = None):
        self.path, self.enabled, self.accelerator = path, enabled, accelerator

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")
        if self.accelerator is not None and self.accelerator.trackers and isinstance(record.get("step"), int):
            scalars = dict(_scalars(record))
            if scalars:
                self.accelerator.log(scalars, step=record["step"])


def _scalars(record: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    """The numbers of a metrics record, nested keys joined by ``/`` (``eval/accuracy``); the step is the x axis."""
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _scalars(value, f"{name}/")
        elif isinstance(value, int | float) and not isinstance(value, bool) and key != "step":
            yield name, float(value)


# --- the loop -------------------------------------------------------------------------------------


def train(cfg: RunConfig) -> Path:
    """Train as ``cfg`` says and return the saved predictor directory (``<output_dir>/model``).

    Running the same command again after an interruption resumes from the last checkpoint. A ``progressive``
    run without ``model`` trains its ensemble in rounds (:mod:`summon.training.progressive`), each candidate
    through this loop, and returns the saved ensemble.

    ``output_dir`` follows the one rule for destinations (:func:`~summon.core.files.check_destination`): a new or
    empty folder, or this run's own (:func:`not_of_a_run`: it resumes there), never a folder holding anything
    else nor one of the run's inputs (a teacher, a data file), checked before anything loads. While the run lasts
    its main process holds the folder (:func:`~summon.core.files.exclusive`): a second run on it stops at once.
    """
    cfg = typed_config(cfg)
    output_dir = check_destination(cfg.output_dir, what="a training run", option="output_dir",
                                   sources=run_inputs(cfg), not_ours=not_of_a_run)
    with exclusive(output_dir) if is_main_launch() else contextlib.nullcontext():
        if cfg.trains_ensemble:
            return train_ensemble(cfg, train_one)
        return train_one(cfg)


# What a training run writes into its output_dir (each also as NAME.tmp while it is written), and those of them
# that only a run writes: a folder holding nothing else and at least one of these is a run to resume.
TRACKERS_DIR = "trackers"  # where accelerate's offline trackers (tensorboard, mlflow) write, in output_dir
RUN_ENTRIES = ("config.yaml", "metrics.jsonl", "model", "model.saving", "model.old", "checkpoint",
               "checkpoint.staging", "checkpoint.previous", METHOD_MODULE_FILE, "hardness", "rounds", "rounds.json",
               TEACHER_WEIGHTS, TRACKERS_DIR, LOCK_FILE)  # what a run writes (methods' records included): resumed, not refused
RUN_MARKERS = ("metrics.jsonl", "checkpoint", "checkpoint.staging", "checkpoint.previous", "rounds.json", LOCK_FILE)


def not_of_a_run(path: Path) -> list[str]:
    """The entries of ``path`` that are not a summon training run's: none when it holds a run (and nothing else),
    one to resume, not to write over; all of them when nothing in it marks a run (a lone ``config.yaml``)."""
    names = sorted(entry.name for entry in path.iterdir())
    strangers = [name for name in names if name.removesuffix(".tmp") not in RUN_ENTRIES]
    return strangers or ([] if set(names) & set(RUN_MARKERS) else names)


def run_inputs(cfg: RunConfig) -> dict[str, str]:
    """The run's local inputs, which its output_dir must not be, hold or lie inside: teachers and data files."""
    inputs = {}
    for teacher in [cfg.teacher, *(cfg.teachers or [])]:
        if teacher and not teacher.startswith(HF_PREFIX):
            inputs.setdefault(teacher, "the teacher" if teacher == cfg.teacher else "one of the teachers")
    for split, spec in (("train", cfg.data.train), ("eval", cfg.data.eval)):
        if spec is not None and spec.path:
            inputs.setdefault(spec.path, f"the {split} data file")
    return inputs


def is_main_launch() -> bool:
    """Whether this process is the main one of its launch (``accelerate launch``/``torchrun`` set ``RANK``): the one
    that holds the run folder."""
    return os.environ.get("RANK", "0") == "0"


def train_one(cfg: RunConfig) -> Path:
    """:func:`train` of one model in a folder already checked and held (a progressive round's candidate too)."""
    cfg = typed_config(cfg)
    accelerator = build_accelerator(cfg)
    set_seed(cfg.train.seed)
    checkpointer = Checkpointer(Path(cfg.output_dir) / "checkpoint", config=fixed_part(to_dict(cfg)))
    checkpointer.check_config()  # a refused resumption costs no data loading or teacher pass
    with accelerator.main_process_first():  # the main process fills the teacher cache first
        run = build_run(cfg)
    run.output_dir.mkdir(parents=True, exist_ok=True)
    sampler = EpochBatches(len(run.train_set), cfg.train.batch_size, cfg.train.seed)
    # A private generator: creating a DataLoader iterator draws a seed from it, and drawing from the global
    # RNG instead would shift the dropout masks of a resumed run against an uninterrupted one.
    loader = DataLoader(run.train_set, batch_sampler=sampler, generator=torch.Generator().manual_seed(cfg.train.seed),
                        collate_fn=partial(collate, pad_id=run.built.featurizer.pad_id))
    steps_per_epoch = math.ceil(math.ceil(len(run.train_set) / cfg.train.batch_size) / cfg.train.grad_accum)
    steps = min(cfg.train.epochs * steps_per_epoch, cfg.train.max_steps or math.inf)
    optimizer, scheduler = build_optimizer(run.built.model, cfg, steps)
    model, optimizer, loader, scheduler = accelerator.prepare(run.built.model, optimizer, loader, scheduler)
    state = TrainerState()
    checkpointer.track(model, optimizer, scheduler, state, data=data_fingerprint(run.train_data))
    resumed = checkpointer.load(accelerator)  # refuses changed data before anything in output_dir is written
    if accelerator.is_main_process:
        dump_yaml(to_dict(cfg), run.output_dir / "config.yaml")
    if cfg.train.report_to:
        accelerator.init_trackers(run.output_dir.name, config=dict(_scalars(to_dict(cfg.train))))
    log = MetricsLog(run.output_dir / "metrics.jsonl", accelerator.is_main_process, accelerator)
    log.write({"event": "resume" if resumed else "start", "step": state.step, "total_steps": steps,
               "processes": accelerator.num_processes})
    if not state.done:
        eval_every = cfg.train.eval_every or steps_per_epoch
        _loop(run, accelerator, model, optimizer, loader, scheduler, sampler, state, checkpointer, log, steps,
              eval_every)
    return _finish(run, accelerator, model, state, log)


def _loop(run, accelerator, model, optimizer, loader, scheduler, sampler, state, checkpointer, log, steps,
          eval_every) -> None:
    cfg = run.cfg.train
    bar = tqdm(total=steps, initial=state.step, desc=f"train {run.cfg.method}",
               disable=not (cfg.progress and accelerator.is_main_process))
    running: dict[str, float] = {}
    online = run.method.runs_teacher_online(run.method_cfg)
    step_args = {"teacher": online_teacher(run, accelerator)} if online else {}
    while state.step < steps and state.epoch < cfg.epochs:
        sampler.position(state.epoch, state.batch_in_epoch)
        if run.method.epoch_start is not None:
            run.method.epoch_start(EpochContext(
                state.epoch, accelerator.unwrap_model(model), run.train_set, run.method_cfg, run.output_dir,
                run.built.featurizer.pad_id, accelerator.is_main_process, accelerator.wait_for_everyone))
        model.train()
        timing: dict[str, float] = {}
        timed_from_start = state.batch_in_epoch == 0  # a resumed epoch's record covers only part of it
        for batch in loader:
            start = clock(accelerator.device)
            with accelerator.accumulate(model):
                out = run.method.step(model, batch, run.method_cfg, **step_args)
                before_backward = clock(accelerator.device)
                accelerator.backward(out["loss"])
                if accelerator.sync_gradients and cfg.max_grad_norm:
                    clip_gradients(accelerator, model, cfg.max_grad_norm)
                optimizer.step()
                if accelerator.sync_gradients:
                    scheduler.step()
                optimizer.zero_grad()
            end = clock(accelerator.device)
            _add_times(timing, out, backward=end - before_backward, total=end - start)
            state.batch_in_epoch += 1
            _accumulate(running, out)
            if not accelerator.sync_gradients:
                continue
            state.step += 1
            bar.update(1)
            if state.step % cfg.log_every == 0 or state.step == steps:
                record = _mean_over_processes(accelerator, running)
                log.write({"step": state.step, "epoch": state.epoch, "lr": scheduler.get_last_lr()[0], **record})
                bar.set_postfix(loss=f"{record['loss']:.4f}")
                running.clear()
            if run.eval_features is not None and (state.step % eval_every == 0 or state.step == steps):
                _evaluate_and_keep(run, accelerator, model, state, log)
                model.train()
            if state.step % cfg.save_every == 0 and state.step < steps:
                checkpointer.save(accelerator)
            if state.step >= steps:
                break
        else:
            log.write({"event": "epoch", "epoch": state.epoch, "seconds": timing, "partial": not timed_from_start})
            state.epoch += 1
            state.batch_in_epoch = 0
            continue
        complete = state.batch_in_epoch >= math.ceil(len(run.train_set) / cfg.batch_size)
        log.write({"event": "epoch", "epoch": state.epoch, "seconds": timing,
                   "partial": not (complete and timed_from_start)})
        break
    bar.close()
    if run.eval_features is None and accelerator.is_main_process:
        save_model(run, accelerator.unwrap_model(model), state, None)
    state.done = True
    checkpointer.save(accelerator)


def clip_gradients(accelerator: Accelerator, model: torch.nn.Module, max_norm: float) -> None:
    """Clip the student's gradient norm; a method module's parameters are clipped apart, so a policy's gradient
    never shrinks the student's step (or the other way round)."""
    module = method_module(model)
    own = list(module.parameters()) if module is not None else []
    if not own:
        accelerator.clip_grad_norm_(model.parameters(), max_norm)
        return
    ids = {id(p) for p in own}
    accelerator.clip_grad_norm_([p for p in model.parameters() if id(p) not in ids], max_norm)
    torch.nn.utils.clip_grad_norm_(own, max_norm)  # already unscaled by the call above (fp16)


def online_teacher(run: Run, accelerator: Accelerator) -> torch.nn.Module:
    """The frozen teacher model for methods that run it every batch: on the device, eval mode, no gradients."""
    teacher = run.teacher.model.to(accelerator.device).eval()
    teacher.requires_grad_(False)
    return teacher


def _add_times(timing: dict[str, float], out: dict[str, Any], *, backward: float, total: float) -> None:
    """Sum this batch's seconds into the epoch's: the step's ``*_seconds`` parts, backward (with the optimizer
    step) and the whole batch (``train``; evaluation and checkpoints excluded)."""
    for key, value in out.items():
        if key.endswith(SECONDS_SUFFIX):
            name = key.removesuffix(SECONDS_SUFFIX)
            timing[name] = timing.get(name, 0.0) + float(value)
    timing["backward"] = timing.get("backward", 0.0) + backward
    timing["train"] = timing.get("train", 0.0) + total


def _accumulate(running: dict[str, float], out: dict[str, Any]) -> None:
    running["n"] = running.get("n", 0) + 1
    for key, value in out.items():
        if key != "output" and torch.is_tensor(value) and value.numel() == 1:
            running[key] = running.get(key, 0.0) + float(value.detach())


def _mean_over_processes(accelerator: Accelerator, running: dict[str, float]) -> dict[str, float]:
    """Means of the logged parts since the last log, averaged over processes (each saw part of the batch)."""
    keys = sorted(k for k in running if k != "n")
    local = torch.tensor([running[k] / running["n"] for k in keys], device=accelerator.device)
    values = accelerator.reduce(local, reduction="mean").tolist()
    return dict(zip(keys, values, strict=True))


def _evaluate_and_keep(run: Run, accelerator: Accelerator, model, state: TrainerState, log: MetricsLog) -> None:
    """Evaluate on the main process; save the model as the best so far when the main metric improves."""
    if accelerator.is_main_process:
        metrics = evaluate(run, accelerator.unwrap_model(model))
        name = main_metric(run)
        value = metrics[name]
        better = state.best_metric is None or (value > state.best_metric if higher_is_better(name)
                                               else value < state.best_metric)
        log.write({"step": state.step, "eval": metrics, "best": better})
        if better:
            state.best_metric, state.best_step = value, state.step
            save_model(run, accelerator.unwrap_model(model), state, metrics)
    accelerator.wait_for_everyone()


def _finish(run: Run, accelerator: Accelerator, model, state: TrainerState, log: MetricsLog) -> Path:
    """Measure the saved (best) model's cost on the eval split and record it in its manifest."""
    model_dir = run.output_dir / "model"
    if accelerator.is_main_process:
        predictor = load_predictor(model_dir)
        if run.eval_features is not None:
            cost = run.cfg.cost
            costs = measure_costs(predictor.model, run.eval_features, predictor.featurizer.pad_id,
                                  latency=cost.latency, batch_sizes=cost.batch_sizes, max_seconds=cost.max_seconds,
                                  flop_examples=cost.flop_examples)
            update_manifest(model_dir, costs=costs)
            log.write({"event": "done", "best_step": state.best_step, "best_metric": state.best_metric,
                       "costs": {k: costs[k] for k in ("params", "flops_per_example")}})
        else:
            log.write({"event": "done", "step": state.step})
    accelerator.wait_for_everyone()
    for tracker in accelerator.trackers:  # flush and close them (end_training would also end the process group,
        tracker.finish()                  # which a launched run's caller may still use)
    return model_dir

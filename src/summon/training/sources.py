"""Where a training run's data and teachers come from: the splits of ``data``, the ``teacher`` predictor and the
cached outputs of the ``teachers``."""

from __future__ import annotations

from typing import Any

import numpy as np

from summon.data.loading import load_split
from summon.data.spec import TaskData
from summon.methods import Method
from summon.predictors.huggingface import load_plain
from summon.predictors.predictor import Predictor
from summon.training.config import RunConfig
from summon.training.teacher_cache import teacher_logits


def build_data(cfg: RunConfig) -> tuple[TaskData, TaskData | None]:
    train_data = load_split(cfg.data.train, data_dir=cfg.data.data_dir)
    eval_data = None
    if cfg.data.eval is not None:
        spec = cfg.data.eval
        if spec.labels is None:
            spec = type(spec)(**{**spec.__dict__, "labels": train_data.labels})
        eval_data = load_split(spec, data_dir=cfg.data.data_dir)
        if eval_data.task != train_data.task:
            raise ValueError(f"data.eval is a {eval_data.task} set but data.train is {train_data.task}")
    return train_data, eval_data


def teacher_source(cfg: RunConfig) -> str | None:
    """The one teacher of a run: ``teacher``, else the first of ``teachers`` (the source of truncated students)."""
    return cfg.teacher or (cfg.teachers[0] if cfg.teachers else None)


def build_teacher(cfg: RunConfig, method: Method, task: TaskData, method_cfg: Any = None) -> Predictor | None:
    """The teacher predictor: needed by distilling methods, and as the source of truncated/random/copy students.

    ``teacher:`` is a saved summon predictor, a Hugging Face classifier folder (``save_pretrained``) or
    ``hf:HUB_ID``; a Hugging Face model's generic label names (``LABEL_0``...) take the data's. A method with
    several teachers uses ``teacher:`` (or, without it, the first of ``teachers:``) as the source only.
    """
    if method.multi_teacher and task.task == "token_classification":
        raise ValueError(f"teachers: method '{method.name}' distils several teachers of a classification task; "
                         "this data is token_classification (tag with one teacher: method kd or structured_kd)")
    source = teacher_source(cfg)
    if not source:
        if method.wants_teacher_logits(method_cfg):
            why = "" if method.needs_teacher else " for the options it was given (e.g. distill_teacher)"
            raise ValueError(f"method '{method.name}' needs 'teacher:'{why} (a saved predictor directory, a Hugging "
                             "Face classifier folder or hf:HUB_ID)")
        return None
    return load_teacher(source, task, key="teacher" if cfg.teacher else "teachers[0]")


def load_teacher(source: str, task: TaskData, key: str = "teacher") -> Predictor:
    """One teacher, checked to be trained for the data's task and labels (``key`` names it in errors)."""
    teacher = load_plain(source, task=task.task, labels=task.labels)
    if teacher.task != task.task or teacher.labels != task.labels:
        raise ValueError(f"{key}: {source} was trained for {teacher.task} with labels {teacher.labels}; "
                         f"the data is {task.task} with labels {task.labels}")
    return teacher


def multi_teacher_logits(cfg: RunConfig, data: TaskData, loaded: Predictor | None = None
                         ) -> tuple[list[np.ndarray], list[str]]:
    """Per example the logits of every teacher in ``cfg.teachers``, stacked [K, C], and the teachers' fingerprints.

    Each teacher's outputs come from the teacher cache (one pass per teacher, reused by every run on the same
    data); teachers are loaded one at a time. ``loaded`` is the run's source teacher, reused when it is listed.
    """
    per_teacher, fingerprints = [], []
    for i, source in enumerate(cfg.teachers or []):
        reuse = loaded is not None and source == teacher_source(cfg)
        teacher = loaded if reuse else load_teacher(source, data, key=f"teachers[{i}]")
        per_teacher.append(teacher_logits(teacher, data, cache_dir=cfg.cache_dir, batch_size=cfg.train.eval_batch_size))
        fingerprints.append(teacher.fingerprint)
        del teacher
    rows = [np.stack(row).astype(np.float32) for row in zip(*per_teacher, strict=True)]
    return rows, fingerprints

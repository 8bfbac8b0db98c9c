"""Where a training run's data and teacher come from: the splits of ``data`` and the ``teacher`` predictor."""

from __future__ import annotations

from summon.data.loading import load_split
from summon.data.spec import TaskData
from summon.hf import load_plain
from summon.methods import Method
from summon.predictor import Predictor
from summon.train.config import RunConfig


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


def build_teacher(cfg: RunConfig, method: Method, task: TaskData) -> Predictor | None:
    """The teacher predictor: needed by distilling methods, and as the source of truncated/random/copy students.

    ``teacher:`` is a saved summon predictor, a Hugging Face classifier folder (``save_pretrained``) or
    ``hf:HUB_ID``; a Hugging Face model's generic label names (``LABEL_0``...) take the data's.
    """
    if not cfg.teacher:
        if method.needs_teacher:
            raise ValueError(f"method '{method.name}' needs 'teacher:' (a saved predictor directory, a Hugging Face "
                             "classifier folder or hf:HUB_ID)")
        return None
    teacher = load_plain(cfg.teacher, task=task.task, labels=task.labels)
    if teacher.task != task.task or teacher.labels != task.labels:
        raise ValueError(f"teacher {cfg.teacher} was trained for {teacher.task} with labels {teacher.labels}; "
                         f"the data is {task.task} with labels {task.labels}")
    return teacher

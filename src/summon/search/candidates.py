"""What ``summon auto`` may build from a teacher: the candidates, cheapest to train first.

A :class:`Candidate` is one predictor the search can make: the teacher itself, an int8 copy, a training run
(the recipe of a shipped method with the user's teacher and data filled in), or a cascade of two others. Each
says what it builds on (``needs``), how much training it costs in passes of the teacher over the training split
(``train_passes``, the dry run's estimate) and the least cost any of its operating points can have
(``floor_cost``, a fraction of the teacher's FLOPs): the search skips a candidate whose floor is no cheaper than
the best point already found, since it cannot win.

Reconstruction, not a paper's: the issue names the methods, not their settings. The settings here are those of
the shipped recipes the benchmarks ran (``sst2_early_exit_two_stage``, ``sst2_cascade_continue``,
``sst2_kd_ngram``, ``sst2_kd_truncated``, ``*_progressive``), each behind a named :class:`~summon.search.config.AutoConfig`
option where another choice is plausible (``ngram_buckets``, ``student_layers``, ``continue_layer``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Candidate", "plan_candidates"]

SEQUENCE_TASKS = ("classification", "pair_classification")


@dataclass(frozen=True)
class Candidate:
    """One predictor the search can make (see the module docstring)."""

    name: str
    method: str  # teacher, int8, early_exit, cascade_continue, kd_ngram, kd_truncated, cascade
    recipe: dict[str, Any] | None = None  # a training run, without teacher, data and output_dir
    needs: tuple[str, ...] = ()  # cascade: (student, teacher); int8: (source,)
    train_passes: float = 0.0  # training cost estimate, in teacher passes over the training split
    floor_cost: float = 0.0  # the least FLOPs fraction of the teacher any of its points can cost
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _early_exit(layers: int) -> dict[str, Any]:
    return {"method": "early_exit", "model": {"kind": "copy", "exits": "all", "freeze": ["backbone", f"heads.{layers - 1}"]},
            "train": {"epochs": 1, "batch_size": 32, "lr": 1.0e-3, "weight_decay": 0.0, "warmup_ratio": 0.06}}


def _continue(layers: int, at: int) -> dict[str, Any]:
    return {"method": "early_exit", "method_args": {"distill_last": 0.5, "temperature": 2.0},
            "model": {"kind": "copy", "exits": [at, layers], "freeze": ["backbone", "heads.1"]},
            "train": {"epochs": 1, "batch_size": 32, "lr": 1.0e-3, "weight_decay": 0.0, "warmup_ratio": 0.06}}


def _kd_ngram(buckets: int) -> dict[str, Any]:
    return {"method": "kd", "method_args": {"temperature": 2.0, "alpha": 0.5},
            "model": {"kind": "ngram", "num_buckets": buckets, "embed_dim": 64, "ngram_max": 2, "dropout": 0.0},
            "train": {"epochs": 2, "batch_size": 64, "lr": 5.0e-3, "weight_decay": 0.0, "warmup_ratio": 0.0}}


def _kd_truncated(first: int, pooling: str) -> dict[str, Any]:
    return {"method": "kd", "method_args": {"temperature": 2.0, "alpha": 0.5},
            "model": {"kind": "truncated", "first": first, "pooling": pooling},
            "train": {"epochs": 1, "batch_size": 32, "lr": 1.0e-4, "warmup_ratio": 0.06}}


def plan_candidates(task: str, teacher: dict[str, Any], *, ngram_buckets: int = 262144, student_layers: int = 2,
                    continue_layer: int = 2, int8: bool = True, only: tuple[str, ...] | None = None) -> list[Candidate]:
    """The candidates for a teacher, cheapest to train first.

    Args:
        task: the teacher's task; sentence and pair classification get every method below, taggers the teacher
            and its int8 copy only (token exits and CRF students are not searched yet).
        teacher: ``{"kind": "encoder" | "hf" | other, "layers": L, "pooling": ...}`` (:func:`teacher_facts`).
        only: keep these names (and what they need, and the teacher).

    Raises:
        ValueError: For a name in ``only`` that is no candidate here, naming the ones there are.
    """
    layers, encoder = int(teacher.get("layers") or 0), teacher.get("kind") == "encoder"
    out = [Candidate("teacher", "teacher", floor_cost=1.0,
                     notes="the teacher as it is: every other candidate's reference")]
    if int8:
        out.append(Candidate("teacher_int8", "int8", needs=("teacher",), train_passes=0.0, floor_cost=1.0,
                             notes="dynamic int8 linear layers (CPU): the same FLOPs, fewer milliseconds"))
    if task in SEQUENCE_TASKS and encoder and layers >= 2:
        out.append(Candidate("exits_frozen", "early_exit", recipe=_early_exit(layers), train_passes=1.2,
                             floor_cost=1.0 / layers, notes="exits after every layer of the frozen teacher (DeeBERT two-stage)"))
        at = min(max(1, continue_layer), layers - 1)
        out.append(Candidate(f"continue_{at}", "cascade_continue", recipe=_continue(layers, at), train_passes=1.2,
                             floor_cost=at / layers, notes=f"a KD exit after the teacher's layer {at}; deferred rows "
                             "continue through the teacher's remaining layers"))
    if task in SEQUENCE_TASKS:
        out.append(Candidate("ngram_kd", "kd_ngram", recipe=_kd_ngram(ngram_buckets), train_passes=1.1,
                             floor_cost=0.0, notes="bag of word uni- and bi-grams distilled from the teacher"))
        out.append(Candidate("cascade_ngram", "cascade", needs=("ngram_kd", "teacher"), floor_cost=0.0,
                             notes="the n-gram student first, the teacher for the rows it defers"))
    if task in SEQUENCE_TASKS and encoder and layers > student_layers >= 1:
        pooling = teacher.get("pooling") or "mean"
        out.append(Candidate(f"truncated{student_layers}_kd", "kd_truncated",
                             recipe=_kd_truncated(student_layers, pooling), train_passes=1.0 + 3.0 * student_layers / layers,
                             floor_cost=student_layers / layers, notes=f"the teacher's first {student_layers} layers, "
                             "fine-tuned by KD"))
        out.append(Candidate(f"cascade_truncated{student_layers}", "cascade",
                             needs=(f"truncated{student_layers}_kd", "teacher"), floor_cost=student_layers / layers,
                             notes="the truncated student first, the teacher for the rows it defers"))
    if int8:
        staged = [c for c in out if c.method in ("early_exit", "cascade_continue")]
        out += [Candidate(f"{c.name}_int8", "int8", needs=(c.name,), floor_cost=c.floor_cost,
                          notes=f"int8 copy of {c.name}, calibrated again") for c in staged]
    if only is not None:
        out = _keep(out, only)
    return out


def _keep(candidates: list[Candidate], only: tuple[str, ...]) -> list[Candidate]:
    names = {c.name: c for c in candidates}
    unknown = [n for n in only if n not in names]
    if unknown:
        raise ValueError(f"--only: {', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} no candidate for this "
                         f"teacher; choose from {', '.join(names)}")
    wanted: set[str] = set()
    todo = ["teacher", *only]  # the teacher's own point is always on the front: every target is measured from it
    while todo:
        name = todo.pop()
        if name not in wanted:
            wanted.add(name)
            todo += list(names[name].needs)
    return [c for c in candidates if c.name in wanted]

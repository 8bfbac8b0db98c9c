"""Score per-example logits against a split's gold labels, for any task."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from summon.measure.metrics import classification_metrics, softmax, span_f1

MAIN_METRIC = {"classification": "accuracy", "pair_classification": "accuracy", "token_classification": "f1"}


def score(task: str, labels: Sequence[str], examples: Sequence[dict[str, Any]],
          rows: Sequence[np.ndarray]) -> dict[str, float]:
    """Metrics for logits ``rows`` ([C] per example, or [num_words, C] for tagging).

    Classification: accuracy, macro-F1, NLL and ECE (15 bins). Tagging: entity-level span precision,
    recall and F1 (seqeval, CoNLL style), token accuracy and token F1 (non-O tags, the sub-structured KD code's metric).
    """
    if len(rows) != len(examples):
        raise ValueError(f"{len(rows)} predictions for {len(examples)} examples")
    if task == "token_classification":
        gold = [[labels[t] for t in ex["tags"]] for ex in examples]
        if rows and np.asarray(rows[0]).ndim == 3:  # a tagger with exits: [S, words, C]; the last is the full model
            stages = np.asarray(rows[0]).shape[0]
            per_exit = [span_f1(gold, [[labels[k] for k in row[s].argmax(axis=-1)] for row in rows])["f1"]
                        for s in range(stages)]
            return {**span_f1(gold, [[labels[k] for k in row[-1].argmax(axis=-1)] for row in rows]),
                    "exit_f1": per_exit, "n": len(examples)}
        pred = [[labels[k] for k in row.argmax(axis=-1)] for row in rows]
        return {**span_f1(gold, pred), "n": len(examples)}
    stacked = np.stack(rows).astype(np.float64)
    gold_ids = np.array([ex["label"] for ex in examples])
    if stacked.ndim == 3:  # a model with exits: [N, S, C]; the last exit is the full model
        metrics = classification_metrics(softmax(stacked[:, -1]), gold_ids)
        metrics["exit_accuracy"] = [float((stacked[:, k].argmax(-1) == gold_ids).mean())
                                    for k in range(stacked.shape[1])]
        return metrics
    return classification_metrics(softmax(stacked), gold_ids)


def higher_is_better(metric: str) -> bool:
    return metric != "nll"

"""Quality metrics: numpy arrays in, plain Python floats out.

Conventions: ``pred`` and ``gold`` are 1-D integer label arrays of shape [N]; ``probs`` is a 2-D array of
class probabilities of shape [N, C] whose rows sum to 1 (apply a softmax to logits first).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

_PROB_CLIP = 1e-12
_ROW_SUM_TOL = 1e-2


def _labels(x: Any, what: str) -> np.ndarray:
    """Return ``x`` as a non-empty 1-D integer array of shape [N], or raise ValueError."""
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(
            f"{what} must be a 1-D array of labels [N], got shape {arr.shape}; flatten it first."
        )
    if arr.size == 0:
        raise ValueError(f"{what} is empty; pass at least one example.")
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
        raise ValueError(
            f"{what} must hold integer class ids, got dtype {arr.dtype}; take argmax of scores first."
        )
    if arr.min() < 0:
        raise ValueError(f"{what} holds a negative label ({int(arr.min())}); labels must be 0..C-1.")
    return arr.astype(np.int64)


def _pair(pred: Any, gold: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate two label arrays of equal length N; returns both as int64 [N]."""
    p, g = _labels(pred, "pred"), _labels(gold, "gold")
    if p.shape != g.shape:
        raise ValueError(
            f"pred has {p.shape[0]} labels but gold has {g.shape[0]}; they must be the same length."
        )
    return p, g


def _probs_gold(probs: Any, gold: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate probabilities [N, C] against gold labels [N]; returns float64 [N, C] and int64 [N]."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probs must be 2-D [N, C], got shape {p.shape}.")
    g = _labels(gold, "gold")
    if p.shape[0] != g.shape[0]:
        raise ValueError(f"probs has {p.shape[0]} rows but gold has {g.shape[0]} labels; they must match.")
    if p.shape[1] == 0:
        raise ValueError("probs has 0 classes (shape [N, 0]).")
    if int(g.max()) >= p.shape[1]:
        raise ValueError(f"gold holds label {int(g.max())} but probs has only {p.shape[1]} classes.")
    if not np.all(np.isfinite(p)):
        raise ValueError("probs holds NaN or infinite values.")
    if p.min() < 0.0 or p.max() > 1.0 + 1e-6:
        raise ValueError(
            f"probs must lie in [0, 1], saw min {p.min():.4g} and max {p.max():.4g}; "
            "these look like logits, apply a softmax first."
        )
    row_sums = p.sum(axis=1)
    worst = int(np.argmax(np.abs(row_sums - 1.0)))
    if abs(row_sums[worst] - 1.0) > _ROW_SUM_TOL:
        raise ValueError(
            f"probs rows must sum to 1, row {worst} sums to {row_sums[worst]:.4g}; apply a softmax."
        )
    return p, g


def accuracy(pred: Any, gold: Any) -> float:
    """Fraction of examples whose predicted label equals the gold label.

    Args:
        pred: Predicted labels, shape [N].
        gold: Gold labels, shape [N].

    Returns:
        Accuracy in [0, 1].
    """
    p, g = _pair(pred, gold)
    return float(np.mean(p == g))


def macro_f1(pred: Any, gold: Any, num_labels: int | None = None) -> float:
    """Unweighted mean F1 over classes that occur in gold or pred (scikit-learn ``average='macro'``).

    A class that is neither in gold nor predicted is skipped; a class that is predicted but never right
    (or present but never predicted) scores F1 = 0 (0/0 precision or recall counts as 0).

    Args:
        pred: Predicted labels, shape [N].
        gold: Gold labels, shape [N].
        num_labels: If given, every label must be below it.

    Returns:
        Macro F1 in [0, 1].
    """
    p, g = _pair(pred, gold)
    top = int(max(p.max(), g.max()))
    if num_labels is not None:
        if num_labels < 1:
            raise ValueError(f"num_labels must be >= 1, got {num_labels}.")
        if top >= num_labels:
            raise ValueError(
                f"saw label {top} but num_labels is {num_labels}; labels must be 0..num_labels-1."
            )
    size = top + 1
    tp = np.bincount(g[p == g], minlength=size).astype(np.float64)
    n_pred = np.bincount(p, minlength=size).astype(np.float64)
    n_gold = np.bincount(g, minlength=size).astype(np.float64)
    present = (n_pred > 0) | (n_gold > 0)
    # F1 = 2TP / (|pred| + |gold|); equals 0 whenever precision or recall is 0/0 on a present class.
    f1 = 2.0 * tp[present] / (n_pred[present] + n_gold[present])
    return float(f1.mean())


def nll(probs: Any, gold: Any) -> float:
    """Mean negative log-likelihood of the gold labels.

    Args:
        probs: Class probabilities, shape [N, C].
        gold: Gold labels, shape [N].

    Returns:
        Mean of ``-log(max(p[i, gold[i]], 1e-12))``.
    """
    p, g = _probs_gold(probs, gold)
    picked = np.clip(p[np.arange(g.shape[0]), g], _PROB_CLIP, 1.0)
    return float(-np.mean(np.log(picked)))


def _bin_index(confidence: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Assign confidences [N] to equal-width bins (lo, hi] over (0, 1].

    Returns:
        The bin edges [n_bins + 1] and the bin index of each confidence [N] (a confidence of 1.0 is in
        the last bin, one of 0.0 in the first).
    """
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}.")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.searchsorted(edges, confidence, side="left") - 1
    return edges, np.clip(idx, 0, n_bins - 1)


def _confidence_correct(probs: Any, gold: Any) -> tuple[np.ndarray, np.ndarray]:
    """Max probability [N] and whether its argmax is right [N] (float 0/1)."""
    p, g = _probs_gold(probs, gold)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == g).astype(np.float64)
    return conf, correct


def expected_calibration_error(probs: Any, gold: Any, n_bins: int = 15) -> float:
    """Expected calibration error (Guo et al., 2017) with equal-width confidence bins.

    ``ECE = sum_b |acc_b - conf_b| * n_b / N`` over bins (lo, hi] of the max probability.

    Args:
        probs: Class probabilities, shape [N, C].
        gold: Gold labels, shape [N].
        n_bins: Number of equal-width bins on (0, 1].

    Returns:
        ECE in [0, 1].
    """
    conf, correct = _confidence_correct(probs, gold)
    _, idx = _bin_index(conf, n_bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    acc_sum = np.bincount(idx, weights=correct, minlength=n_bins)
    # |acc_b - conf_b| * n_b = |sum(correct) - sum(conf)| within the bin.
    return float(np.sum(np.abs(acc_sum - conf_sum)) / conf.shape[0])


def reliability_bins(probs: Any, gold: Any, n_bins: int = 15) -> dict[str, list]:
    """Per-bin data for a reliability diagram, binned as in :func:`expected_calibration_error`.

    Args:
        probs: Class probabilities, shape [N, C].
        gold: Gold labels, shape [N].
        n_bins: Number of equal-width bins on (0, 1].

    Returns:
        ``{"edges": [n_bins + 1 floats], "confidence": [...], "accuracy": [...], "count": [...]}``, the
        last three with one value per bin; mean confidence and accuracy are None for empty bins.
    """
    conf, correct = _confidence_correct(probs, gold)
    edges, idx = _bin_index(conf, n_bins)
    count = np.bincount(idx, minlength=n_bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    acc_sum = np.bincount(idx, weights=correct, minlength=n_bins)
    mean_conf = [float(conf_sum[b] / count[b]) if count[b] else None for b in range(n_bins)]
    mean_acc = [float(acc_sum[b] / count[b]) if count[b] else None for b in range(n_bins)]
    return {
        "edges": [float(e) for e in edges],
        "confidence": mean_conf,
        "accuracy": mean_acc,
        "count": [int(c) for c in count],
    }


def classification_metrics(probs: Any, gold: Any) -> dict[str, float | int]:
    """All sequence-classification metrics from predicted probabilities.

    Args:
        probs: Class probabilities, shape [N, C]; the prediction is the argmax.
        gold: Gold labels, shape [N].

    Returns:
        ``{"accuracy", "macro_f1", "nll", "ece" (15 bins), "n"}``.
    """
    p, g = _probs_gold(probs, gold)
    pred = p.argmax(axis=1)
    return {
        "accuracy": accuracy(pred, g),
        "macro_f1": macro_f1(pred, g, num_labels=p.shape[1]),
        "nll": nll(p, g),
        "ece": expected_calibration_error(p, g, n_bins=15),
        "n": int(g.shape[0]),
    }


def _tag_lists(tags: Any, what: str) -> list[list[str]]:
    """Validate a list of sentences, each a list of string tags; returns plain lists."""
    if isinstance(tags, (str, bytes)) or not hasattr(tags, "__len__"):
        raise ValueError(
            f"{what} must be a list of sentences (lists of tag strings), got {type(tags).__name__}."
        )
    out = []
    for i, sent in enumerate(tags):
        if isinstance(sent, (str, bytes)) or not hasattr(sent, "__len__"):
            raise ValueError(f"{what}[{i}] must be a list of tag strings, got {type(sent).__name__}.")
        sent = list(sent)
        for j, tag in enumerate(sent):
            if not isinstance(tag, str):
                msg = f"{what}[{i}][{j}] must be a tag string like 'B-PER', got {tag!r}."
                raise ValueError(msg)
        out.append(sent)
    return out


def span_f1(gold_tags: list[list[str]], pred_tags: list[list[str]]) -> dict[str, float]:
    """Entity-level precision, recall and F1 (CoNLL-style, via seqeval) plus token accuracy and token F1.

    ``token_f1`` is the sub-structured KD code's metric (``utils/bio_data.f1_score`` in
    ``Linwenye/Efficient-KD``): micro F1 over words (first sub-tokens) whose tag is not ``O``, a tag counted
    right when it equals the gold one; a zero denominator gives precision or recall 1, as there (but F1 is 0, not
    the code's 1, when both are 0).

    Args:
        gold_tags: Gold BIO tags, one list per sentence.
        pred_tags: Predicted BIO tags, same lengths as ``gold_tags``.

    Returns:
        ``{"precision", "recall", "f1", "token_accuracy", "token_f1"}``; entity scores with a zero
        denominator are 0.
    """
    from seqeval.metrics import f1_score, precision_score, recall_score

    gold = _tag_lists(gold_tags, "gold_tags")
    pred = _tag_lists(pred_tags, "pred_tags")
    if len(gold) != len(pred):
        raise ValueError(
            f"gold_tags has {len(gold)} sentences but pred_tags has {len(pred)}; "
            f"the first unmatched index is {min(len(gold), len(pred))}."
        )
    for i, (g, p) in enumerate(zip(gold, pred)):
        if len(g) != len(p):
            raise ValueError(f"sentence {i}: gold_tags has {len(g)} tags but pred_tags has {len(p)}.")
    n_tokens = sum(len(g) for g in gold)
    if n_tokens == 0:
        raise ValueError("gold_tags holds no tags; pass at least one tagged token.")
    n_right = sum(gt == pt for g, p in zip(gold, pred) for gt, pt in zip(g, p))
    return {
        "precision": float(precision_score(gold, pred, zero_division=0)),
        "recall": float(recall_score(gold, pred, zero_division=0)),
        "f1": float(f1_score(gold, pred, zero_division=0)),
        "token_accuracy": n_right / n_tokens,
        "token_f1": token_f1(gold, pred),
    }


def token_f1(gold: list[list[str]], pred: list[list[str]], outside: str = "O") -> float:
    """Micro F1 over tokens tagged other than ``outside`` (see :func:`span_f1`)."""
    proposed = sum(p != outside for sent in pred for p in sent)
    gold_count = sum(g != outside for sent in gold for g in sent)
    correct = sum(g == p and g != outside for gs, ps in zip(gold, pred) for g, p in zip(gs, ps))
    precision = correct / proposed if proposed else 1.0
    recall = correct / gold_count if gold_count else 1.0
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = logits - logits.max(axis=axis, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=axis, keepdims=True)

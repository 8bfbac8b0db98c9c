"""Learned exit and deferral scores: per stage, a logistic model of "this stage's answer is the final one".

The ``learned`` scorer (:mod:`summon.adaptive.scoring`) gives stage ``k`` of a row the probability, under a
small logistic regression fitted for that stage, that stage ``k``'s answer equals the last stage's answer
(``target="reference"``, the default) or the gold label (``target="gold"``). Its features (:data:`FEATURES`,
kept here in one place and saved by name with the model) come from what the executor already has when stage
``k`` has run, all from *calibrated* (temperature-scaled) probabilities:

* ``max_prob``, ``margin``, ``entropy`` of stage ``k`` (the scores of :mod:`summon.adaptive.policies`;
  ``entropy`` is one minus the normalised entropy);
* ``prev_max_prob``, ``prev_margin``, ``prev_entropy``: the same of stage ``k - 1`` (0 at stage 0);
* ``agree_run``: how many consecutive stages, ending at ``k``, predicted stage ``k``'s class (PABEE's count);
* ``agree_prev``: 1 when stage ``k``'s class is stage ``k - 1``'s (0 at stage 0);
* ``log_length``: ``log(1 + length)``, the row's length as the executor knows it (``runner.length``: tokens
  for early exit, characters — words for tagging — for cascades and ensembles).

:func:`stage_features` computes them for a batch from stage ``k``'s probabilities and a per-row carry
``[B, 6]`` (stage ``k - 1``'s three scores and class, the agreement run and the log length), vectorised over
the batch; the executor keeps the carry aligned with the rows still running, as it does for patience, so a
row's score never depends on the rows batched with it. The last stage always answers and has no model.

Each model is ``sigmoid(((x - mean) / scale) · w + b)``: features standardised on the fitting rows, then an
L2-regularised logistic regression (penalty ``l2 · |w|²`` on the mean log loss, the bias unpenalised) solved
by Newton's method (iteratively reweighted least squares) with a backtracking line search, in numpy — no
scikit-learn.

**Which rows fit it.** :func:`~summon.adaptive.calibration.fit_calibration` fits these models on the
temperature rows of the calibration split, with the temperatures fitted there, and never sees the threshold
rows while doing so. The score function is therefore fixed before the rows that build the threshold table are
looked at, which is what the Learn-then-Test guarantee (:mod:`summon.adaptive.thresholds`) needs: conditional on
the temperature rows, the threshold rows are still i.i.d. draws, so the guarantee holds for this score as for
max-prob (``tests/test_learned_scores.py`` checks it over many random splits).

**Relation to the ``gate`` scorer** (:mod:`summon.adaptive.gate`): the gate is the special case that looks at
one stage's probabilities only (its top three, margin, entropy and log top probability), targets agreement with
the last stage and is not standardised. ``learned`` generalises it with the earlier stage's scores, the
agreement run, the input length and a gold target, for every staged kind (early exit, cascade, progressive).
``gate`` stays available, and predictors calibrated with it load and run as before.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from summon.adaptive.policies import entropy, margin, max_prob

FEATURES = ("max_prob", "margin", "entropy", "prev_max_prob", "prev_margin", "prev_entropy", "agree_run",
            "agree_prev", "log_length")
TARGETS = ("reference", "gold")
RECALIBRATE = "recalibrate with `summon calibrate PREDICTOR --data SPLIT --policy learned`"


def stage_features(probs: torch.Tensor, carry: torch.Tensor | None = None,
                   lengths: np.ndarray | torch.Tensor | Sequence[int] | None = None,
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of one stage for a batch, and the carry for the next stage.

    Args:
        probs: ``[B, C]`` calibrated class probabilities of stage ``k``.
        carry: ``[B, 6]`` from stage ``k - 1``, or None at stage 0.
        lengths: ``[B]`` row lengths (``runner.length``), read at stage 0 only (then carried); None gives
            ``log_length`` 0 (for models fitted without that feature).

    Returns:
        features ``[B, len(FEATURES)]`` in the order of :data:`FEATURES`, and the carry ``[B, 6]``.
    """
    conf, gap, ent = max_prob(probs)[0], margin(probs)[0], entropy(probs)[0]
    pred = probs.argmax(dim=-1).to(probs.dtype)
    if carry is None:
        zeros = torch.zeros_like(conf)
        prev = [zeros, zeros, zeros]
        agree, run = zeros, torch.ones_like(conf)
        if lengths is None:
            log_length = zeros
        else:
            size = torch.as_tensor(np.asarray(lengths, dtype=np.float64)).to(device=probs.device, dtype=probs.dtype)
            if size.shape != conf.shape:
                raise ValueError(f"{tuple(size.shape)} row lengths for a batch of {conf.shape[0]} rows")
            log_length = torch.log1p(size.clamp_min(0.0))
    else:
        carry = carry.to(probs.dtype)
        prev = [carry[:, 0], carry[:, 1], carry[:, 2]]
        agree = (pred == carry[:, 3]).to(probs.dtype)
        run = torch.where(agree > 0, carry[:, 4] + 1.0, torch.ones_like(conf))
        log_length = carry[:, 5]
    features = torch.stack([conf, gap, ent, *prev, run, agree, log_length], dim=1)
    return features, torch.stack([conf, gap, ent, pred, run, log_length], dim=1)


def all_stage_features(probs: Sequence[torch.Tensor | np.ndarray], lengths: Any = None) -> list[torch.Tensor]:
    """:func:`stage_features` of every stage: probabilities ``[N, C]`` per stage -> features ``[N, F]`` per stage."""
    carry, out = None, []
    for p in probs:
        features, carry = stage_features(torch.as_tensor(p, dtype=torch.float64), carry, lengths)
        out.append(features)
    return out


# --- the logistic fit -----------------------------------------------------------------------------


def logistic_loss(x: np.ndarray, y: np.ndarray, weight: np.ndarray, bias: float, l2: float) -> float:
    """Mean log loss of ``sigmoid(x · w + b)`` against ``y`` in {0, 1}, plus ``l2 · |w|²``."""
    z = x @ weight + bias
    return float(np.mean(np.logaddexp(0.0, z) - y * z) + l2 * weight @ weight)


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-3, *, max_iter: int = 100,
                 tol: float = 1e-10) -> tuple[np.ndarray, float]:
    """Minimise :func:`logistic_loss` by Newton's method with a backtracking line search.

    Args:
        x: ``[N, F]`` features; y: ``[N]`` targets in {0, 1}.
        l2: penalty on the weights (not the bias); 0 is allowed (separable data then stops at ``max_iter``).

    Returns:
        weights ``[F]`` and the bias. When every target is the same, the weights are 0 and the bias is the
        smoothed log odds ``log((n1 + 0.5) / (n0 + 0.5))`` (the unregularised bias would be infinite).
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n, f = x.shape
    if n == 0 or y.shape != (n,):
        raise ValueError(f"the learned score needs rows to learn from: got features {x.shape} and targets {y.shape}")
    if not (l2 >= 0 and math.isfinite(l2)):
        raise ValueError(f"l2 must be a finite number >= 0, got {l2}")
    positives = float(y.sum())
    if positives in (0.0, float(n)):
        return np.zeros(f), math.log((positives + 0.5) / (n - positives + 0.5))
    design = np.concatenate([x, np.ones((n, 1))], axis=1)
    penalty = np.full(f + 1, 2.0 * l2)
    penalty[-1] = 0.0
    theta = np.zeros(f + 1)
    theta[-1] = math.log(positives / (n - positives))

    def objective(t: np.ndarray) -> float:
        return logistic_loss(x, y, t[:-1], float(t[-1]), l2)

    loss = objective(theta)
    for _ in range(max_iter):
        p = np.exp(-np.logaddexp(0.0, -(design @ theta)))
        grad = design.T @ (p - y) / n + penalty * theta
        if np.abs(grad).max() < tol:
            break
        hessian = (design * (p * (1.0 - p))[:, None]).T @ design / n + np.diag(penalty)
        step = np.linalg.solve(hessian + 1e-12 * np.eye(f + 1), grad)  # damping only: the optimum is unchanged
        rate, slope = 1.0, float(grad @ step)
        while rate > 1e-10:
            candidate = theta - rate * step
            new = objective(candidate)
            if new <= loss - 1e-4 * rate * slope:
                break
            rate *= 0.5
        else:
            break  # no decrease along the Newton direction: at the optimum up to rounding
        theta, loss = candidate, new
    return theta[:-1], float(theta[-1])


# --- the models -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StageScore:
    """One stage's model: ``sigmoid(((x - mean) / scale) · weight + bias)`` over the selected features."""

    weight: tuple[float, ...]
    bias: float
    mean: tuple[float, ...]
    scale: tuple[float, ...]

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, l2: float) -> StageScore:
        """Standardise ``x`` ``[N, F]`` on these rows and fit the logistic model of ``y`` ``[N]``."""
        x = np.asarray(x, dtype=np.float64)
        mean, scale = x.mean(axis=0), x.std(axis=0)
        scale = np.where(scale > 1e-12, scale, 1.0)  # a constant feature (e.g. agree_prev at stage 0) stays 0
        weight, bias = fit_logistic((x - mean) / scale, y, l2)
        return cls(tuple(map(float, weight)), float(bias), tuple(map(float, mean)), tuple(map(float, scale)))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Scores ``[B]`` of features ``[B, F]`` (float64, on ``x``'s device)."""
        def vec(values: Sequence[float]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float64, device=x.device)

        z = ((x.double() - vec(self.mean)) / vec(self.scale)) @ vec(self.weight) + self.bias
        return torch.sigmoid(z)

    def to_dict(self) -> dict[str, Any]:
        return {"weight": list(self.weight), "bias": self.bias, "mean": list(self.mean), "scale": list(self.scale)}


@dataclass(frozen=True)
class LearnedScores:
    """The ``learned`` scorer's models: one per stage but the last (None), over the named ``features``."""

    features: tuple[str, ...]
    target: str
    l2: float
    stages: tuple[StageScore | None, ...]
    rows: int = 0  # rows the models were fitted on (the temperature rows of the calibration split)

    @property
    def columns(self) -> list[int]:
        return [FEATURES.index(name) for name in self.features]

    @property
    def uses_length(self) -> bool:
        return "log_length" in self.features

    def score(self, stage: int, features: torch.Tensor) -> torch.Tensor | None:
        """Scores ``[B]`` of stage ``stage`` from :func:`stage_features`' ``[B, len(FEATURES)]``; None when the stage
        has no model (the last)."""
        model = self.stages[stage]
        return None if model is None else model(features[:, self.columns])

    def to_dict(self) -> dict[str, Any]:
        return {"features": list(self.features), "target": self.target, "l2": self.l2, "rows": self.rows,
                "stages": [None if s is None else s.to_dict() for s in self.stages]}

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "manifest.json", key: str = "adaptive.learned") -> LearnedScores:
        """Read the saved section back, refusing anything malformed with the file and the key at fault."""
        def bad(field: str, what: str, got: Any) -> ValueError:
            return ValueError(f"{where}: '{key}{field}' {what}, got {got!r:.80}; {RECALIBRATE}")

        if not isinstance(data, dict):
            raise bad("", "must be an object with features, target, l2 and stages", data)
        features = data.get("features")
        if (not isinstance(features, list) or not features or len(set(features)) != len(features)
                or not all(isinstance(f, str) and f in FEATURES for f in features)):
            raise bad(".features", f"must list distinct feature names from {', '.join(FEATURES)}", features)
        if data.get("target") not in TARGETS:
            raise bad(".target", f"must be one of {', '.join(TARGETS)}", data.get("target"))
        l2 = data.get("l2")
        if not _finite(l2) or l2 < 0:
            raise bad(".l2", "must be a finite number >= 0", l2)
        rows = data.get("rows", 0)
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
            raise bad(".rows", "must be a whole number >= 0", rows)
        entries = data.get("stages")
        if not isinstance(entries, list) or len(entries) < 2 or entries[-1] is not None:
            raise bad(".stages", "must list one model per stage, null for the last", entries)
        stages = [_stage_from_dict(entry, len(features), f"{key}.stages[{i}]", where)
                  for i, entry in enumerate(entries[:-1])]
        return cls(tuple(features), data["target"], float(l2), (*stages, None), rows)


def _finite(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _stage_from_dict(entry: Any, width: int, key: str, where: str) -> StageScore:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: '{key}' must be an object with weight, bias, mean and scale, got {entry!r:.80}; "
                         f"{RECALIBRATE}")
    values: dict[str, Any] = {}
    for name in ("weight", "mean", "scale"):
        got = entry.get(name)
        if not isinstance(got, list) or len(got) != width or not all(_finite(v) for v in got) or (
                name == "scale" and not all(v > 0 for v in got)):
            what = "positive" if name == "scale" else "finite"
            raise ValueError(f"{where}: '{key}.{name}' must be a list of {width} {what} numbers (one per feature), "
                             f"got {got!r:.80}; {RECALIBRATE}")
        values[name] = tuple(float(v) for v in got)
    if not _finite(entry.get("bias")):
        raise ValueError(f"{where}: '{key}.bias' must be a finite number, got {entry.get('bias')!r:.80}; {RECALIBRATE}")
    return StageScore(values["weight"], float(entry["bias"]), values["mean"], values["scale"])


def check_features(features: Sequence[str] | None) -> tuple[str, ...]:
    """The feature names to fit on (all of :data:`FEATURES` for None), checked."""
    if features is None:
        return FEATURES
    chosen = tuple(features)
    unknown = [f for f in chosen if f not in FEATURES]
    if unknown or not chosen or len(set(chosen)) != len(chosen):
        raise ValueError(f"learned features must be distinct names from {', '.join(FEATURES)}; got {list(chosen)}")
    return chosen


def fit_learned(classes: Sequence[np.ndarray], temperatures: Sequence[float], gold: np.ndarray | None,
                lengths: np.ndarray | None, *, target: str = "reference", l2: float = 1e-3,
                features: Sequence[str] | None = None) -> LearnedScores:
    """One model per stage but the last, fitted on these rows only (the temperature rows of a calibration split).

    Args:
        classes: class logits ``[N, K]`` per stage (uncalibrated; divided by ``temperatures`` here).
        gold: ``[N]`` label ids (needed for ``target="gold"``).
        lengths: ``[N]`` row lengths (``runner.length``); needed when ``log_length`` is a feature.
        target: ``"reference"`` (stage ``k`` agrees with the last stage) or ``"gold"`` (stage ``k`` is right).
        l2: weight penalty of the logistic fit (on standardised features).
        features: the names to use (default: all of :data:`FEATURES`).
    """
    names = check_features(features)
    if target not in TARGETS:
        raise ValueError(f"learned target must be one of {', '.join(TARGETS)}, got {target!r}")
    if target == "gold" and gold is None:
        raise ValueError("learned target 'gold' needs gold labels")
    if "log_length" in names and lengths is None:
        raise ValueError("the learned score's log_length feature needs the rows' lengths: pass lengths= "
                         "(summon.adaptive.staged.row_lengths(predictor, examples)), or fit without that feature")
    probs = [(torch.as_tensor(np.asarray(c), dtype=torch.float64) / float(t)).softmax(-1)
             for c, t in zip(classes, temperatures, strict=True)]
    truth = (probs[-1].argmax(-1) if target == "reference" else torch.as_tensor(np.asarray(gold))).numpy()
    columns = [FEATURES.index(name) for name in names]
    stages: list[StageScore | None] = []
    for k, x in enumerate(all_stage_features(probs[:-1], lengths)):
        agree = (probs[k].argmax(-1).numpy() == truth).astype(np.float64)
        stages.append(StageScore.fit(x[:, columns].numpy(), agree, l2))
    return LearnedScores(names, target, float(l2), (*stages, None), len(truth))

"""The staged-predictor contract, and what every kind gets for implementing it.

Every predictor is a staged predictor — a plain model (the one-stage kind, :mod:`summon.adaptive.plain`), early
exit, a cascade, a progressive ensemble — and implements :class:`StagedPredictor`:

* ``task``, ``labels``, ``manifest``, ``path`` and ``num_stages``;
* ``runner()`` — a :class:`~summon.adaptive.executor.StageRunner` for the shared executor;
* ``inputs(examples)`` — canonical examples turned into stage-0 pieces (featurized, or as they are);
* ``measure_costs(examples, latency=)`` — :class:`~summon.measure.stage_costs.StageCosts` (FLOPs and ms), one
  call to the one measurement (:func:`~summon.measure.stage_costs.measure_costs`) naming the kind's reference;
* ``run_full(items)`` — the reference model alone, for measured speed-ups;
* ``save(directory)``.

:class:`StagedBase` turns that into the whole surface: full-depth stage logits, calibration with a typed
:class:`~summon.adaptive.calibration.Calibration` saved in the manifest, the knob
(``predict(texts, budget=0.4)``, ``max_drop=``, ``guaranteed=``/``delta=``, ``threshold=``, one per row if
need be), batched adaptive execution in bounded windows, and predictions that say which stage answered and
what it cost (:class:`Calibrated` holds the calibration state; a one-stage kind refuses calibration and a knob).
Evaluation and serving take any ``StagedPredictor``.

Each kind also gives an int8 copy of itself, ``quantized(quantization)`` (``summon.quantize``): its torch
models' linear layers dynamic int8 (:mod:`summon.models.quantize`), with no calibration (never carried over
from fp32), saved as the fp32 weights and a ``quantization`` manifest section that loading applies again.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from tqdm.auto import tqdm

from summon.adaptive.calibration import Calibration, CalibrationSpec, fit_calibration
from summon.adaptive.executor import (
    Execution,
    StageRunner,
    Wanted,
    collect_stage_logits,
    execute,
    row_thresholds,
)
from summon.adaptive.knob import (
    Knob,
    check_threshold,
    deadline_stage,
    one_stage_message,
    operating_point,
    threshold_for,
)
from summon.adaptive.scoring import Readout
from summon.adaptive.thresholds import OperatingPoint
from summon.data.spec import TaskData
from summon.data.words import entity_spans
from summon.measure.metrics import softmax
from summon.measure.stage_costs import StageCosts
from summon.models.quantize import Quantization, manifest_quantization
from summon.predictors.predictor import Prediction, as_batch, as_stream, canonical_inputs
from summon.predictors.saved import MANIFEST, read_json_manifest, update_manifest

logger = logging.getLogger(__name__)

WINDOW_ROWS = 4096  # rows executed together: bounds the states held between stages and the featurized inputs


@runtime_checkable
class StagedPredictor(Protocol):
    """The contract (see the module docstring)."""

    task: str
    labels: list[str]
    manifest: dict[str, Any]
    path: Path | None

    @property
    def num_stages(self) -> int: ...

    def runner(self) -> StageRunner: ...

    def inputs(self, examples: Sequence[dict[str, Any]]) -> list[Any]: ...

    def measure_costs(self, examples: Sequence[dict[str, Any]], *, latency: bool = True) -> StageCosts: ...

    def run_full(self, items: Sequence[Any], *, batch_size: int = 64) -> np.ndarray: ...

    def save(self, directory: str | Path) -> Path: ...

    def num_parameters(self) -> int: ...

    @property
    def device(self) -> Any: ...


class Calibrated:
    """What a kind's calibration is and how it is fitted and saved: the typed :class:`Calibration` kept in the
    manifest's ``adaptive`` section, the read-out and stage costs it gives, and :meth:`calibrate` on held-out
    data (refused for a one-stage kind: it has no choice to make)."""

    task: str
    labels: list[str]
    manifest: dict[str, Any]
    path: Path | None
    kind = "staged"
    calibrate_hint = "summon calibrate {where} --data SPLIT"

    # --- calibration state ------------------------------------------------------------------------

    @property
    def calibration(self) -> Calibration | None:
        """The typed calibration (None before :meth:`calibrate`), read from the manifest's ``adaptive`` section."""
        section = self.manifest.get("adaptive")
        if not section:
            return None
        cached = getattr(self, "_calibration", None)
        if cached is None or cached[0] is not section:
            where = str(Path(self.path) / MANIFEST) if self.path else MANIFEST
            cached = (section, Calibration.from_dict(section, where=where))
            self._calibration = cached
        return cached[1]

    @calibration.setter
    def calibration(self, value: Calibration | None) -> None:
        if value is None:
            self.manifest.pop("adaptive", None)
        else:
            self.manifest["adaptive"] = value.to_dict()

    @property
    def quantization(self) -> Quantization | None:
        """How the stages are quantised (the manifest's ``quantization`` section), or None for fp32."""
        return manifest_quantization(self.manifest, Path(self.path) / MANIFEST if self.path else MANIFEST)

    @property
    def adaptive(self) -> dict[str, Any] | None:
        """The raw ``adaptive`` manifest section (JSON), or None."""
        return self.manifest.get("adaptive")

    def require_calibration(self, what: str) -> Calibration:
        calibration = self.calibration
        if calibration is None:
            where = self.path or "PREDICTOR"
            raise ValueError(f"{what} needs calibrated thresholds: run `{self.calibrate_hint.format(where=where)}` "
                             "on held-out data first")
        return calibration

    def require_stages(self, what: str) -> None:
        """Refuse ``what`` (calibration, a knob) for a one-stage predictor: it has no choice to make."""
        if self.num_stages < 2:
            raise ValueError(one_stage_message(self.path, what))

    @property
    def costs(self) -> StageCosts:
        return self.require_calibration("stage costs").costs

    def readout(self) -> Readout:
        """The calibrated read-out, or temperature 1 and max-prob when uncalibrated."""
        calibration = self.calibration
        if calibration is None:
            return Readout("max_prob", [1.0] * self.num_stages, len(self.labels))
        return calibration.readout(len(self.labels))

    def stage_fractions(self, unit: str | None = None) -> list[float] | None:
        """Cost of answering at each stage as a fraction of the reference model (None before calibration; a
        one-stage predictor's only stage is the reference: ``[1.0]``)."""
        calibration = self.calibration
        if calibration is None:
            return [1.0] if self.num_stages == 1 else None
        return calibration.fractions(unit)

    # --- calibration ------------------------------------------------------------------------------

    def calibrate(self, data: TaskData, spec: CalibrationSpec | None = None, *, latency: bool = True,
                  batch_size: int = 64) -> Calibration:
        """Fit temperatures, measure stage costs and tabulate thresholds on held-out ``data``; keep the result.

        Call :meth:`save_calibration` to write it into the saved predictor (the previous one is kept).
        """
        spec = spec or CalibrationSpec()
        self.require_stages("calibration")
        if not data.has_labels:
            raise ValueError(f"{data.source}: calibration needs labels (temperatures are fitted by NLL)")
        if spec.token_reduce != CalibrationSpec.token_reduce:
            raise ValueError(f"token_reduce={spec.token_reduce!r} turns a tagger's word scores into a sentence score; "
                             f"this {self.kind} predictor answers whole inputs: leave token_reduce out")
        raws = self.stage_logits(data.examples, batch_size=batch_size, progress="calibration pass")
        gold = np.array([ex["label"] for ex in data.examples])
        lengths = row_lengths(self, data.examples) if spec.policy == "learned" else None
        costs = self.measure_costs(data.examples, latency=latency or spec.cost_unit == "ms")
        calibration = fit_calibration(raws, gold, costs, spec, num_labels=len(self.labels), data=data.source,
                                      lengths=lengths)
        self.calibration = calibration
        return calibration

    def save_calibration(self, directory: str | Path | None = None) -> None:
        """Write the calibration into the saved manifest, keeping the one it replaces under ``adaptive_previous``."""
        directory = Path(directory or self.path or "")
        if not (directory / MANIFEST).is_file():
            raise ValueError(f"{directory}: no saved predictor to write the calibration into; save it first")
        old = (read_json_manifest(directory) or {}).get("adaptive")
        entries: dict[str, Any] = {"adaptive": self.manifest.get("adaptive")}
        if old and old != entries["adaptive"]:
            entries["adaptive_previous"] = old
            self.manifest["adaptive_previous"] = old
        update_manifest(directory, **entries)


class StagedBase(Calibrated):
    """The knob, batched execution and predictions for any :class:`StagedPredictor` (its calibration state:
    :class:`Calibrated`)."""

    reports_fallback = False  # predictions carry ``fallback`` (kinds whose later stages may fail to answer)

    # --- the knob ---------------------------------------------------------------------------------

    def operating_point(self, knob: Knob | None = None, **values: Any) -> OperatingPoint | None:
        """The threshold-table point a knob selects (``budget=``, ``max_drop=``, ``guaranteed=``...)."""
        return operating_point(self.calibration, knob or Knob.of(**values), stages=self.num_stages, where=self.path)

    def threshold_for(self, knob: Knob | None = None, **values: Any) -> float:
        """The confidence threshold a knob sets (``inf`` runs every input to the last stage)."""
        return threshold_for(self.calibration, knob or Knob.of(**values), stages=self.num_stages, where=self.path)

    # --- running ----------------------------------------------------------------------------------

    def stage_logits(self, examples: Sequence[dict[str, Any]], *, batch_size: int = 64,
                     progress: bool | str = False) -> list[np.ndarray]:
        """Uncalibrated logits of every stage on every example at full depth: ``[N, W]`` per stage."""
        parts: list[list[np.ndarray]] = [[] for _ in range(self.num_stages)]
        runner, readout = self.runner(), self.readout()
        desc = progress if isinstance(progress, str) else "stage logits"
        for window in tqdm(list(_windows(examples)), desc=desc, disable=not progress, leave=False):
            for k, raw in enumerate(collect_stage_logits(runner, self.inputs(window), readout,
                                                         batch_size=batch_size)):
                parts[k].append(raw)
        return [np.concatenate(p) if p else np.zeros((0, len(self.labels)), np.float32) for p in parts]

    def run(self, items: Sequence[Any], threshold: float | Sequence[float] | np.ndarray, *,
            batch_size: int = 64, progress: bool | str = False, wanted: Wanted | None = None) -> Execution:
        """Adaptive execution of stage-0 pieces (``inputs(examples)``) at one threshold or one per row
        (``progress``: a bar over windows of rows, a string its description; ``wanted``: rows no longer wanted
        stop being run, see :func:`~summon.adaptive.executor.execute`)."""
        limits = row_thresholds(threshold, len(items), self.num_stages)
        runner, readout = self.runner(), self.readout()
        starts = tqdm(range(0, len(items), WINDOW_ROWS), desc=progress if isinstance(progress, str) else "predict",
                      disable=not progress, leave=False)
        parts = [execute(runner, items[i:i + WINDOW_ROWS], readout, limits[i:i + WINDOW_ROWS], batch_size=batch_size,
                         wanted=None if wanted is None else partial(_offset, wanted, i))
                 for i in starts]
        if not parts:
            return execute(runner, [], readout, limits, batch_size=batch_size)
        return Execution.concat(parts)

    def reference_logits(self, examples: Sequence[dict[str, Any]]) -> list[Any]:
        """The reference model's raw logits per canonical example (what a logits server serves): every row
        through every stage."""
        return list(self.run_full(self.inputs(examples)))

    def run_examples(self, examples: Sequence[dict[str, Any]], threshold: float | Sequence[float] | np.ndarray, *,
                     batch_size: int = 64) -> Execution:
        """Adaptive execution of canonical examples, featurized one window at a time."""
        limits = row_thresholds(threshold, len(examples), self.num_stages)
        parts = [self.run(self.inputs(examples[i:i + WINDOW_ROWS]), limits[i:i + WINDOW_ROWS], batch_size=batch_size)
                 for i in range(0, len(examples), WINDOW_ROWS)]
        return Execution.concat(parts) if parts else self.run([], limits, batch_size=batch_size)

    def predict(self, inputs: Sequence[Any], *, budget: float | None = None, max_drop: float | None = None,
                threshold: float | Sequence[float] | None = None, guaranteed: float | None = None,
                delta: float = 0.1, unit: str | None = None, knob: Knob | None = None,
                deadline_ms: float | None = None, batch_size: int = 64) -> list[Prediction]:
        """Predict adaptively; one knob (``budget``, ``max_drop``, ``guaranteed`` with ``delta``, or
        ``threshold``) sets the operating point, else the calibrated default. A sequence of thresholds
        gives one per input. ``deadline_ms`` caps the call: no row goes past the last stage whose measured
        latency fits the whole batch in it (:meth:`deadline_stage`). Each prediction says which stage
        answered and what it cost.

        Raises:
            ValueError: For a ``deadline_ms`` that is not a positive number (``"5"``, ``True``, NaN, 0), before
                anything runs; and for the knob's own problems.
        """
        check_deadline(deadline_ms)
        inputs = as_batch(inputs)
        if threshold is not None and not np.isscalar(threshold):
            limit: Any = np.asarray(threshold, dtype=np.float64)
            for value in np.unique(limit):  # one check per distinct value: NaN and out-of-range refused
                check_threshold(float(value), self.calibration, stages=self.num_stages, where=self.path)
        else:
            limit = self.threshold_for(knob or Knob.of(budget=budget, max_drop=max_drop, threshold=threshold,
                                                       guaranteed=guaranteed, delta=delta, unit=unit))
        limit = self.capped(limit, len(inputs), deadline_ms)
        examples = canonical_inputs(self.task, inputs)
        result = self.run_examples(examples, limit, batch_size=batch_size)
        return self.predictions(result, unit=unit, inputs=inputs, examples=examples)

    def capped(self, limit: Any, rows: int, deadline_ms: float | None) -> Any:
        """Thresholds ``limit`` for ``rows`` rows with ``-inf`` from the stage ``deadline_ms`` allows on (rows stop
        there at the latest); ``limit`` as it is without a deadline."""
        if deadline_ms is None:
            return limit
        limit = row_thresholds(limit, rows, self.num_stages).copy()
        limit[:, self.deadline_stage(deadline_ms, rows):] = -np.inf
        return limit

    def deadline_stage(self, deadline_ms: float, rows: int) -> int:
        """The last stage whose measured latency (per example, at the calibration's batch size) lets ``rows``
        rows finish within ``deadline_ms`` (:func:`~summon.adaptive.knob.deadline_stage`)."""
        costs = None if self.num_stages == 1 else self.require_calibration("deadline_ms").costs
        return deadline_stage(costs and costs.ms, deadline_ms, rows, stages=self.num_stages,
                              where=costs and costs.device)

    def predictions(self, result: Execution, *, unit: str | None = None, inputs: Sequence[Any] | None = None,
                    examples: Sequence[dict[str, Any]] | None = None) -> list[Prediction]:
        """:class:`Prediction` objects of an execution result (``inputs``/``examples``: what it answered, which
        taggers need for their words and spans), each with the stage that answered and its cost."""
        fractions = self.stage_fractions(unit)
        costs = [None if fractions is None else fractions[int(k)] for k in result.stage]
        if self.task == "token_classification":
            return tag_predictions(self.labels, result, costs, inputs, examples)
        probs = softmax(result.logits.astype(np.float64))
        out = []
        for p, k, cost, fell in zip(probs, result.stage, costs, result.fallback, strict=True):
            j = int(p.argmax())
            out.append(Prediction(label=self.labels[j], label_id=j, probs=[float(x) for x in p], stage=int(k),
                                  cost=cost, fallback=bool(fell) if self.reports_fallback else None))
        return out

    def iter_predict(self, inputs: Iterable[Any], *, knob: Knob | None = None, batch_size: int = 64,
                     window: int = 1024, deadline_ms: float | None = None) -> Iterator[Prediction]:
        """Predictions for an input stream (a file larger than memory), one window of rows at a time;
        ``deadline_ms`` caps each window as :meth:`predict` caps a call."""
        check_deadline(deadline_ms)
        knob = knob or Knob()
        limit = self.threshold_for(knob)
        iterator = as_stream(inputs)
        while chunk := list(itertools.islice(iterator, window)):
            examples = canonical_inputs(self.task, chunk)
            result = self.run_examples(examples, self.capped(limit, len(chunk), deadline_ms), batch_size=batch_size)
            yield from self.predictions(result, unit=knob.unit, inputs=chunk, examples=examples)


def check_deadline(deadline_ms: Any) -> None:
    """``deadline_ms`` is None or a positive number of milliseconds (an int or a float, not a bool nor a string);
    else a ``ValueError`` that names the argument and what was given."""
    if deadline_ms is None:
        return
    number = isinstance(deadline_ms, int | float | np.integer | np.floating) and not isinstance(deadline_ms, bool)
    if not number or not deadline_ms > 0:
        raise ValueError(f"deadline_ms must be a number of milliseconds greater than 0, e.g. deadline_ms=5, got "
                         f"{deadline_ms!r:.40} ({type(deadline_ms).__name__})")


def tag_predictions(labels: Sequence[str], result: Execution, costs: Sequence[float | None],
                    inputs: Sequence[Any] | None, examples: Sequence[dict[str, Any]] | None) -> list[Prediction]:
    """Tags and entity spans per sentence, with the stage that answered and its cost: the one tag/span path of
    every tagger (``result.logits``: one ``[words, K]`` array per row)."""
    if examples is None:
        raise ValueError("a tagger's predictions need the examples they answer (their words)")
    inputs = inputs if inputs is not None else [None] * len(examples)
    out = []
    for item, ex, logits, k, cost in zip(inputs, examples, result.logits, result.stage, costs, strict=True):
        tags = [labels[j] for j in np.asarray(logits).argmax(axis=-1)] if len(logits) else []
        text = item if isinstance(item, str) else " ".join(ex["tokens"])
        out.append(Prediction(tokens=ex["tokens"], tags=tags, spans=entity_spans(text, ex["tokens"], tags),
                              stage=int(k), cost=cost))
    return out


def row_lengths(predictor: StagedPredictor, examples: Sequence[dict[str, Any]]) -> np.ndarray:
    """Each example's length as the executor knows it (``runner.length`` of its stage-0 piece): ``[N]``.

    The ``learned`` scorer reads it (``log_length``); calibration and evaluation pass it to
    :func:`~summon.adaptive.scoring.score_all` so offline scores equal the ones the executor computes.
    """
    runner = predictor.runner()
    sizes = [runner.length(item) for window in _windows(examples) for item in predictor.inputs(window)]
    return np.asarray(sizes, dtype=np.float64)


def _windows(examples: Sequence[Any]) -> list[Sequence[Any]]:
    return [examples[i:i + WINDOW_ROWS] for i in range(0, len(examples), WINDOW_ROWS)]


def _offset(wanted: Wanted, start: int, rows: np.ndarray) -> np.ndarray:
    """``wanted`` of a window's rows, which start at row ``start`` of the whole run."""
    return wanted(rows + start)

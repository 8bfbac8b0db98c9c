"""The staged-predictor contract: every registered kind goes through the same checks, as timm tests every
registered model. A new kind registers itself in ``summon.adaptive.kinds.KINDS`` and adds a factory here;
the first test fails until it does. Every predictor is a kind: the plain model is the one-stage kind ``plain``
(a classifier and a tagger here), whose knob and calibration are refused in one place.

Checks: the contract's shape (stages, stage logits, costs and what their milliseconds include), calibration into
a typed value, table replay (the executor reproduces the calibration table's stage counts on its own rows),
batched equals one by one (also with one threshold per row), save/load round trip of weights and calibration,
the knob monotone in cost, streaming predictions, the one evaluation (curves with both oracles, report entry),
and serving through the one engine with ``deadline_ms``.
Models are tiny and untrained: the checks are about plumbing, not accuracy.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

import summon
from summon.adaptive.calibration import Calibration, CalibrationSpec, split_rows
from summon.adaptive.cascade import build_cascade
from summon.adaptive.kinds import KINDS, staged_kind
from summon.adaptive.knob import Knob
from summon.adaptive.scoring import pad_words
from summon.adaptive.staged import StagedPredictor
from summon.data.spec import TaskData
from summon.evaluation.adaptive import evaluate_adaptive
from summon.evaluation.runner import evaluate_staged
from summon.measure.stage_costs import MS_INCLUDES
from summon.models import ModelConfig, build_model
from summon.models.member import hidden_width
from summon.predictors.predictor import Predictor, canonical_inputs
from summon.predictors.saved import read_json_manifest, save_ensemble
from summon.serve.engine import Engine

LABELS = ["neg", "pos"]
TAGS = ["O", "B-GOOD", "I-GOOD"]
WORDS = "good bad great awful fine dull fun boring nice poor film plot story acting music".split()


def _texts(n: int, seed: int) -> list[str]:
    gen = np.random.default_rng(seed)
    return [" ".join(gen.choice(WORDS, size=int(gen.integers(1, 12)))) for _ in range(n)]


def _data(n: int = 120, seed: int = 0, *, kind: str = "") -> TaskData:
    texts = _texts(n, seed)
    if kind in TAGGERS:  # a word is a GOOD entity when it is a good word (a run of them is one span)
        examples = []
        for t in texts:
            words = t.split()
            good = [w in ("good", "great", "fun") for w in words]
            tags = [0 if not g else (2 if i and good[i - 1] else 1) for i, g in enumerate(good)]
            examples.append({"tokens": words, "tags": tags})
        return TaskData("token_classification", TAGS, examples, f"synthetic-tags:{seed}")
    examples = [{"text": t, "label": int(("good" in t) or ("great" in t) or ("fun" in t))} for t in texts]
    return TaskData("classification", LABELS, examples, f"synthetic:{seed}")


def _answer(p) -> tuple:
    """What must match between two runs of one row: the label or the tags, the stage and the cost."""
    return p.label, tuple(p.tags or ()), p.stage, p.cost


def _save_plain(cfg: ModelConfig, directory) -> str:
    built = build_model(cfg, "classification", len(LABELS))
    Predictor(built.model, built.featurizer, "classification", LABELS, {"architecture": built.architecture}).save(
        directory, architecture=built.architecture)
    return str(directory)


def plain(root) -> str:
    return _save_plain(ModelConfig(kind="random", name="tiny-bert", num_layers=2, max_length=32, init_seed=8),
                       root / "plain")


def plain_tagger(root) -> str:
    cfg = ModelConfig(kind="random", name="tiny-bert", num_layers=2, max_length=32, init_seed=9)
    built = build_model(cfg, "token_classification", len(TAGS))
    Predictor(built.model, built.featurizer, "token_classification", TAGS, {"architecture": built.architecture}).save(
        root / "plain_tagger", architecture=built.architecture)
    return str(root / "plain_tagger")


def early_exit(root) -> str:
    cfg = ModelConfig(kind="random", name="tiny-bert", num_layers=3, exits="all", max_length=32, init_seed=1)
    return _save_plain(cfg, root / "exits")


def token_early_exit(root) -> str:
    cfg = ModelConfig(kind="random", name="tiny-bert", num_layers=3, exits="all", max_length=32, init_seed=7)
    built = build_model(cfg, "token_classification", len(TAGS))
    Predictor(built.model, built.featurizer, "token_classification", TAGS, {"architecture": built.architecture}).save(
        root / "tagger", architecture=built.architecture)
    return str(root / "tagger")


def cascade(root) -> str:
    ngram = _save_plain(ModelConfig(kind="ngram", num_buckets=256, embed_dim=8, init_seed=2), root / "ngram")
    bert = _save_plain(ModelConfig(kind="random", name="tiny-bert", num_layers=2, max_length=32, init_seed=3),
                       root / "bert")
    build_cascade([ngram, bert]).save(root / "cascade")
    return str(root / "cascade")


def progressive(root) -> str:
    """Two untrained members: an n-gram model, then a tiny-bert composed with its hidden layer (width 8)."""
    first = build_model(ModelConfig(kind="ngram", num_buckets=256, embed_dim=8, init_seed=4), "classification",
                        len(LABELS))
    width = hidden_width(first.model)
    second = build_model(ModelConfig(kind="random", name="tiny-bert", num_layers=2, max_length=32, init_seed=5,
                                     compose_from=width), "classification", len(LABELS))
    with torch.no_grad():  # a non-zero projection, so the composition is exercised
        second.model.project.weight.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(6))
    dirs = []
    for name, built in (("member0", first), ("member1", second)):
        Predictor(built.model, built.featurizer, "classification", LABELS, {"architecture": built.architecture}).save(
            root / name, architecture=built.architecture)
        dirs.append(root / name)
    return str(save_ensemble(root / "progressive", [(dirs[0], {"name": "ngram", "alpha": 0.7, "composed": False}),
                                                    (dirs[1], {"name": "bert", "alpha": 0.5, "composed": True})],
                             "classification", LABELS))


FACTORIES = {"plain": plain, "plain_tagger": plain_tagger, "early_exit": early_exit, "cascade": cascade,
             "progressive": progressive, "token_early_exit": token_early_exit}
KIND_OF = {"plain_tagger": "plain"}  # a case named otherwise than its kind
TAGGERS = {"token_early_exit", "plain_tagger"}  # cases that tag words: their data and answers are tag sequences


def test_every_registered_kind_has_a_contract_factory():
    covered = {KIND_OF.get(name, name) for name in FACTORIES}
    assert sorted(KINDS.names()) == sorted(covered), "register the new kind's factory in FACTORIES"


@pytest.fixture(scope="module", params=sorted(FACTORIES))
def kind(request, tmp_path_factory):
    """A saved predictor of each kind, calibrated when it has a choice to make (two stages or more), and its
    calibration data."""
    root = tmp_path_factory.mktemp(request.param)
    path = FACTORIES[request.param](root)
    predictor = summon.load(path, device="cpu")
    data = _data(kind=request.param)
    if predictor.num_stages > 1:
        summon.calibrate(predictor, data, max_drop=0.05, latency=False)
    return {"name": request.param, "kind": KIND_OF.get(request.param, request.param), "path": path,
            "predictor": summon.load(path, device="cpu"), "data": data}


def staged_only(kind) -> None:
    """Skip a check of the knob or the calibration for a one-stage kind (test_one_stage_refuses_... covers it)."""
    if kind["predictor"].num_stages == 1:
        pytest.skip("one stage: no knob, no calibration (refused, see test_one_stage_refuses_a_knob_and_calibration)")


def _split_threshold(predictor, texts) -> float:
    """A threshold between stage-0 scores, so some rows stop at once and some go on."""
    raws = predictor.stage_logits(canonical_inputs(predictor.task, texts))
    first = pad_words(raws[0], len(predictor.labels)) if predictor.task == "token_classification" else \
        torch.from_numpy(raws[0])
    scores = predictor.readout()(0, first)[1].numpy()
    values = np.unique(scores)
    mids = (values[:-1] + values[1:]) / 2
    return float(mids[len(mids) // 2])


def test_the_contract_and_its_kind(kind):
    predictor = kind["predictor"]
    assert isinstance(predictor, StagedPredictor) and predictor.num_stages >= 1
    assert (predictor.num_stages == 1) == (kind["kind"] == "plain")
    assert staged_kind(read_json_manifest(kind["path"])).name == kind["kind"] == predictor.kind
    raws = predictor.stage_logits(kind["data"].examples[:10])
    assert len(raws) == predictor.num_stages and all(r.shape[0] == 10 for r in raws)
    costs = predictor.measure_costs(kind["data"].examples[:20], latency=True)
    assert len(costs.flops) == predictor.num_stages and costs.flops == sorted(costs.flops)
    assert costs.ms is not None and costs.device == "cpu"
    assert costs.ms_includes == MS_INCLUDES and "featurisation" in costs.ms_includes  # one meaning of "ms"
    assert predictor.num_parameters() > 0 and str(predictor.device) == "cpu"


def test_one_stage_refuses_a_knob_and_calibration(kind):
    predictor = kind["predictor"]
    if predictor.num_stages > 1:
        pytest.skip("a kind with stages to choose between takes a knob")
    for knob in ({"budget": 0.5}, {"max_drop": 0.01}, {"threshold": 0.9}, {"guaranteed": 0.01}):
        with pytest.raises(ValueError, match="has one stage, so it has no knob"):
            predictor.predict(_texts(2, 1), **knob)
    with pytest.raises(ValueError, match="has one stage, so it has no stages to calibrate"):
        summon.calibrate(predictor, kind["data"], latency=False)
    assert predictor.stage_fractions() == [1.0] and predictor.threshold_for() == np.inf


def test_the_executor_replays_the_calibration_table_on_its_rows(kind):
    """Every operating point's stage counts, tabulated offline from the threshold rows' stage logits, are what the
    one executor realises on those rows at that point's threshold."""
    staged_only(kind)
    predictor, data = kind["predictor"], kind["data"]
    calibration = predictor.calibration
    _, rows = split_rows(len(data.examples), calibration.spec.temperature_fraction, calibration.spec.seed)
    items = predictor.inputs([data.examples[i] for i in rows])
    mismatched = []
    for point in calibration.table.points:
        counts = np.bincount(predictor.run(items, point.threshold).stage, minlength=predictor.num_stages).tolist()
        if counts != point.exit_counts:
            mismatched.append((point.threshold, point.exit_counts, counts))
    assert calibration.table.n == len(rows) and len(calibration.table.points) > 1
    assert not mismatched, f"{len(mismatched)} points differ (threshold, table, realised): {mismatched[:5]}"


def test_every_kind_is_served_by_the_one_engine_with_a_deadline(kind):
    predictor = kind["predictor"]
    texts = _texts(6, 10)
    with Engine({"m": predictor}, max_batch_rows=4) as engine:
        result = engine.submit("m", texts, deadline_ms=60_000).result(timeout=60)
    assert [_answer(p) for p in result.predictions] == [_answer(p) for p in predictor.predict(texts)]


def test_calibration_is_typed_and_read_back_from_the_manifest(kind):
    staged_only(kind)
    predictor = kind["predictor"]
    calibration = predictor.calibration
    assert isinstance(calibration, Calibration) and len(calibration.temperatures) == predictor.num_stages
    assert calibration.default.rule == "max_drop" and calibration.default.value == 0.05
    assert calibration.spec == CalibrationSpec(rule="max_drop", value=0.05)
    saved = read_json_manifest(kind["path"])["adaptive"]
    assert Calibration.from_dict(saved).to_dict() == json.loads(json.dumps(calibration.to_dict()))


def check_batched_equals_one_by_one(predictor, texts, threshold: float) -> None:
    """At ``threshold`` (one that splits the rows across stages), batches of 5 answer as each row alone does."""
    batched = predictor.predict(texts, threshold=threshold, batch_size=5)
    assert len({p.stage for p in batched}) >= 2, "the threshold should split the rows"
    for text, together in zip(texts, batched, strict=True):
        alone = predictor.predict([text], threshold=threshold, batch_size=1)[0]
        assert _answer(alone) == _answer(together)
        if alone.probs is not None:
            np.testing.assert_allclose(alone.probs, together.probs, atol=1e-5)


def test_batched_equals_one_by_one(kind):
    predictor, texts = kind["predictor"], _texts(24, 5)
    if predictor.num_stages == 1:  # no threshold: the only stage answers every row
        batched = predictor.predict(texts, batch_size=5)
        for text, together in zip(texts, batched, strict=True):
            alone = predictor.predict([text], batch_size=1)[0]
            assert _answer(alone) == _answer(together)
            if alone.probs is not None:
                np.testing.assert_allclose(alone.probs, together.probs, atol=1e-5)
        return
    check_batched_equals_one_by_one(predictor, texts, _split_threshold(predictor, texts))


class _CountingRunner:
    """A kind's stage runner that records the rows of every batch it runs, per stage."""

    def __init__(self, inner, ran):
        self._inner, self._ran = inner, ran

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def run(self, stage, state):
        state, raw = self._inner.run(stage, state)
        self._ran[stage] += len(raw)
        return state, raw


def test_rows_no_longer_wanted_stop_being_run(kind, monkeypatch):
    """What a server relies on when a client leaves: the executor asks ``wanted`` before every stage batch, never
    runs the rows it drops, and answers the others as a full run does."""
    predictor = kind["predictor"]
    items = predictor.inputs(canonical_inputs(predictor.task, _texts(20, 8)))
    full = predictor.run(items, np.inf, batch_size=4)
    ran = [0] * predictor.num_stages
    make_runner = predictor.runner
    monkeypatch.setattr(predictor, "runner", lambda: _CountingRunner(make_runner(), ran))
    asked = []

    def even_only(rows):
        asked.append(len(rows))
        return rows % 2 == 0

    part = predictor.run(items, np.inf, batch_size=4, wanted=even_only)
    assert ran == [10] * predictor.num_stages and asked  # every stage ran the 10 wanted rows only
    for row in range(0, 20, 2):
        assert part.stage[row] == full.stage[row] == predictor.num_stages - 1
        np.testing.assert_allclose(np.asarray(part.logits[row], dtype=np.float64),
                                   np.asarray(full.logits[row], dtype=np.float64), atol=1e-5)


def test_one_threshold_per_row_equals_each_row_at_its_own(kind):
    staged_only(kind)
    predictor = kind["predictor"]
    texts = _texts(12, 6)
    per_row = np.where(np.arange(12) % 3 == 0, -np.inf, np.inf)
    out = predictor.predict(texts, threshold=per_row)
    assert [p.stage for p in out] == [0 if i % 3 == 0 else predictor.num_stages - 1 for i in range(12)]


def test_save_and_load_round_trip(kind, tmp_path):
    predictor = kind["predictor"]
    texts = _texts(16, 7)
    before = [p.to_dict() for p in predictor.predict(texts)]
    again = summon.load(kind["path"], device="cpu")
    assert again.kind == predictor.kind
    if predictor.calibration is not None:
        assert again.calibration.to_dict() == predictor.calibration.to_dict()
    after = [p.to_dict() for p in again.predict(texts)]
    keys = ("label", "tags", "stage", "cost")
    assert [[a.get(k) for k in keys] for a in after] == [[b.get(k) for k in keys] for b in before]
    if "probs" in before[0]:
        np.testing.assert_allclose([a["probs"] for a in after], [b["probs"] for b in before], atol=1e-6)


def test_the_knob_is_monotone_in_cost(kind):
    staged_only(kind)
    predictor = kind["predictor"]
    texts = [ex.get("text") or " ".join(ex["tokens"]) for ex in kind["data"].examples]
    thresholds = sorted({p.threshold for p in predictor.calibration.table.points})[:: 5]
    costs = [np.mean([p.cost for p in predictor.predict(texts, threshold=t)]) for t in thresholds]
    assert all(b >= a - 1e-12 for a, b in itertools.pairwise(costs)), costs
    budgets = sorted({p.cost for p in predictor.calibration.table.points})
    chosen = [predictor.operating_point(budget=b).cost for b in budgets]
    assert all(c <= b + 1e-12 for c, b in zip(chosen, budgets, strict=True))
    drops = [predictor.operating_point(max_drop=d).cost for d in (0.0, 0.02, 0.1, 0.5)]
    assert drops == sorted(drops, reverse=True)  # allowing a larger drop never costs more


def test_streaming_predictions_equal_predict(kind):
    predictor = kind["predictor"]
    texts = _texts(30, 8)
    knob = Knob(max_drop=0.1) if predictor.num_stages > 1 else Knob()
    streamed = [p.to_dict() for p in predictor.iter_predict(iter(texts), knob=knob, window=7)]
    direct = [p.to_dict() for p in predictor.predict(texts, knob=knob)]
    assert [(s.get("label"), s.get("tags"), s["stage"]) for s in streamed] == \
        [(d.get("label"), d.get("tags"), d["stage"]) for d in direct]


def test_one_evaluation_for_every_kind(kind, tmp_path):
    predictor, data = kind["predictor"], _data(60, 9, kind=kind["name"])
    if predictor.calibration is not None:  # the curves need a calibration (a one-stage kind has none to need)
        result = evaluate_adaptive(predictor, data, out_dir=tmp_path, title=kind["name"])
        assert result["kind"] == kind["kind"] and len(result["exit_accuracy"]) == predictor.num_stages
        assert result["oracle_agree_end"]["accuracy"] == pytest.approx(result["full_accuracy"])
        assert sum(result["chosen"]["exit_counts"]) == 60 and set(result["plots"]) == {"curve", "exits", "reliability"}
    entry = evaluate_staged(predictor, data, name=kind["name"], latency=True, batch_sizes=(1, 8), max_seconds=0.5)
    assert sum(entry["metrics"]["answered_by_stage"]) == 60 and entry["cost"]["machine"]["device"] == "cpu"
    assert set(entry["cost"]["latency"]) == {"1", "8"}
    if kind["name"] in TAGGERS:  # the answer's F1 from the one adaptive run (and span F1 per exit)
        assert 0.0 <= entry["metrics"]["f1"] <= 1.0
        assert predictor.calibration is None or len(result["exit_f1"]) == predictor.num_stages

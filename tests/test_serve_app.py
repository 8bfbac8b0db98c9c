"""``summon serve``'s HTTP app over the engine, with real requests on 127.0.0.1 (uvicorn in a thread): predictions
equal ``predictor.predict`` at the same knob, also for concurrent requests with mixed knobs; every refusal is
JSON with the right status (413 naming the limit, 422 naming the input or the cheapest knob, 404, 503/429 with
Retry-After, 504, 500 without a traceback); readiness through warm-up and draining; Prometheus metrics; the
request id and timing headers; a cascade whose remote teacher fails answering from its student, marked degraded;
the demo page; the ``summon serve`` command line.

Models are tiny and untrained (the staged-contract factories): the checks are about plumbing, not accuracy.
Slow and failing models are wrappers whose ``predict`` waits on an event or raises, so nothing depends on timing.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import call, find_free_port, serving
from test_staged_contract import _data, _split_threshold, _texts, cascade, early_exit

import summon
from summon.adaptive.cascade import CascadePredictor
from summon.adaptive.knob import Knob
from summon.adaptive.plain import PlainPredictor
from summon.adaptive.remote import RemoteStage
from summon.cli.main import build_parser, main
from summon.core.options import given
from summon.models import ModelConfig, build_model
from summon.predictors.predictor import Prediction, Predictor
from summon.serve.control import ControlConfig
from summon.serve.engine import (
    DeadlineUnmeetable,
    Draining,
    Engine,
    EngineConfig,
    InfeasibleKnob,
    QueueFull,
    Result,
    TooLarge,
    UnknownModel,
    json_float,
)

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
prometheus_parser = pytest.importorskip("prometheus_client.parser")

from summon.serve.app import answer_body, create_server_app, refusal  # noqa: E402
from summon.serve.logits_server import create_app  # noqa: E402
from summon.serve.options import ServeOptions  # noqa: E402

BUDGET = 0.6
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A calibrated early-exit model, a calibrated cascade of two local stages, and a plain predictor."""
    root = tmp_path_factory.mktemp("serve")
    exits = summon.load(early_exit(root), device="cpu")
    summon.calibrate(exits, _data(120, 0), budget=BUDGET, latency=False)
    chain = summon.load(cascade(root), device="cpu")
    summon.calibrate(chain, _data(120, 0), max_drop=0.05, latency=False)
    built = build_model(ModelConfig(kind="ngram", num_buckets=256, embed_dim=8, init_seed=7), "classification", 2)
    plain = PlainPredictor(built.model, built.featurizer, "classification", ["neg", "pos"],
                           {"architecture": built.architecture})  # what summon.load gives for a plain folder
    return SimpleNamespace(exits=exits, chain=chain, plain=plain, root=root)


# --- helpers ------------------------------------------------------------------------------------------------


def predict(url: str, payload, **kwargs):
    return call(url, "/v1/predict", payload, **kwargs)


def wait_ready(url: str, seconds: float = 30.0) -> None:
    until = time.monotonic() + seconds
    while call(url, "/ready")[0] != 200:
        assert time.monotonic() < until, call(url, "/ready")
        time.sleep(0.02)


@contextlib.contextmanager
def server(models: dict, *, ready: bool = True, engine: dict | None = None, **options):
    """An app over a new engine, run with its lifespan (it starts, warms up and, on leaving, drains the engine)."""
    eng = Engine(models, **{"max_wait_ms": 1.0, **(engine or {})})
    app = create_server_app(eng, **{"warmup_sizes": (1, 2), "drain_seconds": 5.0, **options})
    with serving(app, lifespan="on") as url:
        if ready:
            wait_ready(url)
        yield SimpleNamespace(url=url, app=app, engine=eng)
    assert not eng.ready  # the lifespan's shutdown stopped the engine


@pytest.fixture(scope="module")
def main_server(models):
    with server({"exits": models.exits, "plain": models.plain}, engine={"controller": False, "max_wait_ms": 20.0}) as s:
        yield s


class Gated(PlainPredictor):
    """A plain predictor whose runs wait until ``gate`` is set (open at first, for the warm-up)."""

    def __init__(self, inner: PlainPredictor):
        super().__init__(inner.model, inner.featurizer, inner.task, inner.labels, inner.manifest, inner.path)
        self.gate = threading.Event()
        self.gate.set()

    def run(self, items, threshold, **kwargs):
        assert self.gate.wait(timeout=20), "the test never opened the gate"
        return super().run(items, threshold, **kwargs)


class Broken(PlainPredictor):
    """A plain predictor whose every run fails with a message a client must not see."""

    def __init__(self, inner: PlainPredictor):
        super().__init__(inner.model, inner.featurizer, inner.task, inner.labels, inner.manifest, inner.path)

    def run(self, items, threshold, **kwargs):
        raise RuntimeError("secret /internal/path exploded")


class Delayed:
    """A teacher for the logits server whose answers can be made to take ``delay`` seconds."""

    def __init__(self, inner: Predictor):
        self.inner, self.task, self.labels, self.manifest = inner, inner.task, inner.labels, inner.manifest
        self.delay = 0.0

    def logits(self, examples, **kwargs):
        time.sleep(self.delay)
        return self.inner.logits(examples, **kwargs)


def _until(check, seconds: float = 10.0) -> None:
    until = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < until, "timed out waiting"
        time.sleep(0.005)


def _same(rows: list[dict], alone) -> None:
    assert [(r["label"], r["stage"], r["cost"]) for r in rows] == [(p.label, p.stage, p.cost) for p in alone]
    np.testing.assert_allclose([r["probs"] for r in rows], [p.probs for p in alone], atol=1e-5)


# --- predictions --------------------------------------------------------------------------------------------


def test_predictions_equal_predict_at_the_same_knob(main_server, models):
    predictor = models.exits
    texts = _texts(8, 1)
    split = _split_threshold(predictor, texts)
    flops = predictor.calibration.costs.flops
    for knob in ({}, {"budget": BUDGET}, {"max_drop": 0.1}, {"threshold": split}, {"threshold": "-inf"}):
        status, head, answer = predict(main_server.url, {"model": "exits", "inputs": texts, "knob": knob})
        assert status == 200, answer
        expected = Knob(**{k: float(v) for k, v in knob.items()})
        _same(answer["predictions"], predictor.predict(texts, knob=expected))
        assert [r["flops"] for r in answer["predictions"]] == [flops[r["stage"]] for r in answer["predictions"]]
        point = answer["operating_point"]
        assert point["threshold"] == json_float(predictor.threshold_for(expected)) and point["requested"] == knob
        assert answer["degraded"] is False and not any(r["degraded"] for r in answer["predictions"])
        assert float(head["x-queue-time"]) >= 0 and float(head["x-inference-time"]) > 0
        assert float(head["x-total-time"]) >= float(head["x-inference-time"])


def test_the_request_id_is_echoed_or_made(main_server):
    status, head, answer = predict(main_server.url, {"inputs": ["a film"]}, headers={"x-request-id": "req-42"})
    assert status == 200 and head["x-request-id"] == "req-42" and answer["request_id"] == "req-42"
    assert answer["model"] == "exits"  # the first model is the default
    _, head, answer = predict(main_server.url, {"inputs": ["a film"]})
    assert len(head["x-request-id"]) == 32 and answer["request_id"] == head["x-request-id"]
    _, head, _ = predict(main_server.url, {"inputs": ["a film"]}, headers={"x-request-id": "bad id with spaces"})
    assert head["x-request-id"] != "bad id with spaces"
    status, head, _ = call(main_server.url, "/health", headers={"x-request-id": "h1"})
    assert status == 200 and head["x-request-id"] == "h1" and "x-total-time" in head


def test_concurrent_requests_with_mixed_knobs(main_server, models):
    predictor = models.exits
    texts = _texts(36, 2)
    knobs = [{}, {"budget": BUDGET}, {"threshold": _split_threshold(predictor, texts)}, {"max_drop": 0.1}]
    jobs = [(texts[i * 3:i * 3 + 3], knobs[i % len(knobs)], "low" if i % 3 else "high") for i in range(12)]
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda job: predict(main_server.url, {"inputs": job[0], "knob": job[1],
                                                                       "priority": job[2]}), jobs))
    for (chunk, knob, _), (status, _, answer) in zip(jobs, answers, strict=True):
        assert status == 200, answer
        _same(answer["predictions"], predictor.predict(chunk, knob=Knob(**knob)))


def test_a_plain_model_answers_without_a_knob_and_refuses_one(main_server, models):
    texts = _texts(4, 3)
    status, _, answer = predict(main_server.url, {"model": "plain", "inputs": texts})
    assert status == 200 and [r["label"] for r in answer["predictions"]] == [p.label for p in models.plain.predict(texts)]
    assert answer["operating_point"]["knob"] == {} and "flops" not in answer["predictions"][0]
    status, _, answer = predict(main_server.url, {"model": "plain", "inputs": texts, "knob": {"budget": 0.5}})
    assert status == 422 and "has one stage, so it has no knob" in answer["error"]
    assert answer["reason"] == "infeasible_knob"
    assert predict(main_server.url, {"inputs": []})[2]["predictions"] == []


# --- refusals -----------------------------------------------------------------------------------------------


def test_an_infeasible_knob_is_422_with_the_cheapest_value(main_server, models):
    cheapest = min(p.cost for p in models.exits.calibration.table.points)
    status, _, answer = predict(main_server.url, {"inputs": ["a film"], "knob": {"budget": cheapest / 2}})
    assert status == 422 and answer["cheapest"] == pytest.approx(cheapest) and "budget" in answer["error"]
    status, _, answer = predict(main_server.url, {"inputs": ["a film"], "knob": {"budgt": 0.4}})
    assert status == 422 and "unknown knob key" in answer["error"]
    status, _, answer = predict(main_server.url, {"inputs": ["a film"], "knob": {"budget": 0.5, "threshold": 0.5}})
    assert status == 422


@pytest.mark.parametrize(("payload", "needle", "index"), [
    ({"inputs": ["fine", 3]}, "input 1: expected a string", 1),
    ({"inputs": [{"text": "fine"}, {"txt": "no"}]}, "input 1: no 'text'", 1),
    ({"inputs": [["a", "pair"]]}, "pair task", 0),
    ({"inputs": ["fine", "bad \ud800 surrogate"]}, "input 1", 1),
    ({"inputs": "one text"}, "'inputs' must be a list", None),
    ({"text": "x"}, "unknown field(s) 'text'", None),
    ({}, "'inputs' must be a list of inputs, got nothing", None),
    ({"inputs": ["x"], "priority": "urgent"}, "'priority' must be 'high' or 'low'", None),
    ({"inputs": ["x"], "deadline_ms": -5}, "'deadline_ms' must be a positive number", None),
    ({"inputs": ["x"], "model": 3}, "'model' must be a string", None),
    ([1, 2], "expected a JSON object", None),
])
def test_bad_requests_are_422_naming_what_is_wrong(main_server, payload, needle, index):
    status, _, answer = predict(main_server.url, payload)
    assert status == 422 and needle in answer["error"], answer
    assert answer.get("index") == index


def test_a_body_that_is_not_json_is_422(main_server):
    status, _, answer = predict(main_server.url, None, body=b"{not json")
    assert status == 422 and "not JSON" in answer["error"]
    status, _, answer = predict(main_server.url, None, body=b"\xff\xfe")
    assert status == 422


def test_unknown_models_and_paths_are_404_json(main_server):
    status, _, answer = predict(main_server.url, {"model": "exit", "inputs": ["x"]})
    assert status == 404 and "Did you mean 'exits'" in answer["error"] and answer["reason"] == "unknown_model"
    status, _, answer = call(main_server.url, "/v2/predict")
    assert status == 404 and "POST /v1/predict" in answer["error"]
    status, _, answer = call(main_server.url, "/v1/predict")
    assert status == 405 and "GET is not allowed" in answer["error"]


def test_limits_are_413_naming_the_limit(models):
    engine = {"max_request_rows": 3, "max_input_chars": 40}
    with server({"plain": models.plain}, engine=engine, max_rows=4, max_body_bytes=2048) as s:
        status, _, answer = predict(s.url, {"inputs": ["x"] * 5})
        assert (status, answer["limit"], answer["allowed"]) == (413, "max_rows", 4), answer
        status, _, answer = predict(s.url, {"inputs": ["x"] * 4})
        assert (status, answer["limit"], answer["allowed"]) == (413, "max_request_rows", 3), answer
        status, _, answer = predict(s.url, {"inputs": ["x" * 41]})
        assert (status, answer["limit"]) == (413, "max_input_chars") and "input 0" in answer["error"]
        status, _, answer = predict(s.url, {"inputs": ["x" * 3000]})
        assert (status, answer["limit"]) == (413, "max_body_bytes") and "2048" in answer["error"]
        assert predict(s.url, {"inputs": ["x" * 40] * 3})[0] == 200  # exactly at every limit
        stats = s.engine.stats()["plain"]
        assert stats.rejections["too_large"] == 2  # the engine's two; the app's own are HTTP 413s


@pytest.mark.parametrize("overload_status", [503, 429])
def test_a_full_queue_is_refused_with_retry_after(models, overload_status):
    gated = Gated(models.plain)
    engine = {"max_batch_rows": 2, "max_queue_rows": 2, "max_wait_ms": 0.0}
    with server({"slow": gated}, engine=engine, overload_status=overload_status) as s, ThreadPoolExecutor(2) as pool:
        gated.gate.clear()
        first = pool.submit(predict, s.url, {"inputs": ["a", "b"]})
        _until(lambda: s.engine.stats()["slow"].in_flight_rows == 2)  # in the model, held at the gate
        second = pool.submit(predict, s.url, {"inputs": ["c", "d"]})
        _until(lambda: s.engine.stats()["slow"].queue_rows == 2)  # the queue is full
        status, head, answer = predict(s.url, {"inputs": ["e"]})
        gated.gate.set()
        assert status == overload_status and int(head["Retry-After"]) >= 1, answer
        assert answer["reason"] == "queue_full" and "max_queue_rows" in answer["error"]
        assert first.result()[0] == second.result()[0] == 200  # accepted requests are answered
        assert s.engine.stats()["slow"].rejections["queue_full"] == 1


def test_an_unmeetable_deadline_is_503_with_retry_after(main_server):
    assert predict(main_server.url, {"inputs": ["warm"]})[0] == 200  # a measured cost per row
    status, head, answer = predict(main_server.url, {"inputs": _texts(4, 4), "deadline_ms": 1e-6})
    assert status == 503 and int(head["Retry-After"]) >= 1 and answer["reason"] == "deadline"
    status, _, answer = predict(main_server.url, {"inputs": _texts(2, 4), "deadline_ms": 60_000})
    assert status == 200


def test_a_request_past_its_timeout_is_504(models):
    gated = Gated(models.plain)
    with server({"slow": gated}, request_timeout_s=0.2) as s:
        gated.gate.clear()
        started = time.monotonic()
        status, _, answer = predict(s.url, {"inputs": ["a"]})
        gated.gate.set()
        assert status == 504 and "request timeout" in answer["error"] and time.monotonic() - started < 5
        assert predict(s.url, {"inputs": ["b"]})[0] == 200


def test_an_unexpected_error_is_500_without_a_traceback_and_the_warmup_failure_keeps_it_unready(models):
    with server({"broken": Broken(models.plain)}, ready=False) as s:
        _until(lambda: "warm-up failed" in call(s.url, "/ready")[2]["reason"])
        status, _, answer = call(s.url, "/ready")
        assert status == 503 and "RuntimeError" in answer["reason"]
        status, _, answer = predict(s.url, {"inputs": ["a"]})
        assert status == 500 and answer == {"error": "internal error (RuntimeError); see the server's log"}
        assert call(s.url, "/health")[0] == 200


def test_refusals_map_to_statuses_with_retry_after():
    cases = [(UnknownModel("no model"), 404, None), (TooLarge("big", "max_request_rows", 3), 413, None),
             (InfeasibleKnob("cheap", 0.25), 422, None), (QueueFull("full", 2.2), 429, "3"),
             (DeadlineUnmeetable("late", 1500.0), 503, "2"), (Draining("bye"), 503, "1")]
    for err, status, retry in cases:
        refused = refusal(err, overload_status=429)
        assert refused.status == status and refused.headers.get("Retry-After") == retry, err
        assert refused.body()["error"] == str(err) and refused.body()["reason"]
    assert refusal(InfeasibleKnob("cheap", 0.25)).body()["cheapest"] == 0.25
    assert refusal(TooLarge("big", "max_request_rows", 3)).body()["limit"] == "max_request_rows"
    assert refusal(QueueFull("full", 0.1)).status == 503  # the default overload status


def test_a_degraded_answer_says_so_per_row_and_why():
    rows = [Prediction(label="pos", label_id=1, probs=[0.2, 0.8], stage=0, cost=0.3),
            Prediction(label="neg", label_id=0, probs=[0.9, 0.1], stage=0, cost=0.3, fallback=True)]
    result = Result(model="m", predictions=rows, knob=Knob(budget=0.3), requested=Knob(threshold=math.inf),
                    threshold=0.1, calibrated_threshold=math.inf, stage_cap=None, degraded=True, queue_ms=1.0,
                    inference_ms=2.0, batch=1, batch_rows=2, flops=[10.0, 10.0], request_id="r")
    answer = answer_body(result)
    json.dumps(answer, allow_nan=False)
    assert answer["degraded"] and answer["degraded_by"] == ["load", "stage_unavailable"] and answer["fallback_rows"] == 1
    assert [r["degraded"] for r in answer["predictions"]] == [True, True] and answer["predictions"][1]["fallback"]
    assert answer["operating_point"] == {"knob": {"budget": 0.3}, "requested": {"threshold": "inf"}, "threshold": 0.1,
                                         "calibrated_threshold": "inf", "stage_cap": None}


# --- readiness, draining, metrics ---------------------------------------------------------------------------


def test_ready_only_after_warmup_and_not_while_draining(models):
    engine = Engine({"plain": models.plain})
    app = create_server_app(engine, warmup_sizes=(1, 4), drain_seconds=5)
    state = app.state.summon
    with serving(app) as url:  # no lifespan: the test starts and drains by hand
        status, _, answer = call(url, "/health")
        assert (status, answer) == (200, {"status": "ok"})
        status, _, answer = call(url, "/ready")
        assert status == 503 and "not started" in answer["reason"]
        status, head, answer = predict(url, {"inputs": ["a"]})
        assert status == 503 and answer["reason"] == "starting" and head["Retry-After"] == "1"
        state.start(wait=True)
        assert call(url, "/ready")[2] == {"ready": True, "models": ["plain"]}
        assert predict(url, {"inputs": ["a"]})[0] == 200
        state.begin_drain()
        status, _, answer = call(url, "/ready")
        assert status == 503 and "draining" in answer["reason"]
        status, _, answer = predict(url, {"inputs": ["a"]})
        assert status == 503 and answer["reason"] == "draining"
        assert call(url, "/health")[0] == 200
        state.stop()
    assert not engine.ready and engine.stats()["plain"].rejections["draining"] == 1


def _samples(text: str) -> dict[str, list]:
    out: dict[str, list] = {}
    for family in prometheus_parser.text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


def _value(samples, name: str, **labels) -> float:
    return sum(s.value for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items()))


def test_metrics_count_requests_refusals_batches_and_exits(models):
    with server({"exits": models.exits}) as s:
        for _ in range(3):
            assert predict(s.url, {"inputs": _texts(3, 5), "knob": {"budget": BUDGET}})[0] == 200
        assert predict(s.url, {"inputs": ["x"], "knob": {"budget": 0.01}})[0] == 422
        assert predict(s.url, {"model": "nope", "inputs": ["x"]})[0] == 404
        status, head, text = call(s.url, "/metrics")
        assert status == 200 and head["content-type"].startswith("text/plain")
        m = _samples(text)
        assert _value(m, "summon_http_requests_total", route="/v1/predict", method="POST", status="200") == 3
        assert _value(m, "summon_http_requests_total", route="/v1/predict", status="422") == 1
        assert _value(m, "summon_http_requests_total", route="/v1/predict", status="404") == 1
        assert _value(m, "summon_http_request_duration_seconds_count", route="/v1/predict") == 5
        assert _value(m, "summon_requests_total", model="exits") == 3
        assert _value(m, "summon_rows_total", model="exits") == 9
        assert _value(m, "summon_rejections_total", model="exits", reason="infeasible_knob") == 1
        assert _value(m, "summon_rejections_total", model="exits", reason="queue_full") == 0
        assert _value(m, "summon_exits_total", model="exits") == 9
        assert _value(m, "summon_batch_rows_count", model="exits") == _value(m, "summon_batches_total", model="exits")
        assert _value(m, "summon_batch_rows_bucket", model="exits", le="+Inf") >= 3
        assert _value(m, "summon_queue_wait_seconds_count", model="exits") == 3
        assert _value(m, "summon_cost_fraction_count", model="exits") == 9
        assert _value(m, "summon_cost_fraction_sum", model="exits") > 0
        for gauge in ("summon_queue_rows", "summon_queue_requests", "summon_in_flight_rows"):
            assert _value(m, gauge, model="exits") == 0
        assert _value(m, "summon_http_requests_in_flight") == 1  # this scrape
        assert _value(m, "summon_ready") == 1
        for name in ("summon_deferred_rows_total", "summon_stage_unavailable_rows_total",
                     "summon_degraded_requests_total", "summon_fallback_requests_total"):
            assert name in m
        assert _value(m, "summon_budget_threshold", model="exits", budget=f"{BUDGET:g}") == pytest.approx(
            s.engine.thresholds_in_force()["exits"].budgets[0].threshold)
        assert m["summon_budget_window_mean_cost"][0].value == pytest.approx(
            s.engine.thresholds_in_force()["exits"].budgets[0].window_mean_cost)


def test_two_apps_keep_their_own_metrics(models):
    with server({"a": models.plain}) as a, server({"b": models.plain}) as b:
        predict(a.url, {"inputs": ["x"]})
        assert "summon_rows_total" in _samples(call(a.url, "/metrics")[2])
        assert _value(_samples(call(b.url, "/metrics")[2]), "summon_rows_total") == 0


# --- info, models, logits, docs -----------------------------------------------------------------------------


def test_models_info_and_the_logits_routes(main_server, models):
    status, _, listed = call(main_server.url, "/v1/models")
    assert status == 200 and [m["name"] for m in listed["models"]] == ["exits", "plain"] and listed["default"] == "exits"
    assert listed["models"][0]["kind"] == "early_exit" and listed["models"][1]["kind"] == "plain"
    status, _, info = call(main_server.url, "/v1/info")
    exits = info["models"]["exits"]
    assert status == 200 and exits["calibrated"] and exits["operating_points"] and "thresholds_in_force" in exits
    assert info["limits"]["max_rows"] == 1024 and info["engine"]["overload_status"] == 503
    texts = [{"text": t} for t in _texts(3, 6)]
    plain = RemoteStage.connect(main_server.url + "/models/plain", name="plain")
    np.testing.assert_allclose(plain.logits(texts), models.plain.logits(texts, raw=True), rtol=1e-5, atol=1e-6)
    full = RemoteStage.connect(main_server.url + "/models/exits", name="exits")
    np.testing.assert_allclose(full.logits(texts), models.exits.run_full(models.exits.inputs(texts)), atol=1e-5)
    assert full.flops_per_example == pytest.approx(models.exits.calibration.costs.flops_full)


def test_openapi_documents_the_predict_route(main_server):
    status, _, spec = call(main_server.url, "/openapi.json")
    predict_doc = spec["paths"]["/v1/predict"]["post"]
    schema = predict_doc["requestBody"]["content"]["application/json"]["schema"]
    assert status == 200 and "inputs" in schema["properties"] and "413" in predict_doc["responses"]
    status, _, page = call(main_server.url, "/docs")
    assert status == 200 and "swagger" in page.lower()


# --- a remote teacher that fails ----------------------------------------------------------------------------


def test_a_remote_teacher_that_fails_is_answered_by_the_student_marked_degraded(models):
    chain = models.chain
    teacher = Delayed(chain.stages[-1].predictor)
    texts = _texts(6, 7)
    knob = {"threshold": 1.0}  # every row defers to the teacher
    teacher_server = contextlib.ExitStack()
    try:
        teacher_url = teacher_server.enter_context(serving(create_app(teacher, name="teacher")))
        remote = RemoteStage.connect(teacher_url, name="teacher", timeout=0.3)
        split = CascadePredictor([chain.stages[0], remote], chain.task, chain.labels, {"adaptive": chain.adaptive})
        with server({"split": split}) as s:
            status, _, answer = predict(s.url, {"inputs": texts, "knob": knob})
            assert status == 200 and {r["stage"] for r in answer["predictions"]} == {1}
            assert answer["degraded"] is False and answer["fallback_rows"] == 0
            _same(answer["predictions"], chain.predict(texts, threshold=1.0))

            student = chain.predict(texts, threshold=-math.inf)
            teacher.delay = 1.0  # slow past the stage's timeout
            _check_fallback(*predict(s.url, {"inputs": texts, "knob": knob}), student)
            teacher.delay = 0.0
            teacher_server.close()  # and now down
            _check_fallback(*predict(s.url, {"inputs": texts, "knob": knob}), student)

            m = _samples(call(s.url, "/metrics")[2])
            assert _value(m, "summon_stage_unavailable_rows_total", model="split") == 2 * len(texts)
            assert _value(m, "summon_fallback_requests_total", model="split") == 2
            assert _value(m, "summon_http_requests_total", route="/v1/predict", status="200") == 3  # no 5xx
    finally:
        teacher_server.close()


def _check_fallback(status: int, head, answer: dict, student) -> None:
    assert status == 200, answer
    rows = answer["predictions"]
    assert {r["stage"] for r in rows} == {0} and all(r["fallback"] and r["degraded"] for r in rows)
    assert answer["degraded"] is True and answer["degraded_by"] == ["stage_unavailable"]
    assert answer["fallback_rows"] == len(rows)
    assert [r["label"] for r in rows] == [p.label for p in student]


# --- the demo page ------------------------------------------------------------------------------------------


def test_the_demo_page_is_self_contained(main_server):
    status, head, page = call(main_server.url, "/")
    assert status == 200 and head["content-type"].startswith("text/html")
    for needle in ('<form id="form"', '<textarea id="text"', 'type="range"', 'id="budget"', '<svg id="curve"',
                   '"/v1/predict"', '"/v1/info"', 'id="batch"'):
        assert needle in page, needle
    assert "http://" not in page and "https://" not in page and "<link" not in page  # no external assets


BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def test_the_demo_page_works_in_a_headless_browser(main_server):
    browser = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if browser is None:
        pytest.skip(f"no headless browser on PATH (looked for {', '.join(BROWSERS)}; on Debian: apt-get install "
                    "chromium); the page's HTML is checked by test_the_demo_page_is_self_contained")
    page = f"{main_server.url}/?model=exits&budget=0.6&text=a+good+film"
    done = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=15000",
                           "--dump-dom", page], capture_output=True, text=True, timeout=120)
    assert 'data-label="' in done.stdout and 'data-stage="' in done.stdout, done.stderr[-2000:]
    assert 'id="curve-line"' in done.stdout and 'id="chosen"' in done.stdout


DOM_SHIM = """
const els = {};
const el = (id) => els[id] || (els[id] = {id, value: "", innerHTML: "", textContent: "", dataset: {}, min: "0",
  listeners: {}, addEventListener(type, f) { this.listeners[type] = f; }});
el("batch").value = "a gem\\na mess";
global.document = {getElementById: el};
global.location = {search: "?model=exits&budget=0.6&text=a+good+film"};
const base = process.argv[2], realFetch = fetch;
global.fetch = (path, options) => realFetch(base + path, options);
eval(require("fs").readFileSync(process.argv[3], "utf8"));
const answered = () => el("result").dataset.label || el("result").dataset.error;
(async () => {
  for (let i = 0; i < 600 && !answered(); i++) await new Promise((done) => setTimeout(done, 50));
  await el("run-batch").listeners.click();
  console.log(JSON.stringify({result: el("result").dataset, curve: el("curve").innerHTML,
                              batch: el("batch-summary").textContent, min: el("budget").min}));
})();
"""


def test_the_demo_script_runs_against_the_server(main_server, tmp_path):
    """The page's script, run by Node with a minimal DOM stand-in (no browser here): it loads the models and
    the curve, predicts the text given in the URL, and runs a batch."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("no Node.js on PATH to run the demo page's script")
    page = call(main_server.url, "/")[2]
    (tmp_path / "demo.js").write_text(page.split("<script>")[1].split("</script>")[0])
    (tmp_path / "shim.js").write_text(DOM_SHIM)
    done = subprocess.run([node, str(tmp_path / "shim.js"), main_server.url, str(tmp_path / "demo.js")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    shown = json.loads(done.stdout)
    assert shown["result"]["label"] in ("neg", "pos") and int(shown["result"]["stage"]) in (0, 1, 2)
    assert 'id="curve-line"' in shown["curve"] and 'id="chosen"' in shown["curve"] and 'id="realised"' in shown["curve"]
    assert shown["batch"].startswith("2 inputs") and 0 < float(shown["min"]) <= 0.6


# --- the command line ---------------------------------------------------------------------------------------


def test_the_serve_parser():
    args = build_parser().parse_args(["serve", "runs/exits", "teacher=runs/big", "hf:org/tiny-model", "--port", "9000",
                                      "--degrade", "--no-controller", "--overload-status", "429", "--max-rows", "8",
                                      "--drain-seconds", "2", "--request-timeout", "1.5", "--max-wait-ms", "0"])
    assert args.models == [("exits", "runs/exits"), ("teacher", "runs/big"), ("tiny-model", "hf:org/tiny-model")]
    assert args.port == 9000 and given(args, EngineConfig) == {"degrade": True, "controller": False, "max_wait_ms": 0.0}
    assert given(args, ServeOptions) == {"overload_status": 429, "max_rows": 8, "drain_seconds": 2.0,
                                         "request_timeout_s": 1.5}
    defaults = build_parser().parse_args(["serve", "m"])  # only the flags given: the dataclasses hold the defaults
    assert (defaults.host, defaults.port) == ("127.0.0.1", 8080) and defaults.run == ("summon.cli.commands", "cmd_serve")
    assert given(defaults, EngineConfig) == given(defaults, ServeOptions) == given(defaults, ControlConfig) == {}


@pytest.mark.parametrize(("argv", "needle"), [
    (["serve", "m", "--overload-status", "500"], "invalid choice"),
    (["serve", "b@d=runs/x"], "NAME=MODEL"),
    (["serve", "m", "--request-timeout", "0"], "argument --request-timeout: must be a finite number of seconds > 0"),
    (["serve", "a=x", "a=y"], "two models are named 'a'"),
])
def test_serve_usage_errors(argv, needle, capsys):
    assert main(argv) == 2
    assert needle in capsys.readouterr().err


def _wait_ready(proc: subprocess.Popen, url: str, seconds: float = 60.0) -> None:
    """Until the server process at ``url`` answers /ready 200 (failing with its stderr if it ends first)."""
    until = time.monotonic() + seconds
    while True:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        with contextlib.suppress(OSError):
            if call(url, "/ready")[0] == 200:
                return
        assert time.monotonic() < until, "the server did not become ready"
        time.sleep(0.1)


@pytest.mark.integration
def test_summon_serve_drains_and_exits_0_on_sigterm(models):
    path = models.exits.path or models.root / "exits"
    port = find_free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "summon.cli.main", "serve", f"exits={path}", "--port", str(port),
                             "--device", "cpu", "--drain-seconds", "5", "--max-batch-rows", "8"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(proc, url)
        assert predict(url, {"inputs": ["a film"], "knob": {"budget": BUDGET}})[0] == 200
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    assert "drained and stopped" in err


SLEEPY_SERVER = """
import sys, time
from summon.adaptive.plain import PlainPredictor
from summon.models import ModelConfig, build_model
from summon.serve.app import create_server_app, run_server
from summon.serve.engine import Engine

class Sleepy(PlainPredictor):  # runs (after the warm-up) take far longer than the drain window
    warm = False
    def run(self, items, threshold, **kwargs):
        if self.warm:
            time.sleep(60)
        return super().run(items, threshold, **kwargs)

built = build_model(ModelConfig(kind="ngram", num_buckets=64, embed_dim=4, init_seed=1), "classification", 2)
sleepy = Sleepy(built.model, built.featurizer, "classification", ["neg", "pos"], {"architecture": built.architecture})
app = create_server_app(Engine({"m": sleepy}, max_batch_rows=2, max_wait_ms=1.0), warmup_sizes=(1,),
                        drain_seconds=float(sys.argv[2]))
app.state.summon.start(wait=True)
sleepy.warm = True
run_server(app, port=int(sys.argv[1]))
print("summon: drained and stopped", file=sys.stderr)
"""


@pytest.mark.integration
def test_sigterm_answers_every_request_503_json_and_exits_within_the_drain_window():
    drain = 2.0
    port = find_free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", SLEEPY_SERVER, str(port), str(drain)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(proc, url)
        with ThreadPoolExecutor(3) as pool:
            answers = [pool.submit(predict, url, {"inputs": [f"text {i}", "two"]}) for i in range(3)]
            _until(lambda: "summon_batches_total" in call(url, "/metrics")[2]
                   and 'summon_queue_requests{model="m"} 2.0' in call(url, "/metrics")[2])  # one runs, two wait
            signalled = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            results = [a.result(timeout=30) for a in answers]
        _, err = proc.communicate(timeout=30)
        exit_seconds = time.monotonic() - signalled
    finally:
        if proc.poll() is None:
            proc.kill()
    for status, head, answer in results:  # every accepted request: the documented JSON, with Retry-After
        assert status == 503 and answer["reason"] == "draining" and "drain" in answer["error"], answer
        assert head["Retry-After"] == "1" and head["content-type"].startswith("application/json")
    assert proc.returncode == 0, err[-2000:]
    assert "Traceback" not in err and "CancelledError" not in err, err[-2000:]
    print(f"sigterm_exit_seconds={exit_seconds:.2f} drain_seconds={drain}")
    assert exit_seconds < drain + 1.5, f"exited {exit_seconds:.1f} s after SIGTERM with a {drain} s drain window"
    assert "drained and stopped" in err

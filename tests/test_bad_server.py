"""Bad requests to the logits server (``summon serve-logits``): real HTTP on 127.0.0.1 against the app run by
uvicorn in a thread. Every refusal is JSON with the right status (413 for too much, 422 for a bad input, naming
its index; 404/405 for routing); an unexpected error is a 500 without a traceback; nothing reaches the model
that it cannot take.

One tiny untrained n-gram predictor, one server per module, with small limits so "too large" stays small.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from urllib.parse import urlsplit

import numpy as np
import pytest
from conftest import call, find_free_port, serving

import summon
from summon.adaptive.plain import PlainPredictor
from summon.adaptive.remote import RemoteStage
from summon.models import ModelConfig, build_model
from summon.predictors.predictor import Predictor

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

import uvicorn

from summon.serve.app import create_server_app, head_timeout_protocol, response_bytes
from summon.serve.engine import Engine
from summon.serve.logits_server import create_app
from summon.serve.options import MAX_RESPONSE_BYTES

LABELS = ["neg", "pos"]
MAX_BODY = 4096
MAX_ROWS = 8


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    built = build_model(ModelConfig(kind="ngram", num_buckets=256, embed_dim=8, init_seed=1), "classification",
                        len(LABELS))
    directory = tmp_path_factory.mktemp("server") / "model"
    Predictor(built.model, built.featurizer, "classification", LABELS, {"architecture": built.architecture}).save(
        directory, architecture=built.architecture)
    return summon.load(directory, device="cpu")


@pytest.fixture(scope="module")
def url(predictor):
    with serving(create_app(predictor, max_body_bytes=MAX_BODY, max_rows=MAX_ROWS)) as address:
        yield address


def _send(url: str, path: str, body: bytes | None, method: str = "POST") -> tuple[int, dict]:
    """Status and JSON answer of one request (the answer must be JSON, errors included)."""
    req = urllib.request.Request(url + path, data=body, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        assert err.headers.get("content-type", "").startswith("application/json")
        return err.code, json.loads(err.read())


def _post(url: str, payload) -> tuple[int, dict]:
    return _send(url, "/v1/logits", json.dumps(payload).encode())


def _texts(n: int) -> list[dict]:
    return [{"text": f"a fine film number {i}"} for i in range(n)]


# --- good requests ------------------------------------------------------------------------------------------


def test_logits_are_the_predictors_own(url, predictor):
    status, answer = _post(url, {"inputs": _texts(3)})
    assert status == 200
    np.testing.assert_allclose(answer["logits"], predictor.logits(_texts(3), raw=True), rtol=1e-6)


def test_empty_inputs_answer_an_empty_list(url):
    assert _post(url, {"inputs": []}) == (200, {"logits": []})


def test_exactly_max_rows_are_answered(url):
    status, answer = _post(url, {"inputs": _texts(MAX_ROWS)})
    assert status == 200 and len(answer["logits"]) == MAX_ROWS


def test_concurrent_requests_are_all_answered(url, predictor):
    payloads = [{"inputs": [{"text": f"request {i} " + "good " * (i % 5)}]} for i in range(24)]
    with ThreadPoolExecutor(max_workers=12) as pool:
        answers = list(pool.map(lambda p: _post(url, p), payloads))
    assert [status for status, _ in answers] == [200] * len(payloads)
    for payload, (_, answer) in zip(payloads, answers, strict=True):
        np.testing.assert_allclose(answer["logits"], predictor.logits(payload["inputs"], raw=True), rtol=1e-6)


# --- too much: 413 ------------------------------------------------------------------------------------------


def test_a_body_over_the_limit_is_413(url):
    status, answer = _post(url, {"inputs": [{"text": "x" * (MAX_BODY + 10)}]})
    assert status == 413 and f"at most {MAX_BODY} bytes" in answer["error"] and "max_body_bytes" in answer["error"]


def test_a_chunked_body_over_the_limit_is_413(url):
    """No Content-Length: the streamed bytes are counted."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=20)
    chunks = [b'{"inputs": [{"text": "'] + [b"y" * 1000] * 8 + [b'"}]}']
    conn.request("POST", "/v1/logits", body=iter(chunks), headers={"Content-Type": "application/json"},
                 encode_chunked=True)
    resp = conn.getresponse()
    answer = json.loads(resp.read())
    conn.close()
    assert resp.status == 413 and f"more than {MAX_BODY} bytes" in answer["error"]


def test_too_many_rows_is_413_naming_the_limit(url):
    status, answer = _post(url, {"inputs": _texts(MAX_ROWS + 1)})
    assert status == 413 and f"{MAX_ROWS + 1} inputs" in answer["error"] and f"at most {MAX_ROWS}" in answer["error"]


# --- not the protocol: 422 ----------------------------------------------------------------------------------


def test_a_body_that_is_not_json_is_422(url):
    status, answer = _send(url, "/v1/logits", b"inputs=hello")
    assert status == 422 and answer["error"].startswith("the body is not JSON")


def test_a_body_that_is_not_utf8_is_422(url):
    status, answer = _send(url, "/v1/logits", b'{"inputs": [{"text": "\xff\xfe"}]}')
    assert status == 422 and answer["error"].startswith("the body is not JSON")


def test_json_nested_past_the_recursion_limit_is_422_and_the_server_stays_up(url):
    body = b'{"inputs": ' + b"[" * 1_500 + b"]" * 1_500 + b"}"  # 3 kB: within the body limit
    status, answer = _send(url, "/v1/logits", body)
    assert status == 422 and answer["error"].startswith("the body's JSON is nested too deeply")
    assert _post(url, {"inputs": _texts(1)})[0] == 200


def test_inputs_as_a_mapping_is_422(url):
    status, answer = _post(url, {"inputs": {"text": "a dict, not a list"}})
    assert status == 422 and "'inputs' as a JSON object" in answer["error"] and "index" not in answer


def test_inputs_as_a_string_is_422(url):
    status, answer = _post(url, {"inputs": "just a string"})
    assert status == 422 and "'inputs' as a JSON string" in answer["error"]


def test_a_body_without_inputs_is_422(url):
    status, answer = _post(url, [{"text": "a list at the top"}])
    assert status == 422 and "got a JSON array" in answer["error"]


def test_an_input_without_text_is_422_naming_its_index(url):
    status, answer = _post(url, {"inputs": [{"text": "fine"}, {"txt": "typo"}]})
    assert status == 422 and answer["index"] == 1 and answer["error"].startswith("input 1: no 'text' (keys: 'txt')")


def test_a_number_as_text_is_422_naming_its_index(url):
    status, answer = _post(url, {"inputs": [{"text": "fine"}, {"text": "ok"}, {"text": 42}]})
    assert status == 422 and answer["index"] == 2 and answer["error"] == "input 2: expected a string, got int"


def test_an_input_that_is_not_an_object_is_422_naming_its_index(url):
    status, answer = _post(url, {"inputs": [{"text": "fine"}, "bare string"]})
    assert status == 422 and answer["index"] == 1 and "expected a JSON object" in answer["error"]


def test_a_lone_surrogate_is_422_naming_its_index(url):
    body = b'{"inputs": [{"text": "fine"}, {"text": "bad \\ud800 text"}]}'  # a JSON escape: valid JSON, not Unicode
    status, answer = _send(url, "/v1/logits", body)
    assert status == 422 and answer["index"] == 1
    assert answer["error"].startswith("input 1: invalid Unicode at character 5: a lone surrogate U+D800")


def test_a_featurizer_complaint_is_422_naming_its_index(url, predictor, monkeypatch):
    """A complaint raised by the featurizer (a tokenizer's, say) is found on its input and named."""
    original = predictor.featurizer.encode

    def picky(examples, task):
        if any("forbidden" in ex["text"] for ex in examples):
            raise ValueError("the tokenizer cannot take this")
        return original(examples, task)

    monkeypatch.setattr(predictor.featurizer, "encode", picky)
    status, answer = _post(url, {"inputs": [{"text": "fine"}, {"text": "ok"}, {"text": "a forbidden word"}]})
    assert status == 422 and answer["index"] == 2 and "the tokenizer cannot take this" in answer["error"]


# --- routing and the unexpected -----------------------------------------------------------------------------


def test_a_wrong_path_is_404_json(url):
    status, answer = _send(url, "/v2/logits", b'{"inputs": []}')
    assert status == 404 and "no such path /v2/logits" in answer["error"] and "POST /v1/logits" in answer["error"]


def test_get_on_logits_is_405_json(url):
    status, answer = _send(url, "/v1/logits", None, method="GET")
    assert status == 405 and "GET is not allowed on /v1/logits" in answer["error"]


def test_an_unexpected_model_error_is_500_without_a_traceback(url, predictor, monkeypatch):
    def broken(examples, raw=False):
        raise RuntimeError("secret /internal/path exploded")

    monkeypatch.setattr(predictor, "logits", broken)
    status, answer = _post(url, {"inputs": _texts(2)})
    assert status == 500 and answer == {"error": "internal error (RuntimeError); see the server's log"}


def test_an_error_no_single_input_causes_is_500_not_422(url, predictor, monkeypatch):
    """A ValueError from the model that no input causes on its own is the server's, not the client's."""
    def broken(examples, raw=False):
        raise ValueError("shape mismatch in a layer")

    monkeypatch.setattr(predictor, "logits", broken)
    status, answer = _post(url, {"inputs": _texts(2)})
    assert status == 500 and "shape mismatch" not in json.dumps(answer)


def test_the_server_still_answers_after_every_refusal(url):
    assert _send(url, "/v1/info", None, method="GET")[1]["labels"] == LABELS
    assert _post(url, {"inputs": _texts(1)})[0] == 200


@pytest.mark.parametrize("limits", [{"max_rows": 0}, {"max_body_bytes": -1}, {"max_rows": 2.5}])
def test_limits_that_cannot_be_meant_are_refused(predictor, limits):
    key = next(iter(limits))
    with pytest.raises(ValueError, match=f"{key} must be a positive whole number"):
        create_app(predictor, **limits)


def test_the_protocols_client_gets_the_predictors_logits(url, predictor):
    stage = RemoteStage.connect(url, name="teacher")
    np.testing.assert_allclose(stage.logits(_texts(5)), predictor.logits(_texts(5), raw=True), rtol=1e-6)


# --- summon serve: no small input buys unbounded work -------------------------------------------------------
# Slow clients are bounded by read_timeout_s (the head: a disconnect; the body: a 408 in JSON), departed and
# timed-out clients' queued work leaves the queue (counted cancelled / timed_out, never answered), and an answer
# larger than max_response_bytes is refused 413 before anything runs.

READ_TIMEOUT = 0.5


class _Gated(PlainPredictor):
    """A plain predictor whose runs wait for ``gate`` (open at first, for the warm-up) and count their rows."""

    def __init__(self, inner):
        super().__init__(inner.model, inner.featurizer, inner.task, inner.labels, inner.manifest, inner.path)
        self.gate, self.rows = threading.Event(), []
        self.gate.set()

    def run(self, items, threshold, **kwargs):
        self.rows.append(len(items))
        assert self.gate.wait(timeout=20), "the test never opened the gate"
        return super().run(items, threshold, **kwargs)


@pytest.fixture
def gated(predictor):
    return _Gated(predictor)


@contextlib.contextmanager
def _summon_server(models: dict, *, head_timeout: bool = False, **options):
    """``summon serve``'s app over a new engine, run by uvicorn in a thread (with the head deadline of
    ``run_server`` when ``head_timeout``); yields (url, engine)."""
    engine = Engine(models, max_wait_ms=1.0, max_batch_rows=4)
    app = create_server_app(engine, **{"warmup_sizes": (1,), "drain_seconds": 2.0,
                                       "read_timeout_s": READ_TIMEOUT, **options})
    port = find_free_port()
    extra = {"http": head_timeout_protocol(READ_TIMEOUT)} if head_timeout else {}
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical", lifespan="on",
                                           **extra))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    until = time.monotonic() + 20
    while call(url, "/ready")[0] != 200 if server.started else True:
        assert thread.is_alive() and time.monotonic() < until, "the test server did not start"
        time.sleep(0.02)
    try:
        yield url, engine
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _raw(url: str) -> socket.socket:
    host, port = urlsplit(url).hostname, urlsplit(url).port
    return socket.create_connection((host, port), timeout=10)


def _read_all(sock: socket.socket) -> bytes:
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


def _stats(engine, name="m"):
    return engine.stats()[name]


def _until(check, seconds: float = 10.0) -> None:
    until = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < until, "timed out waiting"
        time.sleep(0.01)


def test_a_slow_body_is_408_json_within_the_read_timeout(predictor):
    with _summon_server({"m": predictor}) as (url, _):
        sock = _raw(url)
        started = time.monotonic()
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"inputs\": [")  # and then nothing
        answer = _read_all(sock)  # the server answers and closes the connection
        held = time.monotonic() - started
        sock.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408") and READ_TIMEOUT <= held < READ_TIMEOUT + 2
        error = json.loads(body)
        assert error["limit"] == "read_timeout_s" and error["allowed"] == READ_TIMEOUT and "0.5 s" in error["error"]
        assert call(url, "/v1/predict", {"inputs": ["still up"]})[0] == 200


def test_a_slow_head_is_disconnected_within_the_read_timeout(predictor):
    with _summon_server({"m": predictor}, head_timeout=True) as (url, _):
        socks = [_raw(url) for _ in range(5)]
        started = time.monotonic()
        for sock in socks:
            sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\n")  # a head never finished (slowloris)
        for sock in socks:
            assert _read_all(sock) == b""  # closed by the server, no answer
            sock.close()
        assert time.monotonic() - started < READ_TIMEOUT + 2
        assert call(url, "/v1/predict", {"inputs": ["still up"]})[0] == 200


def _post_then_leave(url: str, payload) -> socket.socket:
    body = json.dumps(payload).encode()
    sock = _raw(url)
    sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "
                 + str(len(body)).encode() + b"\r\n\r\n" + body)
    return sock


def test_a_departed_clients_queued_work_leaves_the_queue_and_is_not_answered(gated):
    with _summon_server({"m": gated}) as (url, engine):
        gated.gate.clear()
        gated.rows.clear()
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(call, url, "/v1/predict", {"inputs": ["runs first"]})
            _until(lambda: gated.rows == [1])  # in the model, waiting for the gate
            leaver = _post_then_leave(url, {"inputs": ["x"] * 3})
            _until(lambda: _stats(engine).queue_rows == 3)
            left = time.monotonic()
            leaver.close()
            _until(lambda: _stats(engine).queue_rows == 0)
            withdrawn_after = time.monotonic() - left
            gated.gate.set()
            assert first.result(timeout=20)[0] == 200
        stats = _stats(engine)
        assert stats.cancelled == 1 and stats.answered == 1 and stats.failed == 0
        assert gated.rows == [1] and withdrawn_after < 2  # its 3 rows never ran: no work after the disconnect
        metrics = call(url, "/metrics")[2]
        assert 'summon_requests_cancelled_total{model="m"} 1.0' in metrics


def test_a_departed_clients_running_rows_are_dropped_not_answered(gated):
    with _summon_server({"m": gated}) as (url, engine):
        gated.gate.clear()
        leaver = _post_then_leave(url, {"inputs": ["x", "y"]})
        _until(lambda: _stats(engine).in_flight_rows == 2)
        leaver.close()
        _until(lambda: _stats(engine).cancelled == 1)
        gated.gate.set()
        _until(lambda: _stats(engine).in_flight_rows == 0)
        stats = _stats(engine)
        assert stats.answered == 0 and stats.rows == 0 and stats.cancelled == 1


class _Stepped(PlainPredictor):
    """A plain predictor whose stage batches each wait for one ``steps`` permit (the warm-up excepted), counted in
    ``batches``."""

    def __init__(self, inner):
        super().__init__(inner.model, inner.featurizer, inner.task, inner.labels, inner.manifest, inner.path)
        self.steps, self.batches, self.stepping = threading.Semaphore(0), [], False

    def runner(self):
        inner, outer = super().runner(), self

        class Runner:
            num_stages = inner.num_stages

            def __getattr__(self, name):
                return getattr(inner, name)

            def run(self, stage, state):
                if outer.stepping:
                    outer.batches.append(stage)
                    assert outer.steps.acquire(timeout=20), "the test never released the batch"
                return inner.run(stage, state)

        return Runner()


def test_a_departed_clients_running_request_stops_at_its_next_stage_batch(predictor):
    """A client leaves while its 12 rows run in batches of 4: the batch in the model finishes, the next two
    never run (was: the whole request ran on for the departed client)."""
    stepped = _Stepped(predictor)
    with _summon_server({"m": stepped}) as (url, engine):
        stepped.stepping = True
        leaver = _post_then_leave(url, {"inputs": [f"row {i}" for i in range(12)]})
        _until(lambda: len(stepped.batches) == 1)  # the first batch of 4 is in the model
        leaver.close()
        _until(lambda: _stats(engine).cancelled == 1)
        stepped.steps.release(10)
        _until(lambda: _stats(engine).in_flight_rows == 0)
        stats = _stats(engine)
        assert stepped.batches == [0] and stats.answered == 0 and stats.rows == 0
        stepped.stepping = False
        assert call(url, "/v1/predict", {"inputs": ["still up"]})[0] == 200


def test_a_timed_out_request_is_504_json_leaves_the_queue_and_counts_as_timed_out(gated):
    with _summon_server({"m": gated}, request_timeout_s=0.3) as (url, engine):
        gated.gate.clear()
        gated.rows.clear()
        with ThreadPoolExecutor(2) as pool:
            running = pool.submit(call, url, "/v1/predict", {"inputs": ["runs"]})
            _until(lambda: gated.rows == [1])
            queued = pool.submit(call, url, "/v1/predict", {"inputs": ["waits", "too"]})
            status, _, answer = queued.result(timeout=10)
            assert status == 504 and answer["reason"] == "timeout" and "request timeout" in answer["error"]
            assert running.result(timeout=10)[0] == 504
            assert _stats(engine).queue_rows == 0
            gated.gate.set()
            _until(lambda: _stats(engine).in_flight_rows == 0)
        stats = _stats(engine)
        assert stats.timed_out == 2 and stats.answered == 0 and gated.rows == [1]


def test_an_answer_over_max_response_bytes_is_413_before_anything_runs(gated):
    with _summon_server({"m": gated}, max_response_bytes=2000) as (url, _):
        gated.rows.clear()
        status, _, answer = call(url, "/v1/predict", {"inputs": ["a"] * 8})
        assert status == 413 and answer["limit"] == "max_response_bytes" and answer["allowed"] == 2000
        assert answer["estimate"] > 2000 and "max_response_bytes" in answer["error"] and gated.rows == []
        status, _, raw = call(url, "/v1/predict", {"inputs": ["a"]})
        assert status == 200 and len(json.dumps(raw)) <= 2000


def test_the_response_estimate_bounds_the_answer_and_refuses_a_10000_class_request():
    many = SimpleNamespace(labels=[f"class_{i}" for i in range(10_000)])
    request = SimpleNamespace(task="classification", inputs=["x"] * 1024)
    assert response_bytes(many, request) > MAX_RESPONSE_BYTES  # 1024 rows x 10,000 probabilities: refused
    assert response_bytes(many, SimpleNamespace(task="classification", inputs=["x"] * 8)) < MAX_RESPONSE_BYTES

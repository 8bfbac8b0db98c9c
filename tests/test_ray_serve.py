"""The engine on Ray Serve (:mod:`summon.serve.ray_app`).

The Ray tests are ``integration`` (``pytest -m integration tests/test_ray_serve.py``) and skip when Ray Serve is
not installed: they start Ray on this machine (``ray.init(num_cpus=2)``, loopback only, no dashboard), deploy a
tiny early-exit model and a cascade whose teacher is a deployment of its own, and check over HTTP that
predictions at several knobs equal ``predictor.predict``, that a replica holds more requests than a batch has
rows (so batches fill past Ray's default of 5), and that overload past ``max_queued_requests`` is answered 503
with ``Retry-After``. The rest runs without Ray: the options and their defaults, the stage that reaches a teacher
through a deployment handle (with a stand-in handle), and the command line's refusals.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from conftest import call as http_call
from conftest import find_free_port
from test_staged_contract import _data, _split_threshold, _texts, cascade, early_exit

import summon
from summon.adaptive.cascade_stages import StageUnavailable
from summon.adaptive.knob import Knob
from summon.cli.main import main
from summon.serve.ray_app import HandleStage, RayServeOptions, build_app, ray_deployments

RAY_MISSING = "Ray Serve is not installed (pip install 'summon[ray]'): the Ray Serve deployment is not tested"
BATCH = 8


# --- without Ray --------------------------------------------------------------------------------------------


def test_defaults_hold_more_requests_than_a_batch_and_bound_the_queue():
    options = RayServeOptions.of(max_batch_rows=BATCH)
    deployment = options.model_deployment()
    assert deployment["max_ongoing_requests"] == 2 * BATCH > 5
    assert deployment["max_queued_requests"] == 4 * BATCH
    assert deployment["backpressure_config"] == {"status_code": 503, "retry_after_s": 1}
    assert deployment["num_replicas"] == 1 and deployment["graceful_shutdown_timeout_s"] > options.app.drain_seconds
    scaled = RayServeOptions.of(max_batch_rows=BATCH, autoscaling_config={"min_replicas": 1, "max_replicas": 3})
    assert scaled.model_deployment()["autoscaling_config"] == {"target_ongoing_requests": BATCH, "min_replicas": 1,
                                                               "max_replicas": 3}
    assert "num_replicas" not in scaled.model_deployment()
    assert RayServeOptions.of(overload_status=429).model_deployment()["backpressure_config"]["status_code"] == 429


@pytest.mark.parametrize(("options", "message"), [
    ({"max_batch_rows": 0}, "max_batch_rows"), ({"max_queued_requests": 0}, "max_queued_requests"),
    ({"num_replicas": "many"}, "num_replicas"), ({"overload_status": 500}, "overload_status"),
    ({"teacher_timeout_s": -1}, "teacher_timeout_s")])
def test_bad_options_are_refused_by_name(options, message):
    with pytest.raises(ValueError, match=message):
        RayServeOptions.of(**options)


def test_the_builder_refuses_unknown_args_with_a_suggestion(tmp_path):
    with pytest.raises(ValueError, match="Did you mean 'max_batch_rows'"):
        build_app({"models": {"m": str(tmp_path)}, "max_batch_row": 8})
    with pytest.raises(ValueError, match="'models'"):
        build_app({"max_batch_rows": 8})


class FakeResponse:
    def __init__(self, outcome):
        self.outcome, self.cancelled = outcome, False

    def result(self, timeout_s=None):
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome

    def cancel(self):
        self.cancelled = True


class FakeHandle:
    """A stand-in for a DeploymentHandle: ``handle.logits.remote(examples)`` answers ``outcome``."""

    def __init__(self, outcome):
        self.outcome, self.calls, self.responses = outcome, [], []
        self.logits = SimpleNamespace(remote=self._remote)

    def _remote(self, examples):
        self.calls.append(examples)
        self.responses.append(FakeResponse(self.outcome(examples) if callable(self.outcome) else self.outcome))
        return self.responses[-1]


def _stage(outcome) -> tuple[HandleStage, FakeHandle]:
    handle = FakeHandle(outcome)
    return HandleStage(handle, name="teacher", labels=["neg", "pos"], deployment="teacher-m", timeout=0.5), handle


def test_a_handle_stage_answers_the_teachers_logits():
    stage, handle = _stage(lambda examples: np.ones((len(examples), 2)))
    out = stage.logits([{"text": "a"}, {"text": "b"}])
    assert out.shape == (2, 2) and out.dtype == np.float32 and handle.calls == [[{"text": "a"}, {"text": "b"}]]
    assert stage.logits([]).shape == (0, 2) and len(handle.calls) == 1  # nothing to ask
    with_defer, _ = _stage(lambda examples: np.zeros((len(examples), 3)))
    assert with_defer.logits([{"text": "a"}]).shape == (1, 3) and with_defer.defer_output


@pytest.mark.parametrize("outcome", [TimeoutError("slow"), RuntimeError("BackPressureError: queue full"),
                                     np.zeros((3, 2)), np.zeros((1, 5))])
def test_a_handle_stage_that_cannot_answer_makes_the_cascade_fall_back(outcome):
    stage, handle = _stage(outcome)
    with pytest.raises(StageUnavailable, match="teacher-m"):
        stage.logits([{"text": "a"}])
    assert handle.responses[-1].cancelled == isinstance(outcome, TimeoutError)


def test_a_handle_stage_passes_on_inputs_the_teacher_refuses():
    stage, _ = _stage(ValueError("input 0 is empty"))
    with pytest.raises(ValueError, match="empty"):
        stage.logits([{"text": ""}])


def test_ray_flags_need_ray_on_the_command_line(tmp_path, capsys):
    assert main(["serve", str(tmp_path), "--write-config", str(tmp_path / "serve.yaml")]) == 2
    assert "--write-config goes with --ray" in capsys.readouterr().err
    assert main(["serve", str(tmp_path), "--ray", "--replicas", "3", "--max-replicas", "2",
                 "--write-config", str(tmp_path / "x.yaml")]) == 2
    assert "--max-replicas 2 is below --replicas 3" in capsys.readouterr().err


# --- on Ray -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A calibrated early-exit model and a calibrated cascade of two local stages, saved."""
    root = tmp_path_factory.mktemp("ray")
    exits, chain = early_exit(root), cascade(root)
    summon.calibrate(summon.load(exits, device="cpu"), _data(120, 0), budget=0.6, latency=False)
    summon.calibrate(summon.load(chain, device="cpu"), _data(120, 0), max_drop=0.05, latency=False)
    return SimpleNamespace(paths={"exits": exits, "chain": chain}, exits=summon.load(exits, device="cpu"),
                           chain=summon.load(chain, device="cpu"), root=root)


@pytest.fixture(scope="module")
def ray_serve():
    ray = pytest.importorskip("ray", reason=RAY_MISSING)
    serve = pytest.importorskip("ray.serve", reason=RAY_MISSING)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nothing leaves the machine
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    port = find_free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield SimpleNamespace(serve=serve, url=f"http://127.0.0.1:{port}")
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def deployed(ray_serve, models):
    deployments = ray_deployments(models.paths, max_batch_rows=BATCH, max_wait_ms=100.0, controller=False,
                                  max_queued_requests=2 * BATCH, device="cpu", drain_seconds=2.0,
                                  ray_actor_options={"num_cpus": 0.5}, teacher_ray_actor_options={"num_cpus": 0.5})
    started = time.monotonic()
    ray_serve.serve.run(deployments.app, name="summon", route_prefix="/")
    _wait_ready(ray_serve.url)
    print(f"deployed and warmed up in {time.monotonic() - started:.1f} s")
    return SimpleNamespace(url=ray_serve.url, deployments=deployments, serve=ray_serve.serve)


def call(url: str, path: str, payload=None):
    """``(status, headers, answer)`` of one request, waiting up to a minute (Ray's proxy is slower to answer)."""
    return http_call(url, path, payload, timeout=60.0)


def _wait_ready(url: str, seconds: float = 60.0) -> None:
    until = time.monotonic() + seconds
    while True:
        try:
            if call(url, "/ready")[0] == 200:
                return
        except OSError:
            pass
        assert time.monotonic() < until, "the Ray Serve app never became ready"
        time.sleep(0.2)


def _same(rows: list[dict], alone) -> None:
    assert [(r["label"], r["stage"]) for r in rows] == [(p.label, p.stage) for p in alone]
    np.testing.assert_allclose([r["probs"] for r in rows], [p.probs for p in alone], atol=1e-5)


@pytest.mark.integration
def test_predictions_over_ray_equal_predict_at_the_same_knob(deployed, models):
    texts = _texts(24, 3)
    for name, predictor in (("exits", models.exits), ("chain", models.chain)):
        split = _split_threshold(predictor, texts)
        for knob in ({}, {"threshold": split}, {"max_drop": 0.05}, {"budget": 0.6}):
            status, _, answer = call(deployed.url, "/v1/predict", {"model": name, "inputs": texts, "knob": knob})
            assert status == 200, answer
            _same(answer["predictions"], predictor.predict(texts, knob=Knob(**knob)))
            assert answer["fallback_rows"] == 0 and not answer["degraded"], answer  # the teacher answered
        if name == "chain":  # some rows went on to the teacher's deployment
            status, _, answer = call(deployed.url, "/v1/predict", {"model": name, "inputs": texts,
                                                                   "knob": {"threshold": split}})
            assert {r["stage"] for r in answer["predictions"]} == {0, 1}


@pytest.mark.integration
def test_the_teacher_is_a_deployment_of_its_own(deployed):
    assert list(deployed.deployments.teachers) == ["chain"]
    status = deployed.serve.status().applications["summon"]
    assert set(status.deployments) == {"summon", "teacher-chain"}
    assert all(d.status == "HEALTHY" for d in status.deployments.values()), status.deployments
    status, _, info = call(deployed.url, "/v1/info")
    assert status == 200 and info["models"]["chain"]["num_stages"] == 2


@pytest.mark.integration
def test_a_replica_holds_more_requests_than_a_batch_has_rows(deployed, models):
    models_deployment = deployed.deployments.models
    assert models_deployment.max_ongoing_requests == 2 * BATCH > BATCH
    assert models_deployment.max_queued_requests == 2 * BATCH  # a burst of 2 x BATCH is not refused
    texts = _texts(2 * BATCH, 4)
    with ThreadPoolExecutor(len(texts)) as pool:
        answers = list(pool.map(lambda t: call(deployed.url, "/v1/predict", {"model": "exits", "inputs": [t]}), texts))
    assert [status for status, _, _ in answers] == [200] * len(texts), answers
    assert max(answer["batch_rows"] for _, _, answer in answers) > 5  # Ray's default would stop batches at 5
    for text, (_, _, answer) in zip(texts, answers, strict=True):
        _same(answer["predictions"], models.exits.predict([text]))


@pytest.mark.integration
def test_overload_past_max_queued_requests_is_answered_503_with_retry_after(deployed, models):
    texts = [" ".join([t] * 6) for t in _texts(96, 5)]  # long rows through every layer: the replica stays busy
    expected = [p.label for p in models.exits.predict(texts, threshold=np.inf)]
    body = {"model": "exits", "inputs": texts, "knob": {"threshold": "inf"}}
    with ThreadPoolExecutor(64) as pool:
        answers = list(pool.map(lambda _: call(deployed.url, "/v1/predict", body), range(64)))
    statuses = [status for status, _, _ in answers]
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.count(503) >= 1 and statuses.count(200) >= 1, statuses
    for status, head, answer in answers:
        if status == 503:
            assert head.get("Retry-After") == "1", (head, answer)
        else:
            assert [r["label"] for r in answer["predictions"]] == expected
    assert call(deployed.url, "/ready")[0] == 200  # and it keeps answering
    assert call(deployed.url, "/v1/predict", {"model": "exits", "inputs": ["fine"]})[0] == 200


def test_the_written_config_builds_the_same_application(models, tmp_path, capsys):
    pytest.importorskip("ray.serve", reason=RAY_MISSING)  # the config is checked against Ray's schema; Ray stays off
    out = tmp_path / "serve.yaml"
    assert main(["serve", *(f"{k}={v}" for k, v in models.paths.items()), "--ray", "--max-batch-rows", "8",
                 "--max-replicas", "2", "--keep-alive", "7", "--write-config", str(out)]) == 0
    assert "serve run" in capsys.readouterr().out
    config = yaml.safe_load(out.read_text())
    (app,) = config["applications"]
    assert app["import_path"] == "summon.serve.ray_app:build_app" and config["http_options"]["host"] == "127.0.0.1"
    assert config["http_options"]["keep_alive_timeout_s"] == 7.0  # --keep-alive reaches Ray's proxy
    assert app["args"]["models"] == {k: str(Path(v).resolve()) for k, v in models.paths.items()}
    assert app["args"]["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 2}
    assert type(build_app(app["args"])).__name__ == "Application"

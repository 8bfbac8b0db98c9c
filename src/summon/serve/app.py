"""The HTTP transport of the serving engine (``summon serve``): a FastAPI app over an
:class:`~summon.serve.engine.Engine`, which does the queueing, batching and overload decisions; this module only
parses, maps the engine's answers and refusals to HTTP, and counts.

::

    engine = Engine({"sst2": summon.load("runs/exits")}, max_batch_rows=64)
    app = create_server_app(engine, request_timeout_s=30)   # starts the engine and warms it up on startup
    run_server(app, host="127.0.0.1", port=8080)            # SIGTERM: ready -> 503, drain, exit

=====================================  ===================================================================
route                                  answers
=====================================  ===================================================================
``POST /v1/predict``                   ``{"model"?, "inputs": [...], "knob"?, "deadline_ms"?, "priority"?}`` ->
                                       per row label, probs, stage, cost fraction, FLOPs, fallback/degraded;
                                       the operating point used; timing headers
``GET /v1/models``                     the models served (the first is the default)
``GET /v1/info``                       every model's stages, costs, operating-point table and thresholds in
                                       force (:meth:`Engine.info`), and the server's limits
``GET /models/NAME/v1/info``,          ``summon-logits/1`` for each model (its reference model, every stage), so
``POST /models/NAME/v1/logits``        ``RemoteStage.connect("http://HOST/models/NAME")`` makes it a cascade stage
``GET /health``                        200 while the process runs
``GET /ready``                         200 once the engine runs and is warmed up; 503 before, and while draining
``GET /metrics``                       Prometheus text (:mod:`summon.serve.metrics`)
``GET /``                              the demo page (:mod:`summon.serve.demo`); ``/docs``: OpenAPI
=====================================  ===================================================================

Every answer carries ``x-request-id`` (the client's, else a new one) and ``x-total-time``; a prediction also
``x-queue-time`` and ``x-inference-time`` (milliseconds). Errors are JSON ``{"error": MESSAGE, ...}``:

* the engine's refusals: :class:`QueueFull` 503 (429 with ``overload_status=429``) and
  :class:`DeadlineUnmeetable` 503, both with ``Retry-After``; :class:`Draining` 503; :class:`InfeasibleKnob` 422
  with ``cheapest``; :class:`TooLarge` 413; :class:`UnknownModel` 404 (each with the engine's ``reason``);
* limits of the request itself: a body over ``max_body_bytes`` or more than ``max_rows`` inputs, 413 with
  ``limit`` and ``allowed``; a malformed body or an input the model cannot take, 422 (``index`` names the input);
* no answer within ``request_timeout_s``: 504; anything unexpected: 500, with no traceback (it is logged).

A cascade whose last stage is remote (:class:`~summon.adaptive.remote.RemoteStage`) answers rows the teacher
could not (down, or slow past its timeout) from the last stage that did: they come back with ``fallback`` and
``degraded`` true, the answer's ``degraded_by`` names ``stage_unavailable``, and the metrics count them
(``summon_stage_unavailable_rows_total``, ``summon_fallback_requests_total``) — a 200, not a 5xx.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import signal
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from summon.adaptive.knob import KNOBS
from summon.adaptive.staged import StagedBase
from summon.core.options import options_for
from summon.core.version import __version__
from summon.predictors.predictor import canonical_inputs
from summon.serve.demo import DEMO_HTML
from summon.serve.engine import (
    PRIORITIES,
    DeadlineUnmeetable,
    Draining,
    Engine,
    EngineError,
    InfeasibleKnob,
    QueueFull,
    Result,
    TooLarge,
    UnknownModel,
    json_float,
    knob_dict,
    knob_from,
)
from summon.serve.logits_server import (
    INPUT_ERRORS,
    BodyLimit,
    Refused,
    add_error_handlers,
    add_logits_routes,
    culprit,
    internal_error,
    json_type,
    parse_json,
    raw_input,
    require_fastapi,
    too_many_rows,
)
from summon.serve.metrics import CONTENT_TYPE_LATEST, HttpStats, metrics_registry, render
from summon.serve.options import (
    ServeOptions,
    warmup_sizes,
)

try:  # the serve extra; _require_serve_extra says how to install it when it is missing
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Match
except ImportError:  # pragma: no cover - exercised only without the extra
    uvicorn = FastAPI = None


def _require_serve_extra() -> None:
    require_fastapi()
    if uvicorn is None or FastAPI is None:
        raise ValueError("serving needs FastAPI and uvicorn: pip install 'summon[serve]'")

logger = logging.getLogger(__name__)

PROTOCOL = "summon-serve/1"
REQUEST_ID = "summon.request_id"  # where the middleware leaves the request id in the ASGI scope
PREDICT_FIELDS = ("model", "inputs", "knob", "deadline_ms", "priority")
SERVED = ("this server answers POST /v1/predict, GET /v1/models, GET /v1/info, GET /health, GET /ready, GET /metrics, "
          "GET / (demo), GET /docs, and summon-logits/1 under /models/NAME/v1/")
_REQUEST_ID_OK = re.compile(r"^[\x21-\x7e]{1,128}$")  # visible ASCII, as a header value can carry it


# --- the server's life: started, warmed up, draining ------------------------------------------------------


SHUTDOWN_RESERVE_S = 0.5  # of the drain window, kept for answering 503s, closing and exiting (measured ~0.2 s)


def work_window(drain_seconds: float) -> float:
    """How long queued and running work may take after SIGTERM: the drain window less what the process needs
    after the engine stops (answering what is left 503, closing connections, exiting) — ``SHUTDOWN_RESERVE_S``,
    at most a quarter of the window —, so the process exits within the window, not just past it."""
    return max(0.0, drain_seconds - min(SHUTDOWN_RESERVE_S, drain_seconds / 4))


class ServerState:
    """Starts the engine and warms it up (in a thread, so ``/health`` answers meanwhile), says whether the
    server is ready, and drains it: :meth:`begin_drain` turns ``/ready`` to 503 and stops the engine taking
    requests at once, then finishes queued work within ``drain_seconds`` in a thread; :meth:`stop` waits for it."""

    def __init__(self, engine: Engine, warmup_sizes: Sequence[int], drain_seconds: float):
        self.engine, self.warmup_sizes, self.drain_seconds = engine, tuple(warmup_sizes), drain_seconds
        self.started = self.warmed = self.draining = False
        self.warmup_error: str | None = None
        self._lock = threading.Lock()
        self._warmer: threading.Thread | None = None
        self._drainer: threading.Thread | None = None
        self._drain_started = 0.0
        self.stopped_cleanly = True  # False: a batch was still in the model when the window closed

    def start(self, wait: bool = False) -> None:
        """Start the engine and warm it up (``wait``: until warmed up)."""
        with self._lock:
            if not self.started and not self.draining:
                self.engine.start()
                self.started = True
                self._warmer = threading.Thread(target=self._warm, name="summon-warmup", daemon=True)
                self._warmer.start()
        if wait and self._warmer is not None:
            self._warmer.join()

    def _warm(self) -> None:
        try:
            self.engine.warmup(self.warmup_sizes)
        except Exception as err:  # the server stays unready and says why
            logger.exception("warm-up failed")
            self.warmup_error = type(err).__name__  # the message may name internals: it goes to the log only
            return
        self.warmed = True

    def problem(self) -> str | None:
        """Why the server is not ready (None when it is)."""
        if self.draining:
            return "draining: the server is stopping and takes no new requests"
        if self.warmup_error:
            return f"the warm-up failed ({self.warmup_error}); see the server's log"
        if not self.started:
            return "not started: the engine starts with the app (its lifespan)"
        if not self.warmed:
            return f"warming up (batch sizes {', '.join(map(str, self.warmup_sizes))})"
        return None

    def begin_drain(self) -> None:
        """Stop taking requests now (``/ready`` 503, the engine refuses with :class:`Draining`) and finish the
        queued ones within ``drain_seconds`` less the shutdown's own share (:func:`work_window`), in a thread."""
        with self._lock:
            self.draining = True
            if self._drainer is None:
                self._drain_started = time.monotonic()
                self._drainer = threading.Thread(target=self.engine.stop, args=(work_window(self.drain_seconds),),
                                                 name="summon-drain", daemon=True)
                self._drainer.start()
        while self.engine.ready and self._drainer.is_alive():  # the engine refuses from the moment this returns
            time.sleep(0.001)

    def stop(self) -> None:
        """Drain (if not begun) and wait until the engine has stopped, and then, within what is left of the drain
        window, for a batch still in the model to reach its next stage batch (its rows are dropped there): a
        process must not exit while a batcher thread is inside torch (the C++ runtime aborts)."""
        self.begin_drain()
        self._drainer.join()
        left = self._drain_started + self.drain_seconds - time.monotonic()
        self.stopped_cleanly = self.engine.join(max(0.1, left))


# --- the app ------------------------------------------------------------------------------------------------


def create_server_app(engine: Engine, *, title: str = "summon", **options: Any) -> Any:
    """A FastAPI app serving ``engine`` (routes, headers and errors: see the module docstring).

    Its lifespan starts the engine and warms it up at ``warmup_sizes`` rows on startup, and drains it within
    ``drain_seconds`` on shutdown; without a lifespan (an ASGI server run with ``lifespan="off"``), call
    ``app.state.summon.start()`` (a :class:`ServerState`).

    Args:
        engine: the engine (not started: the app starts it).
        title: the OpenAPI title.
        **options: the fields of :class:`ServeOptions` (each field's ``help`` says what it does):
            ``max_body_bytes``, ``max_rows`` (the engine's ``max_request_rows`` applies too),
            ``request_timeout_s``, ``overload_status`` (503 or 429), ``warmup_sizes`` (default 1, 8 and the
            engine's ``max_batch_rows``) and ``drain_seconds``; an unknown name is refused with a suggestion.
    """
    _require_serve_extra()
    if not isinstance(engine, Engine):
        raise TypeError(f"engine must be a summon.serve.engine.Engine, got {type(engine).__name__}")
    chosen = options_for(options, ServeOptions, where="create_server_app", also=["title"])[0]
    if chosen.get("warmup_sizes") is None:
        chosen["warmup_sizes"] = warmup_sizes(engine.config.max_batch_rows)
    options = ServeOptions(**chosen)
    state = ServerState(engine, options.warmup_sizes, options.drain_seconds)
    http = HttpStats()
    app = FastAPI(title=title, version=__version__, lifespan=_lifespan(state),
                  description="Adaptive inference: each request says how much compute its answers may cost. "
                  "Demo page at /.")
    app.state.summon = state
    app.state.summon_options = options
    app.add_middleware(BodyLimit, max_bytes=options.max_body_bytes, read_timeout_s=options.read_timeout_s)
    app.add_middleware(RequestMeta, http=http)  # added last: outermost, so it sees (and counts) every answer
    add_error_handlers(app, SERVED)
    _add_predict_route(app, engine, state, http, options)
    _add_status_routes(app, engine, state, metrics_registry(engine, http, lambda: state.problem() is None))
    _add_info_routes(app, engine, options)
    for name in engine.models:
        _add_model_logits(app, name, engine.predictor(name), options.max_rows)
    return app


def _lifespan(state: ServerState) -> Callable[[Any], Any]:
    @contextlib.asynccontextmanager
    async def lifespan(app: Any):
        state.start()
        yield
        await run_in_threadpool(state.stop)

    return lifespan


PREDICT_SCHEMA = {
    "type": "object", "required": ["inputs"], "additionalProperties": False,
    "properties": {
        "model": {"type": "string", "description": "a served model (default: the first, see GET /v1/models)"},
        "inputs": {"type": "array", "description": "texts; [text, text_pair] or {text, text_pair} for pair tasks; "
                   "a text or a list of words for tagging; {\"text\": ...} objects also work",
                   "items": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}},
                                       {"type": "object"}]}},
        "knob": {"type": "object", "description": "one of budget (cost fraction), max_drop, threshold (a number, "
                 "\"inf\" or \"-inf\"), guaranteed (with delta); unit: flops or ms",
                 "properties": {**{k: {"type": "number"} for k in (*KNOBS, "delta")},
                                "unit": {"type": "string", "enum": ["flops", "ms"]}}},
        "deadline_ms": {"type": "number", "exclusiveMinimum": 0},
        "priority": {"type": "string", "enum": list(PRIORITIES), "default": "high"},
    },
    "example": {"inputs": ["a gripping film", "a dull mess"], "knob": {"budget": 0.4}},
}
PREDICT_RESPONSES = {
    404: {"description": "no such model"},
    413: {"description": "a limit (max_body_bytes, max_rows, max_request_rows, max_input_chars): `limit` names it"},
    422: {"description": "a malformed request, an input the model cannot take (`index`), or an infeasible knob "
          "(`cheapest`)"},
    429: {"description": "queue full, when the server runs with overload status 429 (Retry-After)"},
    503: {"description": "queue full (Retry-After), deadline unmeetable (Retry-After), draining or starting"},
    504: {"description": "no answer within the request timeout"},
}


def _add_predict_route(app: Any, engine: Engine, state: ServerState, http: HttpStats, options: ServeOptions) -> None:
    @app.post("/v1/predict", summary="Predict, at the cost the knob allows", responses=PREDICT_RESPONSES,
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": PREDICT_SCHEMA}}}})
    async def predict(request: Request) -> Any:
        started = time.monotonic()
        if not state.started and not state.draining:
            raise Refused(503, "the server is starting; retry shortly", headers={"Retry-After": "1"},
                          extra={"reason": "starting"})
        body = await request.body()
        try:
            model, future = await run_in_threadpool(submit_body, engine, body, options, request.scope.get(REQUEST_ID))
            result = await wait_result(future, options, started, request, lambda why: engine.give_up(model, future, why))
        except Refused:
            raise
        except ClientLeft:  # nobody to answer; the engine dropped the request's work
            return Response(status_code=499)
        except Exception as err:  # a bug or the environment: logged here, not sent to the client
            logger.exception("POST /v1/predict failed on a body of %d bytes", len(body))
            return JSONResponse(internal_error(err), status_code=500)
        answer = answer_body(result)
        if answer["fallback_rows"]:
            http.fallback(result.model)
        return JSONResponse(answer, headers={"x-queue-time": f"{result.queue_ms:.3f}",
                                             "x-inference-time": f"{result.inference_ms:.3f}"})


def _add_status_routes(app: Any, engine: Engine, state: ServerState, registry: Any) -> None:
    @app.get("/health", summary="Liveness: 200 while the process runs")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", summary="Readiness: 200 once warmed up, 503 before and while draining",
             responses={503: {"description": "not ready; `reason` says why"}})
    async def ready() -> Any:
        problem = state.problem()
        if problem is not None:
            return JSONResponse({"ready": False, "reason": problem}, status_code=503)
        return {"ready": True, "models": engine.models}

    @app.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
    def metrics() -> Any:
        return Response(render(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def demo() -> Any:
        return HTMLResponse(DEMO_HTML)


def _add_info_routes(app: Any, engine: Engine, options: ServeOptions) -> None:
    @app.get("/v1/models", summary="The models served (the first is the default)")
    def models() -> dict[str, Any]:
        info = engine.info()
        return {"default": engine.models[0], "models": [
            {"name": name, **{k: v for k, v in info[name].items() if k in ("kind", "task", "labels", "num_stages",
                                                                             "calibrated")},
             "default": name == engine.models[0], "logits": f"/models/{name}"} for name in engine.models]}

    @app.get("/v1/info", summary="Each model's stages, costs, operating points and thresholds in force")
    def info() -> dict[str, Any]:
        config = engine.config
        limits = {"max_body_bytes": options.max_body_bytes, "max_rows": options.max_rows,
                  "max_request_rows": config.max_request_rows, "max_queue_rows": config.max_queue_rows,
                  "max_input_chars": config.max_input_chars, "request_timeout_s": options.request_timeout_s}
        return {"protocol": PROTOCOL, "version": __version__, "default_model": engine.models[0], "limits": limits,
                "engine": {**asdict(config), "overload_status": options.overload_status}, "models": engine.info()}


# --- one prediction: parsed, submitted, awaited, answered ---------------------------------------------------


@dataclass
class PredictRequest:
    """A checked ``/v1/predict`` body."""

    model: str
    inputs: list[Any]
    task: str
    knob: Any
    deadline_ms: float | None
    priority: str


def submit_body(engine: Engine, body: bytes, options: ServeOptions, request_id: str | None) -> tuple[str, Any]:
    """Parse a ``/v1/predict`` body and submit it; the model and the engine's future, or :class:`Refused`."""
    try:
        request = parse_predict(body, engine, options.max_rows)
        check_response_size(engine.predictor(request.model), request, options.max_response_bytes)
    except (UnknownModel, EngineError) as err:
        raise refusal(err, options.overload_status) from None
    try:
        return request.model, engine.submit(request.model, request.inputs, knob=request.knob,
                                            deadline_ms=request.deadline_ms, priority=request.priority,
                                            request_id=request_id)
    except (UnknownModel, EngineError) as err:
        raise refusal(err, options.overload_status) from None
    except INPUT_ERRORS as err:  # an input the predictor cannot take: name it
        index = culprit(lambda raw: canonical_inputs(request.task, [raw]), request.inputs)
        raise Refused(422, str(err), index) from None


def parse_predict(body: bytes, engine: Engine, max_rows: int) -> PredictRequest:
    """A :class:`PredictRequest` from a body; :class:`Refused` 413/422 naming what is wrong, or the engine's
    :class:`UnknownModel` / :class:`InfeasibleKnob`."""
    payload = _json_object(body)
    unknown = sorted(set(payload) - set(PREDICT_FIELDS))
    if unknown:
        raise Refused(422, f"unknown field(s) {', '.join(map(repr, unknown))}; a prediction takes "
                      f"{', '.join(PREDICT_FIELDS)}")
    model = payload.get("model", engine.models[0])
    if not isinstance(model, str):
        raise Refused(422, f"'model' must be a string (one of {', '.join(engine.models)}), got a JSON {json_type(model)}")
    task = engine.predictor(model).task
    inputs = payload.get("inputs")
    if not isinstance(inputs, list):
        raise Refused(422, f"'inputs' must be a list of inputs, got {'nothing' if inputs is None else 'a JSON ' + json_type(inputs)}; "
                      'send {"inputs": ["a text", ...]}')
    if len(inputs) > max_rows:
        raise too_many_rows(len(inputs), max_rows)
    raws = [_raw_input(row, i, task, model) if isinstance(row, dict) else row for i, row in enumerate(inputs)]
    return PredictRequest(model, raws, task, _knob(payload.get("knob")), _deadline(payload.get("deadline_ms")),
                          _priority(payload.get("priority", "high")))


ROW_BYTES = 320  # an answer row's JSON less its probabilities and label: stage, cost, flops, flags, separators
PROB_BYTES = 24  # one probability in JSON, with its separator (17 significant digits and an exponent)


def response_bytes(predictor: Any, request: PredictRequest) -> int:
    """A bound on the JSON answer's size, before running: per row, its probabilities (one per label), its label
    and fields; for tagging, per row, its words, tags and spans (bounded by the input's own length)."""
    labels = list(predictor.labels)
    label = max((len(json.dumps(x)) for x in labels), default=2)
    if request.task == "token_classification":
        per_word = 2 * label + 96  # its tag, and a span's label, offsets and keys
        return sum(ROW_BYTES + (len(json.dumps(x)) + per_word * max(1, len(x) if isinstance(x, list) else
                                                                       len(str(x).split())))
                   for x in request.inputs)
    return len(request.inputs) * (ROW_BYTES + label + PROB_BYTES * len(labels)) + 512


def check_response_size(predictor: Any, request: PredictRequest, most: int) -> None:
    """:class:`Refused` 413 when the answer would exceed ``max_response_bytes`` (:func:`response_bytes`)."""
    size = response_bytes(predictor, request)
    if size > most:
        per_row = max(1, size // max(1, len(request.inputs)))
        raise Refused(413, f"the answer to {len(request.inputs)} inputs would take about {size} bytes "
                      f"({len(predictor.labels)} labels' probabilities per row); this server answers at most {most} "
                      f"bytes (max_response_bytes): send at most {max(1, most // per_row)} inputs per request",
                      extra={"limit": "max_response_bytes", "allowed": most, "estimate": size})


def _raw_input(row: dict[str, Any], i: int, task: str, model: str) -> Any:
    """One JSON object's input (:func:`raw_input`); a ``text_pair`` for a model of single texts is refused, not
    dropped: the answer would be for the first text alone."""
    if "text_pair" in row and task != "pair_classification":
        what = "tags the words of single texts" if task == "token_classification" else "classifies single texts"
        raise Refused(422, f"input {i}: 'text_pair' is given, but model {model!r} {what} (task {task}): it would "
                      f"answer for 'text' alone. Send {{\"text\": ...}} without 'text_pair', or choose a "
                      "pair_classification model", i)
    return raw_input(row, i, task)


def _json_object(body: bytes) -> dict[str, Any]:
    payload = parse_json(body, 'send {"inputs": ["a text", ...]}')
    if not isinstance(payload, dict):
        raise Refused(422, f'expected a JSON object such as {{"inputs": ["a text"]}}, got a JSON {json_type(payload)}')
    return payload


def _knob(values: Any) -> Any:
    """The request's knob; a threshold may be ``"inf"`` or ``"-inf"`` (as answers write it: JSON has no infinity)."""
    if isinstance(values, dict) and values.get("threshold") in ("inf", "+inf", "-inf"):
        values = {**values, "threshold": float(values["threshold"])}
    return knob_from(values)


def _deadline(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise Refused(422, f"'deadline_ms' must be a positive number of milliseconds, got {json.dumps(value)}")
    return float(value)


def _priority(value: Any) -> str:
    if value not in PRIORITIES:
        raise Refused(422, f"'priority' must be 'high' or 'low', got {json.dumps(value)}")
    return value


class ClientLeft(Exception):
    """The client disconnected before its answer."""


async def _departure(request: Any) -> None:
    """Returns when the client disconnects (the body has been read: what ``receive`` gives next is that)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def wait_result(future: Any, options: ServeOptions, started: float, request: Any = None,
                      give_up: Callable[[str], Any] | None = None) -> Result:
    """The engine's answer within the request timeout; :class:`Refused` for a refusal, a timeout (504) or
    inputs the model refused (422); :class:`ClientLeft` when the client disconnects first. On a timeout or a
    departure, ``give_up`` tells the engine (``"timed_out"`` or ``"cancelled"``): a queued request leaves the
    queue, a running one's rows are dropped, and neither counts as answered."""
    left = options.request_timeout_s - (time.monotonic() - started)
    answer = asyncio.ensure_future(asyncio.wrap_future(future))
    watch = [answer] + ([asyncio.ensure_future(_departure(request))] if request is not None else [])
    try:
        done, _ = await asyncio.wait(watch, timeout=max(left, 0.001), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in watch[1:]:
            task.cancel()
    if answer not in done:
        if give_up is not None:  # before cancelling the wrapper, which would cancel a queued future uncounted
            give_up("cancelled" if done else "timed_out")
        answer.cancel()
        if done:
            raise ClientLeft
        raise Refused(504, f"no answer within {options.request_timeout_s:g} s (the request timeout); retry with "
                      "fewer inputs, a cheaper knob or later", extra={"reason": "timeout"})
    try:
        return answer.result()
    except (UnknownModel, EngineError) as err:
        raise refusal(err, options.overload_status) from None
    except INPUT_ERRORS as err:  # the model (or a remote stage) refused the inputs
        raise Refused(422, f"the model refused the inputs: {err}") from None


def refusal(err: Exception, overload_status: int = 503) -> Refused:
    """The HTTP answer to one of the engine's refusals (see the module docstring)."""
    extra = {"reason": getattr(err, "reason", "") or "unknown_model"}
    if isinstance(err, UnknownModel):
        return Refused(404, str(err), extra=extra)
    if isinstance(err, TooLarge):
        return Refused(413, str(err), extra={**extra, "limit": err.limit, "allowed": err.allowed})
    if isinstance(err, InfeasibleKnob):
        return Refused(422, str(err), extra={**extra, "cheapest": err.cheapest})
    if isinstance(err, QueueFull):
        retry = max(1, math.ceil(err.retry_after_s))
        return Refused(overload_status, str(err), extra={**extra, "retry_after_s": retry},
                       headers={"Retry-After": str(retry)})
    if isinstance(err, DeadlineUnmeetable):
        retry = max(1, math.ceil((err.estimate_ms or 0.0) / 1000.0))
        return Refused(503, str(err), extra={**extra, "estimate_ms": err.estimate_ms},
                       headers={"Retry-After": str(retry)})
    if isinstance(err, Draining):
        return Refused(503, str(err), extra=extra, headers={"Retry-After": "1"})
    return Refused(503, str(err), extra=extra)


def answer_body(result: Result) -> dict[str, Any]:
    """The JSON answer of a prediction: rows, the operating point, and whether (and why) it was degraded."""
    fallback_rows = sum(bool(p.fallback) for p in result.predictions)
    degraded_by = (["load"] if result.degraded else []) + (["stage_unavailable"] if fallback_rows else [])
    rows = []
    for i, prediction in enumerate(result.predictions):
        row = prediction.to_dict()
        if result.flops is not None:
            row["flops"] = result.flops[i]
        rows.append({**row, "degraded": result.degraded or bool(prediction.fallback)})
    return {"model": result.model, "request_id": result.request_id, "predictions": rows,
            "operating_point": {"knob": _json_knob(result.knob), "requested": _json_knob(result.requested),
                                "threshold": json_float(result.threshold),
                                "calibrated_threshold": json_float(result.calibrated_threshold),
                                "stage_cap": result.stage_cap},
            "degraded": bool(degraded_by), "degraded_by": degraded_by, "fallback_rows": fallback_rows,
            "queue_ms": result.queue_ms, "inference_ms": result.inference_ms, "batch_rows": result.batch_rows}


def _json_knob(knob: Any) -> dict[str, Any] | None:
    """:func:`knob_dict` with an infinite threshold written ``"inf"``/``"-inf"`` (JSON has no infinity)."""
    values = knob_dict(knob)
    return None if values is None else {k: json_float(v) if isinstance(v, float) else v for k, v in values.items()}


# --- summon-logits/1 for each model -------------------------------------------------------------------------


class FullModel:
    """Any predictor as the logits protocol sees it: its reference model, every row through every stage
    (:meth:`~summon.adaptive.staged.StagedBase.reference_logits`: a plain model's raw logits, a defer column
    included, so it can be a remote cascade stage)."""

    def __init__(self, predictor: StagedBase):
        self.predictor, self.task, self.labels = predictor, predictor.task, list(predictor.labels)
        self.manifest: dict[str, Any] = predictor.manifest

    def logits(self, examples: Sequence[dict[str, Any]], raw: bool = True) -> list[Any]:
        return self.predictor.reference_logits(list(examples))


def _add_model_logits(app: Any, name: str, predictor: StagedBase, max_rows: int) -> None:
    calibration = predictor.calibration
    flops = None if calibration is None else float(calibration.costs.flops_full)
    add_logits_routes(app, FullModel(predictor), prefix=f"/models/{name}", name=name, flops_per_example=flops,
                      max_rows=max_rows)


# --- request id, timing and counting ------------------------------------------------------------------------


class RequestMeta:
    """ASGI middleware: gives every request an id (the client's ``x-request-id`` when it is a plain token,
    else a new one), answers with it and ``x-total-time`` (ms), and counts the answer in :class:`HttpStats` by
    route template, method and status."""

    def __init__(self, app: Any, http: HttpStats):
        self.app, self.http = app, http

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        scope[REQUEST_ID] = request_id
        started = time.perf_counter()
        status = 500

        async def send_with_meta(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                total = f"{(time.perf_counter() - started) * 1000.0:.3f}"
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", request_id.encode()),
                                                  (b"x-total-time", total.encode())]}
            await send(message)

        self.http.begin()
        try:
            await self.app(scope, receive, send_with_meta)
        finally:
            self.http.end(_route(scope), scope.get("method", ""), status, time.perf_counter() - started)


def _request_id(scope: dict[str, Any]) -> str:
    for key, value in scope.get("headers", []):
        if key == b"x-request-id":
            text = value.decode("latin-1")
            if _REQUEST_ID_OK.match(text):
                return text
    return uuid.uuid4().hex


def _route(scope: dict[str, Any]) -> str:
    """The route template that answered (``/models/{name}/v1/logits`` style), so the label set stays small;
    ``unmatched`` for a path no route serves."""
    route = scope.get("route")
    if route is None:  # refused before routing (the body limit): find the route it was meant for
        for candidate in getattr(getattr(scope.get("app"), "router", None), "routes", []):
            if candidate.matches(scope)[0] != Match.NONE:
                route = candidate
                break
    return getattr(route, "path", None) or "unmatched"


# --- running it ---------------------------------------------------------------------------------------------


def head_timeout_protocol(seconds: float) -> type:
    """uvicorn's h11 protocol with a deadline on each request's head: a client that has not sent a whole head
    ``seconds`` after connecting, or after its previous answer (slowloris, on a new or a kept-alive connection),
    is disconnected. (uvicorn's own keep-alive timer stops at the first byte received.)"""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeadTimeoutH11(H11Protocol):
        def _arm_head_timer(self) -> None:
            self._head_cycle = self.cycle  # the head is in once a new cycle begins
            self._head_timer = self.loop.call_later(seconds, self._head_timeout)

        def _head_timeout(self) -> None:
            if self.cycle is self._head_cycle and not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm_head_timer()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.cycle is not self._head_cycle:
                self._head_timer.cancel()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._head_timer.cancel()
            if not self.transport.is_closing():
                self._arm_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._head_timer.cancel()
            super().connection_lost(exc)

    return HeadTimeoutH11


def run_server(app: Any, *, host: str = "127.0.0.1", port: int = 8080, log_level: str = "info") -> bool:
    """Serve ``app`` (from :func:`create_server_app`) with uvicorn until SIGTERM or SIGINT: then ``/ready``
    answers 503 and the engine refuses new requests at once, the listening socket closes, in-flight requests
    finish within the drain window, and the function returns whether every batcher thread has ended (False: a
    batch was still in the model when the window closed; a process should then end with ``os._exit``, as
    ``summon serve`` does, since an interpreter exit while a thread is inside torch aborts)."""
    _require_serve_extra()
    state: ServerState = app.state.summon
    options: ServeOptions = getattr(app.state, "summon_options", None) or ServeOptions()
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False, lifespan="on",
                            timeout_graceful_shutdown=max(1, math.ceil(state.drain_seconds)) + 2,
                            timeout_keep_alive=options.keep_alive_s, http=head_timeout_protocol(options.read_timeout_s))
    server = uvicorn.Server(config)

    def handle_exit(sig: int, frame: Any) -> None:  # uvicorn's own would re-raise the signal after shutdown
        state.begin_drain()
        if server.should_exit and sig == signal.SIGINT:
            server.force_exit = True
        else:
            server.should_exit = True

    server.handle_exit = handle_exit
    server.run()
    if not state.stopped_cleanly:
        logger.warning("a batch was still in the model when the drain window closed; its requests were answered 503")
    return state.stopped_cleanly

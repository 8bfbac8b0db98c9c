"""Serve a saved predictor's logits over HTTP (protocol ``summon-logits/1``, see :mod:`summon.adaptive.remote`).

Run: ``summon serve-logits PREDICTOR --host 127.0.0.1 --port 8080`` (needs ``pip install 'summon[serve]'``).

Requests are bounded and checked before the model sees them, and every answer is JSON:

* a body over ``max_body_bytes`` (declared in ``Content-Length`` or streamed) or more than ``max_rows`` inputs:
  413;
* a body that is not JSON, ``inputs`` that is not a list, or an input the predictor cannot take (no text, a
  number, invalid Unicode, a tokenizer complaint): 422, with the input's ``index``;
* anything unexpected: 500, logged on the server with its traceback; the body says only what kind of error.

Errors read ``{"error": MESSAGE}`` (plus ``"index"`` when one input is at fault, and ``"limit"``, ``"allowed"``
for a 413); no inputs answer ``{"logits": []}``. The pieces (:class:`BodyLimit`, :func:`add_logits_routes`,
:func:`add_error_handlers`, :class:`Refused`) also make the routes of ``summon serve``
(:mod:`summon.serve.app`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from summon.adaptive.remote import PROTOCOL
from summon.predictors.predictor import canonical_inputs
from summon.serve.options import MAX_BODY_BYTES, MAX_ROWS, READ_TIMEOUT_S, check_limits

try:  # the serve extra; create_app says how to install it when it is missing
    from fastapi import FastAPI
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException
except ImportError:  # pragma: no cover - exercised only without the extra
    FastAPI = None

logger = logging.getLogger(__name__)

INPUT_ERRORS = (ValueError, TypeError)  # UnicodeError is a ValueError
USAGE = 'send {"inputs": [{"text": ...}, ...]} ({"text", "text_pair"} for pair tasks, {"tokens": [...]} for tagging)'


class Refused(Exception):
    """A request answered with an HTTP error: ``status``, a message, the index of the input at fault, more
    fields for the JSON body (``extra``: the limit hit, the cheapest knob ...) and response ``headers``
    (``Retry-After``)."""

    def __init__(self, status: int, message: str, index: int | None = None, *, extra: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.index = status, message, index
        self.extra, self.headers = dict(extra or {}), dict(headers or {})

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.message}
        if self.index is not None:
            out["index"] = self.index
        return {**out, **self.extra}

    def response(self) -> Any:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers or None)


def require_fastapi() -> None:
    """A clear error when the serve extra (FastAPI, uvicorn) is not installed."""
    if FastAPI is None:
        raise ValueError("serving needs FastAPI and uvicorn: pip install 'summon[serve]'")


def create_app(predictor: Any, *, name: str = "teacher", flops_per_example: float | None = None,
               max_body_bytes: int = MAX_BODY_BYTES, max_rows: int = MAX_ROWS):
    """A FastAPI app answering ``/v1/info`` and ``/v1/logits`` for ``predictor`` (limits: see the module)."""
    require_fastapi()
    check_limits(max_body_bytes, max_rows)
    app = FastAPI(title=f"summon logits: {name}")
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    add_error_handlers(app, "this server answers GET /v1/info and POST /v1/logits")
    add_logits_routes(app, predictor, name=name, flops_per_example=flops_per_example, max_rows=max_rows)
    return app


def add_logits_routes(app: Any, predictor: Any, *, prefix: str = "", name: str = "teacher",
                      flops_per_example: float | None = None, max_rows: int = MAX_ROWS) -> None:
    """Add the ``summon-logits/1`` routes ``{prefix}/v1/info`` and ``{prefix}/v1/logits`` for ``predictor`` (an
    object with ``task``, ``labels``, ``manifest`` and ``logits(examples, raw=True)``) to a FastAPI app."""
    info_body = _info(predictor, name, flops_per_example)

    async def info() -> dict[str, Any]:
        return info_body

    async def logits(request: Any) -> Any:  # a plain Starlette route: the body is read and checked here
        body = await request.body()
        try:  # parsing and checking a large body takes time too: off the event loop, with the model
            rows = await run_in_threadpool(lambda: _logits(predictor, _examples(body, predictor.task, max_rows)))
        except Refused:
            raise
        except Exception as err:  # a bug or the environment: logged here, not sent to the client
            logger.exception("POST %s/v1/logits failed on a body of %d bytes", prefix, len(body))
            return JSONResponse(internal_error(err), status_code=500)
        return JSONResponse({"logits": rows})

    app.add_api_route(f"{prefix}/v1/info", info, methods=["GET"], summary=f"{name}: what the logits server is "
                      f"({PROTOCOL})")
    app.add_route(f"{prefix}/v1/logits", logits, methods=["POST"])


def add_error_handlers(app: Any, served: str) -> None:
    """Every error answers JSON: refusals with their status (and headers), routing errors (404, 405) saying
    what is ``served``, and anything else a 500 without its traceback (Starlette logs it)."""
    app.add_exception_handler(Refused, lambda _, err: err.response())
    app.add_exception_handler(HTTPException, lambda request, err: JSONResponse(
        {"error": _http_message(request, err.status_code, err.detail, served)}, status_code=err.status_code))
    app.add_exception_handler(Exception, lambda _, err: JSONResponse(internal_error(err), status_code=500))


def internal_error(err: Exception) -> dict[str, str]:
    """The body of a 500: the kind of error only (the traceback goes to the server's log)."""
    return {"error": f"internal error ({type(err).__name__}); see the server's log"}


def _info(predictor: Any, name: str, flops_per_example: float | None) -> dict[str, Any]:
    flops = flops_per_example
    if flops is None:
        flops = float(predictor.manifest.get("costs", {}).get("flops_per_example", 0.0))
    defer = bool(predictor.manifest.get("architecture", {}).get("defer_output", False))
    return {"protocol": PROTOCOL, "name": name, "task": predictor.task, "labels": predictor.labels,
            "flops_per_example": flops, "defer_output": defer}


def _http_message(request: Any, status: int, detail: Any, served: str) -> str:
    """The routing errors (404, 405) say what this server answers."""
    if status == 404:
        return f"no such path {request.url.path}; {served}"
    if status == 405:
        return f"{request.method} is not allowed on {request.url.path}; {served}"
    return str(detail)


# --- the request: parsed, bounded and checked --------------------------------------------------------------


def parse_json(body: bytes, usage: str) -> Any:
    """A request body as JSON; :class:`Refused` 422 for bytes that are not JSON, or JSON nested past Python's
    recursion limit (which ``json.loads`` meets as a RecursionError, not a ValueError)."""
    try:
        return json.loads(body)
    except ValueError as err:  # JSONDecodeError, or UnicodeDecodeError for bytes that are not UTF-8
        raise Refused(422, f"the body is not JSON ({err}); {usage}") from None
    except RecursionError:
        raise Refused(422, f"the body's JSON is nested too deeply; {usage}") from None


def _examples(body: bytes, task: str, max_rows: int) -> list[dict[str, Any]]:
    """Canonical examples of a ``/v1/logits`` body; :class:`Refused` (413 or 422) for anything else."""
    payload = parse_json(body, USAGE)
    inputs = payload.get("inputs") if isinstance(payload, dict) else None
    if not isinstance(inputs, list):
        got = f"a JSON {json_type(payload)}" if not isinstance(payload, dict) else (
            f"'inputs' as a JSON {json_type(inputs)}" if "inputs" in payload else "no 'inputs'")
        raise Refused(422, f"expected an object whose 'inputs' is a list; got {got}. {USAGE}")
    if len(inputs) > max_rows:
        raise too_many_rows(len(inputs), max_rows)
    raws = [raw_input(row, i, task) for i, row in enumerate(inputs)]
    try:
        return canonical_inputs(task, raws)
    except INPUT_ERRORS as err:
        raise Refused(422, str(err), culprit(lambda raw: canonical_inputs(task, [raw]), raws)) from None


def too_many_rows(rows: int, max_rows: int) -> Refused:
    return Refused(413, f"{rows} inputs in one request; this server takes at most {max_rows} (max_rows): split the "
                   "request", extra={"limit": "max_rows", "allowed": max_rows})


def raw_input(row: Any, i: int, task: str) -> Any:
    """The predictor's raw input that one JSON object of the protocol describes (checked further by
    :func:`summon.predictors.predictor.canonical_inputs`)."""
    if not isinstance(row, dict):
        raise Refused(422, f"input {i}: expected a JSON object such as {{\"text\": ...}}, got a JSON "
                      f"{json_type(row)}", i)
    if task == "token_classification" and "tokens" in row:
        if not isinstance(row["tokens"], list):
            raise Refused(422, f"input {i}: 'tokens' must be a list of words, got a JSON {json_type(row['tokens'])}", i)
        return row["tokens"]
    needed = ("text", "text_pair") if task == "pair_classification" else ("text",)
    missing = [key for key in needed if key not in row]
    if missing:
        hint = " (or 'tokens')" if task == "token_classification" else ""
        raise Refused(422, f"input {i}: no {' or '.join(map(repr, missing))}{hint} (keys: "
                      f"{', '.join(map(repr, row)) or 'none'}); {USAGE}", i)
    if task != "pair_classification" and row.get("text_pair") is not None:  # it would be answered for 'text' alone
        raise Refused(422, f"input {i}: 'text_pair' is given, but this model classifies single texts (task {task}); "
                      "send 'text' alone, or serve a model trained on pairs", i)
    return (row["text"], row["text_pair"]) if task == "pair_classification" else row["text"]


def json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def culprit(check: Callable[[Any], Any], items: Sequence[Any]) -> int | None:
    """The index of the first item that ``check`` refuses on its own (``None`` if every one passes)."""
    for i, item in enumerate(items):
        try:
            check(item)
        except INPUT_ERRORS:
            return i
    return None


# --- the model ----------------------------------------------------------------------------------------------


def _logits(predictor: Any, examples: list[dict[str, Any]]) -> list[list[float]]:
    """Raw logits per example; a featurizer or tokenizer complaint about one input is a 422 naming it. An error
    that no single input causes on its own is not the client's: it propagates (a 500)."""
    if not examples:
        return []
    try:
        rows = predictor.logits(examples, raw=True)
    except INPUT_ERRORS as err:
        featurizer = getattr(predictor, "featurizer", None)
        index = None if featurizer is None else culprit(
            lambda ex: featurizer.encode([ex], predictor.task), examples)
        if index is None:
            raise
        raise Refused(422, f"input {index}: the featurizer refused it ({type(err).__name__}: {err})", index) from None
    return [[float(x) for x in row] for row in rows]


# --- the body limit -----------------------------------------------------------------------------------------


class BodyLimit:
    """ASGI middleware answering 413 (JSON) to a request body over ``max_bytes``, before the app reads it: the
    declared ``Content-Length`` is checked first, then the bytes actually streamed (chunked uploads, or a
    length that lies). The server reads and drops the rest of a refused body, so the client gets the answer.
    A body not received whole within ``read_timeout_s`` seconds (a slow or stalled client) is answered 408 (JSON)
    and the connection closed."""

    def __init__(self, app: Any, max_bytes: int, read_timeout_s: float | None = READ_TIMEOUT_S):
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout_s = read_timeout_s

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(send, f"{declared} bytes")
            return
        chunks, size, more = [], 0, True
        until = None if self.read_timeout_s is None else time.monotonic() + self.read_timeout_s
        while more:
            try:
                message = await asyncio.wait_for(receive(), None if until is None else max(until - time.monotonic(), 0))
            except TimeoutError:
                await self._answer(send, 408, {
                    "error": f"the request body was not received within {self.read_timeout_s:g} s (read_timeout_s, "
                    f"{size} bytes arrived); send it at once", "limit": "read_timeout_s", "allowed": self.read_timeout_s},
                    close=True)
                return
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._refuse(send, f"more than {self.max_bytes} bytes")
                return
            more = message.get("more_body", False)
        await self.app(scope, _replay(b"".join(chunks), receive), send)

    @staticmethod
    async def _answer(send: Callable, status: int, answer: dict[str, Any], close: bool = False) -> None:
        body = json.dumps(answer).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status,
                    "headers": headers + ([(b"connection", b"close")] if close else [])})
        await send({"type": "http.response.body", "body": body})

    async def _refuse(self, send: Callable, size: str) -> None:
        body = json.dumps({"error": f"request body of {size}; this server takes at most {self.max_bytes} bytes "
                                    "(max_body_bytes): send fewer or shorter inputs per request",
                           "limit": "max_body_bytes", "allowed": self.max_bytes}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: dict[str, Any]) -> int | None:
    for key, value in scope.get("headers", []):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _replay(body: bytes, receive: Callable) -> Callable:
    """An ASGI ``receive`` that hands the app the whole body once, then waits on the real one (disconnects)."""
    done = False

    async def replay() -> dict[str, Any]:
        nonlocal done
        if done:
            return await receive()
        done = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def serve(predictor: Any, host: str = "127.0.0.1", port: int = 8080, name: str = "teacher", *,
          max_body_bytes: int = MAX_BODY_BYTES, max_rows: int = MAX_ROWS) -> None:
    """Serve ``predictor``'s logits with uvicorn until interrupted."""
    import uvicorn

    app = create_app(predictor, name=name, max_body_bytes=max_body_bytes, max_rows=max_rows)
    uvicorn.run(app, host=host, port=port, log_level="warning")

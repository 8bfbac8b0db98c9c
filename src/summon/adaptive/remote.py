"""A remote stage: the client of a small HTTP protocol for a model that returns logits (the server side is
:mod:`summon.serve.logits_server`).

Protocol ``summon-logits/1`` (JSON over HTTP):

    GET  /v1/info    -> {"protocol": "summon-logits/1", "name", "task", "labels", "flops_per_example",
                         "defer_output"}
    POST /v1/logits  {"inputs": [{"text": ...} | {"text": ..., "text_pair": ...} | {"tokens": [...]}, ...]}
                     -> {"logits": [[float, ...], ...]}   one row per input, in order

Any failure — connection refused, a timeout, an HTTP error, a malformed answer — raises
:class:`~summon.adaptive.cascade_stages.StageUnavailable`, and a cascade answers those rows with the last stage
that did answer (marking them ``fallback``).
"""

from __future__ import annotations

import json
import logging
import statistics
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import numpy as np

from summon.adaptive.cascade_stages import StageUnavailable
from summon.measure.stage_costs import StageMeasurement
from summon.measure.timing import time_call

logger = logging.getLogger(__name__)

PROTOCOL = "summon-logits/1"


class RequestTooLarge(StageUnavailable):
    """The server's body or row limit (HTTP 413): the client splits the request."""


def _error_detail(err: urllib.error.HTTPError) -> str:
    """The server's JSON ``error`` (and the input ``index``) of an HTTP error, or its reason."""
    try:
        body = json.loads(err.read() or b"{}")
    except (ValueError, OSError):
        return str(err.reason)
    if not isinstance(body, dict) or "error" not in body:
        return str(err.reason)
    return f"input {body['index']}: {body['error']}" if "index" in body else str(body["error"])


def _request(url: str, payload: dict | None, timeout: float) -> dict[str, Any]:
    data = None if payload is None else json.dumps(payload).encode("utf-8")
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"},
                                 method="GET" if payload is None else "POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = resp.read()
    except urllib.error.HTTPError as err:
        detail = _error_detail(err)
        if err.code == 413:
            raise RequestTooLarge(f"{url}: HTTP 413 {detail}") from None
        if err.code == 422:  # the inputs are wrong, not the server: falling back would hide it
            raise ValueError(f"{url} refused the inputs: {detail}") from None
        raise StageUnavailable(f"{url}: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise StageUnavailable(f"{url}: {type(reason).__name__}: {reason}") from None
    try:
        return json.loads(body)
    except ValueError as err:  # JSONDecodeError, or UnicodeDecodeError for bytes that are not UTF-8
        raise StageUnavailable(f"{url}: answered with invalid JSON ({err})") from None


def _checked_rows(answer: Any, count: int, width: int, url: str) -> list[list[float]]:
    """The ``logits`` of an answer if it holds ``count`` rows of ``width`` numbers; else StageUnavailable."""
    got = answer.get("logits") if isinstance(answer, dict) else None
    ok = isinstance(got, list) and len(got) == count and all(
        isinstance(row, list) and len(row) == width
        and all(isinstance(x, int | float) and not isinstance(x, bool) for x in row) for row in got)
    if not ok:
        raise StageUnavailable(f"{url}: expected {count} rows of {width} numbers under 'logits'")
    return got


@dataclass
class RemoteStage:
    """A cascade stage served by a ``summon-logits/1`` server."""

    url: str
    name: str
    task: str
    labels: list[str]
    flops_per_example: float
    defer_output: bool = False
    timeout: float = 10.0
    max_rows: int = 256

    @classmethod
    def connect(cls, url: str, *, name: str = "remote", timeout: float = 10.0) -> RemoteStage:
        """Ask the server what it is (``/v1/info``); raises ValueError if it cannot be reached now."""
        try:
            info = _request(url.rstrip("/") + "/v1/info", None, timeout)
        except StageUnavailable as err:
            raise ValueError(f"cannot reach the logits server: {err}. Start it with `summon serve-logits`.") from None
        if info.get("protocol") != PROTOCOL:
            raise ValueError(f"{url} speaks {info.get('protocol')!r}, not {PROTOCOL}")
        return cls(url=url.rstrip("/"), name=name, task=info["task"], labels=list(info["labels"]),
                   flops_per_example=float(info.get("flops_per_example") or 0.0),
                   defer_output=bool(info.get("defer_output")), timeout=timeout)

    @classmethod
    def from_dict(cls, entry: dict[str, Any]) -> RemoteStage:
        fields = {k: entry[k] for k in cls.__dataclass_fields__ if k in entry}
        return cls(**fields)

    def describe(self) -> dict[str, Any]:
        return {"type": "remote", **asdict(self)}

    def logits(self, examples: Sequence[dict[str, Any]], batch_size: int = 64) -> np.ndarray:
        width = len(self.labels) + int(self.defer_output)
        rows: list[list[float]] = []
        for start in range(0, len(examples), self.max_rows):
            rows.extend(self._ask(list(examples[start:start + self.max_rows]), width))
        return np.asarray(rows, dtype=np.float32).reshape(len(examples), width)

    def _ask(self, chunk: list[dict[str, Any]], width: int) -> list[list[float]]:
        """The logits of ``chunk``, halving it while the server answers 413 (too large)."""
        try:
            answer = _request(self.url + "/v1/logits", {"inputs": chunk}, self.timeout)
        except RequestTooLarge as err:
            if len(chunk) == 1:
                raise ValueError(f"{err}: one input is larger than the server accepts; shorten it or raise the "
                                 "server's --max-body-bytes") from None
            half = len(chunk) // 2
            return self._ask(chunk[:half], width) + self._ask(chunk[half:], width)
        return _checked_rows(answer, len(chunk), width, self.url)

    def measure(self, examples: Sequence[dict[str, Any]], *, latency: bool = True, **rule: Any) -> StageMeasurement:
        """What this stage costs, as :func:`~summon.measure.stage_costs.measure_costs` asks a stage that measures
        itself: the FLOPs per example the server reports and, with ``latency``, the median milliseconds per example
        of whole round trips over ``examples`` (serialising, the network, the server's featurisation and model),
        timed by :func:`~summon.measure.timing.time_call` under ``rule`` (None when the stage does not answer)."""
        ms = None
        if latency and examples:
            rows = list(examples)
            try:
                ms = statistics.median(time_call(partial(self.logits, rows), **rule)) * 1000.0 / len(rows)
            except StageUnavailable as err:
                logger.warning("%s did not answer while its latency was measured: %s", self.url, err)
        return StageMeasurement(self.flops_per_example, ms, f"remote {self.url}")

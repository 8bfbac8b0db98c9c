"""The HTTP app's options, declared once (:class:`ServeOptions`), with the limits the logits protocol shares.

Light on purpose (the standard library and the engine's config only): ``summon serve --help`` derives its flags
from these dataclasses (:mod:`summon.core.options`) without importing the app, FastAPI or torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from summon.serve.queue import EngineConfig

MAX_BODY_BYTES = 16 * 1024 * 1024  # a remote stage sends up to 256 rows of long documents in one request
MAX_ROWS = 1024  # rows per request (summon's remote stage sends 256)
REQUEST_TIMEOUT_S = 30.0
DRAIN_SECONDS = 30.0
READ_TIMEOUT_S = 10.0
KEEP_ALIVE_S = 5.0
MAX_RESPONSE_BYTES = 32 * 1024 * 1024
OVERLOAD_STATUSES = (503, 429)


def check_limits(max_body_bytes: int, max_rows: int) -> None:
    for key, value in (("max_body_bytes", max_body_bytes), ("max_rows", max_rows)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be a positive whole number, got {value!r}")


@dataclass(frozen=True)
class ServeOptions:
    """How the app answers (see :func:`create_server_app`): the one declaration of the app's options, from which
    ``summon serve`` derives its flags (:mod:`summon.core.options`) and the Ray app takes its keywords."""

    max_body_bytes: int = field(default=MAX_BODY_BYTES, metadata={
        "help": "largest request body; a larger one is answered 413"})
    max_rows: int = field(default=MAX_ROWS, metadata={
        "help": "most inputs per request; more are answered 413 (the engine's max_request_rows follows it)"})
    request_timeout_s: float = field(default=REQUEST_TIMEOUT_S, metadata={
        "flag": "--request-timeout", "help": "seconds before an unanswered prediction is answered 504"})
    overload_status: int = field(default=503, metadata={
        "choices": OVERLOAD_STATUSES, "help": "status of a full queue (both with Retry-After)"})
    warmup_sizes: tuple[int, ...] | None = field(default=None, metadata={
        "metavar": "ROWS", "help": "batch sizes the warm-up runs every model at before /ready answers 200 "
        "(default: 1, 8 and the engine's max_batch_rows)"})
    drain_seconds: float = field(default=DRAIN_SECONDS, metadata={
        "help": "on SIGTERM, the process exits within this many seconds: queued and running work may take all "
        "but the last 0.5 s of it (at most a quarter) to finish; what is left then is answered 503 (draining, "
        "Retry-After)"})
    read_timeout_s: float = field(default=READ_TIMEOUT_S, metadata={
        "flag": "--read-timeout", "help": "seconds a client may take to send a request's head (else the "
        "connection is closed) and, from then, its whole body (else 408)"})
    keep_alive_s: float = field(default=KEEP_ALIVE_S, metadata={
        "flag": "--keep-alive", "help": "seconds an idle keep-alive connection is held open"})
    max_response_bytes: int = field(default=MAX_RESPONSE_BYTES, metadata={
        "help": "largest answer, estimated before running (rows x labels x bytes per probability); a request "
        "whose answer would be larger is answered 413"})

    def __post_init__(self) -> None:
        if isinstance(self.warmup_sizes, list):  # a list read back from JSON or YAML becomes the tuple it was
            object.__setattr__(self, "warmup_sizes", tuple(self.warmup_sizes))
        check_limits(self.max_body_bytes, self.max_rows)
        value = self.max_response_bytes
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"max_response_bytes must be a positive whole number, got {value!r}")
        for key in ("read_timeout_s", "keep_alive_s"):
            if not _seconds(getattr(self, key)) or getattr(self, key) == 0:
                raise ValueError(f"{key} must be a finite number of seconds > 0, got {getattr(self, key)!r}")
        if not _seconds(self.request_timeout_s) or self.request_timeout_s == 0:
            raise ValueError(f"request_timeout_s must be a finite number of seconds > 0, got {self.request_timeout_s!r}")
        if not _seconds(self.drain_seconds):
            raise ValueError(f"drain_seconds must be a finite number of seconds >= 0, got {self.drain_seconds!r}")
        if self.overload_status not in OVERLOAD_STATUSES:
            raise ValueError(f"overload_status must be 503 or 429, got {self.overload_status!r}")
        if self.warmup_sizes is not None and (not self.warmup_sizes or any(
                isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in self.warmup_sizes)):
            raise ValueError(f"warmup_sizes must be positive whole numbers of rows, got {self.warmup_sizes!r}")


def warmup_sizes(max_batch_rows: int) -> tuple[int, ...]:
    """The batch sizes a warm-up runs by default: one row, eight and a full batch."""
    return tuple(sorted({1, min(8, max_batch_rows), max_batch_rows}))


def served_engine_config(app: ServeOptions, **options: Any) -> EngineConfig:
    """The engine's config under an app with these options: ``options`` in the flat form of
    :meth:`EngineConfig.of`, the engine's ``max_request_rows`` following the app's ``max_rows`` unless given (one
    limit on the inputs of a request)."""
    return EngineConfig.of(**{"max_request_rows": app.max_rows, **options})


def _seconds(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and 0 <= value < math.inf

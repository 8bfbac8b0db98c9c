"""Shared test settings and helpers.

Tiers: the default run (``pytest``) is ``-m "not slow and not integration"`` (pyproject's addopts);
``slow`` needs real pretrained weights or real-size data, ``integration`` starts processes or servers
(``pytest -m integration``; everything: ``pytest -m ""``). A test that listens on a port takes the
``free_port`` fixture (or calls :func:`find_free_port`), never a fixed number.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

FIXTURE_DATA = Path(__file__).resolve().parent / "fixtures" / "data"  # tiny synthetic catalog (fixtures/make_data.py)


def find_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now: bound to port 0 (the OS picks one), then released for the caller."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@pytest.fixture
def free_port() -> int:
    """A free loopback TCP port for a server (or ``accelerate launch --main_process_port``) in this test."""
    return find_free_port()


@pytest.fixture
def fixture_data_dir(monkeypatch) -> Path:
    """The bundled synthetic catalog (``tests/fixtures/data``), also set as ``$SUMMON_DATA_DIR``."""
    monkeypatch.setenv("SUMMON_DATA_DIR", str(FIXTURE_DATA))
    return FIXTURE_DATA


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny models gain nothing from intra-op threads; one thread avoids contention on small machines."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@contextlib.contextmanager
def serving(app, lifespan: str = "off"):
    """Run an ASGI app with uvicorn on a free loopback port in a daemon thread; yields its URL. ``lifespan="on"``
    runs the app's startup and shutdown (``summon serve``'s app starts and drains its engine there)."""
    uvicorn = pytest.importorskip("uvicorn")
    port = find_free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical", lifespan=lifespan))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started, "the test server did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def call(url: str, path: str, payload=None, *, headers=None, method=None, body: bytes | None = None,
         timeout: float = 30.0):
    """``(status, headers, answer)`` of one request: the answer parsed as JSON when it is JSON, else text."""
    data = body if body is not None else None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(url + path, data=data, method=method or ("GET" if data is None else "POST"),
                                 headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, head, raw = resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as err:
        status, head, raw = err.code, err.headers, err.read()
    if head.get("content-type", "").startswith("application/json"):
        return status, head, json.loads(raw)
    return status, head, raw.decode()

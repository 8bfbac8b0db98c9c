"""Serve a saved predictor's logits over HTTP (protocol ``summon-logits/1``, see :mod:`summon.adaptive.remote`).

Run: ``summon serve-logits PREDICTOR --host 127.0.0.1 --port 8080`` (needs ``pip install 'summon[serve]'``).
"""

from __future__ import annotations

from typing import Any

from summon.adaptive.remote import PROTOCOL


def create_app(predictor: Any, *, name: str = "teacher", flops_per_example: float | None = None):
    """A FastAPI app answering ``/v1/info`` and ``/v1/logits`` for ``predictor``."""
    try:
        from fastapi import FastAPI, HTTPException
    except ImportError as err:
        raise ValueError("serving needs FastAPI and uvicorn: pip install 'summon[serve]'") from err

    flops = flops_per_example
    if flops is None:
        flops = float(predictor.manifest.get("costs", {}).get("flops_per_example", 0.0))
    defer = bool(predictor.manifest.get("architecture", {}).get("defer_output", False))
    app = FastAPI(title=f"summon logits: {name}")

    @app.get("/v1/info")
    def info() -> dict[str, Any]:
        return {"protocol": PROTOCOL, "name": name, "task": predictor.task, "labels": predictor.labels,
                "flops_per_example": flops, "defer_output": defer}

    @app.post("/v1/logits")
    def logits(body: dict[str, Any]) -> dict[str, Any]:
        inputs = body.get("inputs")
        if not isinstance(inputs, list):
            raise HTTPException(status_code=422, detail="expected {'inputs': [ {text: ...}, ... ]}")
        try:
            rows = predictor.logits(inputs, raw=True)
        except (KeyError, ValueError, TypeError) as err:
            raise HTTPException(status_code=422, detail=f"bad inputs: {err}") from None
        return {"logits": [[float(x) for x in row] for row in rows]}

    return app


def serve(predictor: Any, host: str = "127.0.0.1", port: int = 8080, name: str = "teacher") -> None:
    import uvicorn

    uvicorn.run(create_app(predictor, name=name), host=host, port=port, log_level="warning")

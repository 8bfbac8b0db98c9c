"""The engine on Ray Serve: ``summon serve --ray`` and :func:`ray_app` (``pip install 'summon[ray]'``, Ray ≥ 2.58).

::

    from ray import serve
    from summon.serve.ray_app import ray_app

    app = ray_app({"sst2": "runs/cascade"}, max_batch_rows=64,
                  autoscaling_config={"min_replicas": 1, "max_replicas": 4})
    serve.run(app, name="summon", route_prefix="/")   # the routes of `summon serve`, behind Ray's proxy

**One engine per replica.** Each replica of the ``summon`` deployment loads the models, makes one
:class:`~summon.serve.engine.Engine` and mounts the FastAPI app of :func:`~summon.serve.app.create_server_app` as
its ingress (``@serve.ingress``, built when the replica starts): every route, limit, header, error and metric of
``summon serve``, with Ray's proxy spreading requests over the replicas. The app's lifespan starts and warms up
the engine, and drains it when Ray stops the replica (``graceful_shutdown_timeout_s`` covers ``drain_seconds``);
a replica whose warm-up failed fails Ray's health check.

**Batches need requests in flight.** The engine batches the requests one replica holds, so a replica must hold
enough of them: ``max_ongoing_requests`` defaults to ``2 × max_batch_rows`` (Ray's default of 5 would cap every
batch of one-row requests at 5 rows). Past it Ray queues requests at the proxy, at most ``max_queued_requests``
per proxy (default ``2 × max_ongoing_requests``; -1: no bound), and answers the rest 503 (429 with
``overload_status=429``) with ``Retry-After`` — Ray's backpressure in front of the engine's bounded queue, which
answers the same way. An autoscaling config (``autoscaling_config``, or ``num_replicas="auto"``) gets
``target_ongoing_requests = max_batch_rows`` unless it sets its own: a replica is busy when a batch's worth of
requests waits in it, not at Ray's default of 2.

**A cascade's teacher is a deployment of its own** (``split_teachers``, on by default, for a cascade whose last
stage is local): ``teacher-NAME`` loads the last stage alone, and the ``summon`` replicas load the cascade
without it, reaching it through a :class:`HandleStage`. The teacher so scales (``teacher_replicas`` or
``teacher_autoscaling_config``) with the rows deferred to it rather than with the requests. Each replica's engine
sends the deferred rows of many requests in one call; the teacher merges concurrent calls from several replicas
into one forward pass (``@serve.batch``: up to ``teacher_max_batch`` calls, waiting at most ``teacher_wait_ms``).
A teacher that does not answer within ``teacher_timeout_s`` (down, overloaded, slow) raises
:class:`~summon.adaptive.cascade_stages.StageUnavailable`, so those rows are answered by the student, marked
``fallback``/``degraded``, with a 200 — as with a remote teacher over HTTP.

**Why a DeploymentHandle, not HTTP.** The student could reach its teacher as a
:class:`~summon.adaptive.remote.RemoteStage` over ``summon-logits/1`` routes under the teacher's own
``route_prefix``. In Ray only an application's ingress has HTTP routes, so the teacher would be a second
application in every config, and each replica would need the proxy's address — known to ``serve.run`` here, not
to a config deployed on a cluster whose proxies bind elsewhere — and every deferred row would be JSON-encoded
through the proxy twice. A handle needs none of this: Ray routes the call straight to a teacher replica, passes
numpy arrays without JSON, applies the teacher's ``max_queued_requests`` at the caller and counts the calls in
the teacher's autoscaling metrics, while :class:`HandleStage` raises ``StageUnavailable`` exactly where
``RemoteStage`` would, so the cascade's fallback is unchanged. The teacher's logits stay reachable over HTTP at
the student's ``/models/NAME/v1/logits`` (a cascade's full model is its last stage).

**Config files.** :func:`build_app` is an application builder for Ray's config files (``serve run FILE``,
``serve deploy FILE``): ``import_path: summon.serve.ray_app:build_app`` with ``args`` = ``models`` and the
keyword arguments of :func:`ray_app`. ``summon serve --ray --write-config FILE`` writes such a file
(:func:`serve_config`). ``serve build`` itself takes only a built application, not a builder with arguments.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import os
import re
import signal
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from summon.adaptive.cascade import load_cascade, load_stage
from summon.adaptive.cascade_stages import StageUnavailable
from summon.adaptive.kinds import load as load_kind
from summon.adaptive.kinds import staged_kind
from summon.adaptive.remote import RemoteStage
from summon.core.options import options_for
from summon.models.hf import HF_PREFIX
from summon.predictors.saved import read_json_manifest
from summon.serve.app import create_server_app
from summon.serve.control import ControlConfig
from summon.serve.engine import Engine, EngineConfig
from summon.serve.options import ServeOptions, served_engine_config, warmup_sizes

logger = logging.getLogger(__name__)

APP_NAME = "summon"
DEPLOYMENT = "summon"  # the deployment of the models (the ingress)
BUILDER = "summon.serve.ray_app:build_app"
INSTALL = "pip install 'summon[ray]'"
RAY_MIN = (2, 58)  # serve.ingress() built at replica start (2.56), backpressure_config (2.58)


def ray_serve() -> Any:
    """``ray.serve``, imported now (Ray is optional and heavy); ValueError saying how to install it, or that the
    installed Ray is older than :data:`RAY_MIN` (late-bound ingress came in 2.56, ``backpressure_config`` in 2.58)."""
    try:
        import ray
        from ray import serve
    except ImportError as err:
        raise ValueError(f"Ray Serve is not installed ({err}); {INSTALL}") from None
    found = tuple(int(part) for part in re.findall(r"\d+", ray.__version__)[:2])
    if found < RAY_MIN:
        raise ValueError(f"summon's Ray Serve app needs ray[serve]>={'.'.join(map(str, RAY_MIN))}, found "
                         f"{ray.__version__}; {INSTALL}")
    return serve


# --- options ------------------------------------------------------------------------------------------------


NESTED = {"engine": "the engine's own options (max_batch_rows, ...)", "app": "the app's own options (max_rows, ...)",
          "control": "the controllers' own options (window, settle_rows, ...)"}


@dataclass(frozen=True)
class RayServeOptions:
    """Everything :func:`ray_app` takes besides the models: the engine's config (:class:`EngineConfig` with its
    :class:`~summon.serve.control.ControlConfig`), the app's options (:class:`ServeOptions`) — each declared once,
    there — and the deployments' settings below. :meth:`of` builds it from flat keyword options (the ``args`` of a
    config file, :meth:`from_args`), :meth:`to_args` writes them back."""

    engine: EngineConfig = field(default_factory=EngineConfig)
    app: ServeOptions = field(default_factory=ServeOptions)
    device: str = "auto"
    # the models' deployment
    num_replicas: int | str | None = None  # None: 1, or what autoscaling_config says; "auto": Ray's autoscaling
    autoscaling_config: dict[str, Any] | None = None
    max_ongoing_requests: int | None = None  # None: 2 x max_batch_rows
    max_queued_requests: int | None = None  # None: 2 x max_ongoing_requests; -1: no bound
    ray_actor_options: dict[str, Any] = field(default_factory=lambda: {"num_cpus": 1})
    # cascades' teachers
    split_teachers: bool = True
    teacher_replicas: int | str | None = None
    teacher_autoscaling_config: dict[str, Any] | None = None
    teacher_max_ongoing_requests: int | None = None  # None: 2 x teacher_max_batch
    teacher_max_queued_requests: int = -1  # a teacher slower than teacher_timeout_s is answered by the student
    teacher_ray_actor_options: dict[str, Any] = field(default_factory=lambda: {"num_cpus": 1})
    teacher_timeout_s: float = 10.0
    teacher_max_batch: int = 8  # calls (each the deferred rows of one student batch) merged into one forward pass
    teacher_wait_ms: float = 2.0

    def __post_init__(self) -> None:
        if not isinstance(self.engine, EngineConfig) or not isinstance(self.app, ServeOptions):
            raise TypeError("engine must be an EngineConfig and app a ServeOptions (or give flat options to "
                            "RayServeOptions.of)")
        for key in ("num_replicas", "teacher_replicas"):
            value = getattr(self, key)
            if value is not None and value != "auto" and not _count(value):
                raise ValueError(f"{key} must be a positive whole number, 'auto' or None, got {value!r}")
        for key in ("max_ongoing_requests", "teacher_max_ongoing_requests"):
            if getattr(self, key) is not None and not _count(getattr(self, key)):
                raise ValueError(f"{key} must be a positive whole number (or None for the default), got "
                                 f"{getattr(self, key)!r}")
        for key in ("max_queued_requests", "teacher_max_queued_requests"):
            value = getattr(self, key)
            if value is not None and value != -1 and not _count(value):
                raise ValueError(f"{key} must be a positive whole number or -1 (no bound), got {value!r}")
        for key in ("autoscaling_config", "teacher_autoscaling_config"):
            if getattr(self, key) is not None and not isinstance(getattr(self, key), Mapping):
                raise TypeError(f"{key} must be a dict of Ray Serve autoscaling settings (min_replicas, "
                                f"max_replicas, target_ongoing_requests, ...), got {type(getattr(self, key)).__name__}")
        for key in ("ray_actor_options", "teacher_ray_actor_options"):
            if not isinstance(getattr(self, key), Mapping):
                raise TypeError(f"{key} must be a dict such as {{'num_cpus': 1}}, got {getattr(self, key)!r}")
        for key in ("teacher_timeout_s", "teacher_wait_ms"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
                raise ValueError(f"{key} must be a finite number >= 0, got {value!r}")
        if not _count(self.teacher_max_batch):
            raise ValueError(f"teacher_max_batch must be a positive whole number, got {self.teacher_max_batch!r}")
        if not isinstance(self.split_teachers, bool) or not isinstance(self.device, str):
            raise TypeError("split_teachers must be True or False and device a string such as 'auto' or 'cpu'")
        if self.ongoing() <= self.engine.max_batch_rows:
            logger.warning("max_ongoing_requests=%d is not above max_batch_rows=%d: batches of one-row requests "
                           "will hold at most %d rows", self.ongoing(), self.engine.max_batch_rows, self.ongoing())

    @classmethod
    def of(cls, *, where: str = "summon.serve.ray_app", error: type[Exception] = TypeError,
           **options: Any) -> RayServeOptions:
        """The options of flat keywords: :class:`EngineConfig`'s fields, :class:`ControlConfig`'s,
        :class:`ServeOptions`' and this class's own; the engine's ``max_request_rows`` follows ``max_rows`` unless
        given. An unknown name raises ``error`` with a suggestion."""
        engine, control, app, own = options_for(options, EngineConfig, ControlConfig, ServeOptions, cls, where=where,
                                                set_by=NESTED, error=error)
        served = ServeOptions(**app)
        return cls(engine=served_engine_config(served, **engine, **control), app=served, **own)

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> RayServeOptions:
        """The options of a config file's ``args`` (without ``models``); unknown keys are refused by name."""
        return cls.of(where="the args of summon's Ray Serve app", error=ValueError, **args)

    def to_args(self) -> dict[str, Any]:
        """The options as a config file's ``args`` (JSON/YAML values): the flat keywords of :meth:`of`."""
        own = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in NESTED}
        app = dataclasses.asdict(self.app)
        return {**self.engine.flat(), **app, "warmup_sizes": None if app["warmup_sizes"] is None else
                list(app["warmup_sizes"]), **own}

    def engine_options(self) -> dict[str, Any]:
        """Keyword arguments of :class:`~summon.serve.engine.Engine`."""
        return self.engine.flat()

    def app_options(self) -> dict[str, Any]:
        """Keyword arguments of :func:`~summon.serve.app.create_server_app`."""
        return {**dataclasses.asdict(self.app), "warmup_sizes": self.warmup_sizes()}

    def warmup_sizes(self) -> tuple[int, ...]:
        return self.app.warmup_sizes or warmup_sizes(self.engine.max_batch_rows)

    def ongoing(self) -> int:
        return self.max_ongoing_requests or 2 * self.engine.max_batch_rows

    def model_deployment(self) -> dict[str, Any]:
        """Keyword arguments of ``serve.deployment`` for the models' deployment."""
        ongoing = self.ongoing()
        queued = self.max_queued_requests if self.max_queued_requests is not None else 2 * ongoing
        return {**_replicas(self.num_replicas, self.autoscaling_config, self.engine.max_batch_rows),
                "max_ongoing_requests": ongoing, "max_queued_requests": queued,
                "backpressure_config": {"status_code": self.app.overload_status, "retry_after_s": 1},
                "ray_actor_options": dict(self.ray_actor_options),
                "graceful_shutdown_timeout_s": self.app.drain_seconds + 10.0}

    def teacher_deployment(self) -> dict[str, Any]:
        """Keyword arguments of ``serve.deployment`` for a teacher's deployment."""
        return {**_replicas(self.teacher_replicas, self.teacher_autoscaling_config, self.teacher_max_batch),
                "max_ongoing_requests": self.teacher_max_ongoing_requests or 2 * self.teacher_max_batch,
                "max_queued_requests": self.teacher_max_queued_requests,
                "ray_actor_options": dict(self.teacher_ray_actor_options)}


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _replicas(num_replicas: int | str | None, autoscaling: Mapping[str, Any] | None, target: int) -> dict[str, Any]:
    """``num_replicas`` / ``autoscaling_config`` for ``serve.deployment``: autoscaling targets ``target`` ongoing
    requests per replica unless it says otherwise."""
    if autoscaling is None and num_replicas != "auto":
        return {"num_replicas": num_replicas or 1}
    out: dict[str, Any] = {"autoscaling_config": {"target_ongoing_requests": target, **(autoscaling or {})}}
    if num_replicas == "auto":
        out["num_replicas"] = "auto"
    elif num_replicas is not None:
        raise ValueError(f"give num_replicas={num_replicas!r} or an autoscaling config, not both (the autoscaling "
                         "config's min_replicas and max_replicas bound the replicas)")
    return out


# --- the application ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RayDeployments:
    """What :func:`ray_deployments` builds: the application and its deployments (to read their settings)."""

    app: Any  # ray.serve.Application: serve.run(app, name="summon", route_prefix="/")
    models: Any  # the models' Deployment (the ingress)
    teachers: dict[str, Any]  # cascade name -> its teacher's Deployment
    options: RayServeOptions


def ray_app(models: Mapping[str, str | os.PathLike], **options: Any) -> Any:
    """A Ray Serve application serving ``models`` (name -> saved predictor folder, the first the default) with one
    engine per replica; run it with ``serve.run(app, name="summon", route_prefix="/")``.

    Args:
        models: name -> a saved predictor (early exit, cascade, progressive or plain) or ``hf:ID``; folders must
            be readable at the same path on every node.
        **options: flat keyword options (:meth:`RayServeOptions.of`): the engine's — the fields of
            :class:`~summon.serve.queue.EngineConfig` (``max_batch_rows``, ``max_wait_ms``, ``degrade``,
            ``controller``, ...) and of :class:`~summon.serve.control.ControlConfig` (``window``, ``settle_rows``,
            ...) —, the app's — the fields of :class:`~summon.serve.app.ServeOptions` (``max_rows``,
            ``max_body_bytes``, ``request_timeout_s``, ``overload_status``, ``drain_seconds``, ...) —, ``device``,
            the deployment's (``num_replicas``, ``autoscaling_config``, ``max_ongoing_requests``,
            ``max_queued_requests``, ``ray_actor_options``) and the teachers' (``split_teachers``,
            ``teacher_replicas``, ``teacher_autoscaling_config``, ``teacher_max_ongoing_requests``,
            ``teacher_max_queued_requests``, ``teacher_ray_actor_options``, ``teacher_timeout_s``,
            ``teacher_max_batch``, ``teacher_wait_ms``); see the module docstring.

    Raises:
        ValueError: a missing model folder, a bad option, or Ray Serve not installed.
    """
    return ray_deployments(models, **options).app


def build_app(args: dict[str, Any]) -> Any:
    """Application builder for Ray config files (``import_path: summon.serve.ray_app:build_app``): ``args`` holds
    ``models`` (name -> folder) and any keyword argument of :func:`ray_app`."""
    if not isinstance(args, Mapping) or "models" not in args:
        raise ValueError("the args of summon.serve.ray_app:build_app need 'models': {NAME: FOLDER, ...}")
    rest = {k: v for k, v in args.items() if k != "models"}
    return ray_deployments(args["models"], options=RayServeOptions.from_args(rest)).app


def ray_deployments(models: Mapping[str, str | os.PathLike], *, options: RayServeOptions | None = None,
                    **kwargs: Any) -> RayDeployments:
    """:func:`ray_app`, returning the deployments too (``options`` or keyword arguments, not both)."""
    if options is not None and kwargs:
        raise TypeError("give RayServeOptions or keyword options, not both")
    options = options or RayServeOptions.of(**kwargs)
    paths = model_paths(models)
    serve = ray_serve()
    teachers: dict[str, Any] = {}
    handles: dict[str, Any] = {}
    names = deployment_names(paths)
    for name, path in paths.items():
        if options.split_teachers and teacher_apart(path):
            teachers[name] = serve.deployment(TeacherReplica, name=f"teacher-{names[name]}",
                                              **options.teacher_deployment())
            handles[name] = teachers[name].bind(path, options.device, options.teacher_max_batch,
                                                options.teacher_wait_ms, options.engine.max_batch_rows)
    ingress = serve.deployment(serve.ingress()(ModelReplica), name=DEPLOYMENT, **options.model_deployment())
    app = ingress.bind(paths, handles, options.engine_options(), options.app_options(), options.device,
                       options.teacher_timeout_s)
    return RayDeployments(app, ingress, teachers, options)


def model_paths(models: Mapping[str, str | os.PathLike]) -> dict[str, str]:
    """``models`` with absolute paths (Ray's workers run elsewhere), each checked to be a folder or ``hf:ID``."""
    if not isinstance(models, Mapping) or not models:
        raise TypeError(f"models must be a non-empty dict of name -> predictor folder, got {type(models).__name__}")
    out = {}
    for name, path in models.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"model names must be non-empty strings, got {name!r}")
        if not isinstance(path, str | os.PathLike):
            raise TypeError(f"model {name!r}: expected a predictor folder, got {type(path).__name__}")
        text = os.fspath(path)
        if text.startswith(HF_PREFIX):
            out[name] = text
        elif not Path(text).is_dir():
            raise ValueError(f"model {name!r}: no predictor folder at {text}")
        else:
            out[name] = str(Path(text).resolve())
    return out


def deployment_names(paths: Mapping[str, str]) -> dict[str, str]:
    """A name per model usable in a deployment name (Ray reserves ``#``), distinct from each other."""
    out: dict[str, str] = {}
    for name in paths:
        base = re.sub(r"[^A-Za-z0-9._-]", "-", name) or "model"
        candidate, n = base, 1
        while candidate in out.values():
            n += 1
            candidate = f"{base}-{n}"
        out[name] = candidate
    return out


def teacher_apart(path: str) -> bool:
    """Whether ``path`` is a cascade whose last stage is local (so it can run in a deployment of its own)."""
    manifest = read_json_manifest(Path(path)) if Path(path).is_dir() else None
    kind = staged_kind(manifest)
    if getattr(kind, "name", None) != "cascade":
        return False
    stages = manifest.get("stages")
    return isinstance(stages, list) and bool(stages) and isinstance(stages[-1], dict) \
        and stages[-1].get("type") == "local"


def load_model(path: str, *, device: str, teacher: Any = None, name: str = "model", timeout: float = 10.0) -> Any:
    """The predictor at ``path`` (as ``summon.load``); with ``teacher`` (a DeploymentHandle), a cascade whose last
    stage is a :class:`HandleStage` calling it (that stage's weights are not loaded here)."""
    if teacher is None:
        return load_kind(path, device=device)
    directory = Path(path)
    manifest = read_json_manifest(directory)
    stage = HandleStage(teacher, name=manifest["stages"][-1].get("name") or "teacher", labels=list(manifest["labels"]),
                        deployment=str(getattr(teacher, "deployment_name", f"teacher of {name}")), timeout=timeout)
    cascade = load_cascade(directory, manifest, device=device, stages={-1: stage})
    calibration = cascade.calibration
    stage.flops_per_example = 0.0 if calibration is None else float(calibration.costs.flops_full)
    return cascade


# --- the deployments' classes -------------------------------------------------------------------------------


class ModelReplica:
    """One replica of the ``summon`` deployment: the models, one engine, and the HTTP app as its ingress.

    Args:
        models: name -> absolute folder.
        teachers: name -> the DeploymentHandle of that cascade's teacher (Ray passes handles for bound deployments).
        engine: :class:`Engine` keyword arguments. app: :func:`create_server_app` keyword arguments.
    """

    def __init__(self, models: dict[str, str], teachers: dict[str, Any], engine: dict[str, Any],
                 app: dict[str, Any], device: str, teacher_timeout_s: float):
        predictors = {name: load_model(path, device=device, teacher=teachers.get(name), name=name,
                                       timeout=teacher_timeout_s) for name, path in models.items()}
        self._summon_engine = Engine(predictors, **engine)
        self._summon_app_options = dict(app)
        self._summon_app: Any = None

    def __serve_build_asgi_app__(self) -> Any:
        """Ray calls this once the replica is made: the ASGI app (its lifespan starts and drains the engine)."""
        self._summon_app = create_server_app(self._summon_engine, **self._summon_app_options)
        return self._summon_app

    def check_health(self) -> None:
        """Ray's health check: a replica whose warm-up failed is unhealthy (and replaced)."""
        state = getattr(getattr(self._summon_app, "state", None), "summon", None)
        if state is not None and state.warmup_error:
            raise RuntimeError(f"summon: the warm-up failed ({state.warmup_error}); see this replica's log")


class TeacherReplica:
    """One replica of a ``teacher-NAME`` deployment: a cascade's last stage alone, answering raw logits for the
    deferred rows students send, merging concurrent calls into one forward pass."""

    def __init__(self, cascade: str, device: str, max_batch: int, wait_ms: float, batch_rows: int):
        directory = Path(cascade)
        self.stage = load_stage(directory, read_json_manifest(directory) or {}, -1, device=device)
        self.batch_rows = batch_rows
        self._batched = ray_serve().batch(max_batch_size=max_batch, batch_wait_timeout_s=wait_ms / 1000.0)(
            self._logits_of_calls)

    async def logits(self, examples: list[dict[str, Any]]) -> np.ndarray:
        """Raw logits ``[len(examples), K (+1 with a defer output)]`` of canonical examples."""
        return await self._batched(examples)

    async def _logits_of_calls(self, calls: list[list[dict[str, Any]]]) -> list[np.ndarray]:
        rows = [example for call in calls for example in call]
        out = await asyncio.to_thread(self.stage.logits, rows, self.batch_rows)
        sizes = np.cumsum([len(call) for call in calls])[:-1]
        return np.split(out, sizes)


@dataclass
class HandleStage:
    """A cascade stage answered by a Ray Serve deployment (:class:`TeacherReplica`) through its handle: the same
    contract as :class:`~summon.adaptive.remote.RemoteStage` — inputs the teacher refuses raise ValueError, a
    teacher that is down, refuses (backpressure) or misses ``timeout`` raises
    :class:`~summon.adaptive.cascade_stages.StageUnavailable`, so the cascade answers from the last stage that did."""

    handle: Any
    name: str
    labels: list[str]
    deployment: str
    timeout: float = 10.0
    flops_per_example: float = 0.0
    defer_output: bool = False  # learned from the first answer's width

    @property
    def url(self) -> str:  # where a cost report says this stage ran
        return f"ray-serve:{self.deployment}"

    def describe(self) -> dict[str, Any]:
        return {"type": "ray_serve", "name": self.name, "deployment": self.deployment}

    def logits(self, examples: Sequence[dict[str, Any]], batch_size: int = 64) -> np.ndarray:
        width = len(self.labels) + int(self.defer_output)
        if not examples:
            return np.zeros((0, width), dtype=np.float32)
        response = None
        try:
            response = self.handle.logits.remote(list(examples))
            out = response.result(timeout_s=self.timeout)
        except (ValueError, TypeError):
            raise  # the teacher refused the inputs: falling back would hide it
        except TimeoutError:
            if response is not None:
                response.cancel()
            raise StageUnavailable(f"{self.deployment}: no answer within {self.timeout:g} s") from None
        except Exception as err:  # down, backpressure, a replica that died: the cascade falls back
            raise StageUnavailable(f"{self.deployment}: {type(err).__name__}: {err}") from None
        rows = np.array(out, dtype=np.float32)  # a copy: Ray's object store hands out read-only arrays
        k = len(self.labels)
        if rows.ndim != 2 or rows.shape[0] != len(examples) or rows.shape[1] not in (k, k + 1):
            raise StageUnavailable(f"{self.deployment}: expected {len(examples)} rows of {k} or {k + 1} logits, "
                                   f"got shape {rows.shape}")
        self.defer_output = rows.shape[1] == k + 1
        return rows

    measure = RemoteStage.measure  # one stage method: the server's FLOPs, and timed round trips (here: calls)


# --- running it, and its config file ------------------------------------------------------------------------


def http_options(host: str, port: int, options: ServeOptions) -> dict[str, Any]:
    """Ray's proxy settings from the app's: its idle keep-alive bound. The app bounds the body read (408) and the
    answer's wait (504) itself inside the deployment; Ray's proxy has no setting for a request head that never
    ends (``summon serve`` without Ray closes it after ``read_timeout_s``): put a proxy that has one (nginx's
    ``client_header_timeout``) in front of a Ray deployment that faces untrusted clients."""
    return {"host": host, "port": port, "keep_alive_timeout_s": options.keep_alive_s}


def run_ray_server(app: Any, *, host: str = "127.0.0.1", port: int = 8000, name: str = APP_NAME,
                   route_prefix: str = "/", ready: Any = None, options: ServeOptions | None = None) -> None:
    """Deploy ``app`` with ``serve.run`` on Ray's HTTP proxy at ``host:port`` and serve until SIGTERM or SIGINT,
    then shut Serve down (each replica drains its engine). Joins the cluster at ``RAY_ADDRESS`` when set, else
    starts a local one (no dashboard). ``ready``: called with the URL once the application runs; ``options``:
    the app's, for the proxy's settings (:func:`http_options`)."""
    serve = ray_serve()
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(include_dashboard=False)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        serve.start(http_options=http_options(host, port, options or ServeOptions()))
        serve.run(app, name=name, route_prefix=route_prefix, blocking=False)
        if ready is not None:
            ready(f"http://{host}:{port}{route_prefix.rstrip('/')}/")
        while not stop.wait(1.0):
            pass
    finally:
        serve.shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if started:
            ray.shutdown()


def serve_config(models: Mapping[str, str | os.PathLike], options: RayServeOptions, *, host: str = "127.0.0.1",
                 port: int = 8000, name: str = APP_NAME) -> dict[str, Any]:
    """A Ray Serve config (``serve run FILE`` / ``serve deploy FILE``) for ``models``: one application built by
    :func:`build_app` with the models' absolute paths and every option as its ``args``."""
    paths = model_paths(models)
    return {"proxy_location": "EveryNode", "http_options": http_options(host, port, options.app),
            "applications": [{"name": name, "route_prefix": "/", "import_path": BUILDER,
                              "args": {"models": paths, **options.to_args()}}]}


def write_serve_config(path: str | os.PathLike, config: dict[str, Any]) -> Path:
    """Write ``config`` as YAML, checked against Ray's own schema first."""
    serve_schema = ray_serve_schema()
    serve_schema.ServeDeploySchema.model_validate(config)
    out = Path(path)
    header = (f"# Ray Serve config for summon, written by `summon serve --ray --write-config`.\n"
              f"# Run it: serve run {out.name}   (on a cluster: serve deploy {out.name})\n"
              "# args: the models and the options of summon.serve.ray_app.ray_app (see its docstring).\n")
    out.write_text(header + yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return out


def ray_serve_schema() -> Any:
    ray_serve()
    from ray.serve import schema

    return schema

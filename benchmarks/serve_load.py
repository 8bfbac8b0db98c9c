"""Load, overload and fault benchmark of ``summon serve`` (issue 12, item 9) on 127.0.0.1.

Configurations, each a server process of its own (the app of ``summon serve``: an Engine under
``create_server_app``, run by uvicorn), so the client never shares a GIL with the server, a server's peak memory
is its own, a crash is a process that exits, and a teacher can be killed:
  teacher_one_at_a_time  the fine-tuned teacher, one request per forward pass (max_batch_rows=1, no wait);
  teacher_batched        the teacher with cross-request batching;
  early_exit_batched     exits on the frozen teacher, every request at budget 0.4, batched;
  cascade_batched        a student (bag of n-grams) and the teacher in one cascade, every request at budget 0.4.
The early-exit model is used from a private copy (weights linked, manifest copied) calibrated on one half of
SST-2 dev; the cascade is built here from the student and the teacher and calibrated on the same half. The
other half is the load: one text per request, in a seeded order.

Clients (asyncio over raw HTTP/1.1 keep-alive connections, standard library only; each run stops by itself
after ``--seconds`` or ``--max-requests``): a closed loop at concurrency 1, 4, 16, 64; the largest of those
throughputs is the configuration's capacity; then an open loop with Poisson arrivals at 0.5x, 1x and 2x it
(latency counted from the scheduled arrival, so a late client does not hide queueing). Per run: rps (200
answers per second), p50/p95/p99 latency of the 200s, goodput (200s within ``--slo-ms`` per second), mean
batch rows (from /metrics), realised cost (from the answers), rejections by reason, 5xx that are not
refusals, lost requests (sent, never answered), the server's peak RSS (VmHWM).

Checks and extra runs:
  overload        at 2x, every accepted answer is compared with the same text predicted offline one by one
                  at the threshold the answer says was in force (wrong = another label, or another stage);
  shifted stream  IMDB review sentences (shifted from SST-2's phrases) through fresh early-exit servers at
                  budget 0.4 with the budget controller on and off: realised cost overall and over the last
                  window of the controller;
  faults          the cascade's teacher as its own server, killed mid-load (the cascade answers from the
                  student, marked degraded); malformed, oversized and wrong-typed requests between good ones.

Usage (from the repository root; the models come from benchmarks/progressive.py --dataset sst2):
    python benchmarks/serve_load.py
    python benchmarks/serve_load.py --smoke          # tiny untrained models, seconds, into a temp folder
Resumable: finished runs are kept in benchmarks/work/serve_load/runs.json (``--fresh`` starts over).
Writes benchmarks/results/serve_load.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import itertools
import json
import math
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from _common import REPO, provenance, repo_relative, run_paths, write_result

try:
    import psutil
except ImportError:  # peak memory still comes from /proc; CPU seconds of the server are then not reported
    psutil = None

WORK = REPO / "benchmarks" / "work"
CLOSED_LEVELS = (1, 4, 16, 64)
LOAD_FACTORS = (0.5, 1.0, 2.0)
REFUSAL_STATUSES = (429, 503)
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
MODEL_NAME = "m"  # the name every configuration's model is served under


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    progressive = WORK / "progressive_sst2"
    p.add_argument("--teacher", default=str(progressive / "teacher" / "model"))
    p.add_argument("--early-exit", default=str(progressive / "early_exit" / "model"))
    p.add_argument("--student", default=str(progressive / "kd_ngram" / "model"), help="the cascade's first stage")
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--train-limit", type=int, default=4000,
                   help="training rows of the models trained here when the default model folders are missing")
    p.add_argument("--budget", type=float, default=0.4, help="the knob of the early-exit and cascade requests")
    p.add_argument("--seconds", type=float, default=20.0, help="longest load run")
    p.add_argument("--max-requests", type=int, default=20000, help="most requests of one load run")
    p.add_argument("--slo-ms", type=float, default=500.0, help="latency target of goodput")
    p.add_argument("--max-batch-rows", type=int, default=64)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--max-queue-rows", type=int, default=256,
                   help="the engine's queue bound: at 2x load it decides between waiting and 503")
    p.add_argument("--request-timeout", type=float, default=10.0, help="the server's (504 after it)")
    p.add_argument("--server-threads", type=int, default=0, help="torch threads of each server (0: torch's default)")
    p.add_argument("--shift-rows", type=int, default=3000, help="IMDB sentences in the shifted stream")
    p.add_argument("--shift-seconds", type=float, default=30.0)
    p.add_argument("--fault-seconds", type=float, default=15.0)
    p.add_argument("--remote-timeout", type=float, default=2.0, help="the cascade's timeout on its remote teacher")
    p.add_argument("--check-limit", type=int, default=3000,
                   help="most distinct (text, threshold) pairs predicted one by one per overload check")
    p.add_argument("--configs", default="teacher_one_at_a_time,teacher_batched,early_exit_batched,cascade_batched")
    p.add_argument("--parts", default="loads,shifted,faults,screenshot")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--work", default=None, help="default benchmarks/work/serve_load")
    p.add_argument("--out", default=None, help="default benchmarks/results/serve_load.json")
    p.add_argument("--fresh", action="store_true", help="ignore the runs a previous invocation finished")
    p.add_argument("--smoke", action="store_true", help="tiny untrained models, short runs, into a temp folder")
    args = p.parse_args(argv)
    if args.smoke:
        root = Path(tempfile.mkdtemp(prefix="serve_load_smoke_"))
        args.work, args.out = args.work or str(root / "work"), args.out or str(root / "serve_load.json")
        args.seconds, args.max_requests, args.shift_rows = min(args.seconds, 0.6), min(args.max_requests, 400), 200
        args.shift_seconds, args.fault_seconds, args.server_threads = 1.5, 1.5, args.server_threads or 1
        args.check_limit, args.max_queue_rows = min(args.check_limit, 200), min(args.max_queue_rows, 16)
    return args


# --- texts --------------------------------------------------------------------------------------------------


def sst2_halves(data_dir: str, seed: int):
    """SST-2 dev split at random: (calibration half, load half), TaskData both: the two halves of the held-out
    protocol's first halving for ``seed``."""
    from summon.data.loading import load_split
    from summon.data.spec import DatasetSpec, TaskData
    from summon.evaluation.protocol import first_halving

    dev = load_split(DatasetSpec(name="sst2", split="dev"), data_dir=data_dir)
    n = len(dev.examples)
    halving = first_halving(n, seed)
    pick = lambda rows, name: TaskData(dev.task, dev.labels, [dev.examples[i] for i in rows],  # noqa: E731
                                       f"{dev.source} ({name} half of {n}, seed {seed}, {len(rows)} rows)")
    return pick(halving.calibration, "calibration"), pick(halving.report, "load")


def imdb_sentences(data_dir: str, rows: int, seed: int) -> tuple[list[str], str]:
    """Sentences of IMDB test reviews (4 to 50 words, markup removed), drawn at random: a stream shifted from
    SST-2's lower-cased, tokenised phrases (raw casing and punctuation, other films, other writers)."""
    path = Path(data_dir) / "imdb" / "test.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        reviews = [json.loads(line)["text"] for line in f]
    rng = np.random.default_rng(seed + 7)
    out: list[str] = []
    for i in rng.permutation(len(reviews)):
        text = re.sub(r"<br\s*/?>", " ", reviews[i])
        for sentence in re.split(r"(?<=[.!?])\s+", text):
            if 4 <= len(sentence.split()) <= 50:
                out.append(sentence.strip())
        if len(out) >= rows:
            break
    return out[:rows], f"{repo_relative(path)}: {rows} sentences of 4-50 words from random reviews (seed {seed + 7})"


# --- models -------------------------------------------------------------------------------------------------


def private_copy(source: Path, dest: Path) -> Path:
    """``dest`` holding links to everything in ``source`` but its manifest, which is copied: a calibration
    written there leaves the other benchmark's run untouched."""
    if (dest / "manifest.json").is_file():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        if item.name == "manifest.json":
            shutil.copyfile(item, dest / item.name)
        elif not (dest / item.name).exists():
            (dest / item.name).symlink_to(item.resolve(), target_is_directory=item.is_dir())
    return dest


def calibrated(path: Path, calib, budget: float) -> dict[str, Any]:
    """Calibrate the staged predictor at ``path`` on ``calib`` (budget rule) unless it already was on exactly
    that data; what the calibration is."""
    import summon

    predictor = summon.load(path, device="cpu")
    if predictor.calibration is None or predictor.calibration.data != calib.source:
        from summon.data.spec import TaskData

        data = TaskData(calib.task, list(predictor.labels), calib.examples, calib.source)
        summon.calibrate(predictor, data, budget=budget, latency=True)
    calibration = predictor.calibration
    return {"calibration_data": calibration.data, "stage_cost_fractions": calibration.fractions(),
            "cheapest_budget": min(p.cost for p in calibration.table.points)}


def prepare_models(args: argparse.Namespace, work: Path, calib) -> tuple[dict[str, dict], dict[str, str]]:
    """Each configuration's model folder and what it is; and a note per configuration skipped (no model)."""
    import summon

    teacher, exits, student = Path(args.teacher), Path(args.early_exit), Path(args.student)
    have = lambda p: (p / "manifest.json").is_file()  # noqa: E731
    models, skipped = {}, {}
    if have(teacher):
        for name in ("teacher_one_at_a_time", "teacher_batched"):
            models[name] = {"path": str(teacher), "kind": "plain", "knob": None}
    else:
        for name in ("teacher_one_at_a_time", "teacher_batched", "cascade_batched"):
            skipped[name] = f"no teacher model at {teacher}"
    if have(exits):
        copy = private_copy(exits, work / "models" / "early_exit")
        models["early_exit_batched"] = {"path": str(copy), "source": str(exits), "kind": "early_exit",
                                        "knob": {"budget": args.budget}, **calibrated(copy, calib, args.budget)}
    else:
        skipped["early_exit_batched"] = f"no early-exit model at {exits}"
    if have(teacher) and have(student):
        out = work / "models" / "cascade"
        if not (out / "manifest.json").is_file():
            summon.cascade([str(student), str(teacher)], out=out, device="cpu")
        models["cascade_batched"] = {"path": str(out), "stages": [str(student), str(teacher)], "kind": "cascade",
                                     "knob": {"budget": args.budget}, **calibrated(out, calib, args.budget)}
    elif have(teacher):
        skipped["cascade_batched"] = f"no student model at {student}"
    return models, skipped


def train_missing(args: argparse.Namespace, need: tuple[str, ...] = ("teacher", "early_exit", "kd_ngram")) -> None:
    """Train the teacher, early-exit and bag-of-n-grams models exactly as ``benchmarks/progressive.py --dataset
    sst2 --train-limit N`` does (its own functions, its own folders), when they are not there yet: a fresh machine
    runs this benchmark alone. Finished runs are only loaded; interrupted ones resume."""
    import progressive

    from summon.training.recipe import load_run_config

    work = WORK / "progressive_sst2"
    wanted = {"teacher": args.teacher, "early_exit": args.early_exit, "kd_ngram": args.student}
    wanted = {k: v for k, v in wanted.items() if k in need}
    if all((Path(p) / "manifest.json").is_file() or Path(p).parent.parent != work for p in wanted.values()):
        return  # everything is there, or the flags point elsewhere (then their folders are the user's business)
    ns = argparse.Namespace(data_dir=args.data_dir, seed=args.seed, train_limit=args.train_limit, override=[])
    base = progressive.base_overrides(ns, work)
    teacher, _ = progressive.timed(load_run_config("sst2_finetune", [*base, f"output_dir={work / 'teacher'}"]))
    progressive.timed(load_run_config("sst2_early_exit_two_stage",
                                      [*base, f"teacher={teacher}", f"output_dir={work / 'early_exit'}"]))
    if "kd_ngram" not in need:
        return
    prog = load_run_config("sst2_progressive", [*base, f"teacher={teacher}", f"output_dir={work / 'bdistil'}"])
    ngram = next(c for c in prog.method_args.candidates if c.model.kind == "ngram")
    progressive.timed(progressive.kd_config(prog, ngram.model, ngram.epochs, ngram.lr, work / "kd_ngram"))


def smoke_models(root: Path) -> tuple[str, str, str]:
    """Tiny untrained models (as tests/test_staged_contract.py builds them): teacher, early exit, student."""
    from summon.models import ModelConfig, build_model
    from summon.predictors.predictor import Predictor

    def save(cfg: ModelConfig, name: str) -> str:
        if not (root / name / "manifest.json").is_file():
            built = build_model(cfg, "classification", 2)
            Predictor(built.model, built.featurizer, "classification", ["negative", "positive"],
                      {"architecture": built.architecture}).save(root / name, architecture=built.architecture)
        return str(root / name)

    teacher = save(ModelConfig(kind="random", name="tiny-bert", num_layers=2, max_length=32, init_seed=3), "teacher")
    exits = save(ModelConfig(kind="random", name="tiny-bert", num_layers=3, exits="all", max_length=32,
                             init_seed=1), "exits")
    student = save(ModelConfig(kind="ngram", num_buckets=256, embed_dim=8, init_seed=2), "ngram")
    return teacher, exits, student


# --- servers ------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_spec(args: argparse.Namespace, path: str, *, batch_rows: int, wait_ms: float, controller: bool = True,
                remote_teacher: str | None = None) -> dict[str, Any]:
    return {"model": {"path": path, "remote_teacher": remote_teacher, "remote_timeout": args.remote_timeout},
            "threads": args.server_threads,
            "engine": {"max_batch_rows": batch_rows, "max_wait_ms": wait_ms, "max_queue_rows": args.max_queue_rows,
                       "max_request_rows": 64, "max_input_chars": 2000, "controller": controller},
            "app": {"max_body_bytes": 1 << 20, "max_rows": 64, "request_timeout_s": args.request_timeout,
                    "warmup_sizes": sorted({1, min(8, batch_rows), batch_rows}), "drain_seconds": 5.0}}


def child_main(spec_path: str) -> None:
    """A server process: one model served as ``m`` (a cascade whose teacher is remote when the spec says so)."""
    import torch

    import summon
    from summon.adaptive.cascade import CascadePredictor
    from summon.adaptive.remote import RemoteStage
    from summon.serve.app import create_server_app, run_server
    from summon.serve.engine import Engine

    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    entry = spec["model"]
    model = summon.load(entry["path"], device="cpu")
    if entry["remote_teacher"]:
        teacher = RemoteStage.connect(entry["remote_teacher"], name="teacher", timeout=entry["remote_timeout"])
        model = CascadePredictor([model.stages[0], teacher], model.task, model.labels, {"adaptive": model.adaptive})
    app = create_server_app(Engine({MODEL_NAME: model}, **spec["engine"]), **spec["app"])
    run_server(app, host="127.0.0.1", port=spec["port"], log_level="warning")


class Server:
    """A server process of :func:`child_main` on a free loopback port; its log in the work folder."""

    def __init__(self, name: str, spec: dict[str, Any], work: Path):
        self.name, self.spec, self.work = name, dict(spec), work
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Server:
        self.spec["port"] = self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        spec_path = self.work / "servers" / f"{self.name}.json"
        spec_path.parent.mkdir(parents=True, exist_ok=True)
        spec_path.write_text(json.dumps(self.spec, indent=2), encoding="utf-8")
        env = dict(os.environ)
        if self.spec["threads"]:
            env.update(OMP_NUM_THREADS=str(self.spec["threads"]), MKL_NUM_THREADS=str(self.spec["threads"]))
        self.log_path = spec_path.with_suffix(".log")
        with open(self.log_path, "w", encoding="utf-8") as log:
            self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child", str(spec_path)],
                                         stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            self._wait_ready(600.0)
        except BaseException:
            self.kill()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _wait_ready(self, seconds: float) -> None:
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            if not self.alive():
                raise RuntimeError(f"server {self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            if get(self.url + "/ready")[0] == 200:
                return
            time.sleep(0.2)
        raise RuntimeError(f"server {self.name} not ready after {seconds:g} s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:]

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def healthy(self) -> bool:
        return self.alive() and get(self.url + "/health")[0] == 200

    def peak_rss_mb(self) -> float | None:
        """The process's peak resident memory so far (VmHWM)."""
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
        if psutil is not None and self.alive():
            return psutil.Process(self.proc.pid).memory_info().rss / 2**20  # only the current RSS
        return None

    def cpu_seconds(self) -> float | None:
        if psutil is None or not self.alive():
            return None
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(self.proc.pid).cpu_times()
            return times.user + times.system
        return None

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM (the server drains and exits), SIGKILL if it has not within 30 s."""
        if not self.alive():
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()


def get(url: str, timeout: float = 5.0) -> tuple[int | None, Any]:
    """``(status, JSON or None)`` of a GET; status None when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    except (OSError, ValueError):
        return None, None
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, None


# --- the client ---------------------------------------------------------------------------------------------


class EmptyReply(ConnectionError):
    """The connection closed before any byte of an answer."""


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None


class HttpClient:
    """HTTP/1.1 over asyncio streams with a pool of keep-alive connections (a connection per request in
    flight); every call bounded by ``timeout``. A reused connection the server had closed (uvicorn closes
    connections idle past its keep-alive timeout, 5 s) is retried once on a new connection, never on another
    pooled one that may be as stale (nothing was answered on it, so nothing was processed)."""

    def __init__(self, url: str, timeout: float):
        parts = urllib.parse.urlsplit(url)
        self.host, self.port, self.timeout = parts.hostname, parts.port, timeout
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    def close(self) -> None:
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()

    def encode(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
        head = {"Host": f"{self.host}:{self.port}", "Content-Length": str(len(body))}
        if body:
            head["Content-Type"] = "application/json"
        head.update(headers or {})
        lines = [f"{method} {path} HTTP/1.1", *(f"{k}: {v}" for k, v in head.items())]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

    async def call(self, method: str, path: str, payload: Any = None, *, body: bytes | None = None,
                   raw: bytes | None = None, fresh: bool = False) -> Reply:
        if raw is None:
            body = body if body is not None else b"" if payload is None else json.dumps(payload).encode()
            raw = self.encode(method, path, body)
        return await asyncio.wait_for(self._exchange(raw, fresh), self.timeout)

    async def _exchange(self, data: bytes, fresh: bool) -> Reply:
        for attempt in range(2):
            reused = bool(self._idle) and not fresh and attempt == 0
            reader, writer = self._idle.pop() if reused else await asyncio.open_connection(self.host, self.port)
            try:
                with contextlib.suppress(ConnectionError):  # the server may answer (413) before reading it all
                    writer.write(data)
                    await writer.drain()
                reply, keep = await read_reply(reader)
            except EmptyReply:
                writer.close()
                if reused and attempt == 0:
                    continue
                raise
            except BaseException:
                writer.close()
                raise
            if keep and not fresh:
                self._idle.append((reader, writer))
            else:
                writer.close()
            return reply
        raise EmptyReply("no answer")  # not reached: the second attempt returns or raises


async def read_reply(reader: asyncio.StreamReader) -> tuple[Reply, bool]:
    line = await reader.readline()
    if not line:
        raise EmptyReply("the connection closed before an answer")
    status = int(line.split(b" ", 2)[1])
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
        key, _, value = line.decode("latin-1").partition(":")
        headers[key.strip().lower()] = value.strip()
    keep = headers.get("connection", "").lower() != "close"
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        while (size := int((await reader.readline()).split(b";")[0], 16)) > 0:
            chunks.append(await reader.readexactly(size))
            await reader.readline()
        await reader.readline()
        body = b"".join(chunks)
    else:
        body, keep = await reader.read(), False
    return Reply(status, headers, body), keep


@dataclass
class Sample:
    """One request of a load run."""

    index: int  # the text's index
    latency_ms: float | None = None
    status: int | None = None  # None: lost (no answer)
    reason: str | None = None  # a refusal's or error's reason
    retry_after: bool = False
    rows: list[dict[str, Any]] = field(default_factory=list)
    threshold: Any = None  # the threshold in force ("inf"/"-inf" as strings)
    batch_rows: int | None = None
    fallback_rows: int = 0
    error: str | None = None
    sent_at: float = 0.0  # loop time
    done_at: float = 0.0


async def one_request(client: HttpClient, index: int, text: str, knob: dict | None, origin: float) -> Sample:
    """Send one text; latency from ``origin`` (loop time: the scheduled arrival, or the send)."""
    loop = asyncio.get_running_loop()
    payload: dict[str, Any] = {"model": MODEL_NAME, "inputs": [text]}
    if knob:
        payload["knob"] = knob
    sample = Sample(index, sent_at=loop.time())
    try:
        reply = await client.call("POST", "/v1/predict", payload)
    except (OSError, TimeoutError, EOFError, ValueError) as err:
        sample.error, sample.done_at = f"{type(err).__name__}: {err}"[:200], loop.time()
        return sample
    sample.done_at = loop.time()
    sample.latency_ms, sample.status = (sample.done_at - origin) * 1000.0, reply.status
    answer = reply.json() or {}
    if reply.status == 200:
        sample.rows = [{k: r.get(k) for k in ("label", "stage", "cost", "probs", "fallback")}
                       for r in answer.get("predictions", [])]
        sample.threshold = (answer.get("operating_point") or {}).get("threshold")
        sample.batch_rows, sample.fallback_rows = answer.get("batch_rows"), answer.get("fallback_rows", 0)
    else:
        sample.reason = answer.get("reason") or ("no_json" if not answer else "none")
        sample.retry_after = "retry-after" in reply.headers
    return sample


async def closed_loop(client: HttpClient, texts: list[str], order: np.ndarray, knob: dict | list | None,
                      concurrency: int, seconds: float, max_requests: int) -> tuple[list[Sample], float]:
    """``concurrency`` clients each sending its next request when the last is answered; a list of knobs is
    used in turn, request by request."""
    loop = asyncio.get_running_loop()
    knobs = knob if isinstance(knob, list) else [knob]
    start = loop.time()
    counter = itertools.count()

    async def worker() -> list[Sample]:
        out = []
        while loop.time() - start < seconds and (n := next(counter)) < max_requests:
            index = int(order[n % len(order)])
            out.append(await one_request(client, index, texts[index], knobs[n % len(knobs)], loop.time()))
        return out

    samples = [s for chunk in await asyncio.gather(*(worker() for _ in range(concurrency))) for s in chunk]
    return samples, max([s.done_at for s in samples], default=loop.time()) - start


async def open_loop(client: HttpClient, texts: list[str], order: np.ndarray, knob: dict | None, rate: float,
                    seconds: float, max_requests: int, rng: np.random.Generator) -> tuple[list[Sample], float, float]:
    """Poisson arrivals at ``rate`` per second; samples, elapsed seconds, and the client's largest lag behind
    the schedule (ms)."""
    loop = asyncio.get_running_loop()
    arrivals = np.cumsum(rng.exponential(1.0 / rate, size=max_requests))
    arrivals = arrivals[arrivals < seconds]
    start, lag, tasks = loop.time(), 0.0, []
    for n, at in enumerate(arrivals):
        delay = start + at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        lag = max(lag, -delay * 1000.0)
        index = int(order[n % len(order)])
        tasks.append(asyncio.create_task(one_request(client, index, texts[index], knob, start + at)))
    samples = list(await asyncio.gather(*tasks))
    return samples, max([s.done_at for s in samples], default=loop.time()) - start, lag


# --- what a run measured ------------------------------------------------------------------------------------


METRIC_LINE = re.compile(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        if line and not line.startswith("#") and (m := METRIC_LINE.match(line)):
            out.append((m.group(1), dict(LABEL.findall(m.group(2) or "")), float(m.group(3))))
    return out


async def scrape(client: HttpClient) -> dict[str, float]:
    """The served model's counters that a run reads as differences, and its controller's gauges."""
    reply = await client.call("GET", "/metrics")
    wanted = {"summon_batch_rows_sum", "summon_batch_rows_count", "summon_cost_fraction_sum",
              "summon_cost_fraction_count", "summon_stage_unavailable_rows_total", "summon_controller_moves_total",
              "summon_budget_window_mean_cost", "summon_budget_threshold", "summon_budget_stage_drift"}
    out: dict[str, float] = {}
    for name, labels, value in parse_metrics(reply.body.decode("utf-8", "replace")):
        if labels.get("model") == MODEL_NAME and (name in wanted or name == "summon_rejections_total"):
            key = f"rejections:{labels.get('reason')}" if name == "summon_rejections_total" else name
            out[key] = out.get(key, 0.0) + value
    return out


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def summarise(samples: list[Sample], elapsed: float, slo_ms: float, before: dict, after: dict) -> dict[str, Any]:
    """The numbers of one load run (keys as item 9 names them, and a few more)."""
    ok = [s for s in samples if s.status == 200]
    latencies = [s.latency_ms for s in ok]
    costs = [r["cost"] for s in ok for r in s.rows if r.get("cost") is not None]
    refusals = [s for s in samples if s.status in REFUSAL_STATUSES]
    rejected = Counter(s.reason for s in samples if s.status is not None and s.status != 200
                       and (s.status < 500 or s.status in REFUSAL_STATUSES))
    errors = [s for s in samples if s.status is not None and s.status >= 500 and s.status not in REFUSAL_STATUSES]
    delta = lambda key: after.get(key, 0.0) - before.get(key, 0.0)  # noqa: E731
    batches = delta("summon_batch_rows_count")
    elapsed = max(elapsed, 1e-9)
    return {
        "sent": len(samples), "answered_200": len(ok), "seconds": elapsed,
        "rps": len(ok) / elapsed,
        "p50_ms": percentile(latencies, 50), "p95_ms": percentile(latencies, 95), "p99_ms": percentile(latencies, 99),
        "goodput": sum(v <= slo_ms for v in latencies) / elapsed,
        "goodput_fraction": sum(v <= slo_ms for v in latencies) / max(1, len(samples)),
        "mean_batch_rows": delta("summon_batch_rows_sum") / batches if batches else None,
        "realised_cost": float(np.mean(costs)) if costs else None,
        "rejected": dict(sorted(rejected.items())),
        "rejected_engine": {k.split(":", 1)[1]: delta(k) for k in sorted(after) if k.startswith("rejections:")
                            and delta(k)},
        "refusals_without_retry_after": sum(not s.retry_after for s in refusals),
        "errors_5xx": len(errors),
        "errors_5xx_by_status": dict(Counter(str(s.status) for s in errors)),
        "lost": sum(s.status is None for s in samples),
        "lost_errors": dict(Counter((s.error or "").split(":")[0] for s in samples if s.status is None)),
        "fallback_rows": sum(s.fallback_rows for s in ok),
        "statuses": dict(sorted(Counter(str(s.status) for s in samples).items())),
    }


def window_cost(samples: list[Sample], rows: int) -> float | None:
    """Mean realised cost of the last ``rows`` answered rows (in order of answer)."""
    costs = [r["cost"] for s in sorted(samples, key=lambda s: s.done_at) if s.status == 200 for r in s.rows
             if r.get("cost") is not None]
    return float(np.mean(costs[-rows:])) if costs else None


async def measure(server: Server, run: dict[str, Any], texts: list[str], knob: dict | list | None,
                  args: argparse.Namespace, seed: int) -> tuple[dict[str, Any], list[Sample]]:
    """One load run (closed loop at ``run["concurrency"]`` or open loop at ``run["rate"]``) against ``server``,
    on connections of its own."""
    client = HttpClient(server.url, args.request_timeout + 5.0)
    try:
        return await _measure(server, client, run, texts, knob, args, seed)
    finally:
        client.close()


async def _measure(server: Server, client: HttpClient, run: dict[str, Any], texts: list[str], knob: Any,
                   args: argparse.Namespace, seed: int) -> tuple[dict[str, Any], list[Sample]]:
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(texts))
    before, cpu, server_cpu = await scrape(client), time.process_time(), server.cpu_seconds()
    seconds = run.get("seconds", args.seconds)
    max_requests = run.get("max_requests", args.max_requests)
    lag = None
    if "concurrency" in run:
        samples, elapsed = await closed_loop(client, texts, order, knob, run["concurrency"], seconds, max_requests)
    else:
        samples, elapsed, lag = await open_loop(client, texts, order, knob, run["rate"], seconds, max_requests, rng)
    alive = server.healthy()
    after = await scrape(client) if alive else before
    out = {**{k: v for k, v in run.items() if k != "max_requests"},
           **summarise(samples, elapsed, args.slo_ms, before, after),
           "peak_rss_mb": server.peak_rss_mb(), "server_alive_after": alive,
           "client_cpu_s": time.process_time() - cpu}
    if server_cpu is not None and (now := server.cpu_seconds()) is not None:
        out["server_cpu_s"] = now - server_cpu
    if lag is not None:
        out["client_max_lag_ms"] = lag
    for key in ("summon_budget_window_mean_cost", "summon_budget_threshold", "summon_budget_stage_drift"):
        if key in after:
            value = after[key]
            out[key.removeprefix("summon_")] = value if np.isfinite(value) else str(value)  # JSON has no inf
    return out, samples


# --- answers checked one by one -----------------------------------------------------------------------------


def check_answers(predictor: Any, samples: list[Sample], texts: list[str], limit: int, seed: int) -> dict[str, Any]:
    """Every accepted answer against the same text predicted alone (batch size 1) at the threshold the answer
    says was in force; wrong: another label, or (staged) another stage. At most ``limit`` distinct
    (text, threshold) pairs are predicted (drawn at random when there are more)."""
    staged = hasattr(predictor, "num_stages")
    groups: dict[tuple[int, Any], list[Sample]] = {}
    for s in samples:
        if s.status == 200 and s.rows:
            groups.setdefault((s.index, s.threshold), []).append(s)
    keys = list(groups)
    if len(keys) > limit:
        keys = [keys[i] for i in sorted(np.random.default_rng(seed).choice(len(keys), limit, replace=False))]
    wrong, checked, diff = 0, 0, 0.0
    for index, threshold in keys:
        if staged:
            expected = predictor.predict([texts[index]], threshold=float(threshold), batch_size=1)[0]
        else:
            expected = predictor.predict([texts[index]], batch_size=1)[0]
        for s in groups[(index, threshold)]:
            row = s.rows[0]
            checked += 1
            wrong += row["label"] != expected.label or (staged and row["stage"] != expected.stage)
            diff = max(diff, float(np.max(np.abs(np.subtract(row["probs"], expected.probs)))))
    accepted = sum(len(v) for v in groups.values())
    return {"accepted": accepted, "checked": checked, "wrong": int(wrong), "max_prob_abs_diff": diff,
            "distinct_pairs": len(groups), "distinct_pairs_checked": len(keys)}


# --- the runs -----------------------------------------------------------------------------------------------


class Store:
    """Finished runs by key, kept in ``runs.json`` so an interrupted benchmark resumes."""

    def __init__(self, path: Path, fresh: bool):
        self.path = path
        self.runs: dict[str, Any] = {} if fresh or not path.is_file() else json.loads(path.read_text())

    def __contains__(self, key: str) -> bool:
        return key in self.runs

    def __getitem__(self, key: str) -> Any:
        return self.runs[key]

    def put(self, key: str, value: Any) -> None:
        self.runs[key] = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.runs, indent=2) + "\n", encoding="utf-8")


CONFIG_SERVING = {  # (max_batch_rows, max_wait_ms); None: the arguments'
    "teacher_one_at_a_time": (1, 0.0),
    "teacher_batched": None, "early_exit_batched": None, "cascade_batched": None,
}


def run_key(name: str, run: dict[str, Any]) -> str:
    return f"{name}/closed_c{run['concurrency']}" if "concurrency" in run else f"{name}/open_{run['load_factor']:g}x"


def load_runs(name: str, model: dict[str, Any], texts: list[str], args: argparse.Namespace, store: Store,
              work: Path, loader: Any) -> None:
    """Closed loops, then open loops at multiples of the capacity they measured; the 2x answers checked."""
    closed = [{"mode": "closed", "concurrency": c} for c in CLOSED_LEVELS]
    extras = [k for k, part in (("faults/malformed", "faults"), ("screenshot", "screenshot"))
              if name == "early_exit_batched" and part in args.parts]
    if all(k in store for k in [*(run_key(name, r) for r in closed), *(f"{name}/open_{f:g}x" for f in LOAD_FACTORS),
                                *extras]):
        return
    batch_rows, wait_ms = CONFIG_SERVING[name] or (args.max_batch_rows, args.max_wait_ms)
    spec = server_spec(args, model["path"], batch_rows=batch_rows, wait_ms=wait_ms)
    with Server(name, spec, work) as server:
        knob = effective_knob(model)
        for i, run in enumerate(closed):
            if run_key(name, run) not in store:
                result, _ = asyncio.run(measure(server, run, texts, knob, args, args.seed + i))
                store.put(run_key(name, run), result)
                report(run_key(name, run), result)
        capacity = max(store[run_key(name, r)]["rps"] for r in closed)
        for i, factor in enumerate(LOAD_FACTORS):
            key = f"{name}/open_{factor:g}x"
            if key in store:
                continue
            run = {"mode": "open", "load_factor": factor, "capacity_rps": capacity, "rate": factor * capacity}
            result, samples = asyncio.run(measure(server, run, texts, knob, args, args.seed + 10 + i))
            result["crashes"] = int(not server.alive())
            if factor == max(LOAD_FACTORS):
                result["check"] = check_answers(loader(model["path"]), samples, texts, args.check_limit, args.seed)
            store.put(key, result)
            report(key, result)
        if name == "early_exit_batched" and "faults/malformed" not in store and "faults" in args.parts:
            store.put("faults/malformed", malformed_run(server, texts, knob, args))
            report("faults/malformed", store["faults/malformed"])
        if name == "early_exit_batched" and "screenshot" in args.parts and "screenshot" not in store:
            store.put("screenshot", screenshot(server, Path(args.out_json).with_suffix(".png"), args.budget))


def effective_knob(model: dict[str, Any]) -> dict | None:
    """The configuration's knob, or the calibrated default when no operating point meets it (said in a note)."""
    knob = model["knob"]
    if knob and model.get("cheapest_budget", 0.0) > knob["budget"]:
        model["note"] = (f"budget {knob['budget']} is below the cheapest operating point "
                         f"({model['cheapest_budget']:.3f}); the calibrated default was used")
        return None
    return knob


def report(key: str, result: dict[str, Any]) -> None:
    keys = ("rps", "p50_ms", "p99_ms", "goodput", "mean_batch_rows", "realised_cost", "rejected", "errors_5xx",
            "lost", "peak_rss_mb")
    shown = {k: round(v, 3) if isinstance(v, float) else v for k, v in result.items() if k in keys}
    if "check" in result:
        shown["wrong"] = result["check"]["wrong"]
    print(key, json.dumps(shown), flush=True)


def shifted_runs(model: dict[str, Any], shifted: list[str], args: argparse.Namespace, store: Store,
                 work: Path) -> None:
    """The shifted stream, in order and without repeats, at the budget; a fresh server each, controller on/off."""
    for controller in (True, False):
        key = f"shifted/controller_{'on' if controller else 'off'}"
        if key in store:
            continue
        spec = server_spec(args, model["path"], batch_rows=args.max_batch_rows, wait_ms=args.max_wait_ms,
                           controller=controller)
        with Server(f"shifted_{'on' if controller else 'off'}", spec, work) as server:
            run = {"mode": "closed", "concurrency": 16, "seconds": args.shift_seconds, "max_requests": len(shifted),
                   "controller": controller}

            async def go(run=run, server=server):
                result, samples = await measure(server, run, shifted, {"budget": args.budget}, args, args.seed)
                client = HttpClient(server.url, args.request_timeout + 5.0)
                info = (await client.call("GET", "/v1/info")).json() or {}
                client.close()
                return result, samples, info

            result, samples, info = asyncio.run(go())
            window = 512
            result["last_window_rows"] = window
            result["last_window_realised_cost"] = window_cost(samples, window)
            result["thresholds_in_force"] = info.get("models", {}).get(MODEL_NAME, {}).get("thresholds_in_force")
        store.put(key, result)
        report(key, result)


def kill_teacher_run(model: dict[str, Any], texts: list[str], args: argparse.Namespace, store: Store,
                     work: Path) -> None:
    """The cascade with its teacher in another server process, under a closed loop; the teacher killed a third
    of the way through. The cascade should answer from the student, marked degraded, with no 5xx."""
    if "faults/kill_teacher" in store:
        return
    knobs = [{"budget": args.budget}, {"threshold": "inf"}]  # half the requests send every row to the teacher
    teacher_spec = server_spec(args, model["stages"][1], batch_rows=args.max_batch_rows, wait_ms=args.max_wait_ms)
    with Server("remote_teacher", teacher_spec, work) as teacher:
        spec = server_spec(args, model["path"], batch_rows=args.max_batch_rows, wait_ms=args.max_wait_ms,
                           remote_teacher=f"{teacher.url}/models/{MODEL_NAME}")
        with Server("cascade_remote", spec, work) as cascade:

            async def go():
                loop = asyncio.get_running_loop()
                started = loop.time()
                killer = loop.call_later(args.fault_seconds / 3, teacher.kill)
                run = {"mode": "closed", "concurrency": 16, "seconds": args.fault_seconds}
                result, samples = await measure(cascade, run, texts, knobs, args, args.seed)
                killer.cancel()
                client = HttpClient(cascade.url, args.request_timeout + 5.0)
                good = await one_request(client, 0, texts[0], {"budget": args.budget}, loop.time())
                client.close()
                return result, samples, good, started

            result, samples, good, started = asyncio.run(go())
            killed_at = args.fault_seconds / 3
            after = [s for s in samples if s.sent_at - started > killed_at]
            result.update({"name": "kill_teacher_mid_load", "teacher_killed_at_s": killed_at,
                           "knobs": knobs, "sent_after_kill": len(after),
                           "errors_5xx_after_kill": sum(s.status is not None and s.status >= 500 for s in after),
                           "teacher_alive_after": teacher.alive(),
                           "answers_after_kill": sum(s.status == 200 for s in after),
                           "fallback_answers_after_kill": sum(s.status == 200 and s.fallback_rows > 0 for s in after),
                           "server_alive_after": cascade.healthy() and good.status == 200})
    store.put("faults/kill_teacher", result)
    report("faults/kill_teacher", result)


def malformed_cases(max_rows: int, max_chars: int, max_body: int) -> list[tuple[str, bytes]]:
    """(kind, body) of requests the server must refuse with a 4xx JSON error."""
    j = lambda payload: json.dumps(payload).encode()  # noqa: E731
    m = MODEL_NAME
    return [
        ("not_json", b"{not json"), ("invalid_utf8", b"\xff\xfe\x00"), ("empty_body", b""),
        ("json_array", b"[1, 2]"), ("json_string", b'"a text"'), ("missing_inputs", j({"model": m})),
        ("inputs_not_a_list", j({"model": m, "inputs": "one text"})),
        ("input_wrong_type", j({"model": m, "inputs": ["fine", 3]})),
        ("input_null", j({"model": m, "inputs": [None]})),
        ("input_object_without_text", j({"model": m, "inputs": [{"txt": "no"}]})),
        ("pair_for_single_text_task", j({"model": m, "inputs": [["a", "pair"]]})),
        ("unknown_field", j({"model": m, "inputs": ["x"], "text": "x"})),
        ("model_wrong_type", j({"model": 3, "inputs": ["x"]})), ("unknown_model", j({"model": "nope", "inputs": ["x"]})),
        ("knob_wrong_type", j({"model": m, "inputs": ["x"], "knob": {"budget": "cheap"}})),
        ("knob_not_an_object", j({"model": m, "inputs": ["x"], "knob": 0.4})),
        ("knob_unknown_key", j({"model": m, "inputs": ["x"], "knob": {"budgt": 0.4}})),
        ("knob_nan", b'{"model": "m", "inputs": ["x"], "knob": {"budget": NaN}}'),
        ("infeasible_knob", j({"model": m, "inputs": ["x"], "knob": {"budget": 1e-6}})),
        ("bad_priority", j({"model": m, "inputs": ["x"], "priority": "urgent"})),
        ("negative_deadline", j({"model": m, "inputs": ["x"], "deadline_ms": -5})),
        ("infinite_deadline", b'{"model": "m", "inputs": ["x"], "deadline_ms": 1e400}'),
        ("too_many_rows", j({"model": m, "inputs": ["x"] * (max_rows + 1)})),
        ("text_too_long", j({"model": m, "inputs": ["x" * (max_chars + 1)]})),
        ("oversized_body", j({"model": m, "inputs": ["x" * (max_body + 1024)]})),
        ("deeply_nested_json", b'{"model": "m", "inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    ]


def malformed_run(server: Server, texts: list[str], knob: dict | None, args: argparse.Namespace) -> dict[str, Any]:
    """Each malformed request between two good ones, with a light closed loop (4 clients) running alongside.
    A request at the HTTP level that is not HTTP is sent too and reported apart (uvicorn answers it, not the app)."""
    spec = server.spec
    cases = malformed_cases(spec["app"]["max_rows"], spec["engine"]["max_input_chars"], spec["app"]["max_body_bytes"])

    async def go():
        loop = asyncio.get_running_loop()
        client, probe = (HttpClient(server.url, args.request_timeout + 5.0) for _ in range(2))
        background = asyncio.create_task(closed_loop(client, texts, np.arange(len(texts)), knob, 4,
                                                     args.fault_seconds, args.max_requests))
        good, bad = [], {}
        for n, (kind, body) in enumerate(cases):
            good.append(await one_request(probe, n, texts[n % len(texts)], knob, loop.time()))
            try:
                reply = await probe.call("POST", "/v1/predict", body=body, fresh=True)
                answer = reply.json()
                bad[kind] = {"status": reply.status, "json_error": isinstance(answer, dict) and "error" in answer,
                             "reason": (answer or {}).get("reason") if isinstance(answer, dict) else None}
            except (OSError, TimeoutError, EOFError, ValueError) as err:
                bad[kind] = {"status": None, "json_error": False, "error": f"{type(err).__name__}: {err}"[:200]}
        good.append(await one_request(probe, 0, texts[0], knob, loop.time()))
        try:
            garbage = await probe.call("", "", raw=b"GARBAGE\r\n\r\n", fresh=True)
            protocol = {"status": garbage.status, "json_error": bool(garbage.json())}
        except (OSError, TimeoutError, EOFError, ValueError) as err:
            protocol = {"status": None, "error": f"{type(err).__name__}: {err}"[:200]}
        loaded, _ = await background
        client.close()
        probe.close()
        return good, bad, protocol, loaded

    good, bad, protocol, loaded = asyncio.run(go())
    statuses = [b["status"] for b in bad.values()]
    return {"name": "malformed_requests", "bad_sent": len(bad),
            "bad_answered_4xx_json": sum(b["json_error"] and b["status"] is not None and 400 <= b["status"] < 500
                                         for b in bad.values()),
            "errors_5xx": sum(s is not None and s >= 500 for s in statuses)
            + sum(s.status is not None and s.status >= 500 for s in good + loaded),
            "unanswered": sum(s is None for s in statuses),
            "good_sent": len(good), "good_ok": sum(s.status == 200 for s in good),
            "background_sent": len(loaded), "background_ok": sum(s.status == 200 for s in loaded),
            "by_kind": bad, "protocol_garbage": protocol, "server_alive_after": server.healthy()}


def find_browser() -> str | None:
    return next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)


NO_BROWSER = {"path": None, "note": f"skipped: no headless browser installed (looked for {', '.join(BROWSERS)})"}


def screenshot(server: Server, path: Path, budget: float) -> dict[str, Any]:
    """The demo page in a headless browser, with a text predicted at the budget. Real time (``--timeout``), not
    ``--virtual-time-budget``: under virtual time the page's own latency clock reads less than the server's."""
    browser = find_browser()
    if browser is None:
        return NO_BROWSER
    url = f"{server.url}/?model={MODEL_NAME}&budget={budget}&text=a+gripping+and+often+funny+film"
    done = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1200,900",
                           "--timeout=10000", f"--screenshot={path}", url], capture_output=True, text=True,
                          timeout=120, check=False)
    if done.returncode != 0 or not path.is_file():
        return {"path": None, "note": f"{browser} failed ({done.returncode}): {done.stderr[-500:]}"}
    return {"path": repo_relative(path), "note": f"demo page at budget {budget}, taken with {browser}"}


# --- derived numbers ----------------------------------------------------------------------------------------


def speedup(configs: dict[str, dict]) -> dict[str, Any] | None:
    """Early exit with batching over the teacher one request at a time. The teacher's capacity run: of its
    closed-loop runs within 5% of its best throughput, the one with the lowest p99 (the knee: more clients
    only add queueing). Against it, the fastest early-exit run (closed or open loop) whose p99 is no higher."""
    teacher, early = configs.get("teacher_one_at_a_time"), configs.get("early_exit_batched")
    if not teacher or not early:
        return None
    closed = {k: r for k, r in teacher["runs"].items() if k.startswith("closed_") and r["rps"]}
    answered = {k: r for k, r in early["runs"].items() if r["rps"] and r["p99_ms"] is not None}
    if not closed or not answered:
        return None
    top = max(r["rps"] for r in closed.values())
    best_t_key, best_t = min(((k, r) for k, r in closed.items() if r["rps"] >= 0.95 * top),
                             key=lambda kv: kv[1]["p99_ms"])
    fair = {k: r for k, r in answered.items() if r["p99_ms"] <= best_t["p99_ms"]}
    best_e_key, best_e = max(answered.items(), key=lambda kv: kv[1]["rps"])
    out = {"teacher_run": best_t_key, "teacher_rps": best_t["rps"], "teacher_p99_ms": best_t["p99_ms"],
           "unconditioned": best_e["rps"] / best_t["rps"], "unconditioned_early_exit_run": best_e_key,
           "p99_condition_held": bool(fair)}
    if fair:
        key, run = max(fair.items(), key=lambda kv: kv[1]["rps"])
        out.update(value=run["rps"] / best_t["rps"], early_exit_run=key, early_exit_rps=run["rps"],
                   early_exit_p99_ms=run["p99_ms"])
    else:
        out["value"] = None
    out["per_concurrency"] = {
        f"c{c}": {"ratio": early["runs"][f"closed_c{c}"]["rps"] / teacher["runs"][f"closed_c{c}"]["rps"],
                  "early_exit_p99_ms": early["runs"][f"closed_c{c}"]["p99_ms"],
                  "teacher_p99_ms": teacher["runs"][f"closed_c{c}"]["p99_ms"],
                  "p99_condition_held": (early["runs"][f"closed_c{c}"]["p99_ms"] or math.inf)
                  <= (teacher["runs"][f"closed_c{c}"]["p99_ms"] or 0.0)}
        for c in CLOSED_LEVELS if f"closed_c{c}" in early["runs"] and f"closed_c{c}" in teacher["runs"]
        and teacher["runs"][f"closed_c{c}"]["rps"]}
    return out


def overload_of(config: dict[str, Any]) -> dict[str, Any] | None:
    top = max(LOAD_FACTORS)
    run, low = config["runs"].get(f"open_{top:g}x"), config["runs"].get(f"open_{min(LOAD_FACTORS):g}x")
    if run is None:
        return None
    check = run.get("check", {})
    return {"load_factor": top, "rate_rps": run["rate"], "capacity_rps": run["capacity_rps"],
            "accepted": run["answered_200"], "lost": run["lost"], "wrong": check.get("wrong"),
            "checked": check.get("checked"), "errors_5xx": run["errors_5xx"], "crashes": run["crashes"],
            "refusals": sum(run["rejected"].get(r, 0) for r in ("queue_full", "deadline", "draining")),
            "refusals_without_retry_after": run["refusals_without_retry_after"], "peak_rss_mb": run["peak_rss_mb"],
            "peak_rss_mb_at_low_load": low and low["peak_rss_mb"],
            "refusals_at_low_load": low and sum(low["rejected"].values())}


def cost_minus_budget(configs: dict[str, dict], store: Store, budget: float) -> dict[str, float]:
    out = {}
    early = configs.get("early_exit_batched")
    for key, run in (early or {}).get("runs", {}).items():
        if run["realised_cost"] is not None:
            out[key] = run["realised_cost"] - budget
    for controller in ("on", "off"):
        key = f"shifted/controller_{controller}"
        if key in store and store[key]["realised_cost"] is not None:
            out[f"shifted_controller_{controller}"] = store[key]["realised_cost"] - budget
            if store[key].get("last_window_realised_cost") is not None:
                out[f"shifted_controller_{controller}_last_window"] = store[key]["last_window_realised_cost"] - budget
    return out


def targets(result: dict[str, Any]) -> dict[str, Any]:
    """Each target of item 9, held or not (None: not measured)."""
    ratio = result.get("batched_early_exit_over_teacher") or {}
    over = result.get("overload") or {}
    costs = [v for k, v in result["realised_cost_minus_budget"].items() if "controller_off" not in k]
    faults = result["faults"]
    malformed = next((f for f in faults if f["name"] == "malformed_requests"), None)
    return {
        "early_exit_2x_teacher_at_equal_or_lower_p99": None if not ratio else bool(
            ratio.get("value") is not None and ratio["value"] >= 2.0),
        "overload_clean": None if not over else bool(
            over["crashes"] == 0 and over["lost"] == 0 and over["wrong"] == 0 and over["errors_5xx"] == 0
            and over["refusals_without_retry_after"] == 0),
        "no_refusals_at_half_load": None if not over else over["refusals_at_low_load"] == 0,
        "cost_within_budget_plus_0.01": all(v <= 0.01 for v in costs) if costs else None,
        "malformed_all_4xx_json_and_alive": None if malformed is None else bool(
            malformed["bad_answered_4xx_json"] == malformed["bad_sent"] and malformed["errors_5xx"] == 0
            and malformed["server_alive_after"]),
    }


def assemble(args: argparse.Namespace, models: dict, skipped: dict, store: Store, texts_note: dict) -> dict:
    configs = {}
    for name, model in models.items():
        runs = {key.split("/", 1)[1]: value for key, value in store.runs.items() if key.startswith(name + "/")}
        if runs:
            closed = [r["rps"] for k, r in runs.items() if k.startswith("closed_")]
            batch_rows, wait_ms = CONFIG_SERVING[name] or (args.max_batch_rows, args.max_wait_ms)
            configs[name] = {**{k: repo_relative(v) if k in ("path", "source") else v for k, v in model.items()},
                             "max_batch_rows": batch_rows, "max_wait_ms": wait_ms,
                             "capacity_rps": max(closed) if closed else None, "runs": runs}
    ratio = speedup(configs)
    early = configs.get("early_exit_batched")
    faults = [store[k] for k in ("faults/kill_teacher", "faults/malformed") if k in store]
    shot = store.runs.get("screenshot", {"path": None, "note": "not run (--parts)"})
    result = {
        "benchmark": "serve_load", **provenance(args.seed),
        "configurations": configs,
        "batched_early_exit_over_teacher_rps": None if ratio is None else ratio["value"],
        "batched_early_exit_over_teacher": ratio,
        "overload": overload_of(early) if early else None,
        "overload_by_configuration": {name: overload_of(c) for name, c in configs.items()},
        "realised_cost_minus_budget": cost_minus_budget(configs, store, args.budget),
        "shifted": {k.split("/", 1)[1]: v for k, v in store.runs.items() if k.startswith("shifted/")},
        "faults": faults,
        "screenshot": shot["path"], "screenshot_note": shot["note"],
        "skipped": skipped,
        "settings": {"budget": args.budget, "seconds_per_run": args.seconds, "max_requests_per_run": args.max_requests,
                     "slo_ms": args.slo_ms, "closed_concurrency": list(CLOSED_LEVELS), "load_factors": list(LOAD_FACTORS),
                     "max_queue_rows": args.max_queue_rows, "request_timeout_s": args.request_timeout,
                     "server_threads": args.server_threads or "torch default", "shift_seconds": args.shift_seconds,
                     "fault_seconds": args.fault_seconds, "remote_timeout_s": args.remote_timeout,
                     "smoke": args.smoke, **texts_note},
    }
    result["targets"] = targets(result)
    result["notes"] = notes(args, result)
    return result


def notes(args: argparse.Namespace, result: dict[str, Any]) -> str:
    scale = ("SMOKE RUN: tiny untrained models and sub-second runs; the numbers check the plumbing only. "
             if args.smoke else "")
    return scale + (
        f"Load texts: the load half of SST-2 dev, one text per request, every request of early exit and cascade "
        f"at budget {args.budget} (FLOPs fraction of the full model); calibration on the other half. Each run "
        f"stops after {args.seconds:g} s or {args.max_requests} requests; closed loops at concurrency "
        f"{', '.join(map(str, CLOSED_LEVELS))}, then open loops (Poisson) at "
        f"{', '.join(f'{f:g}x' for f in LOAD_FACTORS)} the best closed-loop rps. Latency: arrival (scheduled, open "
        f"loop) or send (closed loop) to the last byte of the answer, 200s only; goodput: 200s within "
        f"{args.slo_ms:g} ms per second. rejected: non-200 answers by the JSON 'reason' (4xx and 503/429 refusals); "
        "errors_5xx: 5xx other than 503/429. lost: sent, no answer (connection error or client timeout at the "
        "server's timeout + 5 s). peak_rss_mb: the server process's VmHWM since it started (all earlier runs of "
        "that server included). wrong (overload check): an accepted answer whose label, or stage, differs from "
        "the same text predicted alone at the threshold the answer reports. realised_cost_minus_budget is in "
        "cost fraction (the target is <= 0.01), per early-exit run. Client and servers share this machine's "
        f"{os.cpu_count()} cores: client_cpu_s and server_cpu_s say how much each used. Every server is its own "
        "process started from this script (the app of `summon serve`)."
    )


# --- main ---------------------------------------------------------------------------------------------------


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child_main(sys.argv[2])
        return
    args = parse_args()
    work, out_json = run_paths(args.work, args.out, "serve_load")
    args.out_json, args.parts = str(out_json), set(args.parts.split(","))
    if args.fresh:  # the private early-exit copy and the cascade are calibrated again too
        shutil.rmtree(work / "models", ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    import summon

    calib, load = sst2_halves(args.data_dir, args.seed)
    if args.smoke:
        args.teacher, args.early_exit, args.student = smoke_models(work / "tiny")
    else:
        train_missing(args)
    models, skipped = prepare_models(args, work, calib)
    texts = [ex["text"] for ex in load.examples]
    shifted, shifted_note = imdb_sentences(args.data_dir, args.shift_rows, args.seed)
    store = Store(work / "runs.json", args.fresh)
    loaded: dict[str, Any] = {}

    def loader(path: str) -> Any:
        if path not in loaded:
            loaded[path] = summon.load(path, device="cpu")
        return loaded[path]

    if "screenshot" in args.parts and "screenshot" not in store and find_browser() is None:
        store.put("screenshot", NO_BROWSER)
    wanted = [c for c in args.configs.split(",") if c]
    for name in wanted:
        if name not in CONFIG_SERVING:
            raise SystemExit(f"unknown configuration {name!r}; choose from {', '.join(CONFIG_SERVING)}")
        if name in models and "loads" in args.parts:
            load_runs(name, models[name], texts, args, store, work, loader)
        elif name in skipped:
            print(f"skipped {name}: {skipped[name]}", flush=True)
    if "shifted" in args.parts and "early_exit_batched" in models:
        shifted_runs(models["early_exit_batched"], shifted, args, store, work)
    if "faults" in args.parts and "cascade_batched" in models:
        kill_teacher_run(models["cascade_batched"], texts, args, store, work)
    if "faults" in args.parts and "early_exit_batched" in models and "faults/malformed" not in store:
        model = models["early_exit_batched"]  # not run with the load runs (--parts without loads)
        spec = server_spec(args, model["path"], batch_rows=args.max_batch_rows, wait_ms=args.max_wait_ms)
        with Server("malformed", spec, work) as server:
            store.put("faults/malformed", malformed_run(server, texts, effective_knob(model), args))
        report("faults/malformed", store["faults/malformed"])
    result = assemble(args, models, skipped, store,  # every configuration with finished runs, asked for or not
                      {"load_texts": load.source, "calibration_texts": calib.source, "shifted_texts": shifted_note})
    print("targets", json.dumps(result["targets"]), flush=True)
    print("batched_early_exit_over_teacher_rps", result["batched_early_exit_over_teacher_rps"], flush=True)
    write_result(out_json, result)


if __name__ == "__main__":
    main()

"""Reliability, round three (issue 25): what the bad-input suite covers, what CI runs, and the server's bounds.

Writes ``benchmarks/results/reliability.json`` with

* ``bad_input_cases``: test cases per suite of the bad-input suite (``tests/test_bad_*.py`` and
  ``tests/test_writes.py``), as ``pytest --collect-only`` counts them in the default tier, and ``total``;
* ``ci_tiers``: each tier's test count (passed, skipped) and seconds in ``.ci/run`` run from a fresh clone of this
  commit beside ``../shared`` (``--ci-log FILE`` reads a log of such a run instead of running one);
* for ``summon serve`` run as a user runs it (its own process, 127.0.0.1, models saved here):
  ``slow_clients`` (connections that send half a head, or a head and half a body: how many were held, for how
  many seconds, and whether the server answered others meanwhile), ``work_after_disconnect_seconds`` (a
  request of many rows whose client leaves after its first batch: how long the model stays busy afterwards,
  beside the same request run to its end; and after the server's own 504), ``sigterm_exit_seconds`` (SIGTERM
  while a long request runs, with the drain window: the exit time and the answer the client got) and
  ``max_response_bytes`` (a 10,000-class model: the limit, the largest answer sent, the status of a request whose
  answer would exceed it);
* ``command``, ``commit``, ``versions``, ``machine``.

Run on a quiet machine: ``cd benchmarks && python reliability.py`` (about 10 minutes with the CI run, 2 without:
``--skip-ci`` keeps the ``ci_tiers`` of an earlier result). Models and logs go to ``benchmarks/work/reliability``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from _common import REPO, provenance, write_result

RESULT = REPO / "benchmarks" / "results" / "reliability.json"
SUITES = ("tests/test_bad_*.py", "tests/test_writes.py")
TEN_THOUSAND = 10_000


# --- the bad-input suite and CI --------------------------------------------------------------------------------


def bad_input_cases() -> dict[str, int]:
    """Collected cases per bad-input suite file (default tier: pyproject's addopts apply)."""
    files = sorted(str(p.relative_to(REPO)) for pattern in SUITES for p in REPO.glob(pattern))
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *files],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
    counts = Counter(line.split("::")[0] for line in out.splitlines() if "::" in line)
    result = {Path(name).name: counts[name] for name in files}
    result["total"] = sum(counts.values())
    return result


_SUMMARY = re.compile(r"^=+ (?P<body>.*?) in (?P<seconds>[\d.]+)s(?: \(.*\))? =+$")


def parse_ci_log(text: str) -> dict[str, Any]:
    """Each pytest run's summary line in a ``.ci/run`` log, in order: default tier, then integration."""
    tiers = []
    for line in text.splitlines():
        match = _SUMMARY.match(line.strip())
        if match and re.search(r"\d+ (passed|failed)", match["body"]):
            counts = {word: int(n) for n, word in re.findall(r"(\d+) (\w+)", match["body"])}
            tiers.append({**counts, "seconds": float(match["seconds"])})
    names = ["default", "integration"]
    return {names[i] if i < len(names) else f"tier_{i}": tier for i, tier in enumerate(tiers)}


def run_fresh_clone_ci(work: Path) -> dict[str, Any]:
    """``.ci/run`` in a fresh clone of HEAD beside ``../shared`` (as CI runs it); its log under ``work``."""
    shared = REPO.parent / "shared"
    clone = REPO.parent / f"ci-reliability-{os.getpid()}"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    log = work / "ci.log"
    started = time.monotonic()
    with log.open("w") as handle:
        proc = subprocess.run(["bash", ".ci/run"], cwd=clone, stdout=handle, stderr=subprocess.STDOUT)
    seconds = time.monotonic() - started
    tiers = parse_ci_log(log.read_text(errors="replace"))
    subprocess.run(["rm", "-rf", str(clone)], check=False)
    return {"exit_code": proc.returncode, "wall_seconds_with_installs": round(seconds, 1),
            "shared_beside": shared.is_dir(), "log": str(log.relative_to(REPO)), **tiers}


# --- the models the server runs --------------------------------------------------------------------------------


def save_models(work: Path) -> dict[str, str]:
    """``fast``: a small n-gram classifier; ``slow``: a randomly initialised 6-layer encoder (slow enough that a
    request of a few hundred rows runs for seconds on a CPU); ``wide``: an n-gram model with 10,000 classes."""
    from summon.models import ModelConfig, build_model
    from summon.predictors.predictor import Predictor

    specs = {
        "fast": (ModelConfig(kind="ngram", num_buckets=256, embed_dim=8, init_seed=1), 2),
        "slow": (ModelConfig(kind="random", name="tiny-bert", num_layers=6, hidden_size=256, num_heads=4,
                             intermediate_size=1024, max_length=128, init_seed=1), 2),
        "wide": (ModelConfig(kind="ngram", num_buckets=256, embed_dim=8, init_seed=1), TEN_THOUSAND),
    }
    paths = {}
    for name, (cfg, classes) in specs.items():
        folder = work / "models" / name
        if not (folder / "manifest.json").exists():
            built = build_model(cfg, "classification", classes)
            labels = [f"class_{i}" for i in range(classes)]
            Predictor(built.model, built.featurizer, "classification", labels,
                      {"architecture": built.architecture}).save(folder, architecture=built.architecture)
        paths[name] = str(folder)
    return paths


# --- a summon serve process ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """``summon serve`` in its own process on 127.0.0.1 with ``options``; its stderr in ``log``."""

    def __init__(self, models: dict[str, str], log: Path, *options: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log.open("w")
        summon = Path(sys.executable).with_name("summon")
        self.proc = subprocess.Popen([str(summon), "serve", *(f"{k}={v}" for k, v in models.items()), "--host",
                                      "127.0.0.1", "--port", str(self.port), "--device", "cpu", *options],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        until = time.monotonic() + 120
        while call(self.url, "/ready")[0] != 200:
            if self.proc.poll() is not None or time.monotonic() > until:
                raise RuntimeError(f"summon serve did not become ready; see {log}")
            time.sleep(0.2)

    def metric(self, name: str, model: str) -> float:
        text = call(self.url, "/metrics")[1]
        match = re.search(rf'^{name}{{model="{model}"}} ([\d.e+-]+)$', text, re.M)
        return float(match.group(1)) if match else float("nan")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def call(url: str, path: str, payload: Any = None, timeout: float = 120) -> tuple[int, str]:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    except OSError:
        return 0, ""


def raw(url: str) -> socket.socket:
    port = int(url.rsplit(":", 1)[1])
    return socket.create_connection(("127.0.0.1", port), timeout=120)


def held_for(sock: socket.socket, started: float) -> tuple[float, bytes]:
    """Seconds until the server closes ``sock`` (reading whatever it answers first), and the answer."""
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    return time.monotonic() - started, answer


def rows(n: int, words: int = 100) -> list[str]:
    return [" ".join(f"word{(i * 7 + j) % 997}" for j in range(words)) for i in range(n)]


def until(check, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.02)
    return False


# --- the server's bounds ---------------------------------------------------------------------------------------


def slow_clients(models: dict[str, str], work: Path, connections: int, read_timeout: float) -> dict[str, Any]:
    """``connections`` clients sending half a head and as many sending a head and half a body, at once; a normal
    client is answered meanwhile."""
    server = Server({"fast": models["fast"]}, work / "slow_clients.log", "--read-timeout", str(read_timeout))
    try:
        heads = [raw(server.url) for _ in range(connections)]
        bodies = [raw(server.url) for _ in range(connections)]
        started = time.monotonic()
        for sock in heads:
            sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\n")
        for sock in bodies:
            sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100\r\n\r\n{\"inputs\": [")
        meanwhile = call(server.url, "/v1/predict", {"inputs": ["answered while slow clients wait"]})[0]
        with ThreadPoolExecutor(2 * connections) as pool:
            held = list(pool.map(lambda s: held_for(s, started), heads + bodies))
        for sock in heads + bodies:
            sock.close()
        head_seconds = [seconds for seconds, _ in held[:connections]]
        body = held[connections:]
        statuses = Counter(answer.split(b" ", 2)[1].decode() if answer else "closed" for _, answer in body)
        return {"read_timeout_s": read_timeout, "connections": 2 * connections,
                "half_head": {"connections": connections, "held_seconds_median": round(statistics.median(head_seconds), 3),
                              "held_seconds_max": round(max(head_seconds), 3),
                              "answers": dict(Counter("closed" if not a else "answered" for _, a in held[:connections]))},
                "half_body": {"connections": connections,
                              "held_seconds_median": round(statistics.median(s for s, _ in body), 3),
                              "held_seconds_max": round(max(s for s, _ in body), 3), "answers": dict(statuses)},
                "other_client_status_meanwhile": meanwhile,
                "still_open_after_read_timeout": sum(s > read_timeout + 2 for s, _ in held)}
    finally:
        server.stop()


def _busy_after(server: Server, leave: Any) -> float:
    """Seconds the model stays busy (rows in flight) after ``leave()`` returns."""
    left = leave()
    until(lambda: server.metric("summon_in_flight_rows", "slow") == 0, 300)
    return time.monotonic() - left


def work_after_disconnect(models: dict[str, str], work: Path, n: int, batch: int) -> dict[str, Any]:
    """A request of ``n`` rows (batches of ``batch``) to the slow model: run to its end; its client leaving once
    the first batch runs; and (a second server, ``--request-timeout 1``) answered 504 by the server."""
    options = ("--max-batch-rows", str(batch), "--max-rows", str(n), "--warmup-sizes", "1")
    payload = json.dumps({"inputs": rows(n)}).encode()
    server = Server({"slow": models["slow"]}, work / "disconnect.log", *options, "--request-timeout", "600")
    try:
        started = time.monotonic()
        full_status = call(server.url, "/v1/predict", {"inputs": rows(n)}, timeout=600)[0]
        full = time.monotonic() - started

        def leave() -> float:
            sock = raw(server.url)
            sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)
            until(lambda: server.metric("summon_in_flight_rows", "slow") > 0, 60)
            time.sleep(0.2)  # the first batch is in the model
            sock.close()
            return time.monotonic()

        after_disconnect = _busy_after(server, leave)
        cancelled = server.metric("summon_requests_cancelled_total", "slow")
    finally:
        server.stop()
    server = Server({"slow": models["slow"]}, work / "timeout.log", *options, "--request-timeout", "1")
    try:
        def timed_out() -> float:
            status = call(server.url, "/v1/predict", {"inputs": rows(n)})[0]
            if status != 504:
                raise RuntimeError(f"expected a 504 from a {n}-row request with --request-timeout 1, got {status}")
            return time.monotonic()

        after_504 = _busy_after(server, timed_out)
        timed_out_count = server.metric("summon_requests_timed_out_total", "slow")
    finally:
        server.stop()
    return {"rows": n, "max_batch_rows": batch, "request_seconds_to_its_end": round(full, 2),
            "status_to_its_end": full_status, "after_disconnect": round(after_disconnect, 3),
            "after_504": round(after_504, 3), "request_timeout_s_for_504": 1.0, "cancelled_counted": cancelled,
            "timed_out_counted": timed_out_count}


def sigterm_exit(models: dict[str, str], work: Path, drain: float, n: int, batch: int) -> dict[str, Any]:
    """SIGTERM while a request of ``n`` rows runs on the slow model: seconds to exit, and the client's answer."""
    server = Server({"slow": models["slow"]}, work / "sigterm.log", "--max-batch-rows", str(batch), "--max-rows",
                    str(n), "--drain-seconds", str(drain), "--warmup-sizes", "1", "--request-timeout", "600")
    answer: dict[str, Any] = {}

    def ask() -> None:
        status, body = call(server.url, "/v1/predict", {"inputs": rows(n)}, timeout=600)
        answer.update(status=status, body=body[:300])

    client = threading.Thread(target=ask)
    client.start()
    until(lambda: server.metric("summon_in_flight_rows", "slow") > 0, 60)
    time.sleep(0.2)
    signalled = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    code = server.proc.wait(timeout=600)
    seconds = time.monotonic() - signalled
    client.join(timeout=60)
    server.log.close()
    log = (work / "sigterm.log").read_text(errors="replace")
    body = json.loads(answer["body"]) if answer.get("body", "").startswith("{") else {}
    return {"drain_seconds": drain, "exit_seconds": round(seconds, 3), "exit_code": code, "rows": n,
            "answer_status": answer.get("status"), "answer_reason": body.get("reason"),
            "answer_is_json": bool(body), "traceback_in_log": "Traceback" in log}


def max_response(models: dict[str, str], work: Path, limit: int) -> dict[str, Any]:
    """The 10,000-class model: the largest answer sent under ``limit`` and the status of one over it."""
    server = Server({"wide": models["wide"]}, work / "max_response.log", "--max-response-bytes", str(limit),
                    "--max-rows", "4096")
    try:
        sizes = {}
        for n in (1, 8, 32, 64, 128, 512):
            started = time.monotonic()
            status, body = call(server.url, "/v1/predict", {"inputs": rows(n, 5)}, timeout=600)
            sizes[n] = {"status": status, "bytes": len(body.encode()), "seconds": round(time.monotonic() - started, 3)}
        answered = [v["bytes"] for v in sizes.values() if v["status"] == 200]
        refused = [v for v in sizes.values() if v["status"] == 413]
        return {"limit": limit, "classes": TEN_THOUSAND, "largest_answer_bytes": max(answered),
                "within_limit": max(answered) <= limit, "refused_status": refused[0]["status"] if refused else None,
                "by_rows": sizes}
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default=str(REPO / "benchmarks" / "work" / "reliability"))
    parser.add_argument("--skip-ci", action="store_true", help="keep ci_tiers from the earlier result")
    parser.add_argument("--ci-log", help="read ci_tiers from this .ci/run log instead of running one")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--read-timeout", type=float, default=2.0)
    parser.add_argument("--drain-seconds", type=float, default=3.0)
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--max-batch-rows", type=int, default=32)
    parser.add_argument("--max-response-bytes", type=int, default=32 * 2**20)
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"benchmark": "reliability", **provenance(seed=0)}
    result["bad_input_cases"] = bad_input_cases()
    print("bad_input_cases", result["bad_input_cases"], flush=True)
    models = save_models(work)
    result["slow_clients"] = slow_clients(models, work, args.connections, args.read_timeout)
    print("slow_clients", result["slow_clients"], flush=True)
    result["work_after_disconnect_seconds"] = work_after_disconnect(models, work, args.rows, args.max_batch_rows)
    print("work_after_disconnect_seconds", result["work_after_disconnect_seconds"], flush=True)
    result["sigterm_exit_seconds"] = sigterm_exit(models, work, args.drain_seconds, args.rows, args.max_batch_rows)
    print("sigterm_exit_seconds", result["sigterm_exit_seconds"], flush=True)
    result["max_response_bytes"] = max_response(models, work, args.max_response_bytes)
    print("max_response_bytes", {k: v for k, v in result["max_response_bytes"].items() if k != "by_rows"}, flush=True)
    if args.ci_log:
        result["ci_tiers"] = {"log": args.ci_log, **parse_ci_log(Path(args.ci_log).read_text(errors="replace"))}
    elif args.skip_ci and RESULT.exists():
        result["ci_tiers"] = json.loads(RESULT.read_text()).get("ci_tiers")
    else:
        result["ci_tiers"] = run_fresh_clone_ci(work)
    print("ci_tiers", result["ci_tiers"], flush=True)
    write_result(RESULT, result)


if __name__ == "__main__":
    main()

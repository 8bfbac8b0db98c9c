"""The reworked package keeps the shape issue 23 asked for: no layer above the kinds registry asks "plain or
staged?", cost is measured once with one timing loop, no god class, the serving engine split, the benchmarks'
held-out protocol in the library. The measures are ``tests/surface_metrics.py``'s (its docstring defines each);
``benchmarks/core_surface.py`` reports the same figures before and after the rework."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import surface_metrics as sm

REPO = Path(__file__).resolve().parent.parent


def _listed(places: list[str]) -> str:
    return "\n".join(places)


def test_no_layer_above_the_kinds_registry_asks_plain_or_staged():
    found = sm.plain_staged_branches(REPO)
    assert found == [], f"{len(found)} plain-or-staged branches outside the kinds registry:\n{_listed(found)}"


def test_no_class_is_a_god_object():
    by_lines, by_methods = sm.largest_class(REPO, "lines"), sm.largest_class(REPO, "methods")
    assert by_lines["value"] <= 200, f"{by_lines['class']} has {by_lines['value']} lines (at most 200)"
    assert by_methods["value"] <= 20, f"{by_methods['class']} has {by_methods['value']} methods (at most 20)"


def test_the_serving_engine_is_split():
    lines = sm.file_lines(REPO, "serve/engine.py")
    assert 0 < lines < 400, f"serve/engine.py has {lines} lines (under 400)"


def test_the_benchmarks_hold_no_copy_of_the_held_out_protocol():
    found = sm.benchmark_protocol_copies(REPO)
    assert found == [], "use summon.evaluation.protocol instead:\n" + _listed(found)


def test_one_timing_loop():
    found = sm.timing_loops(REPO)
    assert len(found) <= 1, "loops that time repeated runs (use summon.measure.timing.time_call):\n" + _listed(found)


def test_cost_is_measured_once():
    found = sm.cost_measurement_functions(REPO)
    assert len(found) <= 2, f"{len(found)} functions that measure cost themselves (at most 2):\n{_listed(found)}"


def _sample_tree(tmp_path: Path, files: dict[str, str]) -> Path:
    """A repository root whose ``src/summon`` holds ``files`` (path relative to the package: source)."""
    for name, source in files.items():
        path = tmp_path / "src" / "summon" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return tmp_path


def test_the_branch_counter_sees_each_kind_of_branch(tmp_path):
    source = '''
class Lane:
    def __init__(self, predictor):
        self.staged = isinstance(predictor, (StagedBase, int))
        self.kind = getattr(predictor, "kind", "plain")

    def plan(self, knob):
        return knob if self.staged else None

    def run(self):
        self.staged.run_full([])  # an object called staged: not a flag


def tokenises(predictor, staged):
    if staged:
        return isinstance(predictor, summon.adaptive.EarlyExitPredictor if staged else int)
    return kind == "plain"


def load(manifest):
    kind = staged_kind(manifest)
    return 1 if kind is None else 2
'''
    root = _sample_tree(tmp_path, {"serve/lane.py": source, "adaptive/kinds.py": source})  # the registry may
    found = sm.plain_staged_branches(root)
    assert [place.split(": ")[0] for place in found] == [
        f"serve/lane.py:{line}" for line in (4, 5, 8, 15, 16, 17, 22)], found


def test_the_timing_loop_counter_sees_a_loop_that_times_repeated_runs(tmp_path):
    source = '''
import time


def best_of(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def measure_ms(fn):
    start = clock()
    fn()
    return clock() - start


def wait(queue, until):
    while time.monotonic() < until:  # reads the clock but records no timing
        queue.pop()
'''
    root = _sample_tree(tmp_path, {"measure/probe.py": source, "serve/queue.py": source})  # serve/: not timing
    assert sm.timing_loops(root) == ["measure/probe.py:7 in best_of"]
    assert sm.cost_measurement_functions(root)[:2] == ["measure/probe.py:5 best_of: holds its own timing loop",
                                                       "measure/probe.py:14 measure_ms: times stages"]

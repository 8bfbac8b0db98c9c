"""The serving engine's batch queue on its own: plain Python requests, no predictor, no model.

Priorities and ageing, batch formation by rows and tokens, the wait for rows (``max_wait_ms`` and deadlines),
refusals at admission (full, draining, too large, an unmeetable deadline), and drain and abort.
"""

from __future__ import annotations

import threading
import time

import pytest

from summon.serve.queue import (
    BatchQueue,
    DeadlineUnmeetable,
    Draining,
    EngineConfig,
    QueueFull,
    Request,
    TooLarge,
    check_size,
)


def request(rows: int = 1, priority: str = "high", *, tokens: int = 0, age_s: float = 0.0,
            deadline_s: float | None = None, name: str = "") -> Request:
    now = time.monotonic()
    return Request(examples=[{"text": name}] * rows, tokens=tokens, priority=priority, request_id=name,
                   enqueued=now - age_s, deadline=None if deadline_s is None else now + deadline_s)


def queue(**limits) -> BatchQueue:
    return BatchQueue("m", EngineConfig(**{"max_wait_ms": 0.0, **limits}))


def names(batch) -> list[str]:
    return [r.request_id for r in batch.requests]


def test_high_priority_first_then_first_come_first_served():
    q = queue(max_batch_rows=1, age_ms=60_000)
    for level, name in [("low", "a"), ("high", "b"), ("high", "c"), ("low", "d")]:
        q.put(request(priority=level, name=name))
    assert [names(q.take()) for _ in range(4)] == [["b"], ["c"], ["a"], ["d"]]


def test_a_low_request_older_than_age_ms_counts_as_high():
    q = queue(max_batch_rows=1, age_ms=20)
    q.put(request(priority="low", name="old", age_s=0.05))
    q.put(request(priority="high", name="x", age_s=0.01))
    q.put(request(priority="high", name="y"))
    q.put(request(priority="low", name="young"))
    assert [names(q.take()) for _ in range(4)] == [["old"], ["x"], ["y"], ["young"]]


def test_a_low_request_that_aged_still_waits_for_older_high_ones():
    q = queue(max_batch_rows=1, age_ms=20)
    q.put(request(priority="high", name="older", age_s=0.1))
    q.put(request(priority="low", name="old", age_s=0.05))
    assert [names(q.take()) for _ in range(2)] == [["older"], ["old"]]


def test_batches_hold_at_most_max_batch_rows_and_a_larger_request_runs_alone():
    q = queue(max_batch_rows=4)
    for rows, name in [(2, "a"), (2, "b"), (1, "c"), (6, "big"), (1, "d")]:
        q.put(request(rows, name=name))
    batches = [q.take() for _ in range(4)]
    assert [names(b) for b in batches] == [["a", "b"], ["c"], ["big"], ["d"]]
    assert [b.rows for b in batches] == [4, 1, 6, 1] and [b.number for b in batches] == [1, 2, 3, 4]


def test_batches_hold_at_most_max_batch_tokens():
    q = queue(max_batch_rows=64, max_batch_tokens=10)
    for tokens, name in [(4, "a"), (5, "b"), (3, "c"), (12, "long"), (1, "d")]:
        q.put(request(tokens=tokens, name=name))
    batches = [q.take() for _ in range(4)]
    assert [names(b) for b in batches] == [["a", "b"], ["c"], ["long"], ["d"]]
    assert [b.tokens for b in batches] == [9, 3, 12, 1]


def test_a_batch_knows_the_fill_it_was_taken_at():
    q = queue(max_batch_rows=2, max_queue_rows=8)
    for _ in range(3):
        q.put(request(2))
    assert [q.take().fill for _ in range(3)] == [6 / 8, 4 / 8, 2 / 8]


def test_take_waits_max_wait_ms_for_rows_unless_a_batch_is_full():
    q = queue(max_batch_rows=4, max_wait_ms=80)
    q.put(request(4))
    started = time.monotonic()
    q.take()
    assert time.monotonic() - started < 0.05  # full at once
    q.put(request(1, name="first"))
    threading.Timer(0.02, lambda: q.put(request(1, name="second"))).start()
    started = time.monotonic()
    batch = q.take()
    assert 0.07 < time.monotonic() - started < 2.0 and names(batch) == ["first", "second"]


def test_take_stops_waiting_before_the_earliest_deadline_less_the_run_time():
    q = queue(max_batch_rows=4, max_wait_ms=10_000)
    q.put(request(1, deadline_s=0.5))
    started = time.monotonic()
    q.take(least_row_ms=100.0)  # 4 rows at 100 ms: the batch must start 400 ms before the deadline
    assert 0.05 < time.monotonic() - started < 0.45


def test_a_full_queue_refuses_with_retry_after_and_gauges_count_what_is_held():
    q = queue(max_queue_rows=4)
    q.put(request(3))
    with pytest.raises(QueueFull, match="max_queue_rows") as refused:
        q.put(request(2))
    assert refused.value.retry_after_s == 1.0 and refused.value.reason == "queue_full"
    q.record(rows=2, seconds=2.0)  # 1 s a row: 3 queued rows take 3 s
    with pytest.raises(QueueFull) as refused:
        q.put(request(2))
    assert refused.value.retry_after_s == 3.0
    gauges = q.gauges()
    assert (gauges.queue_rows, gauges.queue_requests, gauges.in_flight_rows, gauges.accepted) == (3, 1, 0, 1)
    batch = q.take()
    assert q.gauges().in_flight_rows == 3 and q.gauges().queue_rows == 0
    q.done(batch)
    assert q.gauges().in_flight_rows == 0


def test_the_pace_is_a_moving_average_of_measured_batches():
    q = queue()
    assert q.ms_per_row is None
    q.record(rows=10, seconds=0.1)
    assert q.ms_per_row == pytest.approx(10.0)
    q.record(rows=10, seconds=0.2)
    assert q.ms_per_row == pytest.approx(0.8 * 10.0 + 0.2 * 20.0)


def test_a_deadline_is_refused_when_the_work_ahead_cannot_finish_in_time():
    q = queue()
    q.check_deadline(rows=4, deadline_ms=1.0, priority="high", least_row_ms=None)  # nothing measured: no refusal
    q.put(request(10, "high"))
    q.put(request(10, "low"))
    q.check_deadline(rows=2, deadline_ms=50.0, priority="high", least_row_ms=2.0)  # 10 ahead, 2 own: 24 ms
    with pytest.raises(DeadlineUnmeetable, match="deadline_ms=30") as refused:  # low: 20 ahead, 2 own: 44 ms
        q.check_deadline(rows=2, deadline_ms=30.0, priority="low", least_row_ms=2.0)
    assert refused.value.estimate_ms == pytest.approx(44.0)
    q.record(rows=1, seconds=0.005)  # measured 5 ms a row: the work ahead at that pace, own rows at the floor
    with pytest.raises(DeadlineUnmeetable) as refused:
        q.check_deadline(rows=2, deadline_ms=50.0, priority="high", least_row_ms=2.0)
    assert refused.value.estimate_ms == pytest.approx(10 * 5.0 + 2 * 2.0)


def test_close_refuses_new_requests_and_take_empties_the_queue_then_ends():
    q = queue(max_batch_rows=2, max_wait_ms=60_000)
    q.put(request(1, name="a"))
    q.close()
    with pytest.raises(Draining):
        q.put(request(1))
    started = time.monotonic()
    assert names(q.take()) == ["a"] and time.monotonic() - started < 1.0  # no wait for rows once closed
    assert q.take() is None


def test_take_blocks_until_a_request_comes_or_the_queue_closes():
    q = queue()
    got: list = []
    taker = threading.Thread(target=lambda: got.append(q.take()))
    taker.start()
    time.sleep(0.02)
    q.put(request(1, name="a"))
    taker.join(timeout=5)
    assert names(got[0]) == ["a"]
    taker = threading.Thread(target=lambda: got.append(q.take()))
    taker.start()
    q.close()
    taker.join(timeout=5)
    assert not taker.is_alive() and got[1] is None


def test_drain_waits_for_the_batch_in_flight_and_abort_hands_back_what_is_left():
    q = queue(max_batch_rows=1)
    for name in ("a", "b", "c"):
        q.put(request(1, name=name))
    batch = q.take()
    started = time.monotonic()
    q.drain(until=started + 0.05)  # a batch runs and two wait: the window closes first
    assert time.monotonic() - started >= 0.05
    left = q.abort()
    assert [r.request_id for r in left] == ["b", "c"] and q.gauges().queue_rows == 0
    threading.Timer(0.02, lambda: q.done(batch)).start()
    q.drain(until=time.monotonic() + 5)  # returns once the batch is done
    assert q.gauges().in_flight_rows == 0
    with pytest.raises(Draining):
        q.put(request(1))
    assert q.take() is None


def test_size_limits_name_the_limit():
    config = EngineConfig(max_request_rows=3, max_queue_rows=2, max_input_chars=5)
    with pytest.raises(TooLarge, match="max_queue_rows") as refused:
        check_size("m", ["a"] * 3, config)
    assert (refused.value.limit, refused.value.allowed) == ("max_queue_rows", 2)
    with pytest.raises(TooLarge, match="input 1 has 6 characters"):
        check_size("m", ["ab", ("abc", "def")], config)
    check_size("m", ["abcde", ["ab", "cde"]], config)


@pytest.mark.parametrize("bad", [{"max_batch_rows": 0}, {"max_batch_tokens": 0}, {"max_wait_ms": -1.0},
                                 {"age_ms": float("inf")}, {"degrade": 1}])
def test_the_config_refuses_bad_values(bad):
    with pytest.raises((ValueError, TypeError), match=next(iter(bad))):
        EngineConfig(**bad)

"""Quotas on a clock the test moves: request rate, calls in flight, server-wide slots."""

from __future__ import annotations

import pytest

from ledger.security.quotas import CallsInFlight, QuotaSettings, RequestRate, Slots


class FakeClock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_a_key_gets_its_burst_then_its_rate() -> None:
    clock = FakeClock()
    rate = RequestRate(per_second=2.0, burst_max=3, tracked_keys_max=10, clock=clock)
    # A quiet key may make three requests at once...
    assert all(rate.try_take("k1").admitted for _ in range(3))
    # ...the fourth is refused, with the time until the next token: half a second.
    refused = rate.try_take("k1")
    assert not refused.admitted
    assert refused.retry_delay_seconds == pytest.approx(0.5)
    # A quarter of a second later, a quarter more to wait.
    clock.advance(0.25)
    assert rate.try_take("k1").retry_delay_seconds == pytest.approx(0.25)
    # Once the delay has passed, one request goes through, and only one.
    clock.advance(0.25)
    assert rate.try_take("k1").admitted
    assert not rate.try_take("k1").admitted
    # Another key has its own bucket.
    assert rate.try_take("k2").admitted


def test_the_bucket_refills_to_its_burst_and_no_further() -> None:
    clock = FakeClock()
    rate = RequestRate(per_second=10.0, burst_max=5, tracked_keys_max=10, clock=clock)
    for _ in range(5):
        rate.try_take("k1")
    clock.advance(3600)  # an hour of quiet is worth five requests, not 36 000
    assert sum(rate.try_take("k1").admitted for _ in range(10)) == 5


def test_a_clock_stepping_back_gives_no_tokens_and_takes_none() -> None:
    clock = FakeClock()
    rate = RequestRate(per_second=1.0, burst_max=1, tracked_keys_max=10, clock=clock)
    assert rate.try_take("k1").admitted
    clock.advance(-50)
    refused = rate.try_take("k1")
    assert not refused.admitted
    assert refused.retry_delay_seconds == pytest.approx(1.0)


def test_memory_is_bounded_by_forgetting_the_least_recently_seen_key() -> None:
    clock = FakeClock()
    rate = RequestRate(per_second=1.0, burst_max=1, tracked_keys_max=3, clock=clock)
    for key in ("a", "b", "c"):
        assert rate.try_take(key).admitted
    # "a" is seen again (refused, but now the most recent); "d" pushes out "b".
    assert not rate.try_take("a").admitted
    assert rate.try_take("d").admitted
    assert rate.tracked_keys == 3
    # "a" and "c" are still remembered (their buckets are empty); "b" starts afresh.
    assert not rate.try_take("a").admitted
    assert rate.try_take("b").admitted
    for number in range(1000):
        rate.try_take(f"flood-{number}")
    assert rate.tracked_keys == 3


def test_calls_in_flight_per_key_are_bounded_and_given_back() -> None:
    calls = CallsInFlight(per_key_max=2, tracked_keys_max=10, retry_delay_seconds=1.0)
    assert calls.try_acquire("k1").admitted
    assert calls.try_acquire("k1").admitted
    busy = calls.try_acquire("k1")
    assert not busy.admitted
    assert busy.retry_delay_seconds == 1.0
    # Other keys are not affected.
    assert calls.try_acquire("k2").admitted
    # A call ends: its slot is free again.
    calls.release("k1")
    assert calls.in_flight("k1") == 1
    assert calls.try_acquire("k1").admitted
    # A key with no call in flight is not kept.
    calls.release("k2")
    assert calls.tracked_keys == 1
    with pytest.raises(AssertionError):
        calls.release("k2")


def test_calls_in_flight_tracks_a_bounded_number_of_keys() -> None:
    calls = CallsInFlight(per_key_max=5, tracked_keys_max=2, retry_delay_seconds=0.5)
    assert calls.try_acquire("a").admitted
    assert calls.try_acquire("b").admitted
    # A third key while two have calls in flight: refused as busy, not tracked.
    assert not calls.try_acquire("c").admitted
    # Keys already tracked still get their own slots.
    assert calls.try_acquire("a").admitted
    calls.release("b")
    assert calls.try_acquire("c").admitted


def test_slots_never_wait_and_count_exactly() -> None:
    waiting_reads = Slots("reads_waiting", slots_max=2)
    assert waiting_reads.try_acquire()
    assert waiting_reads.try_acquire()
    assert not waiting_reads.try_acquire()
    assert waiting_reads.in_use == 2
    waiting_reads.release()
    assert waiting_reads.try_acquire()
    waiting_reads.release()
    waiting_reads.release()
    assert waiting_reads.in_use == 0
    with pytest.raises(AssertionError):
        waiting_reads.release()


def test_settings_are_checked() -> None:
    QuotaSettings()  # the defaults are valid
    for bad in (
        {"key_requests_per_second": 0.0},
        {"key_request_burst_max": 0},
        {"key_calls_in_flight_max": 0},
        {"tracked_keys_max": 0},
        {"busy_retry_delay_seconds": 0.0},
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            QuotaSettings(**bad)

"""Bounds on work: per-key request rate and calls in flight, and server-wide slot counters.

Every limiter answers at once (it never waits) and, when it refuses, says after how many
seconds a retry may succeed, for the RetryInfo detail. Clocks are injected: tests step a
fake one instead of sleeping.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

# Monotonic seconds; time.monotonic in production.
Clock = Callable[[], float]


@dataclass(frozen=True)
class QuotaSettings:
    # Sustained requests per second one key may make, and how many it may make at once
    # after a quiet spell (the bucket's size).
    key_requests_per_second: float = 50.0
    key_request_burst_max: int = 100
    # Calls of one key being served at the same time.
    key_calls_in_flight_max: int = 16
    # Keys whose rate is remembered; past this the least recently seen is forgotten.
    tracked_keys_max: int = 10_000
    # The retry delay suggested when a limit on calls in flight refuses a call: such a slot
    # frees when some call ends, which no clock can predict.
    busy_retry_delay_seconds: float = 1.0

    def __post_init__(self) -> None:
        if not self.key_requests_per_second > 0:
            raise ValueError("key_requests_per_second must be positive")
        for name in ("key_request_burst_max", "key_calls_in_flight_max", "tracked_keys_max"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if not self.busy_retry_delay_seconds > 0:
            raise ValueError("busy_retry_delay_seconds must be positive")


@dataclass(frozen=True)
class Decision:
    admitted: bool
    retry_delay_seconds: float = 0.0  # when refused: wait this long before retrying


_admitted = Decision(True)


class RequestRate:
    """A token bucket per key: `burst_max` requests at once, refilled at `per_second`.

    Memory is bounded: at most `tracked_keys_max` buckets, the least recently used one
    forgotten first. A forgotten key starts again with a full bucket, so forgetting only
    ever errs towards admitting; it happens only when more keys than that are active.
    """

    def __init__(
        self,
        per_second: float,
        burst_max: int,
        tracked_keys_max: int,
        clock: Clock = time.monotonic,
    ) -> None:
        assert per_second > 0
        assert burst_max >= 1
        assert tracked_keys_max >= 1
        self._per_second = per_second
        self._burst_max = burst_max
        self._tracked_keys_max = tracked_keys_max
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, when

    @classmethod
    def from_settings(cls, settings: QuotaSettings, clock: Clock = time.monotonic) -> RequestRate:
        return cls(
            settings.key_requests_per_second,
            settings.key_request_burst_max,
            settings.tracked_keys_max,
            clock,
        )

    def try_take(self, key: str) -> Decision:
        """Takes one request from the key's bucket, or says how long until one is there."""
        with self._lock:
            now = self._clock()
            tokens, then = self._buckets.pop(key, (float(self._burst_max), now))
            # max(): a clock that stepped back must not take tokens away.
            tokens = min(float(self._burst_max), tokens + max(0.0, now - then) * self._per_second)
            admitted = tokens >= 1.0
            if admitted:
                tokens -= 1.0
            self._buckets[key] = (tokens, now)  # now the most recently used
            if len(self._buckets) > self._tracked_keys_max:
                self._buckets.popitem(last=False)
        if admitted:
            return _admitted
        return Decision(False, (1.0 - tokens) / self._per_second)

    @property
    def tracked_keys(self) -> int:
        with self._lock:
            return len(self._buckets)


class CallsInFlight:
    """Calls each key has being served at once, at most `per_key_max`.

    Only keys with a call in flight are tracked (a key is dropped when its last call ends),
    so memory follows the calls the server admits; `tracked_keys_max` bounds it even so: a
    new key beyond it is refused as busy rather than tracked.
    """

    def __init__(self, per_key_max: int, tracked_keys_max: int, retry_delay_seconds: float) -> None:
        assert per_key_max >= 1
        assert tracked_keys_max >= 1
        assert retry_delay_seconds > 0
        self._per_key_max = per_key_max
        self._tracked_keys_max = tracked_keys_max
        self._busy = Decision(False, retry_delay_seconds)
        self._lock = threading.Lock()
        self._calls: dict[str, int] = {}

    @classmethod
    def from_settings(cls, settings: QuotaSettings) -> CallsInFlight:
        return cls(
            settings.key_calls_in_flight_max,
            settings.tracked_keys_max,
            settings.busy_retry_delay_seconds,
        )

    def try_acquire(self, key: str) -> Decision:
        """Counts one more call of the key, unless it has as many as allowed; release() after."""
        with self._lock:
            calls = self._calls.get(key, 0)
            if calls >= self._per_key_max:
                return self._busy
            if calls == 0 and len(self._calls) >= self._tracked_keys_max:
                return self._busy
            self._calls[key] = calls + 1
        return _admitted

    def release(self, key: str) -> None:
        with self._lock:
            calls = self._calls.get(key, 0)
            assert calls >= 1, f"released a call of key {key} that it did not hold"
            if calls == 1:
                del self._calls[key]
            else:
                self._calls[key] = calls - 1

    def in_flight(self, key: str) -> int:
        with self._lock:
            return self._calls.get(key, 0)

    @property
    def tracked_keys(self) -> int:
        with self._lock:
            return len(self._calls)


class Slots:
    """A server-wide counter of something bounded: calls in flight, reads waiting for a position.

    try_acquire() never waits; whoever acquired releases, in a `finally`:

        if not waiting_reads.try_acquire():
            raise Overloaded(...)
        try:
            wait_for_position()
        finally:
            waiting_reads.release()
    """

    def __init__(self, name: str, slots_max: int) -> None:
        assert slots_max >= 1
        self.name = name
        self.slots_max = slots_max
        self._lock = threading.Lock()
        self._in_use = 0

    def try_acquire(self) -> bool:
        with self._lock:
            if self._in_use >= self.slots_max:
                return False
            self._in_use += 1
            return True

    def release(self) -> None:
        with self._lock:
            assert self._in_use >= 1, f"{self.name}: released more slots than acquired"
            self._in_use -= 1

    @property
    def in_use(self) -> int:
        with self._lock:
            return self._in_use

"""The open-loop load generator: calls go out at fixed times, whatever came back before.

Call `i` of a process is scheduled at `t0 + offset + i / rate` and sent at that time whether
or not earlier calls have returned, so a slow server cannot slow the generator down and hide
its own slowness (no coordinated omission). Latency runs from the scheduled time. At most
`in_flight_max` calls are outstanding; a call due while the cap is reached is not sent and
counts as dropped, and so does every call still unsent a second after the schedule ended.
A call sent more than `late_ms` after its time counts as late (the generator fell behind).
The achieved rate counts the OK responses that arrived within the schedule's duration.

Each generator process (`GeneratorPool`) runs its own asyncio loop and grpc.aio channel,
builds and serializes all its calls before the clock starts, waits for the parent's common
start time, and returns a `GeneratorOutcome`. Everything is bounded: the number of calls,
the schedule's duration, each call's deadline, the drain at the end and every wait on a pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Any

import grpc

from load_tests.stats import GeneratorOutcome
from load_tests.workload import (
    Call,
    Workload,
    build_calls,
    call_metadata,
    op_paths,
    transfers_recorded,
)

late_ms = 5.0
# A call still unsent this long after the end of the schedule is dropped, not sent late.
overrun_seconds_max = 1.0
# Hand control to the event loop after this many back-to-back sends, so responses are read.
sends_between_yields_max = 16
channel_ready_timeout_seconds = 10.0
# Time for every process to build its calls and connect.
prepare_timeout_seconds = 60.0
# Between the last process reporting ready and the common start.
start_delay_seconds = 0.2
# A process reporting later than duration + call deadline + this is considered stuck.
report_slack_seconds = 30.0
stop_timeout_seconds = 5.0
message_bytes_max = 64 * 1024 * 1024

_ready = "ready"
_failed = "failed"


@dataclass(frozen=True)
class GeneratorPlan:
    """One process's share of a step."""

    address: str
    workload: Workload
    calls_per_second: float
    # This process's first call is due this long after the common start (interleaving).
    offset_seconds: float
    duration_seconds: float
    call_count: int
    in_flight_max: int
    call_timeout_seconds: float
    id_prefix: str
    seed: int


class GeneratorError(RuntimeError):
    """A generator process failed or did not answer in time."""


def split(
    *,
    processes: int,
    address: str,
    workload: Workload,
    calls_per_second: float,
    duration_seconds: float,
    calls_max: int,
    in_flight_max: int,
    call_timeout_seconds: float,
    id_prefix: str,
    seed: int,
) -> list[GeneratorPlan]:
    """One step's plan shared evenly by `processes` processes, their calls interleaved."""
    assert processes >= 1
    assert calls_per_second > 0
    assert duration_seconds > 0
    assert in_flight_max >= processes, "each process needs at least one call in flight"
    calls = min(calls_max, round(calls_per_second * duration_seconds))
    return [
        GeneratorPlan(
            address=address,
            workload=workload,
            calls_per_second=calls_per_second / processes,
            offset_seconds=index / calls_per_second,
            duration_seconds=duration_seconds,
            call_count=calls // processes + (index < calls % processes),
            in_flight_max=in_flight_max // processes + (index < in_flight_max % processes),
            call_timeout_seconds=call_timeout_seconds,
            id_prefix=f"{id_prefix}g{index}",
            seed=seed * 1000 + index,
        )
        for index in range(processes)
    ]


# ------------------------------------------------------------------------- in the process


async def drive(
    plan: GeneratorPlan, calls: Sequence[Call], channel: grpc.aio.Channel, t0: float
) -> GeneratorOutcome:
    """Sends `calls` on the schedule starting at loop time t0; returns what came back."""
    loop = asyncio.get_running_loop()
    interval = 1.0 / plan.calls_per_second
    window_end = t0 + plan.duration_seconds
    send_until = window_end + overrun_seconds_max
    # No serializers: the payloads are bytes already, and responses stay bytes.
    methods = {call.op: channel.unary_unary(op_paths[call.op], None, None) for call in calls}
    outcome = GeneratorOutcome(scheduled=len(calls))
    in_flight = 0
    last_done = window_end
    tasks: set[asyncio.Task[None]] = set()

    metadata = call_metadata(plan.workload.token)

    async def send(call: Call, scheduled: float) -> None:
        nonlocal in_flight, last_done
        try:
            response = await methods[call.op](
                call.payload, timeout=plan.call_timeout_seconds, metadata=metadata
            )
        except grpc.aio.AioRpcError as error:
            outcome.statuses[error.code().name] += 1
        else:
            done = loop.time()
            outcome.statuses["OK"] += 1
            outcome.latencies_ms.setdefault(call.op, []).append((done - scheduled) * 1000.0)
            transfers = transfers_recorded(call.op, response, outcome.item_errors)
            outcome.ok_transfers += transfers
            if done <= window_end:
                outcome.ok_calls_in_window += 1
                outcome.ok_transfers_in_window += transfers
        finally:
            in_flight -= 1
            last_done = max(last_done, loop.time())

    cpu_started = time.process_time()
    sends_since_yield = 0
    for index, call in enumerate(calls):
        scheduled = t0 + plan.offset_seconds + index * interval
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
            sends_since_yield = 0
        elif sends_since_yield >= sends_between_yields_max:
            await asyncio.sleep(0)
            sends_since_yield = 0
        now = loop.time()
        if in_flight >= plan.in_flight_max or now > send_until:
            outcome.dropped += 1
            continue
        if (now - scheduled) * 1000.0 > late_ms:
            outcome.late += 1
        in_flight += 1
        outcome.sent += 1
        sends_since_yield += 1
        task = asyncio.create_task(send(call, scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    if tasks:
        _done, unfinished = await asyncio.wait(set(tasks), timeout=plan.call_timeout_seconds + 1)
        for task in unfinished:
            task.cancel()
        if unfinished:
            outcome.statuses["UNFINISHED"] += len(unfinished)
        await asyncio.gather(*unfinished, return_exceptions=True)
    outcome.drain_seconds = max(0.0, last_done - window_end)
    outcome.cpu_seconds = time.process_time() - cpu_started
    return outcome


async def _run_step(plan: GeneratorPlan, parent: Connection) -> GeneratorOutcome | None:
    calls = build_calls(plan.workload, plan.call_count, plan.id_prefix, plan.seed)
    options = [
        ("grpc.max_receive_message_length", message_bytes_max),
        ("grpc.max_send_message_length", message_bytes_max),
    ]
    async with grpc.aio.insecure_channel(plan.address, options=options) as channel:
        await asyncio.wait_for(channel.channel_ready(), channel_ready_timeout_seconds)
        parent.send(_ready)
        # Nothing else runs on this loop yet, so a bounded blocking wait is harmless.
        if not parent.poll(prepare_timeout_seconds):
            return None
        start_wall = parent.recv()
        if not isinstance(start_wall, float):
            return None  # the parent gave up on this step
        loop = asyncio.get_running_loop()
        t0 = loop.time() + (start_wall - time.time())
        return await drive(plan, calls, channel, t0)


def _process_main(parent: Connection) -> None:
    """A generator process: runs the plans it is sent until told to stop or orphaned."""
    while True:
        try:
            if not parent.poll(None):
                return
            plan = parent.recv()
        except (EOFError, OSError):
            return
        if not isinstance(plan, GeneratorPlan):
            return
        try:
            outcome = asyncio.run(_run_step(plan, parent))
        except Exception:
            parent.send((_failed, traceback.format_exc()))
            continue
        if outcome is None:
            return  # the parent gave up on this step and is closing the pool
        parent.send(outcome)


# ------------------------------------------------------------------------- in the parent


class GeneratorPool:
    """`processes` generator processes, each running one plan per step in lockstep."""

    def __init__(self, processes: int) -> None:
        assert processes >= 1
        context = multiprocessing.get_context("spawn")
        self._pipes: list[Connection] = []
        self._processes: list[multiprocessing.process.BaseProcess] = []
        for index in range(processes):
            parent_end, child_end = context.Pipe()
            process = context.Process(
                target=_process_main, args=(child_end,), name=f"load-generator-{index}", daemon=True
            )
            process.start()
            child_end.close()
            self._pipes.append(parent_end)
            self._processes.append(process)

    @property
    def size(self) -> int:
        return len(self._pipes)

    def run(
        self, plans: Sequence[GeneratorPlan], on_start: Callable[[], None] | None = None
    ) -> list[GeneratorOutcome]:
        """Runs one step: every process prepares, all start together, each reports back.

        `on_start` is called once the common start time is sent (to start a profiler, say).
        """
        assert len(plans) == len(self._pipes), "one plan per process"
        for pipe, plan in zip(self._pipes, plans, strict=True):
            pipe.send(plan)
        for pipe in self._pipes:
            if self._receive(pipe, prepare_timeout_seconds) != _ready:
                raise GeneratorError("a generator process did not get ready")
        start_wall = time.time() + start_delay_seconds
        for pipe in self._pipes:
            pipe.send(start_wall)
        if on_start is not None:
            on_start()
        report_timeout = max(
            plan.offset_seconds
            + plan.duration_seconds
            + overrun_seconds_max
            + plan.call_timeout_seconds
            for plan in plans
        )
        outcomes = []
        for pipe in self._pipes:
            outcome = self._receive(pipe, report_timeout + report_slack_seconds)
            assert isinstance(outcome, GeneratorOutcome)
            outcomes.append(outcome)
        return outcomes

    @staticmethod
    def _receive(pipe: Connection, timeout_seconds: float) -> Any:
        if not pipe.poll(timeout_seconds):
            raise GeneratorError(f"a generator process was silent for {timeout_seconds:.0f} s")
        message = pipe.recv()
        if isinstance(message, tuple) and message and message[0] == _failed:
            raise GeneratorError(f"a generator process failed:\n{message[1]}")
        return message

    def close(self) -> None:
        for pipe in self._pipes:
            with contextlib.suppress(OSError, ValueError):
                pipe.send(None)
        for process in self._processes:
            process.join(stop_timeout_seconds)
            if process.is_alive():
                process.terminate()
                process.join(stop_timeout_seconds)
        for pipe in self._pipes:
            pipe.close()

    def __enter__(self) -> GeneratorPool:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self.close()

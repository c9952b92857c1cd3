"""Load tests for the ledger's write path: an open-loop generator, scenarios and baselines.

Run everything once (about 5 minutes; a fresh PostgreSQL schema per server, dropped after):

    .venv/bin/python -m load_tests.run --json load_tests/results.json

The run recorded in RESULTS.md (three repeats, py-spy profiles; about 14 minutes):

    .venv/bin/python -m load_tests.run --repeat 3 --profile uniform,batch --quiet-wait 20 \
        --json load_tests/results.json

A one-minute smoke run, or about 15 seconds of one scenario:

    .venv/bin/python -m load_tests.run --quick
    .venv/bin/python -m load_tests.run --quick --scenarios batch --duration 2

LEDGER_* variables set in the caller's environment reach every ledger server (and are
recorded in the JSON), e.g. LEDGER_PROJECTIONS=off to measure without in-process projections.

Modules:

- `run`: the command line; finds each scenario's peak rate, reruns at half of it, prints the
  table with the targets of issue 3 and writes JSON.
- `generator`: the open-loop generator (grpc.aio, fixed arrival rate, bounded in-flight
  calls) and the pool of generator processes that runs it.
- `workload`: the scenarios: which requests, against which accounts, and the bank set-up.
- `servers`: the ledger server and the echo server as subprocesses, fresh PostgreSQL
  schemas, and CPU accounting from /proc.
- `stats`: percentiles and the per-step summary.
- `echo_server`: baseline (a), a bare gRPC unary echo server.
- `profiling`: py-spy recording of the server and a summary of its hottest frames.
- `machine`: what the machine is (CPU, memory, versions) for the report.

Issue 7 (state model v2), results in RESULTS.md "State model v2 (issue 7)":

- `bench_state`: loading a bank with and without a snapshot, a cold start's first commit,
  write throughput on a long history, 10,000 idle banks.
- `state_history`: a bank's long history (up to 10^7 transfers) written straight into a
  PostgreSQL schema with COPY, byte-identical to what the ledger writes (resumable, cached).
- `state_child`: the measured child processes of `bench_state` (one per measurement).
- `before_after`: `run`'s write-path figures of two commits in one table.
"""

"""Profiles a running server with py-spy and summarises where its samples went.

`start_recording()` runs `py-spy record --pid PID -d SECONDS -f raw --threads --nonblocking`,
optionally with `--gil` (only samples of the thread holding the GIL: what the Python side
spends its one core on). The raw format is one line per distinct stack,
`thread (tid): name;frame;frame... N`, frames being `function (file:line)`. `summarise()`
reports the share of samples per thread group, per leaf function ("self"), per function
anywhere on the stack ("inclusive") and per package of the leaf frame.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

sampling_rate_hz = 100
# py-spy stops by itself after -d seconds; this bounds the wait for it beyond that.
py_spy_slack_seconds = 30.0
top_frames = 15

# Frames on nearly every stack of a thread, left out of the inclusive view.
_plumbing = frozenset(
    ("Thread._bootstrap", "Thread._bootstrap_inner", "Thread.run", "_worker", "_WorkItem.run")
)
_own_packages = ("ledger", "timebank", "projections", "load_tests")
_frame_pattern = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
_thread_pattern = re.compile(r"^thread \(\d+\): (?P<name>.*)$")


def py_spy() -> str | None:
    """The py-spy executable: next to this interpreter, or on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def start_recording(
    pid: int, seconds: int, out: Path, *, gil_only: bool = False
) -> subprocess.Popen[bytes]:
    """Starts py-spy on the process; it writes `out` (raw format) after `seconds`."""
    executable = py_spy()
    assert executable is not None, "py-spy is not installed: .venv/bin/pip install py-spy"
    command = [executable, "record", "--pid", str(pid), "-d", str(seconds), "-f", "raw"]
    # --nonblocking: by default py-spy pauses the process for every sample; at 100 Hz that
    # cut the ledger's unary rate by three quarters (RESULTS.md). Stacks may be a little off.
    command += ["-o", str(out), "--threads", "--rate", str(sampling_rate_hz), "--nonblocking"]
    if gil_only:
        command.append("--gil")
    log = out.with_suffix(".log").open("wb")
    return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log)


def wait_recording(process: subprocess.Popen[bytes], seconds: int) -> None:
    try:
        process.wait(seconds + py_spy_slack_seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(py_spy_slack_seconds)


def summarise(raw: Path, top: int = top_frames) -> dict[str, Any]:
    """Shares of samples (percent) by thread, self function, inclusive function and package."""
    threads: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        parts = stack.split(";")
        thread = _thread_pattern.match(parts[0])
        if thread:
            threads[_thread_group(thread.group("name"))] += count
            parts = parts[1:]
        frames = [_frame(part) for part in parts]
        if not frames:
            continue
        self_time[_label(frames[-1])] += count
        packages[_package(frames[-1][1])] += count
        for label in {_label(frame) for frame in frames if frame[0] not in _plumbing}:
            inclusive[label] += count

    def shares(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(100.0 * n / total, 1)) for name, n in counter.most_common(top)]

    if total == 0:
        return {"samples": 0}
    return {
        "samples": total,
        "threads": shares(threads),
        "self": shares(self_time),
        "inclusive": shares(inclusive),
        "packages": shares(packages),
    }


def _frame(text: str) -> tuple[str, str]:
    match = _frame_pattern.match(text)
    if match is None:
        return text, ""
    return match.group("function"), match.group("file")


def _label(frame: tuple[str, str]) -> str:
    function, file = frame
    return f"{function} ({_short_path(file)})" if file else function


def _short_path(file: str) -> str:
    """py-spy already shortens most paths to the import path (grpc/_server.py)."""
    for marker in ("site-packages/", "/work/main/"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file


def _package(file: str) -> str:
    """grpc/_server.py -> grpc; ledger/domain/bank.py -> ledger.domain; json/x.py -> stdlib json."""
    path = _short_path(file)
    if path.startswith("<"):
        return "generated code (<string>: dataclass __init__, namedtuple)"
    parts = Path(path).parts
    for index, part in enumerate(parts):
        if part in _own_packages:  # also inside a code snapshot's directory
            return ".".join(parts[index : index + 2]).removesuffix(".py")
    if not parts:
        return "?"
    top = parts[0].removesuffix(".py")
    return f"stdlib {top}" if top in sys.stdlib_module_names else top


def _thread_group(name: str) -> str:
    """grpc_3 and grpc_17 are one group; writer-<bank> is the bank's writer."""
    if name.startswith("writer-"):
        return "writer (one bank)"
    return re.sub(r"[_-]?\d+$", "", name) or name


def format_summary(title: str, summary: dict[str, Any]) -> str:
    """A few readable lines per section."""
    if not summary.get("samples"):
        return f"{title}: no samples"
    lines = [f"{title}: {summary['samples']} samples"]
    for section in ("threads", "packages", "self", "inclusive"):
        lines.append(f"  {section}:")
        lines.extend(f"    {share:5.1f}%  {name}" for name, share in summary[section][:10])
    return "\n".join(lines)

"""What the results were measured on: date, commit, CPU, memory, versions, LEDGER_* settings."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from load_tests.servers import postgres_facts

_command_timeout_seconds = 10.0
repository = Path(__file__).resolve().parent.parent
# What the server runs, besides its installed dependencies.
server_paths = ("ledger", "projections", "timebank", "pyproject.toml")


def facts(database_url: str) -> dict[str, Any]:
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": _output(["git", "-C", str(repository), "log", "-1", "--format=%h"]),
        "git_dirty": bool(_output(["git", "-C", str(repository), "status", "--porcelain"])),
        # Uncommitted changes to the server's code, which the commit alone does not describe.
        "server_code_changes": _output(
            ["git", "-C", str(repository), "status", "--porcelain", "--", *server_paths]
        ).splitlines(),
        "nproc": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory": _output(["free", "-h"]),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postgres": postgres_facts(database_url),
        "ledger_settings": {k: v for k, v in os.environ.items() if k.startswith("LEDGER_")},
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _output(command: list[str]) -> str:
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=_command_timeout_seconds, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return done.stdout.rstrip()

"""Regenerate the committed Python code for the protobuf API in `protos/`.

    python -m ledger.tools.gen_protos           # rewrite timebank/**/*_pb2*.py[i] from protos/
    python -m ledger.tools.gen_protos --check   # exit 1 if the committed files are stale

Runs protoc from grpcio-tools with the mypy-protobuf plugins. Both are pinned exactly in
pyproject.toml, so the output is byte-identical on every machine and CI can `--check` it.
"""

from __future__ import annotations

import argparse
import filecmp
import importlib.resources
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

repo_root = Path(__file__).resolve().parents[2]
protos_dir = repo_root / "protos"
generated_suffixes = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def plugin_path(name: str) -> str:
    """The protoc plugin installed next to this interpreter, else the one on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} not found: install the test extras (mypy-protobuf)")
    return found


def proto_files() -> list[str]:
    """Every .proto file under protos/, relative to it, in a stable order."""
    return sorted(path.relative_to(protos_dir).as_posix() for path in protos_dir.rglob("*.proto"))


def generate(out_dir: Path) -> None:
    """Writes the generated modules for every proto file in protos/ under out_dir."""
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    args = [
        "grpc_tools.protoc",
        f"--proto_path={protos_dir}",
        f"--proto_path={well_known}",
        f"--plugin=protoc-gen-mypy={plugin_path('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={plugin_path('protoc-gen-mypy_grpc')}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *(str(protos_dir / name) for name in proto_files()),
    ]
    # In a child process: protoc's plugins chat on stderr, shown only if something fails.
    result = subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise SystemExit(f"protoc failed:\n{result.stdout}{result.stderr}")


def generated_files(root: Path) -> set[Path]:
    """Paths, relative to root, of the generated modules found under root/timebank."""
    return {
        path.relative_to(root)
        for path in (root / "timebank").rglob("*")
        if path.is_file() and path.name.endswith(generated_suffixes)
    }


def stale_files(fresh_root: Path, committed_root: Path) -> list[Path]:
    """Generated files that are missing, extra or different in committed_root."""
    fresh, committed = generated_files(fresh_root), generated_files(committed_root)
    differing = {
        path
        for path in fresh & committed
        if not filecmp.cmp(fresh_root / path, committed_root / path, shallow=False)
    }
    return sorted((fresh ^ committed) | differing)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ledger.tools.gen_protos", description=__doc__)
    parser.add_argument(
        "--check",
        action="store_true",
        help="regenerate into a temporary directory and fail if the committed files differ",
    )
    args = parser.parse_args(argv)
    if not args.check:
        generate(repo_root)
        return 0
    with tempfile.TemporaryDirectory() as temp:
        generate(Path(temp))
        stale = stale_files(Path(temp), repo_root)
    if stale:
        listing = "\n".join(f"  {path}" for path in stale)
        print(
            "generated protobuf code is out of date with protos/:\n"
            f"{listing}\n"
            "run `python -m ledger.tools.gen_protos` and commit the result",
            file=sys.stderr,
        )
        return 1
    print("generated protobuf code is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())

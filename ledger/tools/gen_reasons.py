"""Write the error reasons of ledger/domain/reasons.py into the proto comments.

    python -m ledger.tools.gen_reasons           # rewrite the "Errors" lines in protos/
    python -m ledger.tools.gen_reasons --check   # exit 1 if a proto's lines are stale

Each RPC's comment ends with the reasons it can answer, in the order its checks run,
grouped by status code as they come ("Errors: INVALID_ARGUMENT FIELD_REQUIRED, ...; NOT_FOUND
..."); ledger.proto's header holds those every call and every write can answer, between
the `reasons:begin` and `reasons:end` lines. Everything else in the protos is hand-written.
"""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
from collections.abc import Iterable, Sequence
from pathlib import Path

from ledger.domain import reasons
from ledger.domain.reasons import CODE, Reason

repo_root = Path(__file__).resolve().parents[2]
protos_dir = repo_root / "protos"
_width = 92  # the protos' line length
_package_re = re.compile(r"^package ([\w.]+);")
_service_re = re.compile(r"^service (\w+) \{")
_rpc_re = re.compile(r"^(\s*)rpc (\w+)\(")
_header_begin = "// reasons:begin"
_header_end = "// reasons:end"


def by_code(found: Iterable[Reason]) -> str:
    """`CODE A, B; OTHER C`: consecutive reasons of one status code together, in order."""
    groups: list[tuple[str, list[str]]] = []
    for reason in found:
        code = CODE[reason]
        if groups and groups[-1][0] == code:
            groups[-1][1].append(reason.value)
        else:
            groups.append((code, [reason.value]))
    return "; ".join(f"{code} {', '.join(names)}" for code, names in groups)


def _comment(text: str, indent: str) -> list[str]:
    prefix = f"{indent}// "
    return [
        f"{prefix}{line}"
        for line in textwrap.wrap(text, _width - len(prefix), break_on_hyphens=False)
    ]


def rpc_lines(method: str, indent: str, here: bool) -> list[str]:
    """The lines of an RPC's comment; `here`: in ledger.proto, whose header has the rest."""
    answers = reasons.ANSWERS[method]
    text = f"Errors, in the order checked: {by_code(answers.reasons)}"
    if answers.write:
        text += f"; and a write's (see {'the top of this file' if here else 'ledger.proto'})."
    else:
        text += "."
    lines = _comment(text, indent)
    if answers.items:
        lines += _comment(f"Each item's TransferError: {by_code(answers.items)}.", indent)
    return lines


def header_lines() -> list[str]:
    paragraphs = [
        "Reasons every call can answer, before any of its own (the edge, in the order its"
        f" checks run): {by_code(reasons.EDGE)}; and {by_code(reasons.ANY_CALL)} for a bug"
        " (its details go to the server's log only). An RPC's own reasons are listed in its"
        " comment in the order its checks run: a request wrong in two ways gets the earlier"
        " one (a field's own checks run field by field, in the request's order).",
        "Every write can also answer, where its comment says so, in this order (queueing,"
        f" loading the bank, committing, awaiting the commit): {by_code(reasons.WRITE_PATH)}."
        " Each of them means: retry the same request with the same ids.",
        f"grpc.health.v1.Health/List answers {by_code(reasons.HEALTH_LIST)} beyond 1,000 services.",
    ]
    lines = [_header_begin]
    for number, paragraph in enumerate(paragraphs):
        if number:
            lines.append("//")
        lines += _comment(paragraph, "")
    return [*lines, _header_end]


def render(text: str, here: bool = True) -> str:
    """The proto text with its generated lines as the catalogue says."""
    out: list[str] = []
    package = service = ""
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        if line == _header_begin:
            end = lines.index(_header_end, index)
            out += header_lines()
            index = end + 1
            continue
        if found := _package_re.match(line):
            package = found.group(1)
        elif found := _service_re.match(line):
            service = found.group(1)
        elif (found := _rpc_re.match(line)) and f"{package}.{service}/{found.group(2)}" in (
            reasons.ANSWERS
        ):
            # (An RPC the catalogue does not know keeps its comment; tests/test_reasons.py
            # fails until the catalogue says what it answers.)
            _drop_errors(out)
            out += rpc_lines(f"{package}.{service}/{found.group(2)}", found.group(1), here)
        out.append(line)
        index += 1
    return "\n".join(out) + "\n"


def _drop_errors(out: list[str]) -> None:
    """Remove the comment lines from the last "Errors" line on, above an rpc line."""
    start = len(out)
    while start > 0 and out[start - 1].lstrip().startswith("//"):
        start -= 1
    block = out[start:]
    for offset, line in enumerate(block):
        if line.lstrip().startswith("// Errors"):
            del out[start + offset :]
            return


def proto_paths() -> list[Path]:
    return sorted(protos_dir.rglob("*.proto"))


def rendered(path: Path) -> str:
    return render(path.read_text(), here=path.name == "ledger.proto")


def stale(paths: Sequence[Path]) -> list[Path]:
    return [path for path in paths if rendered(path) != path.read_text()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ledger.tools.gen_reasons", description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if a proto is out of date")
    args = parser.parse_args(argv)
    paths = proto_paths()
    if args.check:
        found = stale(paths)
        if found:
            listing = "\n".join(f"  {path.relative_to(repo_root)}" for path in found)
            print(
                f"error reasons in these protos differ from ledger/domain/reasons.py:\n{listing}\n"
                "run `python -m ledger.tools.gen_reasons` (then gen_protos)",
                file=sys.stderr,
            )
            return 1
        return 0
    for path in paths:
        text = rendered(path)
        if text != path.read_text():
            path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

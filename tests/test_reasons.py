"""The one catalogue of error reasons (ledger/domain/reasons.py) against the code and the protos.

Every reason a raise site in the code can send is in the catalogue, with the status code of
the error class that sends it; every reason in the catalogue is sent by some raise site;
the protos list them all, each RPC's own in its comment exactly as the catalogue says
(regression: the proto documented LINKED_EVENT_FAILED while the server sent
LINKED_TRANSFER_FAILED).
"""

from __future__ import annotations

import ast
import dataclasses
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from ledger.application.ledger import Ledger
from ledger.domain import commands, reasons
from ledger.domain.commands import ChangeStatus, Command, CreateBank, CreateTransfer, OpenAccount
from ledger.domain.errors import DomainError
from ledger.domain.reasons import CODE, Reason
from ledger.security import errors as security_errors
from ledger.security import policy
from ledger.service import errors as service_errors
from ledger.tools import gen_reasons

repo_root = Path(__file__).resolve().parents[1]
# Where the code that answers calls lives.
source_roots = ("ledger", "projections")
# Files whose UPPER_SNAKE strings are not reasons a call is answered with: the verifier's
# own findings (a report, not an error status), environment and library setting names,
# and the catalogue itself.
not_reason_files = {
    "ledger/verifier.py",
    "ledger/config.py",
    "ledger/storage/store.py",
    "ledger/service/projection_process.py",
    "ledger/domain/reasons.py",
    "ledger/tools/gen_reasons.py",
}
# UPPER_SNAKE strings that are not reasons: a status code name in a log line, an
# environment variable of the audit command line.
not_reasons = {"INVALID_ARGUMENT", "TIMEBANK_LEDGER_API_KEY"}
_upper_snake = re.compile(r"^[A-Z][A-Z0-9]*(_[A-Z0-9]+)+$")
# Error classes -> the status code their instances are sent with.
_error_codes = {
    cls.__name__: service_errors.status_code(cls("X", "x")).name
    for cls in service_errors._codes  # the one mapping
} | {"ConsentRequired": "PERMISSION_DENIED"}


def _python_files() -> list[Path]:
    return [
        path
        for root in source_roots
        for path in sorted((repo_root / root).rglob("*.py"))
        if path.relative_to(repo_root).as_posix() not in not_reason_files
    ]


def _literals() -> dict[str, set[str]]:
    """UPPER_SNAKE string constants in the code, and f-string reasons' fixed prefixes."""
    found: dict[str, set[str]] = {}
    for path in _python_files():
        for node in ast.walk(ast.parse(path.read_text())):
            value = None
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "ErrorInfo":
                # ErrorInfo(reason="INTERNAL", ...): a reason with no underscore.
                for keyword in node.keywords:
                    if keyword.arg == "reason" and isinstance(keyword.value, ast.Constant):
                        found.setdefault(str(keyword.value.value), set()).add(path.name)
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                value = node.value
            elif isinstance(node, ast.JoinedStr):
                fixed = [part for part in node.values if isinstance(part, ast.Constant)]
                if fixed and isinstance(fixed[0].value, str) and node.values[0] is fixed[0]:
                    prefix = fixed[0].value
                    if _upper_snake.match(prefix.rstrip("_")) and prefix.endswith("_"):
                        value = f"{prefix}*"
            if value is not None and (_upper_snake.match(value) or value.endswith("_*")):
                found.setdefault(value, set()).add(path.relative_to(repo_root).as_posix())
    return {name: files for name, files in found.items() if name not in not_reasons}


def _security_reasons() -> set[str]:
    """Reasons the edge sends by enum member (security/errors.py's Reason)."""
    return {reason.value for reason in security_errors.Reason}


def test_every_reason_a_raise_site_can_send_is_in_the_catalogue() -> None:
    # Literal reasons, by name; f-string families, by their expansions below.
    catalogue = {reason.value for reason in Reason}
    literals = _literals()
    families = {name for name in literals if name.endswith("_*")}
    assert families == {"EXISTS_WITH_DIFFERENT_*", "PENDING_TRANSFER_ALREADY_*"}
    missing = {name for name in literals if not name.endswith("_*")} - catalogue
    assert not missing, f"reasons sent but not in ledger/domain/reasons.py: {sorted(missing)}"
    assert _security_reasons() <= catalogue


def test_every_catalogued_reason_is_sent_somewhere() -> None:
    # Nothing in the catalogue is stale: each is a literal somewhere, an edge enum member,
    # or a member of a family the code builds.
    sent = set(_literals()) | _security_reasons()
    for reason in Reason:
        family = next(
            (
                f
                for f in ("EXISTS_WITH_DIFFERENT_*", "PENDING_TRANSFER_ALREADY_*")
                if reason.startswith(f[:-1])
            ),
            None,
        )
        assert reason.value in sent or family in sent, f"{reason} is sent nowhere"


def test_the_idempotency_family_is_complete() -> None:
    # EXISTS_WITH_DIFFERENT_<FIELD> for every content field a retry compares (the id field
    # itself never differs), and _KIND for an id reused by another command.
    expected = {"EXISTS_WITH_DIFFERENT_KIND"}
    for command in _commands():
        if command.__name__ in ("IssueApiKey", "RevokeApiKey", "RemoveMemberTokenKey"):
            continue  # never retried: a key id is new each time, a removal repeats as is
        if command.__name__ == "RegisterMemberTokenKey":
            expected.add("EXISTS_WITH_DIFFERENT_PUBLIC_KEY")  # compared whole, as the key
            continue
        for name in command.content_fields():
            if name != command.id_field:
                expected.add(f"EXISTS_WITH_DIFFERENT_{name.upper()}")
    catalogued = {r.value for r in Reason if r.startswith("EXISTS_WITH_DIFFERENT_")}
    # The bank id is the CreateBank id; ChangeStatus's request id never differs from itself.
    assert catalogued - {"EXISTS_WITH_DIFFERENT_SECRET"} == expected - {
        "EXISTS_WITH_DIFFERENT_BANK_ID",
        "EXISTS_WITH_DIFFERENT_REQUEST_ID",
        "EXISTS_WITH_DIFFERENT_TRANSFER_ID_OF_BATCH",
    }


def test_the_pending_family_is_complete() -> None:
    # A pending transfer that already left "pending": posted, voided (expired has its own).
    catalogued = {r.value for r in Reason if r.startswith("PENDING_TRANSFER_ALREADY_")}
    assert catalogued == {"PENDING_TRANSFER_ALREADY_POSTED", "PENDING_TRANSFER_ALREADY_VOIDED"}


def test_each_reason_goes_with_the_status_code_of_the_error_that_sends_it() -> None:
    for path in _python_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and node.args):
                continue
            name = getattr(node.func, "id", getattr(node.func, "attr", ""))
            first = node.args[0]
            if name in _error_codes and isinstance(first, ast.Constant):
                reason = Reason(str(first.value))
                assert CODE[reason] == _error_codes[name], (path.name, reason, name)
    for edge_reason in security_errors.Reason:
        code = CODE[Reason(edge_reason.value)]
        error_class = {
            "UNAUTHENTICATED": security_errors.Unauthenticated,
            "PERMISSION_DENIED": security_errors.PermissionDenied,
            "INVALID_ARGUMENT": security_errors.InvalidRequest,
            "RESOURCE_EXHAUSTED": security_errors.ResourceExhausted,
        }[code]
        assert error_class.code is grpc.StatusCode[code]


def test_the_edge_group_is_the_edge_in_the_order_it_checks() -> None:
    # security/errors.py's Reason runs in check order; the catalogue's EDGE is that order.
    edge = [reason.value for reason in security_errors.Reason]
    assert edge == [*reasons.EDGE, Reason.READS_WAITING_MAX_REACHED]


def test_every_rpc_has_its_answers_and_every_reason_is_documented() -> None:
    methods = {name.lstrip("/") for name in policy.service_methods()}
    ours = {name for name in methods if name.startswith("timebank.ledger.v1.")}
    assert not (ours - set(reasons.ANSWERS)), "RPCs the catalogue does not say answers of"
    assert not (set(reasons.ANSWERS) - ours), "answers of RPCs that do not exist"
    text = "\n".join(path.read_text() for path in gen_reasons.proto_paths())
    undocumented = [reason for reason in Reason if not re.search(rf"\b{reason}\b", text)]
    assert not undocumented, f"reasons no proto mentions: {undocumented}"
    assert reasons.answered_anywhere() == set(Reason)


def test_the_proto_comments_are_generated_from_the_catalogue() -> None:
    # `python -m ledger.tools.gen_reasons` leaves every proto as it is.
    assert gen_reasons.stale(gen_reasons.proto_paths()) == []
    # Each RPC's comment lists exactly its reasons, in the catalogue's order.
    ledger_proto = (repo_root / "protos/timebank/ledger/v1/ledger.proto").read_text()
    comment = _rpc_comment(ledger_proto, "CreateTransfers")
    assert "LINKED_EVENT_FAILED" in comment
    assert "LINKED_TRANSFER_FAILED" not in ledger_proto


def _rpc_comment(text: str, rpc: str) -> str:
    lines = text.splitlines()
    index = next(i for i, line in enumerate(lines) if re.match(rf"\s*rpc {rpc}\(", line))
    start = index
    while lines[start - 1].lstrip().startswith("//"):
        start -= 1
    return "\n".join(lines[start:index])


def _commands() -> list[type[Command]]:
    return [
        value
        for value in vars(commands).values()
        if isinstance(value, type)
        and issubclass(value, Command)
        and value is not Command
        and value.id_field
    ]


def test_a_request_wrong_in_many_ways_gets_the_first_reason_listed(
    make_ledger: Callable[..., Ledger],
) -> None:
    # Precedence, as TigerBeetle's result codes have it: fix one fault at a time and the
    # answer moves to the next fault in the order the catalogue lists for CreateTransfer.
    ledger = make_ledger("memory://")
    ledger.create_bank(CreateBank(bank_id="b", name="B"))
    for account_id in ("ann", "bob"):
        ledger.execute("b", OpenAccount(account_id, "member", lower_limit_minutes=-10))
    ledger.execute("b", CreateTransfer("t1", "ann", "bob", 1, memo="a"))
    request = CreateTransfer("t1", "ann", "zed", 100, memo="b", service_date="soon")
    fixes: list[tuple[Reason, dict[str, Any]]] = [
        (Reason.INVALID_DATE, {"service_date": ""}),
        (Reason.EXISTS_WITH_DIFFERENT_PAYEE_ACCOUNT_ID, {"transfer_id": "t2"}),
        (Reason.ACCOUNT_NOT_FOUND, {"payee_account_id": "bob"}),
        (Reason.ACCOUNT_FROZEN, {}),  # fixed by unfreezing Bob, below
    ]
    ledger.execute("b", ChangeStatus("f1", "bob", "freeze"))
    answered = []
    for _, fix in fixes:
        with pytest.raises(DomainError) as raised:
            ledger.execute("b", request)
        answered.append(Reason(raised.value.reason))
        request = dataclasses.replace(request, **fix)
    ledger.execute("b", ChangeStatus("u1", "bob", "unfreeze"))
    with pytest.raises(DomainError) as raised:
        ledger.execute("b", request)
    answered.append(Reason(raised.value.reason))
    assert answered == [*(reason for reason, _ in fixes), Reason.EXCEEDS_LOWER_LIMIT]
    # That is the order the catalogue (and so the proto comment) lists them in.
    listed = reasons.ANSWERS["timebank.ledger.v1.LedgerService/CreateTransfer"].reasons
    assert [r for r in listed if r in answered] == answered

"""Every FAILED_PRECONDITION names its subject (issue 12: POST_AMOUNT_EXCEEDS_PENDING had none).

Each precondition the catalogue lists is met once, through a Ledger on the in-memory store,
and turned into the status a client gets (service/errors.py, the one mapping): its
PreconditionFailure subject is the resource, `accounts/<id>`, `transfers/<id>` or
`banks/<id>`, and the ErrorInfo metadata holds the same id. A linked batch's neighbours
(a TransferError, not a status) name their own transfer the same way.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from conftest import Clock
from google.rpc import error_details_pb2, status_pb2

from ledger.application.ledger import Ledger
from ledger.domain.commands import (
    ChangeStatus,
    CreateBank,
    CreatePool,
    CreateTransfer,
    CreateTransfers,
    DecideGrant,
    OpenAccount,
    PostPending,
    RequestGrant,
    ReverseTransfer,
    VoidPending,
)
from ledger.domain.errors import DomainError, PreconditionFailed
from ledger.domain.pool_policy import PoolPolicy
from ledger.domain.reasons import CODE, Reason
from ledger.domain.views import BatchItemResult
from ledger.service import errors
from projections.reads import ViewReads
from projections.registry import ProjectionSet

BANK = "riverside"
_subject_keys = {"accounts": "account_id", "transfers": "transfer_id", "banks": "bank_id"}


def _subject_of(error: DomainError) -> str:
    sent = errors.to_status(error)
    (details,) = (v for k, v in sent.trailing_metadata if k == "grpc-status-details-bin")
    status = status_pb2.Status.FromString(details)
    subjects = []
    for detail in status.details:
        if detail.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
            failure = error_details_pb2.PreconditionFailure()
            detail.Unpack(failure)
            subjects += [violation.subject for violation in failure.violations]
    assert len(subjects) == 1, subjects
    return str(subjects[0])


def test_every_failed_precondition_names_its_subject(make_ledger: Callable[..., Ledger]) -> None:
    ledger = make_ledger("memory://")
    ledger.create_bank(CreateBank(bank_id=BANK, name="Riverside"))
    for account_id in ("ana", "ben", "cas", "dee"):
        ledger.execute(BANK, OpenAccount(account_id, "member", lower_limit_minutes=-100))
    ledger.execute(BANK, OpenAccount("capped", "member", -100, upper_limit_minutes=10))
    met: dict[str, DomainError] = {}

    def meet(command: object) -> None:
        with pytest.raises(PreconditionFailed) as raised:
            ledger.execute(BANK, command)  # type: ignore[arg-type]
        met[raised.value.reason] = raised.value

    def do(command: object) -> None:
        ledger.execute(BANK, command)  # type: ignore[arg-type]

    # Limits.
    meet(CreateTransfer("over", "ana", "ben", 101))
    meet(CreateTransfer("cap", "ana", "capped", 11))
    # Holds: more than held, and resolving one twice or too late.
    do(CreateTransfer("h1", "ana", "ben", 10, pending=True))
    meet(PostPending("p-too-much", "h1", amount_minutes=11))
    do(PostPending("p1", "h1"))
    meet(PostPending("p-again", "h1"))
    do(CreateTransfer("h2", "ana", "ben", 10, pending=True))
    do(VoidPending("v2", "h2"))
    meet(VoidPending("v-again", "h2"))
    do(CreateTransfer("t1", "ben", "ana", 5))
    meet(VoidPending("v-not-pending", "t1"))
    # Reversals.
    do(ReverseTransfer("r1", "t1", reason="wrong member"))
    meet(ReverseTransfer("r2", "t1", reason="again"))
    meet(ReverseTransfer("r3", "r1", reason="undo the undo"))
    meet(ReverseTransfer("r4", "h2", reason="voided"))
    # Statuses.
    do(ChangeStatus("f1", "cas", "freeze"))
    meet(CreateTransfer("to-frozen", "ana", "cas", 1))
    meet(ChangeStatus("f2", "cas", "freeze"))
    meet(ChangeStatus("u1", "dee", "unfreeze"))
    meet(ChangeStatus("c1", "ana", "close"))
    do(CreateTransfer("h3", "dee", "ben", 1, pending=True))
    meet(ChangeStatus("c2", "dee", "close"))
    do(VoidPending("v3", "h3"))
    do(ChangeStatus("c3", "dee", "close"))
    meet(CreateTransfer("to-closed", "ana", "dee", 1))
    # Pools (issue 11): who gives, how minutes leave, caps, floor and decisions.
    do(OpenAccount("org", "organisation", lower_limit_minutes=-1000))
    policy = PoolPolicy(
        contributors="listed",
        contributor_account_ids=("org",),
        cap_minutes=20,
        floor_minutes=10,
        approvers=("member:ana", "member:ben"),
        approvals_required=2,
    )
    do(CreatePool("pool-1", "pot", policy))
    do(CreateTransfer("give", "org", "pot", 40))
    meet(CreateTransfer("give-ben", "ben", "pot", 1))
    meet(CreateTransfer("out", "pot", "ben", 1))
    meet(RequestGrant("g0", "pot", "org", 5, actor="key:admin"))
    do(RequestGrant("g1", "pot", "ben", 20, actor="key:app"))
    meet(RequestGrant("g2", "pot", "ben", 1, actor="key:app"))
    meet(RequestGrant("g3", "pot", "ana", 11, actor="key:app"))
    meet(PostPending("p-grant", "g1"))
    do(DecideGrant("a1", "pot", "g1", "approve", actor="key:app/member:ana"))
    meet(DecideGrant("a2", "pot", "g1", "reject", actor="key:app/member:ana"))
    do(DecideGrant("c1", "pot", "g1", "cancel", actor="key:admin", by_admin=True))
    meet(DecideGrant("a3", "pot", "g1", "approve", actor="key:app/member:ana"))
    # A linked batch's neighbour: a batch item, named by its own transfer id.
    results = ledger.execute(
        BANK,
        CreateTransfers(
            (CreateTransfer("l1", "ben", "ana", 1), CreateTransfer("l2", "ana", "ben", 1000)),
            linked=True,
        ),
    )
    assert isinstance(results, list)
    neighbour = results[0]
    assert isinstance(neighbour, BatchItemResult)
    assert neighbour.error is not None
    met[neighbour.error.reason] = neighbour.error
    # A read of the views at a position the bank's history does not hold.
    projections = ProjectionSet.open(ledger._settings, ledger.store)
    try:
        reads = ViewReads(projections, read_wait_seconds=0)
        with pytest.raises(PreconditionFailed) as raised:
            reads.account_summary(BANK, "ana", min_position=10_000)
        met[raised.value.reason] = raised.value
    finally:
        projections.close()

    # Every precondition in the catalogue was met (an expiry is met in the next test) ...
    expected = {r.value for r in Reason if CODE[r] == "FAILED_PRECONDITION"}
    assert set(met) == expected - {"PENDING_TRANSFER_EXPIRED"}
    # ... and each names its subject, in the PreconditionFailure and in the metadata.
    for reason, error in met.items():
        subject = _subject_of(error)
        collection, _, name = subject.partition("/")
        assert name, f"{reason} has no subject"
        assert error.metadata[_subject_keys[collection]] == name, reason


def test_an_expired_hold_names_its_transfer(
    make_ledger: Callable[..., Ledger], clock: Clock
) -> None:
    ledger = make_ledger("memory://")
    ledger.create_bank(CreateBank(bank_id=BANK, name="Riverside"))
    for account_id in ("ana", "ben"):
        ledger.execute(BANK, OpenAccount(account_id, "member", lower_limit_minutes=-100))
    ledger.execute(BANK, CreateTransfer("h1", "ana", "ben", 1, pending=True, timeout_seconds=60))
    # The deadline passes; the next write expires the hold first.
    clock.advance(61)
    with pytest.raises(PreconditionFailed) as raised:
        ledger.execute(BANK, PostPending("p1", "h1"))
    assert raised.value.reason == "PENDING_TRANSFER_EXPIRED"
    assert _subject_of(raised.value) == "transfers/h1"

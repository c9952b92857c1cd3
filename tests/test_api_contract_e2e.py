"""The contract a client author builds on (issue 12), through a real TLS server with real keys.

First the defects a client written from reflection alone hit, one regression each; then what
a time bank's app needs: a member's inbox of pending transfers, filtered histories, a
coordinator's lists, account labels and tags, and the operator's list of banks. Each step
says what the client sees; after each refusal the books are as they were.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from certs import Pki
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from served import Served, serving
from test_security_e2e_consent import Riverside, set_up

from ledger.domain import limits
from ledger.security.roles import Role
from timebank.ledger.v1 import ledger_pb2 as pb
from timebank.ledger.v1 import ledger_pb2_grpc as pb_grpc

repo_root = Path(__file__).resolve().parents[1]
bank_id = "riverside"
member_lower_limit_minutes = -600
timeout_seconds = 10.0
Books = dict[str, tuple[int, int, int]]


class HandClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Refusal:
    code: grpc.StatusCode
    reason: str
    metadata: dict[str, str]
    bad_fields: list[str] = field(default_factory=list)
    preconditions: list[tuple[str, str]] = field(default_factory=list)


def refusal(call: Callable[[], object]) -> Refusal:
    """What a client reads from a refused call: code, ErrorInfo and the other details."""
    with pytest.raises(grpc.RpcError) as raised:
        call()
    error = raised.value
    assert isinstance(error, grpc.Call)
    status = rpc_status.from_call(error)
    assert status is not None
    result = Refusal(error.code(), "", {})
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            result.reason, result.metadata = info.reason, dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            result.bad_fields = [v.field for v in bad.field_violations]
        elif detail.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
            failure = error_details_pb2.PreconditionFailure()
            detail.Unpack(failure)
            result.preconditions = [(v.type, v.subject) for v in failure.violations]
    assert result.reason, "every refusal carries an ErrorInfo"
    return result


@pytest.fixture
def hand_clock() -> HandClock:
    return HandClock()


@pytest.fixture
def served(pki: Pki, hand_clock: HandClock) -> Iterator[Served]:
    with serving(pki, clock=hand_clock) as served:
        yield served


@pytest.fixture
def admin(served: Served) -> pb_grpc.LedgerServiceStub:
    """Riverside's coordinator, with three members: ana, ben and cas."""
    ledger = pb_grpc.LedgerServiceStub(served.channel(served.create_bank(bank_id)))
    for account_id in ("ana", "ben", "cas"):
        open_account(ledger, account_id)
    return ledger


def open_account(
    ledger: pb_grpc.LedgerServiceStub,
    account_id: str,
    kind: pb.AccountKind.ValueType = pb.ACCOUNT_KIND_MEMBER,
) -> pb.Account:
    return ledger.OpenAccount(
        pb.OpenAccountRequest(
            bank_id=bank_id,
            account_id=account_id,
            kind=kind,
            lower_limit_minutes=member_lower_limit_minutes,
        ),
        timeout=timeout_seconds,
    ).account


def pay(
    ledger: pb_grpc.LedgerServiceStub,
    transfer_id: str,
    payer: str,
    payee: str,
    minutes: int,
    **extra: object,
) -> pb.Transfer:
    request = pb.CreateTransferRequest(
        bank_id=bank_id,
        transfer_id=transfer_id,
        payer_account_id=payer,
        payee_account_id=payee,
        amount_minutes=minutes,
        **extra,  # type: ignore[arg-type]  # the remaining CreateTransferRequest fields
    )
    return ledger.CreateTransfer(request, timeout=timeout_seconds).transfer


def books(ledger: pb_grpc.LedgerServiceStub) -> Books:
    found = {}
    for account_id in ("ana", "ben", "cas"):
        account = ledger.GetAccount(
            pb.GetAccountRequest(bank_id=bank_id, account_id=account_id), timeout=timeout_seconds
        ).account
        found[account_id] = (
            account.balance_minutes,
            account.pending_debit_minutes,
            account.pending_credit_minutes,
        )
    return found


def ids(transfers: object) -> list[str]:
    return [transfer.transfer_id for transfer in transfers]  # type: ignore[attr-defined]


def timestamp(moment: datetime) -> Timestamp:
    message = Timestamp()
    message.FromDatetime(moment)
    return message


# ---------------------------------------------------------------------------------------
# Contract defects
# ---------------------------------------------------------------------------------------


def test_a_voided_transfer_shows_why(admin: pb_grpc.LedgerServiceStub) -> None:
    # Ben books Cas for a repair; it is called off with a reason.
    pay(admin, "repair", "ben", "cas", 45, pending=True)
    void = pb.VoidPendingTransferRequest(
        bank_id=bank_id, request_id="repair-void", transfer_id="repair", reason="not needed"
    )
    voided = admin.VoidPendingTransfer(void).transfer
    # The reason is on the transfer, in the answer and whenever it is read again.
    assert (voided.status, voided.reason) == (pb.TRANSFER_STATUS_VOIDED, "not needed")
    got = admin.GetTransfer(pb.GetTransferRequest(bank_id=bank_id, transfer_id="repair"))
    assert got.transfer.reason == "not needed"
    # A retry of the void answers the same.
    assert admin.VoidPendingTransfer(void).transfer == voided


def test_resolved_at_is_for_pending_transfers_only(
    admin: pb_grpc.LedgerServiceStub, hand_clock: HandClock
) -> None:
    # An immediate transfer never pends: no resolved_at, now or after it is reversed.
    lunch = pay(admin, "lunch", "ben", "ana", 30)
    assert not lunch.HasField("resolved_at")
    undo = pb.ReverseTransferRequest(
        bank_id=bank_id, transfer_id="lunch-undo", reverses_transfer_id="lunch", reason="dup"
    )
    reversal = admin.ReverseTransfer(undo).transfer
    assert not reversal.HasField("resolved_at")
    lunch = admin.GetTransfer(pb.GetTransferRequest(bank_id=bank_id, transfer_id="lunch")).transfer
    assert not lunch.HasField("resolved_at")
    # A pending transfer has none while it pends, and the time it was posted afterwards.
    held = pay(admin, "move", "ana", "ben", 60, pending=True)
    assert not held.HasField("resolved_at")
    hand_clock.now += timedelta(minutes=5)
    posted = admin.PostPendingTransfer(
        pb.PostPendingTransferRequest(bank_id=bank_id, request_id="move-post", transfer_id="move")
    ).transfer
    assert posted.resolved_at.ToDatetime(UTC) == hand_clock.now
    # The proto says so.
    proto = (repo_root / "protos/timebank/ledger/v1/ledger.proto").read_text()
    assert "always unset for immediate transfers and reversals" in proto


def test_a_linked_batch_answers_the_documented_reason(admin: pb_grpc.LedgerServiceStub) -> None:
    before = books(admin)
    batch = admin.CreateTransfers(
        pb.CreateTransfersRequest(
            bank_id=bank_id,
            linked=True,
            transfers=[
                pb.NewTransfer(
                    transfer_id="b1",
                    payer_account_id="ben",
                    payee_account_id="ana",
                    amount_minutes=1,
                ),
                pb.NewTransfer(
                    transfer_id="b2",
                    payer_account_id="ana",
                    payee_account_id="cas",
                    amount_minutes=1000,
                ),
            ],
        )
    )
    first, second = (result.error for result in batch.results)
    # The neighbour fails with LINKED_EVENT_FAILED, as the proto documents, naming itself and
    # the item at fault.
    assert (first.reason, second.reason) == ("LINKED_EVENT_FAILED", "EXCEEDS_LOWER_LIMIT")
    assert first.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert first.metadata == {
        "transfer_id": "b1",
        "failed_index": "1",
        "failed_transfer_id": "b2",
    }
    proto = (repo_root / "protos/timebank/ledger/v1/ledger.proto").read_text()
    assert "LINKED_EVENT_FAILED" in proto
    assert "LINKED_TRANSFER_FAILED" not in proto
    assert books(admin) == before


def test_changing_limits_changes_only_what_is_sent(admin: pb_grpc.LedgerServiceStub) -> None:
    def change(request_id: str, **fields: object) -> pb.Account:
        request = pb.ChangeAccountLimitsRequest(
            bank_id=bank_id,
            request_id=request_id,
            account_id="ana",
            **fields,  # type: ignore[arg-type]
        )
        return admin.ChangeAccountLimits(request, timeout=timeout_seconds).account

    # Ana may owe ten hours. Sending only a cap gives her one and keeps her lower limit
    # (the regression: it used to reset it to 0).
    ana = change("cap", upper_limit_minutes=120)
    assert (ana.lower_limit_minutes, ana.upper_limit_minutes) == (-600, 120)
    # The same request again answers the same; other content under its id is refused.
    assert change("cap", upper_limit_minutes=120) == ana
    refused = refusal(lambda: change("cap", upper_limit_minutes=130))
    assert (refused.code, refused.reason) == (
        grpc.StatusCode.ALREADY_EXISTS,
        "EXISTS_WITH_DIFFERENT_UPPER_LIMIT_MINUTES",
    )
    # Only the lower limit, by mask: the cap stays.
    ana = change(
        "debt", lower_limit_minutes=-300, update_mask=FieldMask(paths=["lower_limit_minutes"])
    )
    assert (ana.lower_limit_minutes, ana.upper_limit_minutes) == (-300, 120)
    # Removing the cap: name it in the mask and leave it unset.
    ana = change("no-cap", update_mask=FieldMask(paths=["upper_limit_minutes"]))
    assert (ana.lower_limit_minutes, ana.HasField("upper_limit_minutes")) == (-300, False)
    # `*` sets both, as sent (unset lower limit: 0).
    ana = change("both", upper_limit_minutes=60, update_mask=FieldMask(paths=["*"]))
    assert (ana.lower_limit_minutes, ana.upper_limit_minutes) == (0, 60)
    # A request that changes nothing, or names a field that is not a limit, is refused.
    before = admin.GetAccount(pb.GetAccountRequest(bank_id=bank_id, account_id="ana")).account
    refused = refusal(lambda: change("nothing"))
    assert (refused.reason, refused.bad_fields) == ("NOTHING_TO_CHANGE", ["update_mask"])
    refused = refusal(lambda: change("odd", update_mask=FieldMask(paths=["balance_minutes"])))
    assert (refused.reason, refused.bad_fields) == ("INVALID_UPDATE_MASK", ["update_mask"])
    assert admin.GetAccount(pb.GetAccountRequest(bank_id=bank_id, account_id="ana")).account == (
        before
    )


def test_posting_more_than_is_held_names_the_transfer(admin: pb_grpc.LedgerServiceStub) -> None:
    pay(admin, "move", "ana", "ben", 120, pending=True)
    before = books(admin)
    refused = refusal(
        lambda: admin.PostPendingTransfer(
            pb.PostPendingTransferRequest(
                bank_id=bank_id, request_id="move-post", transfer_id="move", amount_minutes=121
            )
        )
    )
    assert (refused.code, refused.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "POST_AMOUNT_EXCEEDS_PENDING",
    )
    assert refused.preconditions == [("POST_AMOUNT_EXCEEDS_PENDING", "transfers/move")]
    assert refused.metadata["transfer_id"] == "move"
    assert refused.metadata["pending_amount_minutes"] == "120"
    assert books(admin) == before


def test_one_page_size_rule_for_every_list(
    served: Served, admin: pb_grpc.LedgerServiceStub
) -> None:
    # Ana receives 1,001 minutes one at a time: more than a page can hold.
    for start in (0, 1000):
        count = min(1000, 1001 - start)
        admin.CreateTransfers(
            pb.CreateTransfersRequest(
                bank_id=bank_id,
                transfers=[
                    pb.NewTransfer(
                        transfer_id=f"t-{start + n}",
                        payer_account_id="ben" if n % 2 else "cas",
                        payee_account_id="ana",
                        amount_minutes=1,
                    )
                    for n in range(count)
                ],
            ),
            timeout=timeout_seconds,
        )
    # A page size above the maximum is treated as the maximum, never refused (AIP-158).
    page = admin.ListAccountTransfers(
        pb.ListAccountTransfersRequest(bank_id=bank_id, account_id="ana", page_size=5000)
    )
    assert len(page.transfers) == limits.page_size_max
    assert page.next_page_token
    assert not page.HasField("total_size")  # more than 1,000: not counted
    rest = admin.ListAccountTransfers(
        pb.ListAccountTransfersRequest(
            bank_id=bank_id, account_id="ana", page_size=5000, page_token=page.next_page_token
        )
    )
    assert ids(rest.transfers) == ["t-0"]
    assert rest.next_page_token == ""
    # A negative size is INVALID_ARGUMENT on every list, naming page_size.
    operator = pb_grpc.LedgerServiceStub(served.channel(served.operator_token))
    calls: list[Callable[[], object]] = [
        lambda: admin.ListAccounts(pb.ListAccountsRequest(bank_id=bank_id, page_size=-1)),
        lambda: admin.ListAccountTransfers(
            pb.ListAccountTransfersRequest(bank_id=bank_id, account_id="ana", page_size=-1)
        ),
        lambda: admin.ListPendingTransfers(
            pb.ListPendingTransfersRequest(bank_id=bank_id, account_id="ana", page_size=-1)
        ),
        lambda: admin.ListTransfers(pb.ListTransfersRequest(bank_id=bank_id, page_size=-1)),
        lambda: operator.ListBanks(pb.ListBanksRequest(page_size=-1)),
    ]
    for call in calls:
        refused = refusal(call)
        assert (refused.code, refused.reason, refused.bad_fields) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_PAGE_SIZE",
            ["page_size"],
        )
    # The proto says so at every page_size.
    proto = (repo_root / "protos/timebank/ledger/v1/ledger.proto").read_text()
    assert proto.count("int32 page_size") == proto.count(
        "0 means 50, more than 1,000 means 1,000 (AIP-158).\n  int32 page_size"
    )


# ---------------------------------------------------------------------------------------
# What an app needs
# ---------------------------------------------------------------------------------------


def test_a_coordinator_lists_accounts_by_kind_and_status(admin: pb_grpc.LedgerServiceStub) -> None:
    # The surgery takes part as an organisation; Ben's account is frozen.
    surgery = open_account(admin, "surgery", pb.ACCOUNT_KIND_ORGANISATION)
    assert surgery.kind == pb.ACCOUNT_KIND_ORGANISATION
    admin.FreezeAccount(
        pb.FreezeAccountRequest(bank_id=bank_id, request_id="ben-freeze", account_id="ben")
    )

    def listed(**filters: object) -> pb.ListAccountsResponse:
        request = pb.ListAccountsRequest(bank_id=bank_id, **filters)  # type: ignore[arg-type]
        return admin.ListAccounts(request, timeout=timeout_seconds)

    everyone = listed()
    assert [a.account_id for a in everyone.accounts] == ["ana", "ben", "cas", "surgery"]
    assert everyone.total_size == 4
    members = listed(kind=pb.ACCOUNT_KIND_MEMBER)
    assert ([a.account_id for a in members.accounts], members.total_size) == (
        ["ana", "ben", "cas"],
        3,
    )
    frozen = listed(status=pb.ACCOUNT_STATUS_FROZEN)
    assert ([a.account_id for a in frozen.accounts], frozen.total_size) == (["ben"], 1)
    open_members = listed(kind=pb.ACCOUNT_KIND_MEMBER, status=pb.ACCOUNT_STATUS_OPEN, page_size=1)
    assert [a.account_id for a in open_members.accounts] == ["ana"]
    assert open_members.total_size == 2
    # The next page continues under the same filter; another filter's token is refused.
    nxt = listed(
        kind=pb.ACCOUNT_KIND_MEMBER,
        status=pb.ACCOUNT_STATUS_OPEN,
        page_size=1,
        page_token=open_members.next_page_token,
    )
    assert [a.account_id for a in nxt.accounts] == ["cas"]
    refused = refusal(lambda: listed(page_token=open_members.next_page_token))
    assert (refused.reason, refused.bad_fields) == ("INVALID_PAGE_TOKEN", ["page_token"])
    # An unknown kind or status is INVALID_ARGUMENT.
    refused = refusal(lambda: listed(kind=42))
    assert (refused.reason, refused.bad_fields) == ("INVALID_ACCOUNT_KIND", ["kind"])
    refused = refusal(lambda: listed(status=42))
    assert (refused.reason, refused.bad_fields) == ("INVALID_ACCOUNT_STATUS", ["status"])


def test_account_labels_and_tags(admin: pb_grpc.LedgerServiceStub) -> None:
    def change(request_id: str, **fields: object) -> pb.Account:
        request = pb.ChangeAccountMetadataRequest(
            bank_id=bank_id,
            request_id=request_id,
            account_id="ana",
            **fields,  # type: ignore[arg-type]
        )
        return admin.ChangeAccountMetadata(request, timeout=timeout_seconds).account

    # The front-end labels Ana's account with the id its own records know her by.
    ana = change("label-1", label="member-0017", tags={"area": "north", "joined": "2026"})
    assert (ana.label, dict(ana.tags)) == ("member-0017", {"area": "north", "joined": "2026"})
    # Every read shows them.
    got = admin.GetAccount(pb.GetAccountRequest(bank_id=bank_id, account_id="ana")).account
    assert (got.label, dict(got.tags)) == ("member-0017", {"area": "north", "joined": "2026"})
    listed = admin.ListAccounts(pb.ListAccountsRequest(bank_id=bank_id)).accounts
    assert listed[0].label == "member-0017"
    # Changing the label alone keeps the tags; the tags, named in the mask and empty, clear.
    ana = change("label-2", label="member-0018")
    assert (ana.label, dict(ana.tags)) == ("member-0018", {"area": "north", "joined": "2026"})
    ana = change("untag", update_mask=FieldMask(paths=["tags"]))
    assert (ana.label, dict(ana.tags)) == ("member-0018", {})
    # A retry answers the same; another label under the id is refused.
    assert change("untag", update_mask=FieldMask(paths=["tags"])).label == "member-0018"
    refused = refusal(lambda: change("label-2", label="someone else"))
    assert (refused.code, refused.reason) == (
        grpc.StatusCode.ALREADY_EXISTS,
        "EXISTS_WITH_DIFFERENT_LABEL",
    )
    # Bounds: at most 16 tags, keys of a small alphabet.
    many = {f"k{n}": "v" for n in range(limits.account_tags_max + 1)}
    refused = refusal(lambda: change("many", tags=many))
    assert (refused.reason, refused.bad_fields) == ("TOO_MANY_TAGS", ["tags"])
    refused = refusal(lambda: change("odd", tags={"Full Name": "x"}))
    assert (refused.reason, refused.bad_fields) == ("INVALID_TAG_KEY", ["tags"])
    refused = refusal(lambda: change("nothing"))
    assert refused.reason == "NOTHING_TO_CHANGE"
    got = admin.GetAccount(pb.GetAccountRequest(bank_id=bank_id, account_id="ana")).account
    assert (got.label, dict(got.tags)) == ("member-0018", {})


def test_a_coordinator_lists_the_banks_transfers(
    served: Served, admin: pb_grpc.LedgerServiceStub, hand_clock: HandClock
) -> None:
    # A morning of exchanges, an hour apart: gardening, a hold, a void, a reversal.
    start = hand_clock.now
    pay(admin, "garden", "ben", "ana", 90, category="gardening")
    hand_clock.now += timedelta(hours=1)
    pay(admin, "tutoring", "ana", "cas", 60, pending=True)
    hand_clock.now += timedelta(hours=1)
    pay(admin, "repair", "ben", "cas", 30, pending=True)
    admin.VoidPendingTransfer(
        pb.VoidPendingTransferRequest(bank_id=bank_id, request_id="v", transfer_id="repair")
    )
    hand_clock.now += timedelta(hours=1)
    pay(admin, "lunch", "cas", "ben", 15, category="cooking")
    admin.ReverseTransfer(
        pb.ReverseTransferRequest(
            bank_id=bank_id, transfer_id="lunch-undo", reverses_transfer_id="lunch", reason="dup"
        )
    )

    def listed(**filters: object) -> pb.ListTransfersResponse:
        request = pb.ListTransfersRequest(
            bank_id=bank_id,
            filter=pb.TransferFilter(**filters),  # type: ignore[arg-type]
        )
        return admin.ListTransfers(request, timeout=timeout_seconds)

    everything = listed()
    assert ids(everything.transfers) == ["lunch-undo", "lunch", "repair", "tutoring", "garden"]
    assert everything.total_size == 5
    assert ids(listed(state=pb.TRANSFER_STATE_PENDING).transfers) == ["tutoring"]
    assert ids(listed(state=pb.TRANSFER_STATE_VOIDED).transfers) == ["repair"]
    assert ids(listed(state=pb.TRANSFER_STATE_REVERSED).transfers) == ["lunch"]
    assert ids(listed(state=pb.TRANSFER_STATE_POSTED).transfers) == ["lunch-undo", "garden"]
    assert ids(listed(category="gardening").transfers) == ["garden"]
    assert ids(listed(category="").transfers) == ["lunch-undo", "repair", "tutoring"]
    # A time range: from the second hour, before the third.
    window = listed(
        created_from=timestamp(start + timedelta(hours=1)),
        created_before=timestamp(start + timedelta(hours=2)),
    )
    assert ids(window.transfers) == ["tutoring"]
    refused = refusal(
        lambda: listed(created_from=timestamp(start), created_before=timestamp(start))
    )
    assert (refused.reason, refused.bad_fields) == ("INVALID_TIME_RANGE", ["filter.created_before"])
    # An auditor may list them too; the bank's front-end may not (members' consent is per
    # member: ListAccountTransfers is its list).
    app = pb_grpc.LedgerServiceStub(served.channel(served.key(Role.MEMBER_APP, bank_id)))
    auditor = pb_grpc.LedgerServiceStub(served.channel(served.key(Role.AUDITOR, bank_id)))
    assert ids(auditor.ListTransfers(pb.ListTransfersRequest(bank_id=bank_id)).transfers)[0] == (
        "lunch-undo"
    )
    refused = refusal(lambda: app.ListTransfers(pb.ListTransfersRequest(bank_id=bank_id)))
    assert (refused.code, refused.reason) == (grpc.StatusCode.PERMISSION_DENIED, "ROLE_NOT_ALLOWED")


def test_the_operator_lists_the_banks(served: Served) -> None:
    operator = pb_grpc.LedgerServiceStub(served.channel(served.operator_token))
    for name in ("hillside", "riverside", "seaside"):
        operator.CreateBank(pb.CreateBankRequest(bank_id=name, name=f"{name.title()} Time Bank"))
    first = operator.ListBanks(pb.ListBanksRequest(page_size=2))
    assert [b.bank_id for b in first.banks] == ["hillside", "riverside"]
    assert first.total_size == 3
    rest = operator.ListBanks(pb.ListBanksRequest(page_size=2, page_token=first.next_page_token))
    assert ([b.bank_id for b in rest.banks], rest.next_page_token) == (["seaside"], "")
    # A bank's own key may not list the deployment's banks.
    admin = pb_grpc.LedgerServiceStub(served.channel(served.key(Role.BANK_ADMIN, "seaside")))
    refused = refusal(lambda: admin.ListBanks(pb.ListBanksRequest()))
    assert (refused.code, refused.reason) == (grpc.StatusCode.PERMISSION_DENIED, "ROLE_NOT_ALLOWED")


# ---------------------------------------------------------------------------------------
# A member's app, with member consent on
# ---------------------------------------------------------------------------------------


@pytest.fixture
def riverside(pki: Pki) -> Iterator[Riverside]:
    with serving(pki) as served:
        yield set_up(served)


def test_a_members_inbox_of_pending_transfers(riverside: Riverside) -> None:
    ana, ben = riverside.token("ana"), riverside.token("ben")
    # Ana asks Ben for two hours of help, held until she confirms it was given; and pledges
    # half an hour to the garden pool.
    tutoring = riverside.pay("ana", "ben", 120, ana, pending=True, timeout_seconds=3600)
    pledge = riverside.pay("ana", "garden", 30, ana, pending=True)
    # Ben's app shows what he waits to be paid; Ana's what awaits her confirmation.

    def inbox(
        account: str, side: pb.PendingSide.ValueType, token: object
    ) -> pb.ListPendingTransfersResponse:
        return riverside.app.ListPendingTransfers(
            pb.ListPendingTransfersRequest(bank_id=bank_id, account_id=account, side=side),
            metadata=token,  # type: ignore[arg-type]
            timeout=timeout_seconds,
        )

    waiting = inbox("ben", pb.PENDING_SIDE_PAYEE, ben)
    assert (ids(waiting.transfers), waiting.total_size) == ([tutoring.transfer.transfer_id], 1)
    assert waiting.transfers[0].HasField("deadline")
    to_confirm = inbox("ana", pb.PENDING_SIDE_PAYER, ana)
    assert ids(to_confirm.transfers) == [pledge.transfer.transfer_id, tutoring.transfer.transfer_id]
    assert ids(inbox("ana", pb.PENDING_SIDE_PAYEE, ana).transfers) == []
    # Without Ana's token, or with Ben's, the front-end cannot read Ana's inbox or history.
    for token in ((), ben):

        def read_inbox(token: object = token) -> object:
            return inbox("ana", pb.PENDING_SIDE_UNSPECIFIED, token)

        def read_history(token: object = token) -> object:
            return riverside.app.ListAccountTransfers(
                pb.ListAccountTransfersRequest(bank_id=bank_id, account_id="ana"),
                metadata=token,  # type: ignore[arg-type]
            )

        got = refusal(read_inbox)
        assert (got.code, got.reason) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "MEMBER_TOKEN_REQUIRED",
        )
        assert refusal(read_history).reason == "MEMBER_TOKEN_REQUIRED"
    # A pool's inbox needs no member's token.
    assert ids(inbox("garden", pb.PENDING_SIDE_PAYEE, ()).transfers) == [
        pledge.transfer.transfer_id
    ]
    # Ana confirms the tutoring: it leaves both inboxes and shows in her posted history.
    riverside.app.PostPendingTransfer(
        pb.PostPendingTransferRequest(
            bank_id=bank_id, request_id="confirm", transfer_id=tutoring.transfer.transfer_id
        ),
        metadata=ana,
    )
    assert ids(inbox("ben", pb.PENDING_SIDE_PAYEE, ben).transfers) == []
    history = riverside.app.ListAccountTransfers(
        pb.ListAccountTransfersRequest(
            bank_id=bank_id,
            account_id="ana",
            filter=pb.TransferFilter(state=pb.TRANSFER_STATE_POSTED),
        ),
        metadata=ana,
    )
    assert ids(history.transfers) == [tutoring.transfer.transfer_id]
    # An unknown side is refused.
    got = refusal(lambda: inbox("ana", 7, ana))  # type: ignore[arg-type]
    assert (got.reason, got.bad_fields) == ("INVALID_PENDING_SIDE", ["side"])


def test_an_organisation_is_debited_without_a_member_token(riverside: Riverside) -> None:
    # The surgery takes part as an organisation: like a pool, it is no member.
    open_account(riverside.admin, "surgery", pb.ACCOUNT_KIND_ORGANISATION)
    paid = riverside.pay("surgery", "ana", 45)
    assert paid.transfer.payer_account_id == "surgery"

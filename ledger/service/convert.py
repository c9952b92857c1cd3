"""Pure translation: protobuf requests to domain commands, domain views to protobuf messages.

Field names are the same on both sides, so a domain error's `field` names the request field.
An enum left UNSPECIFIED, or set to a number this version does not know, is InvalidInput.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from google.protobuf.timestamp_pb2 import Timestamp

from ledger.application.listing import PENDING_SIDES, TransferFilter
from ledger.domain.commands import (
    LIMIT_FIELDS,
    METADATA_FIELDS,
    ChangeAccountMetadata,
    ChangeLimits,
    ChangeStatus,
    CreateBank,
    CreateTransfer,
    CreateTransfers,
    OpenAccount,
    PostPending,
    ReverseTransfer,
    VoidPending,
)
from ledger.domain.errors import DomainError, InvalidInput
from ledger.domain.views import AccountView, BankView, BatchItemResult, TransferView
from ledger.security.caller import current_caller
from ledger.security.roles import Role
from ledger.service import errors
from timebank.ledger.v1 import ledger_pb2 as pb

# An enum's number type, as mypy-protobuf declares it (AccountKind.ValueType, ...).
Enum = TypeVar("Enum", bound=int)

account_kinds: Mapping[pb.AccountKind.ValueType, str] = {
    pb.ACCOUNT_KIND_MEMBER: "member",
    pb.ACCOUNT_KIND_ORGANISATION: "organisation",
    pb.ACCOUNT_KIND_POOL: "pool",
    pb.ACCOUNT_KIND_SYSTEM: "system",
}
account_statuses: Mapping[pb.AccountStatus.ValueType, str] = {
    pb.ACCOUNT_STATUS_OPEN: "open",
    pb.ACCOUNT_STATUS_FROZEN: "frozen",
    pb.ACCOUNT_STATUS_CLOSED: "closed",
}
transfer_kinds: Mapping[pb.TransferKind.ValueType, str] = {
    pb.TRANSFER_KIND_IMMEDIATE: "immediate",
    pb.TRANSFER_KIND_PENDING: "pending",
    pb.TRANSFER_KIND_REVERSAL: "reversal",
}
transfer_statuses: Mapping[pb.TransferStatus.ValueType, str] = {
    pb.TRANSFER_STATUS_POSTED: "posted",
    pb.TRANSFER_STATUS_PENDING: "pending",
    pb.TRANSFER_STATUS_VOIDED: "voided",
    pb.TRANSFER_STATUS_EXPIRED: "expired",
}

StatusRequest = pb.FreezeAccountRequest | pb.UnfreezeAccountRequest | pb.CloseAccountRequest

# ---------------------------------------------------------------------------------------
# Requests to commands
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Acting:
    """Who a command is recorded as coming from: the authenticated caller (never text from
    the request), whether through a front-end key, and the member whose token it carries."""

    actor: str
    via_front_end: bool = False
    member_subject: str | None = None


def acting() -> Acting:
    """The current call's caller, as the interceptor authenticated it."""
    caller = current_caller()
    return Acting(caller.actor, caller.role is Role.MEMBER_APP, caller.member_subject)


def create_bank(request: pb.CreateBankRequest, by: Acting) -> CreateBank:
    return CreateBank(
        bank_id=request.bank_id, name=request.name, actor=by.actor, actor_label=request.actor_label
    )


def open_account(request: pb.OpenAccountRequest, by: Acting) -> OpenAccount:
    return OpenAccount(
        account_id=request.account_id,
        kind=_enum_from_proto("kind", request.kind, account_kinds, "INVALID_ACCOUNT_KIND"),
        lower_limit_minutes=request.lower_limit_minutes,
        upper_limit_minutes=(
            request.upper_limit_minutes if request.HasField("upper_limit_minutes") else None
        ),
        actor=by.actor,
        actor_label=request.actor_label,
    )


def change_limits(request: pb.ChangeAccountLimitsRequest, by: Acting) -> ChangeLimits:
    populated = tuple(name for name in LIMIT_FIELDS if request.HasField(name))  # type: ignore[arg-type]
    return ChangeLimits(
        request_id=request.request_id,
        account_id=request.account_id,
        lower_limit_minutes=request.lower_limit_minutes,
        upper_limit_minutes=(
            request.upper_limit_minutes if request.HasField("upper_limit_minutes") else None
        ),
        reason=request.reason,
        update_mask=update_mask(request, LIMIT_FIELDS, populated),
        actor=by.actor,
        actor_label=request.actor_label,
    )


def change_metadata(request: pb.ChangeAccountMetadataRequest, by: Acting) -> ChangeAccountMetadata:
    populated = (
        *(("label",) if request.HasField("label") else ()),
        *(("tags",) if request.tags else ()),
    )
    mask = update_mask(request, METADATA_FIELDS, populated)
    return ChangeAccountMetadata(
        request_id=request.request_id,
        account_id=request.account_id,
        label=request.label if "label" in mask else None,
        tags=tuple(sorted(request.tags.items())) if "tags" in mask else None,
        actor=by.actor,
        actor_label=request.actor_label,
    )


def update_mask(
    request: pb.ChangeAccountLimitsRequest | pb.ChangeAccountMetadataRequest,
    names: tuple[str, ...],
    populated: tuple[str, ...],
) -> tuple[str, ...]:
    """The fields an update sets (AIP-134): those its mask names (`*`: all of them), or
    without a mask, those the request populates. In the order of `names`."""
    if not request.HasField("update_mask") or not request.update_mask.paths:
        return populated
    paths = list(request.update_mask.paths)
    if paths == ["*"]:
        return names
    if any(path not in names for path in paths) or len(set(paths)) != len(paths):
        raise InvalidInput(
            "INVALID_UPDATE_MASK",
            f"update_mask may name only {', '.join(names)} (or *), each once",
            field="update_mask",
            metadata={"paths": ",".join(paths)[:200]},
        )
    return tuple(name for name in names if name in paths)


def change_status(request: StatusRequest, action: str, by: Acting) -> ChangeStatus:
    return ChangeStatus(
        request_id=request.request_id,
        account_id=request.account_id,
        action=action,
        reason=request.reason,
        actor=by.actor,
        actor_label=request.actor_label,
    )


def create_transfer(
    request: pb.CreateTransferRequest | pb.NewTransfer, by: Acting
) -> CreateTransfer:
    return CreateTransfer(
        transfer_id=request.transfer_id,
        payer_account_id=request.payer_account_id,
        payee_account_id=request.payee_account_id,
        amount_minutes=request.amount_minutes,
        memo=request.memo,
        category=request.category,
        service_date=request.service_date,
        pending=request.pending,
        timeout_seconds=request.timeout_seconds,
        actor=by.actor,
        actor_label=request.actor_label,
        via_front_end=by.via_front_end,
        member_subject=by.member_subject,
    )


def create_transfers(request: pb.CreateTransfersRequest, by: Acting) -> CreateTransfers:
    return CreateTransfers(
        items=tuple(create_transfer(item, by) for item in request.transfers),
        linked=request.linked,
    )


def post_pending(request: pb.PostPendingTransferRequest, by: Acting) -> PostPending:
    return PostPending(
        request_id=request.request_id,
        transfer_id=request.transfer_id,
        amount_minutes=request.amount_minutes if request.HasField("amount_minutes") else None,
        actor=by.actor,
        actor_label=request.actor_label,
        via_front_end=by.via_front_end,
        member_subject=by.member_subject,
    )


def void_pending(request: pb.VoidPendingTransferRequest, by: Acting) -> VoidPending:
    return VoidPending(
        request_id=request.request_id,
        transfer_id=request.transfer_id,
        reason=request.reason,
        actor=by.actor,
        actor_label=request.actor_label,
    )


def reverse_transfer(request: pb.ReverseTransferRequest, by: Acting) -> ReverseTransfer:
    return ReverseTransfer(
        transfer_id=request.transfer_id,
        reverses_transfer_id=request.reverses_transfer_id,
        reason=request.reason,
        actor=by.actor,
        actor_label=request.actor_label,
    )


def _enum_from_proto(field: str, number: int, names: Mapping[Enum, str], reason: str) -> str:
    if number == 0:
        raise InvalidInput("FIELD_REQUIRED", f"{field} is required", field=field)
    for known, name in names.items():
        if known == number:
            return name
    raise InvalidInput(reason, f"{field} {number} is not a known value", field=field)


# ---------------------------------------------------------------------------------------
# Views to messages
# ---------------------------------------------------------------------------------------


def bank(view: BankView) -> pb.Bank:
    return pb.Bank(
        bank_id=view.bank_id,
        name=view.name,
        created_at=timestamp(view.created_at),
        position=view.position,
        chain_head=view.chain_head,
        account_count=view.account_count,
        transfer_count=view.transfer_count,
        member_tokens_required=view.member_tokens_required,
    )


def account(view: AccountView) -> pb.Account:
    message = pb.Account(
        account_id=view.account_id,
        kind=enum_to_proto(view.kind, account_kinds),
        status=enum_to_proto(view.status, account_statuses),
        lower_limit_minutes=view.lower_limit_minutes,
        balance_minutes=view.balance_minutes,
        pending_debit_minutes=view.pending_debit_minutes,
        pending_credit_minutes=view.pending_credit_minutes,
        available_minutes=view.available_minutes,
        opened_at=timestamp(view.opened_at),
        updated_at=timestamp(view.updated_at),
        position=view.position,
    )
    if view.upper_limit_minutes is not None:
        message.upper_limit_minutes = view.upper_limit_minutes
    message.label = view.label
    message.tags.update(dict(view.tags))
    return message


def transfer(view: TransferView) -> pb.Transfer:
    message = pb.Transfer(
        transfer_id=view.transfer_id,
        kind=enum_to_proto(view.kind, transfer_kinds),
        status=enum_to_proto(view.status, transfer_statuses),
        payer_account_id=view.payer_account_id,
        payee_account_id=view.payee_account_id,
        amount_minutes=view.amount_minutes,
        posted_amount_minutes=view.posted_amount_minutes,
        memo=view.memo,
        category=view.category,
        service_date=view.service_date,
        created_at=timestamp(view.created_at),
        reverses_transfer_id=view.reverses_transfer_id,
        reversed_by_transfer_id=view.reversed_by_transfer_id,
        reason=view.reason,
        actor=view.actor,
        actor_label=view.actor_label,
        created_position=view.created_position,
        position=view.position,
    )
    if view.deadline is not None:
        message.deadline.CopyFrom(timestamp(view.deadline))
    if view.resolved_at is not None:
        message.resolved_at.CopyFrom(timestamp(view.resolved_at))
    return message


def transfer_results(results: Sequence[BatchItemResult]) -> list[pb.TransferResult]:
    return [_transfer_result(result) for result in results]


def _transfer_result(result: BatchItemResult) -> pb.TransferResult:
    if result.error is not None:
        return pb.TransferResult(error=transfer_error(result.error))
    assert result.transfer is not None, "a batch item has either a transfer or an error"
    return pb.TransferResult(transfer=transfer(result.transfer))


def transfer_error(error: DomainError) -> pb.TransferError:
    return pb.TransferError(
        code=errors.code_number(errors.status_code(error)),
        reason=error.reason,
        message=error.message,
        field=error.field or "",
        metadata=error.metadata,
    )


def timestamp(moment: datetime) -> Timestamp:
    assert moment.tzinfo is not None, f"naive datetime {moment!r}: the ledger keeps UTC times"
    message = Timestamp()
    message.FromDatetime(moment)
    return message


def enum_to_proto(name: str, names: Mapping[Enum, str]) -> Enum:
    for number, known in names.items():
        if known == name:
            return number
    raise AssertionError(f"{name!r} has no protobuf enum value")


# ---------------------------------------------------------------------------------------
# Lists (issue 12): filters in, pages out
# ---------------------------------------------------------------------------------------

transfer_states: Mapping[pb.TransferState.ValueType, str] = {
    pb.TRANSFER_STATE_PENDING: "pending",
    pb.TRANSFER_STATE_POSTED: "posted",
    pb.TRANSFER_STATE_VOIDED: "voided",
    pb.TRANSFER_STATE_EXPIRED: "expired",
    pb.TRANSFER_STATE_REVERSED: "reversed",
}
pending_sides: Mapping[pb.PendingSide.ValueType, tuple[str, ...]] = {
    pb.PENDING_SIDE_PAYER: ("payer",),
    pb.PENDING_SIDE_PAYEE: ("payee",),
}


def optional_enum(field: str, number: int, names: Mapping[Enum, str], reason: str) -> str | None:
    """A filter's enum: None when unspecified (no filter), InvalidInput when unknown."""
    return None if number == 0 else _enum_from_proto(field, number, names, reason)


def transfer_filter(message: pb.TransferFilter) -> TransferFilter:
    return TransferFilter(
        state=optional_enum(
            "filter.state", message.state, transfer_states, "INVALID_TRANSFER_STATE"
        ),
        category=message.category if message.HasField("category") else None,
        created_from=_moment("filter.created_from", message, "created_from"),
        created_before=_moment("filter.created_before", message, "created_before"),
    )


def pending_side(number: pb.PendingSide.ValueType) -> tuple[str, ...]:
    if number == pb.PENDING_SIDE_UNSPECIFIED:
        return PENDING_SIDES
    if number not in pending_sides:
        raise InvalidInput(
            "INVALID_PENDING_SIDE", f"side {number} is not a known value", field="side"
        )
    return pending_sides[number]


def _moment(field: str, message: pb.TransferFilter, name: str) -> datetime | None:
    if not message.HasField(name):  # type: ignore[arg-type]
        return None
    value: Timestamp = getattr(message, name)
    try:
        return value.ToDatetime(UTC)
    except (ValueError, OverflowError):  # seconds or nanos out of the Timestamp's range
        raise InvalidInput(
            "INVALID_TIMESTAMP",
            f"{field} is not a valid timestamp (years 1 to 9999, nanos below 10^9)",
            field=field,
        ) from None

"""The one catalogue of the reasons the server answers with: every ErrorInfo `reason`, and every
`TransferError.reason` of a batch item, with its status code, and for each RPC the reasons
it can answer in the order its checks run (precedence order, as TigerBeetle keeps its result
codes: when a request is wrong in two ways, the first check listed is the one answered).

The proto comments are generated from it (`python -m ledger.tools.gen_reasons`, `--check` in
the tests), and tests/test_reasons.py checks both ways that every reason a raise site in the
code can send is here and that everything here is in the protos. Reasons are part of the
contract: one is never renamed, only added (and retired with a note).

Besides its own list, every call can answer the edge's reasons (security/errors.py: the
key, its role, its bank, member tokens, quotas, the body), and every write the writer's
(`WRITE_PATH`). Those are listed once, at the top of ledger.proto.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType


class Reason(StrEnum):
    """Every reason, grouped by status code."""

    # INVALID_ARGUMENT: the request itself is wrong; nothing was read or changed.
    FIELD_REQUIRED = "FIELD_REQUIRED"
    FIELD_TOO_LONG = "FIELD_TOO_LONG"
    INVALID_ID = "INVALID_ID"
    INVALID_CHARACTERS = "INVALID_CHARACTERS"
    INVALID_ACCOUNT_KIND = "INVALID_ACCOUNT_KIND"
    INVALID_ACCOUNT_STATUS = "INVALID_ACCOUNT_STATUS"
    INVALID_LIMIT = "INVALID_LIMIT"
    INVALID_UPDATE_MASK = "INVALID_UPDATE_MASK"
    NOTHING_TO_CHANGE = "NOTHING_TO_CHANGE"
    TOO_MANY_TAGS = "TOO_MANY_TAGS"
    INVALID_TAG_KEY = "INVALID_TAG_KEY"
    SAME_ACCOUNT = "SAME_ACCOUNT"
    AMOUNT_NOT_POSITIVE = "AMOUNT_NOT_POSITIVE"
    AMOUNT_TOO_LARGE = "AMOUNT_TOO_LARGE"
    INVALID_DATE = "INVALID_DATE"
    TIMEOUT_WITHOUT_PENDING = "TIMEOUT_WITHOUT_PENDING"
    INVALID_TIMEOUT = "INVALID_TIMEOUT"
    BATCH_EMPTY = "BATCH_EMPTY"
    BATCH_TOO_LARGE = "BATCH_TOO_LARGE"
    DUPLICATE_ID_IN_BATCH = "DUPLICATE_ID_IN_BATCH"
    SAME_TRANSFER = "SAME_TRANSFER"
    INVALID_TRANSFER_STATE = "INVALID_TRANSFER_STATE"
    INVALID_PENDING_SIDE = "INVALID_PENDING_SIDE"
    INVALID_TIMESTAMP = "INVALID_TIMESTAMP"
    INVALID_TIME_RANGE = "INVALID_TIME_RANGE"
    INVALID_PAGE_SIZE = "INVALID_PAGE_SIZE"
    INVALID_PAGE_TOKEN = "INVALID_PAGE_TOKEN"
    INVALID_MIN_POSITION = "INVALID_MIN_POSITION"
    INVALID_MONTH = "INVALID_MONTH"
    INVALID_MONTH_RANGE = "INVALID_MONTH_RANGE"
    MONTH_RANGE_TOO_LARGE = "MONTH_RANGE_TOO_LARGE"
    INVALID_ROLE = "INVALID_ROLE"
    ROLE_OUT_OF_SCOPE = "ROLE_OUT_OF_SCOPE"
    INVALID_KEY = "INVALID_KEY"
    INVALID_PUBLIC_KEY = "INVALID_PUBLIC_KEY"
    INVALID_ALGORITHM = "INVALID_ALGORITHM"
    MALFORMED_REQUEST = "MALFORMED_REQUEST"
    MEMBER_TOKEN_NOT_APPLICABLE = "MEMBER_TOKEN_NOT_APPLICABLE"
    INVALID_POSITION = "INVALID_POSITION"  # AuditService
    INVALID_POOL_POLICY = "INVALID_POOL_POLICY"  # PoolService
    INVALID_TIME_ZONE = "INVALID_TIME_ZONE"  # PoolService
    INVALID_APPROVER = "INVALID_APPROVER"  # PoolService
    INVALID_GRANT_STATE = "INVALID_GRANT_STATE"  # PoolService
    AS_OF_REQUIRED = "AS_OF_REQUIRED"  # AuditService

    # NOT_FOUND: a bank, account, transfer or key the request names does not exist.
    BANK_NOT_FOUND = "BANK_NOT_FOUND"
    ACCOUNT_NOT_FOUND = "ACCOUNT_NOT_FOUND"
    TRANSFER_NOT_FOUND = "TRANSFER_NOT_FOUND"
    API_KEY_NOT_FOUND = "API_KEY_NOT_FOUND"
    CHECKPOINT_NOT_FOUND = "CHECKPOINT_NOT_FOUND"  # AuditService
    POOL_NOT_FOUND = "POOL_NOT_FOUND"  # PoolService
    GRANT_NOT_FOUND = "GRANT_NOT_FOUND"  # PoolService

    # ALREADY_EXISTS: a client-chosen id reused with other content; the reason names the
    # first field that differs (EXISTS_WITH_DIFFERENT_<FIELD>, or _KIND for another call).
    EXISTS_WITH_DIFFERENT_KIND = "EXISTS_WITH_DIFFERENT_KIND"
    EXISTS_WITH_DIFFERENT_NAME = "EXISTS_WITH_DIFFERENT_NAME"
    EXISTS_WITH_DIFFERENT_ACCOUNT_ID = "EXISTS_WITH_DIFFERENT_ACCOUNT_ID"
    EXISTS_WITH_DIFFERENT_LOWER_LIMIT_MINUTES = "EXISTS_WITH_DIFFERENT_LOWER_LIMIT_MINUTES"
    EXISTS_WITH_DIFFERENT_UPPER_LIMIT_MINUTES = "EXISTS_WITH_DIFFERENT_UPPER_LIMIT_MINUTES"
    EXISTS_WITH_DIFFERENT_UPDATE_MASK = "EXISTS_WITH_DIFFERENT_UPDATE_MASK"
    EXISTS_WITH_DIFFERENT_LABEL = "EXISTS_WITH_DIFFERENT_LABEL"
    EXISTS_WITH_DIFFERENT_TAGS = "EXISTS_WITH_DIFFERENT_TAGS"
    EXISTS_WITH_DIFFERENT_ACTION = "EXISTS_WITH_DIFFERENT_ACTION"
    EXISTS_WITH_DIFFERENT_REASON = "EXISTS_WITH_DIFFERENT_REASON"
    EXISTS_WITH_DIFFERENT_PAYER_ACCOUNT_ID = "EXISTS_WITH_DIFFERENT_PAYER_ACCOUNT_ID"
    EXISTS_WITH_DIFFERENT_PAYEE_ACCOUNT_ID = "EXISTS_WITH_DIFFERENT_PAYEE_ACCOUNT_ID"
    EXISTS_WITH_DIFFERENT_AMOUNT_MINUTES = "EXISTS_WITH_DIFFERENT_AMOUNT_MINUTES"
    EXISTS_WITH_DIFFERENT_MEMO = "EXISTS_WITH_DIFFERENT_MEMO"
    EXISTS_WITH_DIFFERENT_CATEGORY = "EXISTS_WITH_DIFFERENT_CATEGORY"
    EXISTS_WITH_DIFFERENT_SERVICE_DATE = "EXISTS_WITH_DIFFERENT_SERVICE_DATE"
    EXISTS_WITH_DIFFERENT_PENDING = "EXISTS_WITH_DIFFERENT_PENDING"
    EXISTS_WITH_DIFFERENT_TIMEOUT_SECONDS = "EXISTS_WITH_DIFFERENT_TIMEOUT_SECONDS"
    EXISTS_WITH_DIFFERENT_TRANSFER_ID = "EXISTS_WITH_DIFFERENT_TRANSFER_ID"
    EXISTS_WITH_DIFFERENT_REVERSES_TRANSFER_ID = "EXISTS_WITH_DIFFERENT_REVERSES_TRANSFER_ID"
    EXISTS_WITH_DIFFERENT_MEMBER_TOKENS_REQUIRED = "EXISTS_WITH_DIFFERENT_MEMBER_TOKENS_REQUIRED"
    EXISTS_WITH_DIFFERENT_SECRET = "EXISTS_WITH_DIFFERENT_SECRET"
    EXISTS_WITH_DIFFERENT_PUBLIC_KEY = "EXISTS_WITH_DIFFERENT_PUBLIC_KEY"
    # PoolService (issue 11).
    EXISTS_WITH_DIFFERENT_POOL_ACCOUNT_ID = "EXISTS_WITH_DIFFERENT_POOL_ACCOUNT_ID"
    EXISTS_WITH_DIFFERENT_POLICY = "EXISTS_WITH_DIFFERENT_POLICY"
    EXISTS_WITH_DIFFERENT_MEMBER_ACCOUNT_ID = "EXISTS_WITH_DIFFERENT_MEMBER_ACCOUNT_ID"
    EXISTS_WITH_DIFFERENT_GRANT_ID = "EXISTS_WITH_DIFFERENT_GRANT_ID"
    EXISTS_WITH_DIFFERENT_DECISION = "EXISTS_WITH_DIFFERENT_DECISION"
    ACCOUNT_ALREADY_EXISTS = "ACCOUNT_ALREADY_EXISTS"

    # FAILED_PRECONDITION: well formed, but the ledger's state refuses it. Each names its
    # subject (PreconditionFailure `accounts/<id>`, `transfers/<id>` or `banks/<id>`).
    ACCOUNT_CLOSED = "ACCOUNT_CLOSED"
    ACCOUNT_FROZEN = "ACCOUNT_FROZEN"
    ACCOUNT_NOT_OPEN = "ACCOUNT_NOT_OPEN"
    ACCOUNT_NOT_FROZEN = "ACCOUNT_NOT_FROZEN"
    ACCOUNT_HAS_BALANCE = "ACCOUNT_HAS_BALANCE"
    ACCOUNT_HAS_PENDING = "ACCOUNT_HAS_PENDING"
    TRANSFER_NOT_PENDING = "TRANSFER_NOT_PENDING"
    PENDING_TRANSFER_ALREADY_POSTED = "PENDING_TRANSFER_ALREADY_POSTED"
    PENDING_TRANSFER_ALREADY_VOIDED = "PENDING_TRANSFER_ALREADY_VOIDED"
    PENDING_TRANSFER_EXPIRED = "PENDING_TRANSFER_EXPIRED"
    CANNOT_REVERSE_REVERSAL = "CANNOT_REVERSE_REVERSAL"
    TRANSFER_NOT_POSTED = "TRANSFER_NOT_POSTED"
    TRANSFER_ALREADY_REVERSED = "TRANSFER_ALREADY_REVERSED"
    POST_AMOUNT_EXCEEDS_PENDING = "POST_AMOUNT_EXCEEDS_PENDING"
    EXCEEDS_LOWER_LIMIT = "EXCEEDS_LOWER_LIMIT"
    EXCEEDS_UPPER_LIMIT = "EXCEEDS_UPPER_LIMIT"
    LINKED_EVENT_FAILED = "LINKED_EVENT_FAILED"
    POSITION_NOT_COMMITTED = "POSITION_NOT_COMMITTED"
    # Pools (issue 11): contributions, grants and their decisions.
    POOL_GRANT_REQUIRED = "POOL_GRANT_REQUIRED"
    CONTRIBUTOR_NOT_ALLOWED = "CONTRIBUTOR_NOT_ALLOWED"
    TRANSFER_IS_GRANT = "TRANSFER_IS_GRANT"
    DRAWER_NOT_ALLOWED = "DRAWER_NOT_ALLOWED"
    EXCEEDS_MEMBER_CAP = "EXCEEDS_MEMBER_CAP"
    EXCEEDS_POOL_FLOOR = "EXCEEDS_POOL_FLOOR"
    GRANT_NOT_OPEN = "GRANT_NOT_OPEN"
    APPROVER_ALREADY_DECIDED = "APPROVER_ALREADY_DECIDED"

    # PERMISSION_DENIED: the caller may not do this (never NOT_FOUND for another bank).
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    ROLE_NOT_ALLOWED = "ROLE_NOT_ALLOWED"
    BANK_OUT_OF_SCOPE = "BANK_OUT_OF_SCOPE"
    MEMBER_TOKEN_REQUIRED = "MEMBER_TOKEN_REQUIRED"
    FOLLOW_ONLY = "FOLLOW_ONLY"  # AuditService: a front-end key may only follow live events
    NOT_GRANT_APPROVER = "NOT_GRANT_APPROVER"  # PoolService: the caller is no approver of it
    OWN_GRANT_REQUEST = "OWN_GRANT_REQUEST"  # PoolService: made by the caller, or pays them
    NOT_GRANT_REQUESTER = "NOT_GRANT_REQUESTER"  # PoolService: only its requester cancels

    # UNAUTHENTICATED: the API key or member token does not prove who calls.
    API_KEY_MISSING = "API_KEY_MISSING"
    API_KEY_MALFORMED = "API_KEY_MALFORMED"
    API_KEY_INVALID = "API_KEY_INVALID"
    API_KEY_REVOKED = "API_KEY_REVOKED"
    API_KEY_EXPIRED = "API_KEY_EXPIRED"
    MEMBER_TOKEN_MALFORMED = "MEMBER_TOKEN_MALFORMED"
    MEMBER_TOKEN_ALGORITHM_NOT_ALLOWED = "MEMBER_TOKEN_ALGORITHM_NOT_ALLOWED"
    MEMBER_TOKEN_UNKNOWN_KEY = "MEMBER_TOKEN_UNKNOWN_KEY"
    MEMBER_TOKEN_BAD_SIGNATURE = "MEMBER_TOKEN_BAD_SIGNATURE"
    MEMBER_TOKEN_WRONG_BANK = "MEMBER_TOKEN_WRONG_BANK"
    MEMBER_TOKEN_EXPIRED = "MEMBER_TOKEN_EXPIRED"
    MEMBER_TOKEN_NOT_YET_VALID = "MEMBER_TOKEN_NOT_YET_VALID"
    MEMBER_TOKEN_LIFETIME_TOO_LONG = "MEMBER_TOKEN_LIFETIME_TOO_LONG"

    # RESOURCE_EXHAUSTED: a bound was reached; RetryInfo says when a retry may succeed.
    SERVER_BUSY = "SERVER_BUSY"
    QUOTA_EXCEEDED = "QUOTA_EXCEEDED"
    MESSAGE_TOO_LARGE = "MESSAGE_TOO_LARGE"
    READS_WAITING_MAX_REACHED = "READS_WAITING_MAX_REACHED"
    WRITER_OVERLOADED = "WRITER_OVERLOADED"
    BANKS_MAX_REACHED = "BANKS_MAX_REACHED"
    API_KEYS_MAX_REACHED = "API_KEYS_MAX_REACHED"
    MEMBER_TOKEN_KEYS_MAX_REACHED = "MEMBER_TOKEN_KEYS_MAX_REACHED"
    TOO_MANY_SERVICES = "TOO_MANY_SERVICES"
    STREAMS_MAX_REACHED = "STREAMS_MAX_REACHED"  # AuditService

    # UNAVAILABLE: retry the same request (same ids): nothing, or exactly it, was recorded.
    WRITER_STOPPED = "WRITER_STOPPED"
    WRITER_TIMEOUT = "WRITER_TIMEOUT"
    STORE_UNAVAILABLE = "STORE_UNAVAILABLE"
    COMMIT_FAILED = "COMMIT_FAILED"
    VIEW_NOT_CAUGHT_UP = "VIEW_NOT_CAUGHT_UP"
    # AuditService, PoolService.GetPoolBudget: this server runs no view for the read.
    VIEWS_NOT_SERVED = "VIEWS_NOT_SERVED"

    # ABORTED: another writer kept winning the race for the bank; retry with the same ids.
    WRITE_CONFLICT = "WRITE_CONFLICT"

    # DATA_LOSS: the bank's stored history does not verify; an operator must look.
    HISTORY_DAMAGED = "HISTORY_DAMAGED"

    # INTERNAL: a bug; the details are in the server's log, none in the answer.
    INTERNAL = "INTERNAL"


R = Reason

# Where each status code's group starts in Reason (its members are in code order).
_CODE_GROUPS = (
    (R.FIELD_REQUIRED, "INVALID_ARGUMENT"),
    (R.BANK_NOT_FOUND, "NOT_FOUND"),
    (R.EXISTS_WITH_DIFFERENT_KIND, "ALREADY_EXISTS"),
    (R.ACCOUNT_CLOSED, "FAILED_PRECONDITION"),
    (R.METHOD_NOT_ALLOWED, "PERMISSION_DENIED"),
    (R.API_KEY_MISSING, "UNAUTHENTICATED"),
    (R.SERVER_BUSY, "RESOURCE_EXHAUSTED"),
    (R.WRITER_STOPPED, "UNAVAILABLE"),
    (R.WRITE_CONFLICT, "ABORTED"),
    (R.HISTORY_DAMAGED, "DATA_LOSS"),
    (R.INTERNAL, "INTERNAL"),
)


def _codes() -> Mapping[Reason, str]:
    starts = dict(_CODE_GROUPS)
    codes: dict[Reason, str] = {}
    code = ""
    for reason in Reason:
        code = starts.get(reason, code)
        codes[reason] = code
    return MappingProxyType(codes)


# The gRPC status code each reason comes with (by name: grpc.StatusCode[CODE[reason]]).
CODE: Mapping[Reason, str] = _codes()


def _then(*groups: Iterable[Reason]) -> tuple[Reason, ...]:
    """The groups one after another, each reason once (where it first comes)."""
    return tuple(dict.fromkeys(reason for group in groups for reason in group))


# ----------------------------------------------------------------- shared groups

# An id field: empty, too long, or not of the id alphabet (in that order).
ID = (R.FIELD_REQUIRED, R.FIELD_TOO_LONG, R.INVALID_ID)
# A free-text field: too long, or holding control characters or invalid Unicode.
TEXT = (R.FIELD_TOO_LONG, R.INVALID_CHARACTERS)
PAGE = (R.INVALID_PAGE_SIZE, R.INVALID_PAGE_TOKEN)
# What the edge answers before any servicer runs, in the order its checks run
# (ledger/security/gate.py; security/errors.py's Reason is this list, and a test says so).
EDGE = (
    R.METHOD_NOT_ALLOWED,
    R.SERVER_BUSY,
    R.API_KEY_MISSING,
    R.API_KEY_MALFORMED,
    R.API_KEY_INVALID,
    R.API_KEY_REVOKED,
    R.API_KEY_EXPIRED,
    R.QUOTA_EXCEEDED,
    R.ROLE_NOT_ALLOWED,
    R.MESSAGE_TOO_LARGE,
    R.MALFORMED_REQUEST,
    R.BANK_OUT_OF_SCOPE,
    R.MEMBER_TOKEN_NOT_APPLICABLE,
    R.MEMBER_TOKEN_MALFORMED,
    R.MEMBER_TOKEN_ALGORITHM_NOT_ALLOWED,
    R.MEMBER_TOKEN_UNKNOWN_KEY,
    R.MEMBER_TOKEN_BAD_SIGNATURE,
    R.MEMBER_TOKEN_WRONG_BANK,
    R.MEMBER_TOKEN_EXPIRED,
    R.MEMBER_TOKEN_NOT_YET_VALID,
    R.MEMBER_TOKEN_LIFETIME_TOO_LONG,
)
# Any call: a bug (INTERNAL); health checking's List: more services than it lists.
ANY_CALL = (R.INTERNAL,)
HEALTH_LIST = (R.TOO_MANY_SERVICES,)
# Every write, beside its own reasons: the bank's writer and the store, in the order met
# (queueing, loading the bank, committing, waiting for the answer).
WRITE_PATH = (
    R.WRITER_OVERLOADED,
    R.WRITER_STOPPED,
    R.STORE_UNAVAILABLE,
    R.HISTORY_DAMAGED,
    R.COMMIT_FAILED,
    R.WRITE_CONFLICT,
    R.WRITER_TIMEOUT,
)
# A read of the views with read-your-writes (LedgerViewService).
VIEW_READ = (
    R.INVALID_MIN_POSITION,
    R.READS_WAITING_MAX_REACHED,
    R.POSITION_NOT_COMMITTED,
    R.VIEW_NOT_CAUGHT_UP,
    R.BANK_NOT_FOUND,
)
_READER = (R.BANK_NOT_FOUND, R.ACCOUNT_NOT_FOUND, R.MEMBER_TOKEN_REQUIRED)
_TRANSFER_FILTER = (
    R.INVALID_TRANSFER_STATE,
    *TEXT,  # filter.category
    R.INVALID_TIMESTAMP,
    R.INVALID_TIME_RANGE,
)
# A new transfer's own checks: its fields, then (in the writer) the bank's state.
_NEW_TRANSFER_INPUT = _then(
    ID,  # transfer_id, payer_account_id, payee_account_id
    (R.SAME_ACCOUNT, R.AMOUNT_NOT_POSITIVE, R.AMOUNT_TOO_LARGE),
    TEXT,  # memo, category, actor_label
    (R.INVALID_DATE, R.TIMEOUT_WITHOUT_PENDING, R.INVALID_TIMEOUT),
)
_NEW_TRANSFER_STATE = (
    R.EXISTS_WITH_DIFFERENT_KIND,
    R.EXISTS_WITH_DIFFERENT_PAYER_ACCOUNT_ID,
    R.EXISTS_WITH_DIFFERENT_PAYEE_ACCOUNT_ID,
    R.EXISTS_WITH_DIFFERENT_AMOUNT_MINUTES,
    R.EXISTS_WITH_DIFFERENT_MEMO,
    R.EXISTS_WITH_DIFFERENT_CATEGORY,
    R.EXISTS_WITH_DIFFERENT_SERVICE_DATE,
    R.EXISTS_WITH_DIFFERENT_PENDING,
    R.EXISTS_WITH_DIFFERENT_TIMEOUT_SECONDS,
    R.ACCOUNT_NOT_FOUND,
    R.ACCOUNT_CLOSED,
    R.ACCOUNT_FROZEN,
    R.POOL_GRANT_REQUIRED,
    R.CONTRIBUTOR_NOT_ALLOWED,
    R.MEMBER_TOKEN_REQUIRED,
    R.EXCEEDS_LOWER_LIMIT,
    R.EXCEEDS_UPPER_LIMIT,
)
_PENDING_RESOLVED = (
    R.TRANSFER_NOT_FOUND,
    R.TRANSFER_NOT_PENDING,
    R.PENDING_TRANSFER_ALREADY_POSTED,
    R.PENDING_TRANSFER_ALREADY_VOIDED,
    R.PENDING_TRANSFER_EXPIRED,
)


def _status_change(*own: Reason) -> tuple[Reason, ...]:
    return _then(
        ID,
        TEXT,
        (R.BANK_NOT_FOUND,),
        (
            R.EXISTS_WITH_DIFFERENT_KIND,
            R.EXISTS_WITH_DIFFERENT_ACCOUNT_ID,
            R.EXISTS_WITH_DIFFERENT_ACTION,
            R.EXISTS_WITH_DIFFERENT_REASON,
        ),
        (R.ACCOUNT_NOT_FOUND, R.ACCOUNT_CLOSED),
        own,
    )


@dataclass(frozen=True, slots=True)
class Answers:
    """What one RPC can answer beside the edge's reasons, in the order its checks run."""

    reasons: tuple[Reason, ...]
    # A write: the writer's reasons (WRITE_PATH) too, between its checks and its answer.
    write: bool = False
    # A batch: what each item's TransferError can say (the call itself still succeeds).
    items: tuple[Reason, ...] = ()


_AS_OF = (
    R.BANK_NOT_FOUND,
    R.AS_OF_REQUIRED,
    R.INVALID_POSITION,
    R.POSITION_NOT_COMMITTED,
    R.ACCOUNT_NOT_FOUND,
)

_P = "timebank.ledger.v1.PoolService/"
_POLICY = (R.INVALID_POOL_POLICY, R.INVALID_TIME_ZONE)
# What a policy names must exist: its accounts, then its approvers' accounts and keys.
_POLICY_NAMES = (R.ACCOUNT_NOT_FOUND, R.API_KEY_NOT_FOUND)


def _decision(*own: Reason) -> tuple[Reason, ...]:
    """Approve, reject or cancel a grant request: its fields, a retry, the request, then
    the decision's own checks."""
    return _then(
        ID,
        TEXT,
        (R.BANK_NOT_FOUND,),
        (
            R.EXISTS_WITH_DIFFERENT_KIND,
            R.EXISTS_WITH_DIFFERENT_DECISION,
            R.EXISTS_WITH_DIFFERENT_POOL_ACCOUNT_ID,
            R.EXISTS_WITH_DIFFERENT_GRANT_ID,
            R.EXISTS_WITH_DIFFERENT_REASON,
        ),
        (R.POOL_NOT_FOUND, R.GRANT_NOT_FOUND, R.GRANT_NOT_OPEN),
        own,
    )


_L = "timebank.ledger.v1.LedgerService/"
_V = "timebank.ledger.v1.LedgerViewService/"
_A = "timebank.ledger.v1.AccessService/"
_U = "timebank.ledger.v1.AuditService/"

# RPC (package.Service/Method) -> what it can answer. Rendered into each RPC's comment.
ANSWERS: Mapping[str, Answers] = MappingProxyType(
    {
        f"{_L}CreateBank": Answers(
            _then(ID, TEXT, (R.BANKS_MAX_REACHED, R.EXISTS_WITH_DIFFERENT_NAME)), write=True
        ),
        f"{_L}GetBank": Answers(_then(ID, (R.BANK_NOT_FOUND,))),
        f"{_L}ListBanks": Answers(PAGE),
        f"{_L}OpenAccount": Answers(
            _then(
                ID,
                (R.INVALID_ACCOUNT_KIND, R.INVALID_LIMIT),
                TEXT,
                (R.BANK_NOT_FOUND,),
                (
                    R.EXISTS_WITH_DIFFERENT_KIND,
                    R.EXISTS_WITH_DIFFERENT_LOWER_LIMIT_MINUTES,
                    R.EXISTS_WITH_DIFFERENT_UPPER_LIMIT_MINUTES,
                ),
            ),
            write=True,
        ),
        f"{_L}GetAccount": Answers(_then(ID, _READER)),
        f"{_L}ListAccounts": Answers(
            _then(ID, (R.INVALID_ACCOUNT_KIND, R.INVALID_ACCOUNT_STATUS), PAGE, (R.BANK_NOT_FOUND,))
        ),
        f"{_L}ChangeAccountLimits": Answers(
            _then(
                ID,
                (R.INVALID_UPDATE_MASK, R.NOTHING_TO_CHANGE, R.INVALID_LIMIT),
                TEXT,
                (R.BANK_NOT_FOUND,),
                (
                    R.EXISTS_WITH_DIFFERENT_KIND,
                    R.EXISTS_WITH_DIFFERENT_ACCOUNT_ID,
                    R.EXISTS_WITH_DIFFERENT_LOWER_LIMIT_MINUTES,
                    R.EXISTS_WITH_DIFFERENT_UPPER_LIMIT_MINUTES,
                    R.EXISTS_WITH_DIFFERENT_REASON,
                    R.EXISTS_WITH_DIFFERENT_UPDATE_MASK,
                ),
                (R.ACCOUNT_NOT_FOUND, R.ACCOUNT_CLOSED),
            ),
            write=True,
        ),
        f"{_L}ChangeAccountMetadata": Answers(
            _then(
                ID,
                (R.INVALID_UPDATE_MASK, R.NOTHING_TO_CHANGE),
                TEXT,  # label, tag values, actor_label
                (R.TOO_MANY_TAGS, R.INVALID_TAG_KEY),
                (R.BANK_NOT_FOUND,),
                (
                    R.EXISTS_WITH_DIFFERENT_KIND,
                    R.EXISTS_WITH_DIFFERENT_ACCOUNT_ID,
                    R.EXISTS_WITH_DIFFERENT_LABEL,
                    R.EXISTS_WITH_DIFFERENT_TAGS,
                ),
                (R.ACCOUNT_NOT_FOUND, R.ACCOUNT_CLOSED),
            ),
            write=True,
        ),
        f"{_L}FreezeAccount": Answers(_status_change(R.ACCOUNT_NOT_OPEN), write=True),
        f"{_L}UnfreezeAccount": Answers(_status_change(R.ACCOUNT_NOT_FROZEN), write=True),
        f"{_L}CloseAccount": Answers(
            _status_change(R.ACCOUNT_HAS_BALANCE, R.ACCOUNT_HAS_PENDING), write=True
        ),
        f"{_L}CreateTransfer": Answers(
            _then(_NEW_TRANSFER_INPUT, (R.BANK_NOT_FOUND,), _NEW_TRANSFER_STATE), write=True
        ),
        f"{_L}CreateTransfers": Answers(
            _then(ID, (R.BATCH_EMPTY, R.BATCH_TOO_LARGE, R.BANK_NOT_FOUND)),
            write=True,
            items=_then(
                (R.DUPLICATE_ID_IN_BATCH,),
                _NEW_TRANSFER_INPUT,
                _NEW_TRANSFER_STATE,
                (R.LINKED_EVENT_FAILED,),
            ),
        ),
        f"{_L}PostPendingTransfer": Answers(
            _then(
                ID,
                (R.AMOUNT_NOT_POSITIVE, R.AMOUNT_TOO_LARGE),
                TEXT,
                (R.BANK_NOT_FOUND,),
                (
                    R.EXISTS_WITH_DIFFERENT_KIND,
                    R.EXISTS_WITH_DIFFERENT_TRANSFER_ID,
                    R.EXISTS_WITH_DIFFERENT_AMOUNT_MINUTES,
                ),
                _PENDING_RESOLVED,
                (
                    R.TRANSFER_IS_GRANT,
                    R.ACCOUNT_CLOSED,
                    R.ACCOUNT_FROZEN,
                    R.MEMBER_TOKEN_REQUIRED,
                    R.POST_AMOUNT_EXCEEDS_PENDING,
                ),
            ),
            write=True,
        ),
        f"{_L}VoidPendingTransfer": Answers(
            _then(
                ID,
                TEXT,
                (R.BANK_NOT_FOUND,),
                (
                    R.EXISTS_WITH_DIFFERENT_KIND,
                    R.EXISTS_WITH_DIFFERENT_TRANSFER_ID,
                    R.EXISTS_WITH_DIFFERENT_REASON,
                ),
                _PENDING_RESOLVED,
                (R.TRANSFER_IS_GRANT,),
            ),
            write=True,
        ),
        f"{_L}ReverseTransfer": Answers(
            _then(
                ID,
                (R.SAME_TRANSFER,),
                TEXT,
                (R.BANK_NOT_FOUND,),
                (
                    R.EXISTS_WITH_DIFFERENT_KIND,
                    R.EXISTS_WITH_DIFFERENT_REVERSES_TRANSFER_ID,
                    R.EXISTS_WITH_DIFFERENT_REASON,
                ),
                (
                    R.TRANSFER_NOT_FOUND,
                    R.CANNOT_REVERSE_REVERSAL,
                    R.TRANSFER_NOT_POSTED,
                    R.TRANSFER_ALREADY_REVERSED,
                    R.ACCOUNT_CLOSED,
                    R.EXCEEDS_LOWER_LIMIT,
                    R.EXCEEDS_UPPER_LIMIT,
                ),
            ),
            write=True,
        ),
        f"{_L}GetTransfer": Answers(
            _then(ID, (R.BANK_NOT_FOUND, R.TRANSFER_NOT_FOUND, R.MEMBER_TOKEN_REQUIRED))
        ),
        f"{_L}ListAccountTransfers": Answers(_then(ID, _TRANSFER_FILTER, PAGE, _READER)),
        f"{_L}ListPendingTransfers": Answers(_then(ID, (R.INVALID_PENDING_SIDE,), PAGE, _READER)),
        f"{_L}ListTransfers": Answers(_then(ID, _TRANSFER_FILTER, PAGE, (R.BANK_NOT_FOUND,))),
        f"{_V}GetAccountSummary": Answers(_then(ID, _READER, VIEW_READ, (R.ACCOUNT_NOT_FOUND,))),
        f"{_V}ListStatementEntries": Answers(
            _then(ID, _READER, PAGE, VIEW_READ, (R.ACCOUNT_NOT_FOUND,))
        ),
        f"{_V}GetBankReport": Answers(
            _then(ID, (R.INVALID_MONTH, R.INVALID_MONTH_RANGE, R.MONTH_RANGE_TOO_LARGE), VIEW_READ)
        ),
        # Issue 11, "measure what matters": keep with projections/impact_queries.py.
        f"{_V}GetImpactReport": Answers(
            _then(
                ID,
                (R.INVALID_MONTH, R.INVALID_MONTH_RANGE, R.MONTH_RANGE_TOO_LARGE),
                PAGE,
                VIEW_READ,
            )
        ),
        f"{_A}IssueApiKey": Answers(
            _then(
                ID,
                (R.INVALID_ROLE, R.ROLE_NOT_ALLOWED, R.INVALID_TIMESTAMP),
                TEXT,
                (R.INVALID_KEY, R.BANK_NOT_FOUND, R.ROLE_OUT_OF_SCOPE),
                (R.EXISTS_WITH_DIFFERENT_SECRET, R.API_KEYS_MAX_REACHED),
            ),
            write=True,
        ),
        f"{_A}RevokeApiKey": Answers(
            _then(ID, (R.API_KEY_NOT_FOUND, R.ROLE_NOT_ALLOWED), TEXT, (R.BANK_NOT_FOUND,)),
            write=True,
        ),
        f"{_A}ListApiKeys": Answers(_then(ID, PAGE, (R.BANK_NOT_FOUND,))),
        f"{_A}RegisterMemberTokenKey": Answers(
            _then(
                ID,
                (R.INVALID_PUBLIC_KEY,),
                TEXT,
                (R.INVALID_ALGORITHM, R.BANK_NOT_FOUND),
                (R.EXISTS_WITH_DIFFERENT_PUBLIC_KEY, R.MEMBER_TOKEN_KEYS_MAX_REACHED),
            ),
            write=True,
        ),
        f"{_A}RemoveMemberTokenKey": Answers(_then(ID, TEXT, (R.BANK_NOT_FOUND,)), write=True),
        f"{_A}ListMemberTokenKeys": Answers(_then(ID, (R.BANK_NOT_FOUND,))),
        # AuditService (issue 10): keep these with ledger/service/audit_servicer.py.
        f"{_U}StreamEvents": Answers(
            _then(
                ID,
                (R.INVALID_POSITION, R.BANK_NOT_FOUND, R.FOLLOW_ONLY, R.STREAMS_MAX_REACHED),
            )
        ),
        f"{_U}GetBalancesAsOf": Answers(_then(ID, _AS_OF, PAGE)),
        f"{_U}ListStatementEntriesAsOf": Answers(
            _then(ID, _AS_OF, (R.VIEWS_NOT_SERVED, R.VIEW_NOT_CAUGHT_UP), PAGE)
        ),
        f"{_U}GetCheckpoint": Answers(
            _then(ID, (R.INVALID_POSITION, R.BANK_NOT_FOUND, R.CHECKPOINT_NOT_FOUND))
        ),
        f"{_U}ListCheckpoints": Answers(_then(ID, (R.BANK_NOT_FOUND,), PAGE)),
        f"{_U}ListCheckpointKeys": Answers(_then(ID, (R.BANK_NOT_FOUND,))),
        # PoolService (issue 11): keep these with ledger/domain/pools.py.
        f"{_P}CreatePool": Answers(
            _then(
                ID,
                _POLICY,
                (R.INVALID_LIMIT,),
                TEXT,
                (R.BANK_NOT_FOUND,),
                (
                    R.EXISTS_WITH_DIFFERENT_KIND,
                    R.EXISTS_WITH_DIFFERENT_POOL_ACCOUNT_ID,
                    R.EXISTS_WITH_DIFFERENT_POLICY,
                    R.EXISTS_WITH_DIFFERENT_LOWER_LIMIT_MINUTES,
                    R.EXISTS_WITH_DIFFERENT_UPPER_LIMIT_MINUTES,
                    R.EXISTS_WITH_DIFFERENT_REASON,
                    R.ACCOUNT_ALREADY_EXISTS,
                ),
                _POLICY_NAMES,
            ),
            write=True,
        ),
        f"{_P}ChangePoolPolicy": Answers(
            _then(
                ID,
                _POLICY,
                TEXT,
                (R.BANK_NOT_FOUND,),
                (
                    R.EXISTS_WITH_DIFFERENT_KIND,
                    R.EXISTS_WITH_DIFFERENT_POOL_ACCOUNT_ID,
                    R.EXISTS_WITH_DIFFERENT_POLICY,
                    R.EXISTS_WITH_DIFFERENT_REASON,
                ),
                (R.POOL_NOT_FOUND, R.ACCOUNT_CLOSED),
                _POLICY_NAMES,
            ),
            write=True,
        ),
        f"{_P}RequestGrant": Answers(
            _then(
                ID,
                (R.SAME_ACCOUNT, R.AMOUNT_NOT_POSITIVE, R.AMOUNT_TOO_LARGE),
                TEXT,
                (R.BANK_NOT_FOUND,),
                (
                    R.EXISTS_WITH_DIFFERENT_KIND,
                    R.EXISTS_WITH_DIFFERENT_POOL_ACCOUNT_ID,
                    R.EXISTS_WITH_DIFFERENT_MEMBER_ACCOUNT_ID,
                    R.EXISTS_WITH_DIFFERENT_AMOUNT_MINUTES,
                    R.EXISTS_WITH_DIFFERENT_MEMO,
                    R.EXISTS_WITH_DIFFERENT_CATEGORY,
                ),
                (
                    R.POOL_NOT_FOUND,
                    R.ACCOUNT_NOT_FOUND,
                    R.ACCOUNT_CLOSED,
                    R.ACCOUNT_FROZEN,
                    R.DRAWER_NOT_ALLOWED,
                    R.MEMBER_TOKEN_REQUIRED,
                    R.EXCEEDS_MEMBER_CAP,
                    R.EXCEEDS_POOL_FLOOR,
                    R.EXCEEDS_LOWER_LIMIT,
                    R.EXCEEDS_UPPER_LIMIT,
                ),
            ),
            write=True,
        ),
        f"{_P}ApproveGrant": Answers(
            _decision(
                R.NOT_GRANT_APPROVER,
                R.OWN_GRANT_REQUEST,
                R.APPROVER_ALREADY_DECIDED,
                R.ACCOUNT_CLOSED,
                R.ACCOUNT_FROZEN,
            ),
            write=True,
        ),
        f"{_P}RejectGrant": Answers(
            _decision(R.NOT_GRANT_APPROVER, R.OWN_GRANT_REQUEST, R.APPROVER_ALREADY_DECIDED),
            write=True,
        ),
        f"{_P}CancelGrant": Answers(_decision(R.NOT_GRANT_REQUESTER), write=True),
        f"{_P}GetPool": Answers(_then(ID, (R.BANK_NOT_FOUND, R.POOL_NOT_FOUND))),
        f"{_P}GetPoolBudget": Answers(
            _then(
                ID,
                (R.INVALID_MONTH, R.INVALID_MONTH_RANGE, R.MONTH_RANGE_TOO_LARGE),
                (R.VIEWS_NOT_SERVED,),
                VIEW_READ,
                (R.POOL_NOT_FOUND,),
            )
        ),
        f"{_P}ListGrantRequests": Answers(
            _then(
                ID,
                (R.INVALID_GRANT_STATE,),
                PAGE,
                (R.BANK_NOT_FOUND, R.POOL_NOT_FOUND),
            )
        ),
        f"{_P}ListRequestsAwaitingApprover": Answers(
            _then(ID, (R.INVALID_APPROVER,), PAGE, (R.BANK_NOT_FOUND,))
        ),
        f"{_A}SetBankPolicy": Answers(
            _then(
                ID,
                TEXT,
                (R.BANK_NOT_FOUND,),
                (R.EXISTS_WITH_DIFFERENT_KIND, R.EXISTS_WITH_DIFFERENT_MEMBER_TOKENS_REQUIRED),
            ),
            write=True,
        ),
    }
)


def answered_anywhere() -> set[Reason]:
    """Every reason some call can answer: the groups and every RPC's own."""
    found = {*EDGE, *ANY_CALL, *HEALTH_LIST, *WRITE_PATH, *ID, *VIEW_READ}
    for answers in ANSWERS.values():
        found.update(answers.reasons, answers.items)
    return found

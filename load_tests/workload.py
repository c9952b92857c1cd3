"""The scenarios: which calls a generator sends, against which accounts, and the bank set-up.

Every call is serialized before the clock starts, so the generator spends its time sending,
not building messages. Ids are unique per step and generator process (`id_prefix`), so no
call is an idempotent retry of another.

- uniform: CreateTransfer between two distinct members drawn at random;
- hot: CreateTransfer between the pool account and a random member, the pool paying or
  being paid with equal odds: every transfer touches the one hot account;
- batch: CreateTransfers with `transfers_per_request` independent (not linked) uniform items;
- mixed: `read_fraction` of calls read (half GetAccount, half ListAccountTransfers of a
  random member), the rest are uniform CreateTransfer calls;
- pool: a community pot on every transfer: half the calls give to it (CreateTransfer from a
  random member), half are grants from it to a random member (PoolService.RequestGrant, paid
  at once: no approvals, within a monthly cap per member that the load never reaches);
- echo: the uniform scenario's request bytes sent to the echo server (baseline a).
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import grpc

from timebank.ledger.v1 import ledger_pb2 as pb
from timebank.ledger.v1 import ledger_pb2_grpc as pb_grpc

Kind = Literal["uniform", "hot", "batch", "mixed", "pool", "echo"]

# Members may owe and hold as much as the API allows: the load never hits a limit.
lower_limit_minutes = -1_000_000_000_000
pool_account_id = "pool"
# The pool scenario's pot: a pool with a policy (the hot scenario's "pool" has none).
pot_account_id = "community-pot"
# Its cap per member per month: checked on every grant, never reached by the load.
pot_cap_minutes = 1_000_000_000
amount_minutes_max = 120
setup_calls_in_flight_max = 64
setup_call_timeout_seconds = 30.0

_ledger_service = pb.DESCRIPTOR.services_by_name["LedgerService"].full_name
# Named, not imported: the generators send bytes, and older commits have no pools.proto.
_pool_service = "timebank.ledger.v1.PoolService"
# The echo server's one method (echo_server.py). Defined here so that the generator processes,
# which import this module, never import the ledger's own code.
echo_service_name = "load_tests.v1.EchoService"
echo_method_name = "Echo"


def _ledger_path(method: str) -> str:
    return f"/{_ledger_service}/{method}"


# Operations by index; a generator keeps latencies per operation.
op_names = (
    "CreateTransfer",
    "CreateTransfers",
    "GetAccount",
    "ListAccountTransfers",
    "Echo",
    "RequestGrant",
)
op_paths = (
    *(_ledger_path(name) for name in op_names[:4]),
    f"/{echo_service_name}/{echo_method_name}",
    f"/{_pool_service}/RequestGrant",
)
(
    OP_CREATE_TRANSFER,
    OP_CREATE_TRANSFERS,
    OP_GET_ACCOUNT,
    OP_LIST_TRANSFERS,
    OP_ECHO,
    OP_REQUEST_GRANT,
) = range(6)


@dataclass(frozen=True)
class Workload:
    """What one scenario sends; picklable, so each generator process builds its own calls."""

    kind: Kind
    bank_id: str
    member_count: int
    transfers_per_request: int = 1
    read_fraction: float = 0.0
    page_size: int = 20
    # The bank-admin key every call presents ("" for a server without keys: older code).
    token: str = ""

    def __post_init__(self) -> None:
        assert self.member_count >= 2, "transfers need two distinct members"
        assert 1 <= self.transfers_per_request <= 1000, "the API takes 1 to 1,000 per request"
        assert 0.0 <= self.read_fraction <= 1.0


@dataclass(frozen=True, slots=True)
class Call:
    """One serialized request: which operation, its bytes, and the transfers it asks for."""

    op: int
    payload: bytes
    transfers: int


def member_id(index: int) -> str:
    return f"m{index:05d}"


def call_metadata(token: str) -> tuple[tuple[str, str], ...] | None:
    """What every call presents: the API key, if the server has keys."""
    return (("authorization", f"Bearer {token}"),) if token else None


# The request field for who acted is `actor_label` since keys arrived (the actor itself is
# the authenticated key), `actor` before: the harness measures code from before and after.
_label = (
    "actor_label"
    if "actor_label" in pb.CreateTransferRequest.DESCRIPTOR.fields_by_name
    else "actor"
)


def _labelled(**fields: Any) -> dict[str, Any]:
    return {**fields, _label: "load-test"}


def build_calls(workload: Workload, count: int, id_prefix: str, seed: int) -> list[Call]:
    """`count` calls of the scenario, deterministic for a seed; ids start with id_prefix."""
    rng = random.Random(seed)
    return [_call(workload, f"{id_prefix}-{index}", rng) for index in range(count)]


def _call(workload: Workload, transfer_id: str, rng: random.Random) -> Call:
    kind = workload.kind
    if kind == "batch":
        items = [
            _new_transfer(workload, f"{transfer_id}-{item}", rng)
            for item in range(workload.transfers_per_request)
        ]
        request = pb.CreateTransfersRequest(bank_id=workload.bank_id, transfers=items)
        return Call(OP_CREATE_TRANSFERS, request.SerializeToString(), len(items))
    if kind == "mixed" and rng.random() < workload.read_fraction:
        return _read(workload, rng)
    if kind == "pool" and rng.random() < 0.5:
        return _grant(workload, transfer_id, rng)
    payer, payee = _pair(workload, rng)
    transfer = pb.CreateTransferRequest(
        **_labelled(
            bank_id=workload.bank_id,
            transfer_id=transfer_id,
            payer_account_id=payer,
            payee_account_id=payee,
            amount_minutes=rng.randint(1, amount_minutes_max),
            memo="help with the shopping",
            category="errands",
            service_date="2025-05-17",
        )
    )
    op = OP_ECHO if kind == "echo" else OP_CREATE_TRANSFER
    return Call(op, transfer.SerializeToString(), 1)


def _new_transfer(workload: Workload, transfer_id: str, rng: random.Random) -> pb.NewTransfer:
    payer, payee = _pair(workload, rng)
    return pb.NewTransfer(
        **_labelled(
            transfer_id=transfer_id,
            payer_account_id=payer,
            payee_account_id=payee,
            amount_minutes=rng.randint(1, amount_minutes_max),
            memo="help with the shopping",
            category="errands",
            service_date="2025-05-17",
        )
    )


def _grant(workload: Workload, grant_id: str, rng: random.Random) -> Call:
    from timebank.ledger.v1 import pools_pb2  # not there in commits before pools

    request = pools_pb2.RequestGrantRequest(
        bank_id=workload.bank_id,
        grant_id=grant_id,
        pool_account_id=pot_account_id,
        member_account_id=member_id(rng.randrange(workload.member_count)),
        amount_minutes=rng.randint(1, amount_minutes_max),
        memo="lifts to the surgery",
        category="transport",
        actor_label="load-test",
    )
    return Call(OP_REQUEST_GRANT, request.SerializeToString(), 1)


def _pair(workload: Workload, rng: random.Random) -> tuple[str, str]:
    if workload.kind == "hot":
        member = member_id(rng.randrange(workload.member_count))
        return (pool_account_id, member) if rng.random() < 0.5 else (member, pool_account_id)
    if workload.kind == "pool":
        return member_id(rng.randrange(workload.member_count)), pot_account_id
    payer, payee = rng.sample(range(workload.member_count), 2)
    return member_id(payer), member_id(payee)


def _read(workload: Workload, rng: random.Random) -> Call:
    account_id = member_id(rng.randrange(workload.member_count))
    if rng.random() < 0.5:
        get = pb.GetAccountRequest(bank_id=workload.bank_id, account_id=account_id)
        return Call(OP_GET_ACCOUNT, get.SerializeToString(), 0)
    listing = pb.ListAccountTransfersRequest(
        bank_id=workload.bank_id, account_id=account_id, page_size=workload.page_size
    )
    return Call(OP_LIST_TRANSFERS, listing.SerializeToString(), 0)


def transfers_recorded(op: int, response: bytes, item_errors: Counter[str]) -> int:
    """How many transfers an OK response recorded; refused batch items go to item_errors."""
    if op in (OP_CREATE_TRANSFER, OP_REQUEST_GRANT):
        return 1
    if op != OP_CREATE_TRANSFERS:
        return 0
    recorded = 0
    for result in pb.CreateTransfersResponse.FromString(response).results:
        if result.WhichOneof("result") == "transfer":
            recorded += 1
        else:
            item_errors[result.error.reason] += 1
    return recorded


# ------------------------------------------------------------------------------ set-up


def operator_token(keys_file: Path) -> str:
    """The operator key a server wrote at its first start ("" if it wrote none: older code)."""
    if not keys_file.exists():
        return ""
    token: str = json.loads(keys_file.read_text())["operator"]
    return token


async def prepare_bank(
    address: str, workload: Workload, operator: str = "", *, existing: bool = False
) -> str:
    """Creates the scenario's bank, its members and the pool account (idempotent), unless it
    exists already; returns the key its calls present: a bank-admin key the operator issues
    ("" on a server without keys)."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.LedgerServiceStub(channel)
        token = ""
        if operator:
            as_operator = call_metadata(operator)
            if not existing:
                await stub.CreateBank(
                    pb.CreateBankRequest(bank_id=workload.bank_id, name="Load test"),
                    timeout=setup_call_timeout_seconds,
                    metadata=as_operator,
                )
            token = await _bank_admin_key(channel, workload.bank_id, operator)
        elif not existing:
            await stub.CreateBank(
                pb.CreateBankRequest(**_labelled(bank_id=workload.bank_id, name="Load test")),
                timeout=setup_call_timeout_seconds,
            )
        if existing:
            return token
        slots = asyncio.Semaphore(setup_calls_in_flight_max)
        metadata = call_metadata(token)

        async def open_account(account_id: str, kind: pb.AccountKind.ValueType) -> None:
            async with slots:
                await stub.OpenAccount(
                    pb.OpenAccountRequest(
                        **_labelled(
                            bank_id=workload.bank_id,
                            account_id=account_id,
                            kind=kind,
                            lower_limit_minutes=lower_limit_minutes,
                        )
                    ),
                    timeout=setup_call_timeout_seconds,
                    metadata=metadata,
                )

        opening = [open_account(pool_account_id, pb.ACCOUNT_KIND_POOL)]
        opening += [
            open_account(member_id(index), pb.ACCOUNT_KIND_MEMBER)
            for index in range(workload.member_count)
        ]
        await asyncio.gather(*opening)
        if workload.kind == "pool":
            await _create_pot(channel, workload.bank_id, metadata)
        return token


async def _create_pot(
    channel: grpc.aio.Channel, bank_id: str, metadata: tuple[tuple[str, str], ...] | None
) -> None:
    """The pool scenario's pot: anyone gives, any member draws, capped, paid at once."""
    from timebank.ledger.v1 import pools_pb2, pools_pb2_grpc

    policy = pools_pb2.PoolPolicy(
        contributors=pools_pb2.CONTRIBUTOR_RULE_ANYONE,
        drawers=pools_pb2.DRAWER_RULE_ANY_MEMBER,
        cap_minutes=pot_cap_minutes,
        cap_period=pools_pb2.CAP_PERIOD_CALENDAR_MONTH,
        # Grants may take it as low as a member may go: the load's random walk never stops.
        floor_minutes=lower_limit_minutes,
        approvals_required=0,
    )
    await pools_pb2_grpc.PoolServiceStub(channel).CreatePool(
        pools_pb2.CreatePoolRequest(
            bank_id=bank_id,
            request_id="load-test-pot",
            pool_account_id=pot_account_id,
            policy=policy,
            lower_limit_minutes=lower_limit_minutes,
            reason="load test",
            actor_label="load-test",
        ),
        timeout=setup_call_timeout_seconds,
        metadata=metadata,
    )


async def _bank_admin_key(channel: grpc.aio.Channel, bank_id: str, operator: str) -> str:
    # Imported here: the access service's generated code is not there in older commits.
    from timebank.ledger.v1 import access_pb2, access_pb2_grpc

    issued = await access_pb2_grpc.AccessServiceStub(channel).IssueApiKey(
        access_pb2.IssueApiKeyRequest(
            bank_id=bank_id, role=access_pb2.ROLE_BANK_ADMIN, label="load test"
        ),
        timeout=setup_call_timeout_seconds,
        metadata=call_metadata(operator),
    )
    token: str = issued.token
    return token


async def bank_transfer_count(address: str, bank_id: str, token: str = "") -> int:
    """The number of transfers the bank has recorded, read back from the server."""
    async with grpc.aio.insecure_channel(address) as channel:
        response = await pb_grpc.LedgerServiceStub(channel).GetBank(
            pb.GetBankRequest(bank_id=bank_id),
            timeout=setup_call_timeout_seconds,
            metadata=call_metadata(token),
        )
        return response.bank.transfer_count

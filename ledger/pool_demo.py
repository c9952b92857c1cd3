"""The pool walkthrough client (issue 11): a community pot from creation to a posted grant.

Against a server that `serve` started (its keys file), in the demo bank: the coordinator (the
demo bank's admin key) creates the garden pot, whose grants need one approval, the
coordinator's; the surgery, an organisation, gives it five hours and Ben an hour; the bank's
front-end (a member-app key issued for the walk and revoked after it) asks for an hour and a
half for Ana; the coordinator sees the request waiting and approves it; the grant posts. It
ends with the pot's budget (the budgets view): contributed, granted, remaining, and each
giver's share, from which the grant was drawn in proportion. Every id of
the pot is fixed, so running it again records nothing new about it (only the front-end key
of the walk is issued and revoked again) and answers with the grant as it was posted.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import grpc

from ledger.demo import Metadata, _describe, bearer, demo_call_timeout_seconds, hours
from ledger.service.bootstrap import KeysFile, demo_bank_id
from timebank.ledger.v1 import access_pb2 as apb
from timebank.ledger.v1 import access_pb2_grpc as apb_grpc
from timebank.ledger.v1 import ledger_pb2 as pb
from timebank.ledger.v1 import ledger_pb2_grpc as pb_grpc
from timebank.ledger.v1 import pools_pb2 as ppb
from timebank.ledger.v1 import pools_pb2_grpc as ppb_grpc

pool_demo_connect_timeout_seconds = 5.0
pot_id = "garden-pot"
_state_names = {
    ppb.GRANT_STATE_PENDING: "pending",
    ppb.GRANT_STATE_POSTED: "posted",
    ppb.GRANT_STATE_VOIDED: "voided",
    ppb.GRANT_STATE_EXPIRED: "expired",
}


def pool_demo(address: str, keys_path: Path | None, ca_file: Path | None = None) -> int:
    """Runs the pool walkthrough against the server at `address`; 0 if it went through."""
    if keys_path is None or not keys_path.exists():
        print("no keys file: start the server once with `timebank-ledger serve`, then run `demo`")
        return 1
    keys = KeysFile.read(keys_path)
    if ca_file is None:
        channel = grpc.insecure_channel(address)
    else:
        credentials = grpc.ssl_channel_credentials(root_certificates=ca_file.read_bytes())
        channel = grpc.secure_channel(address, credentials)
    with channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=pool_demo_connect_timeout_seconds)
        except grpc.FutureTimeoutError:
            print(f"cannot reach a ledger at {address}; start one with `timebank-ledger serve`")
            return 1
        try:
            _walk_through(channel, keys.bank_admins[demo_bank_id])
        except grpc.RpcError as error:
            print(f"the ledger refused: {_describe(error)}")
            return 1
    return 0


def _walk_through(channel: grpc.Channel, admin_token: str) -> None:
    timeout = demo_call_timeout_seconds
    admin = bearer(admin_token)
    admin_key_id = admin_token.split("_")[1]
    ledger = pb_grpc.LedgerServiceStub(channel)
    pools = ppb_grpc.PoolServiceStub(channel)
    access = apb_grpc.AccessServiceStub(channel)
    # Ana and Ben (members, from `demo`) and the surgery, an organisation taking part.
    for account_id, kind in (
        ("ana", pb.ACCOUNT_KIND_MEMBER),
        ("ben", pb.ACCOUNT_KIND_MEMBER),
        ("surgery", pb.ACCOUNT_KIND_ORGANISATION),
    ):
        ledger.OpenAccount(
            pb.OpenAccountRequest(
                bank_id=demo_bank_id, account_id=account_id, kind=kind, lower_limit_minutes=-600
            ),
            timeout=timeout,
            metadata=admin,
        )
    # The coordinator creates the pot: any member may draw up to two hours a month, the pot
    # keeps an hour in reserve, and each grant needs one approval: the coordinator's.
    policy = ppb.PoolPolicy(
        contributors=ppb.CONTRIBUTOR_RULE_ANYONE,
        drawers=ppb.DRAWER_RULE_ANY_MEMBER,
        cap_minutes=120,
        cap_period=ppb.CAP_PERIOD_CALENDAR_MONTH,
        time_zone="Europe/London",
        floor_minutes=60,
        approvers=[f"key:{admin_key_id}"],
        approvals_required=1,
        request_expiry_seconds=7 * 24 * 3600,
    )
    pool = pools.CreatePool(
        ppb.CreatePoolRequest(
            bank_id=demo_bank_id,
            request_id="demo-pot-created",
            pool_account_id=pot_id,
            policy=policy,
            reason="community garden pot",
        ),
        timeout=timeout,
        metadata=admin,
    ).pool
    print(f"Pool {pool.account.account_id}: cap {hours(policy.cap_minutes)} a month per member,")
    print(f"  floor {hours(policy.floor_minutes)}, 1 approval of {list(policy.approvers)}")
    # The surgery gives five hours, Ben one: ordinary transfers into the pool.
    for giver, minutes in (("surgery", 300), ("ben", 60)):
        ledger.CreateTransfer(
            pb.CreateTransferRequest(
                bank_id=demo_bank_id,
                transfer_id=f"demo-pot-gift-{giver}",
                payer_account_id=giver,
                payee_account_id=pot_id,
                amount_minutes=minutes,
                memo=f"{giver}'s gift to the garden pot",
            ),
            timeout=timeout,
            metadata=admin,
        )
    # The front-end asks for an hour and a half for Ana, with a key of its own.
    app = access.IssueApiKey(
        apb.IssueApiKeyRequest(bank_id=demo_bank_id, role=apb.ROLE_MEMBER_APP, label="pool demo"),
        timeout=timeout,
        metadata=admin,
    )
    try:
        grant = pools.RequestGrant(
            ppb.RequestGrantRequest(
                bank_id=demo_bank_id,
                grant_id="demo-pot-grant-ana-seeds",
                pool_account_id=pot_id,
                member_account_id="ana",
                amount_minutes=90,
                memo="seeds and tools for the shared beds",
            ),
            timeout=timeout,
            metadata=bearer(app.token),
        ).grant
    finally:
        access.RevokeApiKey(
            apb.RevokeApiKeyRequest(
                bank_id=demo_bank_id, key_id=app.key.key_id, reason="pool demo done"
            ),
            timeout=timeout,
            metadata=admin,
        )
    print(
        f"  {grant.member_account_id} asked for {hours(grant.amount_minutes)}:"
        f" grant {grant.grant_id}"
    )
    # The coordinator sees what awaits them, and approves.
    waiting = pools.ListRequestsAwaitingApprover(
        ppb.ListRequestsAwaitingApproverRequest(
            bank_id=demo_bank_id, approver=f"key:{admin_key_id}"
        ),
        timeout=timeout,
        metadata=admin,
    )
    print(f"  awaiting the coordinator: {[g.grant_id for g in waiting.grants]}")
    approved = pools.ApproveGrant(
        ppb.ApproveGrantRequest(
            bank_id=demo_bank_id,
            request_id="demo-pot-grant-ana-seeds-approved",
            pool_account_id=pot_id,
            grant_id=grant.grant_id,
        ),
        timeout=timeout,
        metadata=admin,
    )
    grant = approved.grant
    print(f"  approved by {list(grant.approvals)}: {_state_names[grant.state]}")
    pool = pools.GetPool(
        ppb.GetPoolRequest(bank_id=demo_bank_id, pool_account_id=pot_id),
        timeout=timeout,
        metadata=admin,
    ).pool
    print(
        f"Pool balance {hours(pool.account.balance_minutes)}, {pool.open_grant_count} requests open"
    )
    _print_budget(pools, admin, approved.position)


def _print_budget(pools: ppb_grpc.PoolServiceStub, admin: Metadata, position: int) -> None:
    """The pot's budget as the budgets view has it, once it has applied the grant."""
    month = datetime.now(UTC).strftime("%Y-%m")
    try:
        budget = pools.GetPoolBudget(
            ppb.GetPoolBudgetRequest(
                bank_id=demo_bank_id,
                pool_account_id=pot_id,
                from_month=month,
                to_month=month,
                min_position=position,
            ),
            timeout=demo_call_timeout_seconds,
            metadata=admin,
        ).budget
    except grpc.RpcError as error:
        if isinstance(error, grpc.Call) and error.code() == grpc.StatusCode.UNAVAILABLE:
            print(f"Budget: not available here ({_describe(error)})")
            return
        raise
    print(f"Budget of {budget.pool_account_id} ({budget.time_zone}, {budget.as_of_day}):")
    print(
        f"  contributed {hours(budget.contributed_minutes)},"
        f" granted {hours(budget.granted_minutes)},"
        f" remaining {hours(budget.remaining_minutes)}"
    )
    for share in budget.contributors:
        print(
            f"  {share.contributor_account_id} gave {hours(share.contributed_minutes)}:"
            f" used {hours(share.used_minutes)}, left {hours(share.left_minutes)}"
        )

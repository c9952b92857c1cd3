"""The walkthrough client: a bank, two members, Ben pays Ana 90 minutes for garden help.

It uses the keys `serve` wrote at its first start (the operator key to create the bank,
the demo bank's admin key for the rest). Every id it sends is fixed, so running it again
records nothing new and prints the same thing: that is idempotency at work.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from ledger.service.bootstrap import KeysFile, demo_bank_id, demo_bank_name
from timebank.ledger.v1 import ledger_pb2 as pb
from timebank.ledger.v1 import ledger_pb2_grpc as pb_grpc

demo_members = (("ana", "Ana"), ("ben", "Ben"))
# Members may go up to ten hours into debt: mutual credit starts everyone at zero.
demo_lower_limit_minutes = -600
demo_connect_timeout_seconds = 5.0
demo_call_timeout_seconds = 10.0

Metadata = tuple[tuple[str, str | bytes], ...]


def bearer(token: str) -> Metadata:
    return (("authorization", f"Bearer {token}"),)


def demo(address: str, keys_path: Path | None, ca_file: Path | None = None) -> int:
    """Runs the walkthrough against the server at `address`; 0 if it went through."""
    if keys_path is None or not keys_path.exists():
        print(
            f"no keys file{f' at {keys_path}' if keys_path else ''}: start the server once"
            " with `timebank-ledger serve` (it writes one on the embedded default), or pass"
            " --keys-file"
        )
        return 1
    keys = KeysFile.read(keys_path)
    if ca_file is None:
        channel = grpc.insecure_channel(address)
    else:
        credentials = grpc.ssl_channel_credentials(root_certificates=ca_file.read_bytes())
        channel = grpc.secure_channel(address, credentials)
    with channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=demo_connect_timeout_seconds)
        except grpc.FutureTimeoutError:
            print(f"cannot reach a ledger at {address}; start one with `timebank-ledger serve`")
            return 1
        try:
            _walk_through(pb_grpc.LedgerServiceStub(channel), keys)
        except grpc.RpcError as error:
            print(f"the ledger refused: {_describe(error)}")
            return 1
    return 0


def _describe(error: grpc.RpcError) -> str:
    # Errors raised by a call are also grpc.Call objects, which carry the status.
    if isinstance(error, grpc.Call):
        return f"{error.code().name}: {error.details()}"
    return str(error)


def _walk_through(ledger: pb_grpc.LedgerServiceStub, keys: KeysFile) -> None:
    timeout = demo_call_timeout_seconds
    admin = bearer(keys.bank_admins[demo_bank_id])
    # A time bank, chosen by id (the operator's call): creating it again returns the same bank.
    bank = ledger.CreateBank(
        pb.CreateBankRequest(bank_id=demo_bank_id, name=demo_bank_name, actor_label="demo"),
        timeout=timeout,
        metadata=bearer(keys.operator),
    ).bank
    print(f"{bank.name} (bank {bank.bank_id})")

    # Two members, each allowed to owe up to ten hours.
    for account_id, _name in demo_members:
        ledger.OpenAccount(
            pb.OpenAccountRequest(
                bank_id=demo_bank_id,
                account_id=account_id,
                kind=pb.ACCOUNT_KIND_MEMBER,
                lower_limit_minutes=demo_lower_limit_minutes,
                actor_label="demo",
            ),
            timeout=timeout,
            metadata=admin,
        )

    # Ana spent an hour and a half helping Ben in his garden: Ben pays her 90 minutes.
    transfer = ledger.CreateTransfer(
        pb.CreateTransferRequest(
            bank_id=demo_bank_id,
            transfer_id="demo-garden-2025-05-17",
            payer_account_id="ben",
            payee_account_id="ana",
            amount_minutes=90,
            memo="help in the garden",
            category="gardening",
            service_date="2025-05-17",
            actor_label="demo",
        ),
        timeout=timeout,
        metadata=admin,
    ).transfer
    print(
        f"  {transfer.service_date}: {transfer.payer_account_id} paid {transfer.payee_account_id}"
        f" {hours(transfer.amount_minutes)}"
        f" for {transfer.memo} (transfer {transfer.transfer_id})"
    )

    # Everyone's balance, read back from the ledger.
    print("Balances:")
    for account_id, name in demo_members:
        account = ledger.GetAccount(
            pb.GetAccountRequest(bank_id=demo_bank_id, account_id=account_id),
            timeout=timeout,
            metadata=admin,
        ).account
        print(
            f"  {name:<4} {hours(account.balance_minutes, signed=True):>9}"
            f"   (may still spend {hours(account.available_minutes)})"
        )


def hours(minutes: int, *, signed: bool = False) -> str:
    """90 -> "1h 30m"; with signed, -90 -> "-1h 30m" and 90 -> "+1h 30m"."""
    whole, rest = divmod(abs(minutes), 60)
    sign = "-" if minutes < 0 else "+" if signed and minutes > 0 else ""
    return f"{sign}{whole}h {rest:02d}m"

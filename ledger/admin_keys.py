"""`timebank-ledger keys`: the operator's part of key management, run against the store.

    keys create --role operator [--label TEXT] [--expires-in-days N]
    keys create --role bank-admin --bank ID [--label TEXT] [--expires-in-days N]
    keys list [--bank ID]                    # operator keys, or one bank's keys
    keys revoke KEY_ID [--bank ID] [--reason TEXT]

A new key's token is printed once, on standard output, and kept nowhere; everything else
goes to standard error. The events record the command line's user as the actor.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from datetime import UTC, datetime, timedelta

from ledger.application.ledger import Ledger
from ledger.config import Settings
from ledger.domain.commands import RevokeApiKey
from ledger.domain.errors import DomainError
from ledger.security.api_keys import issue_key
from ledger.security.roles import Role
from ledger.service.bootstrap import operator_key_command

# Roles the command line issues: the operator's own keys and a bank's first admin keys.
cli_roles = (Role.OPERATOR.value, Role.BANK_ADMIN.value)


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = commands.add_parser("keys", help="create, list and revoke API keys in the store")
    actions = keys.add_subparsers(dest="keys_command", required=True)
    create = actions.add_parser("create", help="issue a key; its token is printed once")
    create.add_argument("--role", required=True, choices=cli_roles)
    create.add_argument("--bank", help="the bank of a bank-admin key")
    create.add_argument("--label", default="", help="what the key is for")
    create.add_argument("--expires-in-days", type=int, help="default: it does not expire")
    listing = actions.add_parser("list", help="list keys (without secrets)")
    listing.add_argument("--bank", help="a bank's keys (default: the operator keys)")
    revoke = actions.add_parser("revoke", help="revoke a key")
    revoke.add_argument("key_id")
    revoke.add_argument("--bank", help="the bank of a bank key (default: an operator key)")
    revoke.add_argument("--reason", default="")


def run(settings: Settings, args: argparse.Namespace) -> int:
    actor = f"cli:{getpass.getuser()}"[:128]
    ledger = Ledger(settings)
    try:
        if args.keys_command == "create":
            return _create(ledger, args, actor)
        if args.keys_command == "list":
            return _list(ledger, args.bank)
        return _revoke(ledger, args, actor)
    except (DomainError, ValueError) as error:
        print(f"timebank-ledger keys: {error}", file=sys.stderr)
        return 1
    finally:
        ledger.close()


def _create(ledger: Ledger, args: argparse.Namespace, actor: str) -> int:
    role = Role(args.role)
    if (role is Role.OPERATOR) != (args.bank is None):
        print("an operator key has no --bank; a bank-admin key needs one", file=sys.stderr)
        return 2
    now = datetime.now(UTC)
    expires_at = (
        None if args.expires_in_days is None else now + timedelta(days=args.expires_in_days)
    )
    issued = issue_key(
        role, args.bank or "", label=args.label, created_by=actor, now=now, expires_at=expires_at
    )
    command = operator_key_command(issued, actor)
    if role is Role.OPERATOR:
        ledger.issue_operator_key(command)
    else:
        ledger.execute(args.bank, command)
    print(
        f"issued {role.value} key {issued.record.key_id}; its token (shown once):", file=sys.stderr
    )
    print(issued.token)
    return 0


def _list(ledger: Ledger, bank_id: str | None) -> int:
    token = ""
    while True:
        keys, token = ledger.api_keys(bank_id, 0, token)
        for key in keys:
            state = f"revoked {key.revoked_at:%Y-%m-%d}" if key.revoked_at else "active"
            expiry = f" expires {key.expires_at:%Y-%m-%d}" if key.expires_at else ""
            print(f"{key.key_id}  {key.role:<15} {state}{expiry}  {key.label}")
        if not token:
            return 0


def _revoke(ledger: Ledger, args: argparse.Namespace, actor: str) -> int:
    command = RevokeApiKey(key_id=args.key_id, reason=args.reason, actor=actor)
    if args.bank is None:
        ledger.revoke_operator_key(command)
    else:
        ledger.execute(args.bank, command)
    print(f"revoked key {args.key_id}", file=sys.stderr)
    return 0

"""The command line for auditors and for moving banks (issue 10), beside ledger/cli.py.

    timebank-ledger verify --bank ID [--public-key PEM]... [--expect-head P:HASH]...
        # the bank's history in the store (LEDGER_DATABASE_URL), with its signed checkpoints
    timebank-ledger verify --server HOST:PORT --bank ID [--ca-file PEM] [--key-file FILE]
                           [--public-key PEM]... [--expect-head P:HASH]...
        # through AuditService, as an auditor: an auditor key (--key-file, or the
        # TIMEBANK_LEDGER_API_KEY environment variable), TLS with --ca-file
    timebank-ledger verify --file EXPORT [--public-key PEM]... [--expect-head P:HASH]...
        # an export file, with nothing else
    timebank-ledger export --bank ID [--out FILE]      # JSON lines; standard output by default
    timebank-ledger import FILE [--public-key PEM]...  # into this deployment's store
    timebank-ledger signing-key public                 # the checkpoint key to publish
    timebank-ledger signing-key create --out FILE      # a new key, for rotation

The verifying itself is ledger/verifier.py's, the module an auditor can take away alone.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ledger import verifier
from ledger.config import ConfigError, Settings

api_key_variable = "TIMEBANK_LEDGER_API_KEY"
# How long a --server verification may take at most (a whole history, streamed).
server_timeout_seconds = 6 * 3600.0
connect_timeout_seconds = 10.0


def add_verify_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", metavar="HOST:PORT", help="verify through AuditService")
    parser.add_argument("--file", type=Path, metavar="EXPORT", help="verify an export file")
    parser.add_argument(
        "--key-file", type=Path, help=f"file holding the auditor key (or ${api_key_variable})"
    )
    parser.add_argument("--ca-file", type=Path, help="the server's CA (PEM), to connect by TLS")
    parser.add_argument(
        "--public-key",
        type=Path,
        action="append",
        default=[],
        metavar="PEM",
        help="a public key checkpoints may be signed with (repeatable)",
    )
    parser.add_argument(
        "--expect-head",
        action="append",
        default=[],
        metavar="POSITION:HASH",
        help="a chain head saved earlier (repeatable)",
    )


def add_parsers(commands: Any) -> None:
    export_parser = commands.add_parser("export", help="write a bank's history to a file")
    export_parser.add_argument("--bank", required=True, metavar="ID")
    export_parser.add_argument("--out", type=Path, help="default: standard output")
    import_parser = commands.add_parser(
        "import", help="verify an export and load its bank into this deployment"
    )
    import_parser.add_argument("file", type=Path, metavar="FILE")
    import_parser.add_argument(
        "--public-key", type=Path, action="append", default=[], metavar="PEM"
    )
    key_parser = commands.add_parser("signing-key", help="the checkpoint signing key")
    key_commands = key_parser.add_subparsers(dest="key_command", required=True)
    key_commands.add_parser("public", help="print the public key to publish (PEM) and its id")
    create_parser = key_commands.add_parser("create", help="make a new key file (rotation)")
    create_parser.add_argument("--out", type=Path, required=True)


def public_keys(paths: list[Path]) -> dict[str, Ed25519PublicKey]:
    try:
        return verifier.public_keys_by_id(path.read_bytes() for path in paths)
    except (OSError, ValueError) as error:
        raise ConfigError(f"--public-key: {error}") from None


def expected_heads(texts: list[str]) -> list[tuple[int, str]]:
    try:
        return [verifier.parse_expected_head(text) for text in texts]
    except ValueError as error:
        raise ConfigError(f"--expect-head: {error}") from None


# ----------------------------------------------------------------- verify --server / --file


def verify_remote(args: argparse.Namespace) -> int:
    """`verify --server` or `verify --file`: prints the report; 1 if it fails."""
    keys = public_keys(args.public_key)
    heads = expected_heads(args.expect_head)
    if args.file is not None:
        try:
            _, report = verifier.verify_export(args.file, public_keys=keys, expected_heads=heads)
        except (OSError, verifier.ExportError) as error:
            raise ConfigError(f"--file {args.file}: {error}") from None
    else:
        if not args.banks or len(args.banks) != 1:
            raise ConfigError("verify --server needs one --bank")
        report = _verify_server(args, args.banks[0], keys, heads)
    print("\n".join(report.summary()))
    return 0 if report.ok else 1


def _verify_server(
    args: argparse.Namespace,
    bank_id: str,
    keys: Mapping[str, Ed25519PublicKey],
    heads: list[tuple[int, str]],
) -> verifier.Report:
    import grpc

    token = _api_key(args.key_file)
    if args.ca_file is None:
        channel = grpc.insecure_channel(args.server)
    else:
        credentials = grpc.ssl_channel_credentials(root_certificates=args.ca_file.read_bytes())
        channel = grpc.secure_channel(args.server, credentials)
    with channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=connect_timeout_seconds)
            return verifier.verify_server(
                channel,
                bank_id,
                token,
                public_keys=keys,
                expected_heads=heads,
                timeout_seconds=server_timeout_seconds,
            )
        except grpc.FutureTimeoutError:
            raise ConfigError(f"no server answers at {args.server}") from None
        except grpc.RpcError as error:
            raise ConfigError(f"{error.code().name}: {error.details()}") from None


def _api_key(path: Path | None) -> str:
    if path is not None:
        return path.read_text().strip()
    token = os.environ.get(api_key_variable, "").strip()
    if not token:
        raise ConfigError(f"give the auditor key with --key-file or ${api_key_variable}")
    return token


# ----------------------------------------------------------------- export and import


def export(settings: Settings, args: argparse.Namespace) -> int:
    from ledger.application.history_files import export_bank
    from ledger.domain.errors import NotFound
    from ledger.storage.store import LedgerStore

    store = LedgerStore.beside_writers(settings.eventsourcing_env())
    try:
        with ExitStack() as stack:
            out: IO[bytes] = (
                stack.enter_context(args.out.open("xb"))
                if args.out is not None
                else sys.stdout.buffer
            )
            try:
                exported = export_bank(store, args.bank, out, datetime.now(UTC))
            except NotFound as error:
                print(f"timebank-ledger export: {error.message}", file=sys.stderr)
                return 1
    finally:
        store.close()
    print(
        f"exported bank {exported.bank_id}: {exported.events} events, {exported.checkpoints}"
        f" signed checkpoints; position {exported.position}, chain head {exported.chain_head}",
        file=sys.stderr,
    )
    return 0


def import_file(settings: Settings, args: argparse.Namespace) -> int:
    from ledger.application.history_files import ImportRefused, import_bank
    from ledger.storage.store import LedgerStore

    keys = public_keys(args.public_key)
    store = LedgerStore.beside_writers(settings.eventsourcing_env())
    try:
        imported = import_bank(store, args.file, datetime.now(UTC), public_keys=keys or None)
    except ImportRefused as error:
        where = f" (position {error.position})" if error.position is not None else ""
        print(f"timebank-ledger import: refused{where}: {error}", file=sys.stderr)
        return 1
    except (OSError, verifier.ExportError) as error:
        print(f"timebank-ledger import: {args.file}: {error}", file=sys.stderr)
        return 1
    finally:
        store.close()
    print(
        f"imported bank {imported.bank_id}: {imported.events_written} events written;"
        f" position {imported.position}, chain head {imported.chain_head};"
        f" balances digest {imported.report.balances_digest}"
    )
    print("API keys do not move with a bank: issue its first admin key here with an operator key")
    return 0


# ----------------------------------------------------------------- the signing key


def signing_key(settings: Settings, args: argparse.Namespace) -> int:
    from ledger.application.signing import CheckpointSigner, create_key_file, signer_from_settings

    if args.key_command == "create":
        try:
            signer = CheckpointSigner(create_key_file(args.out))
        except FileExistsError:
            raise ConfigError(f"{args.out} exists already") from None
        print(f"key id {signer.key_id} written to {args.out} (mode 0600)", file=sys.stderr)
    else:
        found = signer_from_settings(settings)
        if found is None:
            raise ConfigError("no signing key: set LEDGER_AUDIT_SIGNING_KEY_FILE")
        signer = found
        print(f"key id {signer.key_id}", file=sys.stderr)
    print(signer.public_key_pem, end="")
    return 0

"""`timebank-ledger report`: a bank's impact report (GetImpactReport), as text or CSV.

    timebank-ledger report --bank ID --from YYYY-MM --to YYYY-MM [--csv]
                           [--server HOST:PORT] [--ca-file PEM] [--key-file FILE]

It calls LedgerViewService on the server (--server, else LEDGER_GRPC_ADDRESS), by TLS with
--ca-file, presenting a bank-admin or auditor key: --key-file, else the
TIMEBANK_LEDGER_API_KEY environment variable, else the bank's admin key in the keys file
`serve` wrote on its first start. Without --csv it prints a summary; with it, CSV on
standard output, a header and then one row per member or organisation per month with an
exchange that stands (CSV_COLUMNS below; the proto's AccountImpact says what each means).

An exchange is a transfer between two members or organisations: only those count in the
people-centred figures and in the CSV's rows. Transfers with a pool (contributions, grants)
show only in the pool flows; transfers with system or clearing accounts in neither.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from ledger.config import ConfigError, Settings

api_key_variable = "TIMEBANK_LEDGER_API_KEY"
connect_timeout_seconds = 10.0
call_timeout_seconds = 30.0
# The largest page the server gives (AIP-158): fewest calls for a whole period.
page_size = 1_000
# The summary names this many newcomers at most (the CSV has every one).
newcomers_listed_max = 20

# Every column counts only exchanges with members and organisations (never transfers with
# pools or system accounts): month, account_id, kind (member or organisation), exchanges,
# given_minutes (paid to it, as payee), received_minutes (paid by it, as payer), partners
# (distinct members and organisations, in the month), reciprocal (gave and received in the
# month: 1 or 0), to_members_minutes and from_members_minutes (organisations: paid to
# members, paid by members), newcomer (1 in the month of a member's first exchange),
# opened_on, first_exchange_on (YYYY-MM-DD) and days_to_first_exchange (members only; empty
# for organisations).
CSV_COLUMNS = (
    "month",
    "account_id",
    "kind",
    "exchanges",
    "given_minutes",
    "received_minutes",
    "partners",
    "reciprocal",
    "to_members_minutes",
    "from_members_minutes",
    "newcomer",
    "opened_on",
    "first_exchange_on",
    "days_to_first_exchange",
)


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "report", help="a bank's impact report from a server: text, or CSV with --csv"
    )
    parser.add_argument("--bank", required=True, metavar="ID")
    parser.add_argument("--from", dest="from_month", required=True, metavar="YYYY-MM")
    parser.add_argument("--to", dest="to_month", required=True, metavar="YYYY-MM")
    parser.add_argument("--csv", action="store_true", help="one row per account and month")
    parser.add_argument("--server", metavar="HOST:PORT", help="default: LEDGER_GRPC_ADDRESS")
    parser.add_argument("--ca-file", type=Path, help="the server's CA (PEM), to connect by TLS")
    parser.add_argument(
        "--key-file", type=Path, help=f"file holding the API key (or ${api_key_variable})"
    )


def run(settings: Settings, args: argparse.Namespace, out: IO[str] | None = None) -> int:
    """Reads the report page by page and prints it; 1 if the server refused."""
    import grpc

    from timebank.ledger.v1 import views_pb2_grpc as vpb_grpc

    out = out or sys.stdout
    server = args.server or settings.grpc_address
    metadata = (("authorization", f"Bearer {_api_key(settings, args)}"),)
    if args.ca_file is None:
        channel = grpc.insecure_channel(server)
    else:
        credentials = grpc.ssl_channel_credentials(root_certificates=args.ca_file.read_bytes())
        channel = grpc.secure_channel(server, credentials)
    with channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=connect_timeout_seconds)
        except grpc.FutureTimeoutError:
            hint = "" if args.ca_file else " (one that serves TLS needs --ca-file)"
            raise ConfigError(f"no server answers at {server}{hint}") from None
        views = vpb_grpc.LedgerViewServiceStub(channel)
        try:
            pages = list(_pages(views, args, metadata))
        except grpc.RpcError as error:
            code = error.code().name if isinstance(error, grpc.Call) else "ERROR"
            details = error.details() if isinstance(error, grpc.Call) else str(error)
            print(f"timebank-ledger report: {code}: {details}", file=sys.stderr)
            return 1
    rows = [row for page in pages for row in page.accounts]
    if args.csv:
        write_csv(rows, out)
    else:
        lines = summary_lines(args.bank, pages[0].summary, rows, pages[-1].position)
        print("\n".join(lines), file=out)
    return 0


def _pages(views: Any, args: argparse.Namespace, metadata: Any) -> Iterator[Any]:
    from timebank.ledger.v1 import views_pb2 as vpb

    token = ""
    while True:
        page = views.GetImpactReport(
            vpb.GetImpactReportRequest(
                bank_id=args.bank,
                from_month=args.from_month,
                to_month=args.to_month,
                page_size=page_size,
                page_token=token,
            ),
            timeout=call_timeout_seconds,
            metadata=metadata,
        )
        yield page
        token = page.next_page_token
        if not token:
            return


def write_csv(rows: list[Any], out: IO[str]) -> None:
    from timebank.ledger.v1 import ledger_pb2 as pb

    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        member = row.kind == pb.ACCOUNT_KIND_MEMBER
        writer.writerow(
            (
                row.month,
                row.account_id,
                "member" if member else "organisation",
                row.exchanges,
                row.given_minutes,
                row.received_minutes,
                row.partners,
                int(row.reciprocal),
                row.to_members_minutes,
                row.from_members_minutes,
                int(row.newcomer),
                row.opened_on,
                row.first_exchange_on,
                row.days_to_first_exchange if member and row.first_exchange_on else "",
            )
        )


def summary_lines(bank_id: str, summary: Any, rows: list[Any], position: int) -> list[str]:
    """The report as text: the period, each month, organisations, pools and newcomers."""
    lines = [
        f"Impact of bank {bank_id}, {summary.from_month} to {summary.to_month}"
        f" (as of position {position})",
        "Exchanges are between members and organisations; transfers with pools count only"
        " as pool flows.",
        "",
        "Whole period:",
        *_figure_lines(summary.period),
    ]
    for month in summary.months:
        lines += ["", f"{month.month}:", *_figure_lines(month)]
    lines += ["", "Organisations (minutes paid to members / paid by members):"]
    lines += [
        f"  {o.account_id}: {o.to_members_minutes} / {o.from_members_minutes}"
        for o in summary.organisations
    ] or ["  none"]
    lines += ["", "Pools by category (minutes in / out):"]
    lines += [
        f"  {p.pool_account_id} [{p.category or 'no category'}]: {p.in_minutes} / {p.out_minutes}"
        for p in summary.pools
    ] or ["  none"]
    newcomers = [row for row in rows if row.newcomer]
    lines += ["", "Newcomers (first exchange, days after opening):"]
    lines += [
        f"  {row.account_id}: {row.first_exchange_on}, {row.days_to_first_exchange}"
        for row in newcomers[:newcomers_listed_max]
    ] or ["  none"]
    if len(newcomers) > newcomers_listed_max:
        lines.append(f"  ... {len(newcomers) - newcomers_listed_max} more")
    lines += ["", f"{len(rows)} member and organisation months: --csv lists them"]
    return lines


def _figure_lines(f: Any) -> list[str]:
    return [
        f"  active members {f.active_members}; giving and receiving {f.reciprocal_members}"
        f" ({_percent(f.reciprocal_members_share_basis_points)})",
        f"  minutes exchanged {f.exchanged_minutes}; between partners who had exchanged before"
        f" {f.repeat_pair_minutes} ({_percent(f.repeat_pair_minutes_share_basis_points)})",
        f"  partners per active member: mean {_hundredths(f.partners_mean_hundredths)},"
        f" median {_hundredths(f.partners_median_hundredths)}",
        f"  newcomers {f.newcomers}; days from opening to first exchange, median"
        f" {_hundredths(f.days_to_first_exchange_median_hundredths)}",
        f"  organisations paid members {f.organisation_to_member_minutes} minutes,"
        f" members paid organisations {f.member_to_organisation_minutes}",
        f"  pools: {f.pool_in_minutes} minutes in, {f.pool_out_minutes} out",
    ]


def _hundredths(value: int) -> str:
    return f"{value // 100}.{value % 100:02d}"


def _percent(basis_points: int) -> str:
    return f"{_hundredths(basis_points)}%"


def _api_key(settings: Settings, args: argparse.Namespace) -> str:
    if args.key_file is not None:
        return str(args.key_file.read_text()).strip()
    token = os.environ.get(api_key_variable, "").strip()
    if token:
        return token
    keys_path = settings.keys_file_path()
    if keys_path and Path(keys_path).exists():
        from ledger.service.bootstrap import KeysFile

        found = KeysFile.read(Path(keys_path)).bank_admins.get(args.bank)
        if found:
            return found
    raise ConfigError(f"give a bank-admin or auditor key with --key-file or ${api_key_variable}")

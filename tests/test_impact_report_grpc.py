"""End to end: GetImpactReport over a real TLS server with real keys, and `timebank-ledger
report` (text and CSV) against it. On the in-memory, SQLite and PostgreSQL stores.

Riverside in January and February 2026: members ana, ben and cas, the surgery (an
organisation) and a garden pool. Reads pass the last write's position as `min_position`,
so they see every write without sleeping. Transfers with the pool (ben's contribution, cas's
grant) show as pool flows only, never as minutes given or received.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import pytest
from certs import Pki
from conftest import Clock
from test_views_grpc import Served, bank_id, call_timeout_seconds, pay, refusal, serving

from ledger import cli
from ledger.report_cli import CSV_COLUMNS, api_key_variable
from ledger.security.roles import Role
from ledger.service.bootstrap import KeysFile
from timebank.ledger.v1 import ledger_pb2 as pb
from timebank.ledger.v1 import views_pb2 as vpb
from timebank.ledger.v1 import views_pb2_grpc as vpb_grpc

PERIOD = ("2026-01", "2026-02")


@pytest.fixture
def riverside(store_url: str, clock: Clock, pki: Pki) -> Iterator[tuple[Served, int]]:
    """The served bank with its January and February; and the last write's position."""
    with serving(store_url, clock, pki) as served:
        ledger = served.ledger
        kinds = {
            "ana": pb.ACCOUNT_KIND_MEMBER,
            "ben": pb.ACCOUNT_KIND_MEMBER,
            "cas": pb.ACCOUNT_KIND_MEMBER,
            "surgery": pb.ACCOUNT_KIND_ORGANISATION,
            "garden": pb.ACCOUNT_KIND_POOL,
        }
        for account_id, kind in kinds.items():
            ledger.OpenAccount(
                pb.OpenAccountRequest(
                    bank_id=bank_id,
                    account_id=account_id,
                    kind=kind,
                    lower_limit_minutes=0 if kind == pb.ACCOUNT_KIND_POOL else -600,
                ),
                timeout=call_timeout_seconds,
            )
        # January: the surgery pays ana for an hour; ana pays ben; ben gives to the pool.
        pay(ledger, "j1", "surgery", "ana", 60, service_date="2026-01-05")
        pay(ledger, "j2", "ana", "ben", 30, service_date="2026-01-12")
        pay(ledger, "j3", "ben", "garden", 20, category="garden", service_date="2026-01-20")
        # February: ben pays ana back (a repeat of their pair); the pool grants cas 15; cas
        # pays the surgery; a mistaken transfer is reversed.
        pay(ledger, "f1", "ben", "ana", 45, service_date="2026-02-02")
        pay(ledger, "f2", "garden", "cas", 15, category="garden", service_date="2026-02-03")
        pay(ledger, "f3", "cas", "surgery", 25, service_date="2026-02-04")
        pay(ledger, "f4", "cas", "ana", 99, service_date="2026-02-05")
        last = ledger.ReverseTransfer(
            pb.ReverseTransferRequest(
                bank_id=bank_id, transfer_id="f4-undo", reverses_transfer_id="f4", reason="typo"
            ),
            timeout=call_timeout_seconds,
        ).position
        yield served, last


def impact(
    views: vpb_grpc.LedgerViewServiceStub,
    from_month: str = PERIOD[0],
    to_month: str = PERIOD[1],
    **extra: Any,
) -> vpb.GetImpactReportResponse:
    request = vpb.GetImpactReportRequest(
        bank_id=bank_id, from_month=from_month, to_month=to_month, **extra
    )
    return views.GetImpactReport(request, timeout=call_timeout_seconds)


def test_impact_report_over_grpc(riverside: tuple[Served, int]) -> None:
    served, last = riverside
    read = impact(served.views, min_position=last)
    assert read.position >= last
    period = read.summary.period
    # ana, ben and cas were active; ana and ben gave and received over the two months, cas
    # only received (the pool's 15-minute grant is not given).
    assert (period.active_members, period.reciprocal_members) == (3, 2)
    assert period.reciprocal_members_share_basis_points == 6667
    # 160 minutes stand between people (j1, j2, f1, f3); f1 (45) repeats ana and ben's pair.
    assert (period.exchanged_minutes, period.repeat_pair_minutes) == (160, 45)
    assert period.repeat_pair_minutes_share_basis_points == 2813
    # ana: surgery, ben; ben: ana; cas: surgery (the pool is nobody's partner).
    assert (period.partners, period.partners_median_hundredths) == (4, 100)
    assert (period.newcomers, period.organisation_to_member_minutes) == (3, 60)
    assert (period.member_to_organisation_minutes, period.pool_in_minutes) == (25, 20)
    assert period.pool_out_minutes == 15
    january, february = read.summary.months
    # In January ben gave (to ana) and paid only the pool: ana alone gave and received.
    assert (january.month, january.active_members, january.reciprocal_members) == (
        "2026-01",
        2,
        1,
    )
    assert (february.active_members, february.reciprocal_members) == (3, 0)
    (surgery,) = read.summary.organisations
    assert (surgery.account_id, surgery.to_members_minutes, surgery.from_members_minutes) == (
        "surgery",
        60,
        25,
    )
    (garden,) = read.summary.pools
    assert (garden.pool_account_id, garden.category) == ("garden", "garden")
    assert (garden.in_minutes, garden.out_minutes) == (20, 15)
    rows = [(r.month, r.account_id, r.given_minutes, r.received_minutes) for r in read.accounts]
    assert rows == [
        ("2026-01", "ana", 60, 30),
        ("2026-01", "ben", 30, 0),
        ("2026-01", "surgery", 0, 60),
        ("2026-02", "ana", 45, 0),
        ("2026-02", "ben", 0, 45),
        ("2026-02", "cas", 0, 25),
        ("2026-02", "surgery", 25, 0),
    ]
    assert read.accounts[0].kind == pb.ACCOUNT_KIND_MEMBER
    assert read.accounts[2].kind == pb.ACCOUNT_KIND_ORGANISATION
    assert (read.accounts[2].to_members_minutes, read.accounts[2].from_members_minutes) == (60, 0)
    newcomers = [(r.account_id, r.first_exchange_on) for r in read.accounts if r.newcomer]
    # cas's first exchange is with the surgery on the 4th, not the pool's grant on the 3rd.
    assert newcomers == [("ana", "2026-01-05"), ("ben", "2026-01-12"), ("cas", "2026-02-04")]
    assert read.next_page_token == ""

    # Pages of three: the summary comes with the first page only.
    first = impact(served.views, page_size=3)
    assert first.HasField("summary")
    assert len(first.accounts) == 3
    second = impact(served.views, page_size=3, page_token=first.next_page_token)
    assert not second.HasField("summary")
    third = impact(served.views, page_size=3, page_token=second.next_page_token)
    assert third.next_page_token == ""
    paged = [*first.accounts, *second.accounts, *third.accounts]
    assert [(r.month, r.account_id) for r in paged] == [row[:2] for row in rows]


def test_bad_requests_and_roles(riverside: tuple[Served, int]) -> None:
    served, last = riverside
    views = served.views
    token = impact(views, page_size=1, min_position=last).next_page_token
    assert token
    # Bad months and pages are refused before any waiting, naming the field.
    bad: list[tuple[dict[str, Any], str, str]] = [
        ({"from_month": "2026-13"}, "INVALID_MONTH", "from_month"),
        ({"to_month": "26-02"}, "INVALID_MONTH", "to_month"),
        ({"from_month": "2026-03"}, "INVALID_MONTH_RANGE", "to_month"),
        ({"from_month": "2010-01"}, "MONTH_RANGE_TOO_LARGE", "to_month"),
        ({"page_size": -1}, "INVALID_PAGE_SIZE", "page_size"),
        ({"page_token": "nonsense"}, "INVALID_PAGE_TOKEN", "page_token"),
        # A token of another period.
        ({"to_month": "2026-03", "page_token": token}, "INVALID_PAGE_TOKEN", "page_token"),
        ({"min_position": -1}, "INVALID_MIN_POSITION", "min_position"),
    ]
    for fields, reason, field_name in bad:
        refused = refusal(partial(impact, views, **fields))
        assert (refused.code, refused.reason) == (grpc.StatusCode.INVALID_ARGUMENT, reason)
        assert refused.bad_fields == [field_name]

    # An auditor reads it; a front-end key (member-app) and the operator do not; nobody
    # reads another bank's.
    auditor_key = served.server.key(Role.AUDITOR, bank_id)
    auditor = vpb_grpc.LedgerViewServiceStub(served.server.channel(auditor_key))
    assert impact(auditor, min_position=last).summary.period.active_members == 3
    app = vpb_grpc.LedgerViewServiceStub(
        served.server.channel(served.server.key(Role.MEMBER_APP, bank_id))
    )
    refused = refusal(lambda: impact(app))
    assert (refused.code, refused.reason) == (grpc.StatusCode.PERMISSION_DENIED, "ROLE_NOT_ALLOWED")
    operator = vpb_grpc.LedgerViewServiceStub(served.server.channel(served.server.operator_token))
    refused = refusal(lambda: impact(operator))
    assert refused.code == grpc.StatusCode.PERMISSION_DENIED
    refused = refusal(
        lambda: views.GetImpactReport(
            vpb.GetImpactReportRequest(bank_id="hillside", from_month="2026-01", to_month="2026-02")
        )
    )
    assert (refused.code, refused.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "BANK_OUT_OF_SCOPE",
    )


def run_report(
    served: Served, key_file: Path | None, capsys: pytest.CaptureFixture[str], *extra: str
) -> tuple[int, str, str]:
    """`timebank-ledger report` against the served ledger: (exit code, stdout, stderr)."""
    capsys.readouterr()
    key = ["--key-file", str(key_file)] if key_file is not None else []
    server = ["--server", served.address, "--ca-file", str(served.server.pki.ca_path)]
    code = cli.main(["report", "--bank", bank_id, *server, *key, *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_report_command_writes_csv_and_a_summary(
    riverside: tuple[Served, int],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    served, last = riverside
    impact(served.views, min_position=last)  # the view has every write
    key_file = tmp_path / "auditor.key"
    key_file.write_text(served.server.key(Role.AUDITOR, bank_id) + "\n")

    # CSV: the header, then a row per member or organisation month, as GetImpactReport says.
    months = ["--from", "2026-01", "--to", "2026-02"]
    code, out, err = run_report(served, key_file, capsys, *months, "--csv")
    assert (code, err) == (0, "")
    out_csv = out
    table = list(csv.reader(io.StringIO(out)))
    assert tuple(table[0]) == CSV_COLUMNS
    rows = [dict(zip(CSV_COLUMNS, row, strict=True)) for row in table[1:]]
    assert [(r["month"], r["account_id"], r["kind"]) for r in rows] == [
        ("2026-01", "ana", "member"),
        ("2026-01", "ben", "member"),
        ("2026-01", "surgery", "organisation"),
        ("2026-02", "ana", "member"),
        ("2026-02", "ben", "member"),
        ("2026-02", "cas", "member"),
        ("2026-02", "surgery", "organisation"),
    ]
    ana = rows[0]
    assert ana == {
        "month": "2026-01",
        "account_id": "ana",
        "kind": "member",
        "exchanges": "2",
        "given_minutes": "60",
        "received_minutes": "30",
        "partners": "2",
        "reciprocal": "1",
        "to_members_minutes": "0",
        "from_members_minutes": "0",
        "newcomer": "1",
        "opened_on": "2025-03-01",
        "first_exchange_on": "2026-01-05",
        "days_to_first_exchange": "310",
    }
    surgery = rows[2]
    assert (surgery["to_members_minutes"], surgery["from_members_minutes"]) == ("60", "0")
    assert (surgery["opened_on"], surgery["days_to_first_exchange"]) == ("", "")
    assert [r["account_id"] for r in rows if r["newcomer"] == "1"] == ["ana", "ben", "cas"]

    # Without --csv: a summary to read.
    code, out, _ = run_report(served, key_file, capsys, *months)
    assert code == 0
    assert "Impact of bank riverside, 2026-01 to 2026-02" in out
    assert "active members 3; giving and receiving 2 (66.67%)" in out
    assert "minutes exchanged 160; between partners who had exchanged before 45 (28.13%)" in out
    assert "  surgery: 60 / 25" in out
    assert "  garden [garden]: 20 / 15" in out
    assert "  cas: 2026-02-04, 340" in out

    # The key may come from the environment, or from the keys file `serve` wrote.
    monkeypatch.delenv(api_key_variable, raising=False)
    monkeypatch.setenv("LEDGER_BOOTSTRAP_KEYS_FILE", str(tmp_path / "none.json"))
    code, _, err = run_report(served, None, capsys, *months)
    assert code == 2
    assert f"--key-file or ${api_key_variable}" in err
    monkeypatch.setenv(api_key_variable, served.server.key(Role.BANK_ADMIN, bank_id))
    assert run_report(served, None, capsys, *months, "--csv")[:2] == (0, out_csv)
    monkeypatch.delenv(api_key_variable)
    keys = KeysFile(operator="", bank_admins={bank_id: served.server.key(Role.BANK_ADMIN, bank_id)})
    keys.write(tmp_path / "keys.json")
    monkeypatch.setenv("LEDGER_BOOTSTRAP_KEYS_FILE", str(tmp_path / "keys.json"))
    assert run_report(served, None, capsys, *months, "--csv")[:2] == (0, out_csv)

    # A bad month: the server's reason, exit 1.
    code, out, err = run_report(served, key_file, capsys, "--from", "2026-13", "--to", "2026-02")
    assert (code, out) == (1, "")
    assert "INVALID_ARGUMENT" in err
    # A front-end key may not read it.
    key_file.write_text(served.server.key(Role.MEMBER_APP, bank_id))
    code, _, err = run_report(served, key_file, capsys, *months)
    assert code == 1
    assert "PERMISSION_DENIED" in err

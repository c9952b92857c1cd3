"""The documented history format (docs/history-format.md) is the one the code writes.

The worked example is parsed out of the page and recomputed three ways: by a real Ledger, by
the chain module, and by a from-scratch implementation here with `hashlib` and `json` alone
(what an auditor in another language would write). The page documents every event type with
exactly its fields, its SQL fetches the rows it says, and its Python snippet checks a row.
The canonical encoder is checked against the `rfc8785` package and the RFC's vectors.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import subprocess
import sys
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from conftest import Clock, MakeLedger
from hypothesis import given, settings
from hypothesis import strategies as st
from stored_rows import Tables, stored_rows

import ledger.domain.history  # noqa: F401  (registers every event type)
from ledger import verifier as verifier_module
from ledger.application.ledger import Ledger
from ledger.domain import canonical, chain, events
from ledger.domain.bank import bank_uuid
from ledger.domain.commands import CreateBank, CreateTransfer, OpenAccount

DOC = Path(__file__).resolve().parent.parent / "docs" / "history-format.md"
TEXT = DOC.read_text(encoding="utf-8")
SAFE_INTEGER_MAX = 2**53 - 1
_timestamp_re = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00$")


# --------------------------------------------------------------------------- reading the page


@dataclass(frozen=True)
class ExampleRow:
    version: int
    previous: str
    stored: bytes
    length: int
    chain_hash: str


def fenced(language: str) -> list[str]:
    """The contents of the page's code blocks in one language, in order."""
    return re.findall(rf"^```{language}\n(.*?)\n```$", TEXT, flags=re.DOTALL | re.MULTILINE)


def example_rows() -> list[ExampleRow]:
    """The worked example's rows, exactly as the page shows them."""
    rows = []
    for block in fenced("text"):
        lines = dict(re.findall(r"^(\w+) +(.*)$", block, flags=re.MULTILINE))
        if "stored" not in lines:
            continue
        rows.append(
            ExampleRow(
                version=int(lines["version"]),
                previous=lines["previous"],
                stored=lines["stored"].encode("utf-8"),
                length=int(lines["length"].removesuffix(" bytes")),
                chain_hash=lines["chain_hash"],
            )
        )
    return rows


def sections() -> dict[str, list[str]]:
    """Each heading's text, with the names in the first column of the tables under it."""
    found: dict[str, list[str]] = {}
    current = ""
    for line in TEXT.splitlines():
        heading = re.match(r"^#+ (.*)$", line)
        if heading:
            current = heading.group(1)
            found[current] = []
        cell = re.match(r"^\| `(\w+)` \|", line)
        if cell and current:
            found[current].append(cell.group(1))
    return found


def sql_block(store: str) -> str:
    """The page's query for one store (its first line names the store)."""
    (block,) = (b for b in fenced("sql") if b.startswith(f"-- {store}:"))
    return block


# --------------------------------------------------------------------------- the worked example

BANK_ID = "demo-bank"
MEMO = 'Fixed the "blue" bike — merci ✿'


def write_worked_example(ledger: Ledger, clock: Clock) -> None:
    """The story the page tells, told to a real Ledger."""
    clock.set(datetime(2026, 11, 26, 12, 0, tzinfo=UTC))
    ledger.create_bank(CreateBank(bank_id=BANK_ID, name="Demo time bank"))
    clock.set(datetime(2026, 11, 26, 12, 5, tzinfo=UTC))
    ledger.execute(BANK_ID, OpenAccount("ann", "member", lower_limit_minutes=-600))
    clock.set(datetime(2026, 11, 26, 12, 6, tzinfo=UTC))
    ledger.execute(
        BANK_ID, OpenAccount("bob", "member", lower_limit_minutes=-600, upper_limit_minutes=6000)
    )
    clock.set(datetime(2026, 11, 26, 12, 30, 0, 250_000, tzinfo=UTC))
    ledger.execute(
        BANK_ID,
        CreateTransfer(
            "t1",
            "ann",
            "bob",
            90,
            memo=MEMO,
            category="repairs",
            service_date="2026-11-25",
            actor_label="front desk",
        ),
    )


def test_the_worked_example_is_what_the_ledger_writes(
    make_ledger: MakeLedger, clock: Clock
) -> None:
    ledger = make_ledger("memory://")
    write_worked_example(ledger, clock)
    documented = example_rows()

    # The page shows every row the ledger stored, byte for byte, with its chain hash.
    assert [(r.stored, r.chain_hash) for r in documented] == stored_rows(ledger, BANK_ID)
    assert [r.version for r in documented] == [1, 2, 3, 4]
    assert all(r.length == len(r.stored) for r in documented)
    # And the bank's position and chain head it states.
    bank = ledger.get_bank(BANK_ID)
    assert bank.position == 4
    assert f"chain head\n`{bank.chain_head}`" in TEXT
    assert f"For `demo-bank` it is `{bank_uuid(BANK_ID)}`" in TEXT


def test_the_worked_example_recomputes_with_the_chain_module() -> None:
    previous = chain.GENESIS_HASH
    for row in example_rows():
        # Each row follows the one before, and is canonical JSON of its own body...
        assert row.previous == previous
        body = canonical.decode(row.stored)
        # ...which the chain module turns back into the same bytes and the same hash.
        timestamp = datetime.fromisoformat(body["timestamp"])
        assert (
            chain.event_bytes(
                body["bank"], body["version"], body["type"], timestamp, body["fields"]
            )
            == row.stored
        )
        assert chain.next_hash(previous, row.stored) == row.chain_hash
        previous = row.chain_hash


def _jcs(value: Any) -> str:
    """RFC 8785 for the values a history holds, from scratch (keys by UTF-16 code units)."""
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda item: item[0].encode("utf-16-be"))
        return "{" + ",".join(f"{_jcs(key)}:{_jcs(inner)}" for key, inner in items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_jcs(inner) for inner in value) + "]"
    assert not isinstance(value, float), "no float in a history"
    return json.dumps(value, ensure_ascii=False)


def test_the_worked_example_verifies_with_sha256_and_a_json_parser_alone() -> None:
    previous = "0" * 64
    for row in example_rows():
        body = json.loads(row.stored)
        # The bytes are the canonical form of what they say...
        assert _jcs(body).encode("utf-8") == row.stored
        assert body["bank"] == str(uuid.uuid5(uuid.NAMESPACE_URL, "timebank-ledger:bank:demo-bank"))
        assert _timestamp_re.match(body["timestamp"])
        # ...and the hash is sha256 of the previous hash's 32 bytes and those bytes.
        assert hashlib.sha256(bytes.fromhex(previous) + row.stored).hexdigest() == row.chain_hash
        previous = row.chain_hash
    # The transfer holds the memo as UTF-8, only its quotes escaped.
    transfer = json.loads(example_rows()[-1].stored)["fields"]["transfers"][0]
    assert transfer["memo"] == MEMO
    assert '"memo":"Fixed the \\"blue\\" bike — merci ✿"'.encode() in example_rows()[-1].stored


def test_the_worked_example_passes_the_verifier() -> None:
    rows = [(r.stored, r.chain_hash) for r in example_rows()]

    report = verifier_module.verify(rows)

    assert report.ok, report.violations
    assert report.balances == {"ann": -90, "bob": 90}
    assert (report.position, report.chain_head) == (4, rows[-1][1])


def test_the_python_snippet_checks_a_row(tmp_path: Path) -> None:
    (snippet,) = fenced("python")
    rows = example_rows()
    (tmp_path / "row.json").write_bytes(rows[3].stored)

    # Run as the page says: with the row in row.json and nothing but the standard library.
    done = subprocess.run(
        [sys.executable, "-I", "-c", snippet],
        cwd=tmp_path,
        capture_output=True,
        check=True,
        text=True,
    )

    assert done.stdout.splitlines()[0] == rows[3].chain_hash
    assert f'previous = "{rows[2].chain_hash}"' in snippet
    # The shell lines start from the same previous hash, and the page states what they print.
    (shell,) = fenced("sh")
    assert f"previous={rows[2].chain_hash}" in shell
    assert f"Both print `{rows[3].chain_hash}`" in TEXT


def _psql_to_psycopg(statement: str) -> str:
    """psql's :'name' and :name variables as psycopg's named parameters."""
    statement = re.sub(r":'(\w+)'", r"%(\1)s", statement)
    return re.sub(r"(?<![:\w]):(\w+)", r"%(\1)s", statement)


def test_the_sql_fetches_a_row_with_its_previous_hash(
    durable_store_url: str, make_ledger: MakeLedger, clock: Clock
) -> None:
    write_worked_example(make_ledger(durable_store_url), clock)
    tables = Tables(durable_store_url)
    query = sql_block("PostgreSQL" if tables.postgres else "SQLite")
    if tables.postgres:
        query = _psql_to_psycopg(query)

    def fetch(version: int) -> tuple[Any, ...]:
        with tables.cursor() as cursor:
            cursor.execute(query, {"bank_uuid": str(bank_uuid(BANK_ID)), "version": version})
            (found,) = cursor.fetchall()
            return tuple(found)

    # Each row comes back as the page shows it, with the hash before it.
    for row in example_rows():
        found = fetch(row.version)
        assert (found[0], bytes(found[1]), found[2], found[3]) == (
            row.version,
            row.stored,
            row.chain_hash,
            row.previous,
        )
        if tables.postgres:
            assert found[4] is True  # PostgreSQL recomputed the hash itself
    # A row changed behind the ledger's back no longer follows (PostgreSQL says so itself).
    tables.set_stored(BANK_ID, 4, example_rows()[3].stored.replace(b":90,", b":9,"))
    changed = fetch(4)
    assert bytes(changed[1]) != example_rows()[3].stored
    if tables.postgres:
        assert changed[4] is False
    else:
        stored, previous = bytes(changed[1]), changed[3]
        assert hashlib.sha256(bytes.fromhex(previous) + stored).hexdigest() != changed[2]


# --------------------------------------------------------------------------- event types


def test_every_event_type_is_documented_with_exactly_its_fields() -> None:
    documented = sections()
    names = events.type_names()
    assert {"BankCreated", "TransfersCreated", "PendingExpired"} <= set(names)

    # One section per registered type, named as the history stores it, and no other.
    assert {h.strip("`") for h in documented if re.fullmatch(r"`\w+`", h)} == set(names)
    for name in names:
        event_class = events.type_named(name)
        assert event_class is not None
        fields = [f.name for f in dataclasses.fields(event_class)]  # type: ignore[arg-type]
        assert documented[f"`{name}`"] == fields, name


def test_each_transfer_of_a_group_is_documented_with_exactly_its_keys() -> None:
    documented = sections()["Each transfer in `transfers`"]
    stored = json.loads(example_rows()[-1].stored)["fields"]["transfers"][0]

    # The keys the ledger writes for each transfer: the command's content, who, the deadline.
    expected = [*CreateTransfer.content_fields(), "actor", "actor_label", "deadline"]
    assert documented == expected
    assert set(stored) == set(expected)


# --------------------------------------------------------------------------- canonical JSON

_SPECIAL_CHARACTERS = [
    "\x00",
    "\x01",
    "\x1f",
    "\x7f",
    "\b",
    "\t",
    "\n",
    "\f",
    "\r",
    '"',
    "\\",
    "/",
    "é",
    "€",
    "\u2028",
    "\u2029",
    "\ud7ff",
    "\ue000",
    "\uf8ff",
    "\ufb33",
    "\ufeff",
    "\uffff",
    "\U00010000",
    "\U0001f600",
    "\U0010ffff",
]
_COLLIDING_KEY_CHARACTERS = ["a", "é", "\x00", "\u2028", "\ue000", "\uffff", "\U0001f600"]
_characters = st.one_of(
    st.characters(exclude_categories=["Cs"]), st.sampled_from(_SPECIAL_CHARACTERS)
)
_texts = st.text(_characters, max_size=12)
# Keys from a few characters around U+E000 and U+10000 collide often, so their order matters.
_keys = st.one_of(
    _texts,
    st.text(
        st.sampled_from(["a", "é", "\x00", "\u2028", "\ue000", "\uffff", "\U0001f600"]), max_size=3
    ),
)
_integers = st.one_of(
    st.integers(-SAFE_INTEGER_MAX, SAFE_INTEGER_MAX),
    st.sampled_from([SAFE_INTEGER_MAX, SAFE_INTEGER_MAX - 1, -SAFE_INTEGER_MAX, 0, -1]),
)
_json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), _integers, _texts),
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(_keys, inner, max_size=6)),
    max_leaves=40,
)
# The shape of a stored body: the five keys, the fields an object of anything above.
_bodies = st.fixed_dictionaries(
    {
        "bank": _texts,
        "version": _integers,
        "type": _texts,
        "timestamp": _texts,
        "fields": st.dictionaries(_keys, _json_values, max_size=8),
    }
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(_json_values, _bodies))
def test_the_canonical_encoder_is_rfc_8785(value: Any) -> None:
    encoded = canonical.encode(value)

    # The same bytes as the reference implementation, the verifier's own encoder and the
    # from-scratch one above; and they read back as the value.
    assert encoded == rfc8785.dumps(value)
    assert encoded == verifier_module.canonical_json(value)
    assert encoded == _jcs(value).encode("utf-8")
    assert canonical.decode(encoded) == value


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(
            # RFC 8785 section 3.2.3: keys sorted by UTF-16 code units.
            {
                "€": "Euro Sign",
                "\r": "Carriage Return",
                "\ufb33": "Hebrew Letter Dalet With Dagesh",
                "1": "One",
                "\U0001f600": "Emoji: Grinning Face",
                "\u0080": "Control",
                "ö": "Latin Small Letter O With Diaeresis",
            },
            '{"\\r":"Carriage Return","1":"One","\u0080":"Control",'
            '"ö":"Latin Small Letter O With Diaeresis","€":"Euro Sign",'
            '"\U0001f600":"Emoji: Grinning Face","\ufb33":"Hebrew Letter Dalet With Dagesh"}',
            id="rfc8785-sorting",
        ),
        pytest.param(
            # RFC 8785 section 3.2.2, without its numbers (no float is ever in a history).
            {"literals": [None, True, False], "string": '€$\x0f\nA\'B"\\\\"/'},
            r"""{"literals":[null,true,false],"string":"€$\u000f\nA'B\"\\\\\"/"}""",
            id="rfc8785-strings",
        ),
        pytest.param(
            [SAFE_INTEGER_MAX, -SAFE_INTEGER_MAX, 0, -1],
            "[9007199254740991,-9007199254740991,0,-1]",
            id="integers-at-the-bounds",
        ),
        pytest.param(
            "\x00\x01\x1f\b\t\n\f\r\x7f",
            r'"\u0000\u0001\u001f\b\t\n\f\r' + '\x7f"',
            id="control-characters",
        ),
        pytest.param("\u2028\u2029/é", '"\u2028\u2029/é"', id="not-escaped"),
        pytest.param(
            {"\ue000": 1, "\U0001f600": 2, "a": 3, "\uffff": 4},
            '{"a":3,"\U0001f600":2,"\ue000":1,"\uffff":4}',
            id="astral-key-before-private-use",
        ),
        pytest.param({"b": [], "a": {}, "": None}, '{"":null,"a":{},"b":[]}', id="empty"),
    ],
)
def test_canonical_vectors(value: Any, expected: str) -> None:
    assert rfc8785.dumps(value) == expected.encode("utf-8")
    assert canonical.encode(value) == expected.encode("utf-8")
    assert canonical.decode(expected.encode("utf-8")) == value


@pytest.mark.parametrize(
    ("value", "reference_refuses"),
    [
        # The reference writes floats (in RFC 8785's number form); no history may hold one.
        pytest.param(1.0, False, id="float-one"),
        pytest.param({"amount_minutes": 0.5}, False, id="float-in-object"),
        pytest.param(float("nan"), True, id="nan"),
        pytest.param(SAFE_INTEGER_MAX + 1, True, id="2-53"),
        pytest.param([-SAFE_INTEGER_MAX - 1], True, id="minus-2-53"),
        pytest.param({"a": 10**30}, True, id="huge-integer"),
        pytest.param("\ud800", True, id="lone-surrogate"),
        pytest.param({"\udfff": 1}, True, id="lone-surrogate-key"),
        pytest.param({1: "one"}, True, id="integer-key"),
    ],
)
def test_a_value_without_a_canonical_form_is_refused(value: Any, reference_refuses: bool) -> None:
    if reference_refuses:
        # (It lets a lone surrogate in a key escape as the UTF-16 codec's own error.)
        with pytest.raises((rfc8785.CanonicalizationError, UnicodeEncodeError)):
            rfc8785.dumps(value)

    with pytest.raises(canonical.NotCanonicalError):
        canonical.encode(value)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b'{"a": 1}', id="space"),
        pytest.param(b' {"a":1}', id="leading-space"),
        pytest.param(b'{"a":1}\n', id="trailing-newline"),
        pytest.param(b'{"b":1,"a":2}', id="key-order"),
        pytest.param('{"\ue000":1,"\U0001f600":2}'.encode(), id="code-point-key-order"),
        pytest.param(b'{"a":1,"a":1}', id="duplicate-key"),
        pytest.param(b"1.0", id="one-point-zero"),
        pytest.param(b'{"amount_minutes":60.0}', id="float-amount"),
        pytest.param(b"1e2", id="exponent"),
        pytest.param(b"-0", id="minus-zero"),
        pytest.param(b"9007199254740992", id="integer-2-53"),
        pytest.param(b"9" * 5_000, id="5000-digit-integer"),
        pytest.param(b"NaN", id="nan"),
        pytest.param(b'"\\u0041"', id="escaped-letter"),
        pytest.param(b'"\\u00e9"', id="escaped-e-acute"),
        pytest.param(b'"\\u001F"', id="uppercase-hex-escape"),
        pytest.param(b'"\\/"', id="escaped-slash"),
        pytest.param(b'"\\ud800"', id="lone-surrogate"),
        pytest.param(b"\xef\xbb\xbf{}", id="byte-order-mark"),
        pytest.param(b'"\xff"', id="not-utf-8"),
        pytest.param(b"", id="empty"),
        pytest.param(b'{"a":', id="truncated"),
    ],
)
def test_decode_refuses_bytes_that_are_not_canonical(data: bytes) -> None:
    with pytest.raises(canonical.NotCanonicalError):
        canonical.decode(data)

"""The offline verifier (ledger/verifier.py) as an auditor uses it: alone, on the documented
worked example, with signed checkpoints and saved heads, and on export files.

The worked example is docs/history-format.md's (read by test_history_format.py). Checkpoints
here are signed with keys made for the test, the way the server signs them.
"""

from __future__ import annotations

import ast
import base64
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from test_history_format import example_rows

from ledger import verifier
from ledger.verifier import Checkpoint, Reason, Report, Verifier

VERIFIER_SOURCE = Path(verifier.__file__)
BANK = "72588d7d-ce2d-58d8-b89c-3fda7692e939"  # demo-bank's history id
SIGNED_AT = "2026-11-26T13:00:00.000000+00:00"


def rows() -> list[tuple[int, bytes, str]]:
    return [(n, row.stored, row.chain_hash) for n, row in enumerate(example_rows(), 1)]


def sign(key: Ed25519PrivateKey, position: int, chain_head: str, bank: str = BANK) -> Checkpoint:
    key_id = verifier.key_id_of(key.public_key())
    payload = verifier.checkpoint_payload(bank, position, chain_head, SIGNED_AT, key_id)
    return Checkpoint(payload, key.sign(payload))


def public_pem(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def check(
    history: Sequence[tuple[int, bytes, str]],
    checkpoints: Sequence[Checkpoint] = (),
    *,
    keys: Sequence[Ed25519PrivateKey] = (),
    heads: Sequence[tuple[int, str]] = (),
) -> Report:
    checker = Verifier(
        BANK, public_keys={verifier.key_id_of(k.public_key()): k.public_key() for k in keys}
    )
    for checkpoint in checkpoints:
        checker.add_checkpoint(checkpoint)
    for position, chain_head in heads:
        checker.expect_head(position, chain_head)
    for _, stored, chain_hash in history:
        checker.feed_stored(stored, chain_hash)
    checker.finish()
    return checker.report()


def reasons(report: Report) -> list[tuple[int, Reason]]:
    return [(v.version, v.reason) for v in report.violations]


def export_lines(
    history: Sequence[tuple[int, bytes, str]],
    checkpoints: Sequence[Checkpoint] = (),
    *,
    position: int | None = None,
    chain_head: str | None = None,
) -> list[bytes]:
    """An export file of the rows, as `timebank-ledger export` writes one."""
    last = history[-1] if history else (0, b"", "")
    position = last[0] if position is None else position
    chain_head = last[2] if chain_head is None else chain_head
    items: list[dict[str, Any]] = [
        {
            "type": "export",
            "format": verifier.EXPORT_FORMAT,
            "history_format": 2,
            "bank": BANK,
            "bank_id": "demo-bank",
            "position": position,
            "chain_head": chain_head,
            "exported_at": SIGNED_AT,
        }
    ]
    items += [
        {
            "type": "checkpoint",
            "payload": base64.b64encode(c.payload).decode(),
            "signature": base64.b64encode(c.signature).decode(),
        }
        for c in checkpoints
    ]
    items += [
        {
            "type": "event",
            "position": n,
            "chain_hash": chain_hash,
            "stored": base64.b64encode(stored).decode(),
        }
        for n, stored, chain_hash in history
    ]
    items.append(
        {"type": "end", "events": len(history), "position": position, "chain_head": chain_head}
    )
    return [json.dumps(item).encode() + b"\n" for item in items]


# --------------------------------------------------------------------------- the module alone


def test_the_module_imports_only_the_standard_library_cryptography_and_the_stubs() -> None:
    tree = ast.parse(VERIFIER_SOURCE.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(
                node.module if node.module.startswith("timebank") else node.module.split(".")[0]
            )
    outside = {
        name for name in imported if name not in sys.stdlib_module_names and name != "__future__"
    }
    # cryptography for signatures; the generated messages for the gRPC form: nothing else.
    assert outside == {"cryptography", "timebank.ledger.v1"}


def test_the_module_alone_verifies_the_worked_example_from_an_export(tmp_path: Path) -> None:
    # An auditor has the verifier file, an export, the server's public key and a saved head.
    key = Ed25519PrivateKey.generate()
    history = rows()
    head = history[-1][2]
    (tmp_path / "verifier.py").write_bytes(VERIFIER_SOURCE.read_bytes())
    (tmp_path / "export.jsonl").write_bytes(
        b"".join(export_lines(history, [sign(key, 3, history[2][2])]))
    )
    (tmp_path / "key.pem").write_bytes(public_pem(key))

    # Run it as a script, alone in its folder, with Python's isolated mode.
    done = subprocess.run(
        [
            sys.executable,
            "-I",
            "verifier.py",
            "--file",
            "export.jsonl",
            "--public-key",
            "key.pem",
            "--expect-head",
            f"4:{head}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    # The report is the short one: what it checked, where the history ends, the digest.
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"bank {BANK}: 4 events, 1 transfers, 2 accounts"
    assert lines[1] == f"final head: position 4 chain hash {head}"
    assert head == "acfadee3f3d0c105812e16fac290d8873bf1d46d3e64d9e4479335ee776c7882"
    assert lines[2] == f"balances digest: {verifier.balances_digest({'ann': -90, 'bob': 90})}"
    assert lines[3] == "checkpoints: 1 checked, signatures checked; saved heads: 1 checked"
    assert lines[-1] == "OK"
    # Exactly the report docs/verifier.md shows for the worked example.
    page = (VERIFIER_SOURCE.parent.parent / "docs" / "verifier.md").read_text()
    assert "\n".join(f"    {line}" for line in lines) in page


def test_a_changed_row_is_reported_by_the_module_alone(tmp_path: Path) -> None:
    history = rows()
    # Ann's 90 minutes become 9 in the stored bytes of event 4 (its hash left as it was).
    position, stored, chain_hash = history[3]
    history[3] = (
        position,
        stored.replace(b'"amount_minutes":90', b'"amount_minutes":9'),
        chain_hash,
    )
    (tmp_path / "verifier.py").write_bytes(VERIFIER_SOURCE.read_bytes())
    (tmp_path / "export.jsonl").write_bytes(b"".join(export_lines(history)))

    done = subprocess.run(
        [sys.executable, "-I", "verifier.py", "--file", "export.jsonl"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    # Exit 1, the position and the reason, and the first bad position at the end.
    assert done.returncode == 1
    assert "position 4: CHAIN_BROKEN" in done.stdout
    assert done.stdout.splitlines()[-1] == "FAILED: first bad position 4"


# --------------------------------------------------------------------------- checkpoints


def test_signed_checkpoints_and_saved_heads_that_agree_pass() -> None:
    key = Ed25519PrivateKey.generate()
    history = rows()
    report = check(
        history,
        [sign(key, 2, history[1][2]), sign(key, 4, history[3][2])],
        keys=[key],
        heads=[(3, history[2][2])],
    )
    assert report.ok, report.violations
    assert (report.checkpoints_checked, report.signatures_checked, report.heads_checked) == (
        2,
        True,
        1,
    )


def test_a_forged_signature_and_an_unknown_key_are_reported_at_their_position() -> None:
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    history = rows()
    good = sign(key, 2, history[1][2])
    # A signature over another payload, put on this one; a checkpoint by a key not pinned.
    forged = Checkpoint(sign(key, 3, history[2][2]).payload, good.signature)
    unknown = sign(other, 4, history[3][2])

    report = check(history, [good, forged, unknown], keys=[key])

    assert reasons(report) == [
        (3, Reason.CHECKPOINT_SIGNATURE_INVALID),
        (4, Reason.CHECKPOINT_KEY_UNKNOWN),
    ]


def test_a_rechained_history_is_caught_only_by_a_checkpoint_or_a_saved_head() -> None:
    key = Ed25519PrivateKey.generate()
    history = rows()
    signed = sign(key, 4, history[3][2])
    saved = (4, history[3][2])
    # Someone rewrites event 4 (9 minutes, not 90) and recomputes its chain hash.
    position, stored, _ = history[3]
    changed = stored.replace(b'"amount_minutes":90', b'"amount_minutes":9')
    rechained = [*history[:3], (position, changed, verifier_hash(history[2][2], changed))]

    # Alone, the history verifies: nothing in it is inconsistent.
    assert check(rechained).ok
    # The signed checkpoint, or the head an auditor saved, names the true head at 4.
    assert reasons(check(rechained, [signed], keys=[key])) == [(4, Reason.CHECKPOINT_HEAD_MISMATCH)]
    assert reasons(check(rechained, heads=[saved])) == [(4, Reason.EXPECTED_HEAD_MISMATCH)]


def verifier_hash(previous: str, stored: bytes) -> str:
    import hashlib

    return hashlib.sha256(bytes.fromhex(previous) + stored).hexdigest()


def test_a_checkpoint_past_the_end_means_rows_are_missing() -> None:
    key = Ed25519PrivateKey.generate()
    history = rows()
    report = check(history[:2], [sign(key, 4, history[3][2])], keys=[key])
    # The first missing position is reported.
    assert reasons(report) == [(3, Reason.HISTORY_ENDS_EARLY)]


def test_without_public_keys_heads_are_compared_but_signatures_are_not_checked() -> None:
    key = Ed25519PrivateKey.generate()
    history = rows()
    bad_signature = Checkpoint(sign(key, 4, history[3][2]).payload, b"\x00" * 64)
    report = check(history, [bad_signature])
    assert report.ok
    assert (report.checkpoints_checked, report.signatures_checked) == (1, False)
    assert "signatures NOT checked" in "\n".join(report.summary())


def test_a_checkpoint_of_another_bank_or_not_canonical_is_malformed() -> None:
    key = Ed25519PrivateKey.generate()
    history = rows()
    other_bank = sign(key, 4, history[3][2], bank="00000000-0000-0000-0000-000000000000")
    spaced = Checkpoint(sign(key, 4, history[3][2]).payload.replace(b":", b": "), b"")
    report = check(history, [other_bank, spaced], keys=[key])
    assert [r for _, r in reasons(report)] == [Reason.CHECKPOINT_MALFORMED] * 2


# --------------------------------------------------------------------------- export files


def from_file(lines: Sequence[bytes], **kwargs: Any) -> Report:
    return verifier.verify_export_lines(lines, **kwargs)[1]


def test_an_export_that_ends_early_is_refused_with_the_position() -> None:
    history = rows()
    lines = export_lines(history)
    # Cut after event 2: the header still says the history runs to 4.
    report = from_file(lines[:3])
    assert (3, Reason.SOURCE_MALFORMED) in reasons(report)
    assert (3, Reason.HISTORY_ENDS_EARLY) in reasons(report)
    assert report.first_bad_version == 3
    # Events 3 and 4 dropped, the end line kept: the header's head is not reached either.
    report = from_file([*lines[:3], lines[-1]])
    assert report.first_bad_version == 3


def test_an_export_with_a_missing_or_swapped_event_is_refused_with_the_position() -> None:
    history = rows()
    assert reasons(from_file(export_lines([history[0], history[2], history[3]])))[0] == (
        2,
        Reason.VERSION_GAP,
    )
    swapped = from_file(export_lines([history[0], history[2], history[1], history[3]]))
    assert swapped.first_bad_version == 2


def test_a_line_that_is_not_an_event_is_reported() -> None:
    lines = export_lines(rows())
    report = from_file([*lines[:3], b"not json\n", *lines[3:]])
    assert (3, Reason.SOURCE_MALFORMED) in reasons(report)


def test_a_file_that_is_no_export_is_refused() -> None:
    with pytest.raises(verifier.ExportError):
        from_file([b'{"type": "something else"}\n'])


# --------------------------------------------------------------------------- resuming


def test_a_verifier_resumed_from_its_state_recomputes_the_same_balances() -> None:
    history = rows()
    whole = check(history)
    for cut in range(len(history) + 1):
        first = Verifier(BANK)
        for _, stored, chain_hash in history[:cut]:
            first.feed_stored(stored, chain_hash)
        # The state goes through JSON, as the audit projection keeps it.
        resumed = Verifier.resume(json.loads(json.dumps(first.state())))
        for _, stored, chain_hash in history[cut:]:
            assert resumed.feed_stored(stored, chain_hash) == []
        assert resumed.report().balances == whole.balances
        assert resumed.computed_head == history[-1][2]

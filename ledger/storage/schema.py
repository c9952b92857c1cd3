"""The index tables beside the event log, written in the same transaction as the events.

    ledger_banks              one row per bank: name, position and chain head, counts
    ledger_accounts           one row per account: kind, status, limits, balances
    ledger_transfers          every transfer ever recorded, as it stands now
    ledger_account_transfers  each account's transfers, numbered in the order recorded
    ledger_requests           the command recorded under each request id, kept forever
    ledger_chain              each event's chain hash (the event's bytes are in the log)
    ledger_snapshots          each bank's latest snapshot of its decision state
    ledger_api_keys           every API key: role, scope, the hash of its secret, revocation
    ledger_member_token_keys  each bank's identity-provider keys for member tokens
    ledger_account_metadata   each account's display label and tags (not decision state)
    ledger_checkpoints        signed checkpoints of each bank's chain head (issue 10)
    ledger_checkpoint_keys    the public keys checkpoints were signed with
    ledger_pools              each pool's policy in force (issue 11, pool_rows.py)
    ledger_pool_grants        every grant request of a pool, as it stands

Times are ISO 8601 text in UTC with microseconds, so they sort as text on both SQLite and
PostgreSQL. Ids are the client's; `bank_uuid` is the bank's history id with dashes.
"""

from __future__ import annotations

from ledger.storage import pool_rows

TABLES = (
    "ledger_banks",
    "ledger_accounts",
    "ledger_transfers",
    "ledger_account_transfers",
    "ledger_requests",
    "ledger_chain",
    "ledger_snapshots",
    "ledger_api_keys",
    "ledger_member_token_keys",
    "ledger_account_metadata",
    "ledger_checkpoints",
    "ledger_checkpoint_keys",
    "ledger_pools",
    "ledger_pool_grants",
)


def statements(prefix: str, blob_type: str) -> list[str]:
    """CREATE statements; `prefix` qualifies table names (a PostgreSQL schema and a dot)."""
    p = prefix
    return [
        f"CREATE TABLE IF NOT EXISTS {p}ledger_banks ("
        " bank_uuid TEXT PRIMARY KEY, bank_id TEXT NOT NULL UNIQUE, name TEXT NOT NULL,"
        " created_at TEXT NOT NULL, created_by TEXT NOT NULL, position BIGINT NOT NULL,"
        " chain_head TEXT NOT NULL, account_count BIGINT NOT NULL,"
        " transfer_count BIGINT NOT NULL, member_tokens_required BOOLEAN NOT NULL,"
        " updated_at TEXT NOT NULL)",
        f"CREATE INDEX IF NOT EXISTS ledger_banks_by_creator ON {p}ledger_banks (created_by)",
        f"CREATE TABLE IF NOT EXISTS {p}ledger_accounts ("
        " bank_uuid TEXT NOT NULL, account_id TEXT NOT NULL, number BIGINT NOT NULL,"
        " kind TEXT NOT NULL, status TEXT NOT NULL, lower_limit_minutes BIGINT NOT NULL,"
        " upper_limit_minutes BIGINT, balance_minutes BIGINT NOT NULL,"
        " pending_debit_minutes BIGINT NOT NULL, pending_credit_minutes BIGINT NOT NULL,"
        " opened_at TEXT NOT NULL, updated_at TEXT NOT NULL, position BIGINT NOT NULL,"
        " PRIMARY KEY (bank_uuid, account_id))",
        f"CREATE UNIQUE INDEX IF NOT EXISTS ledger_accounts_by_number"
        f" ON {p}ledger_accounts (bank_uuid, number)",
        f"CREATE TABLE IF NOT EXISTS {p}ledger_transfers ("
        " bank_uuid TEXT NOT NULL, transfer_id TEXT NOT NULL, number BIGINT NOT NULL,"
        " kind TEXT NOT NULL, status TEXT NOT NULL, payer_account_id TEXT NOT NULL,"
        " payee_account_id TEXT NOT NULL, amount_minutes BIGINT NOT NULL,"
        " posted_amount_minutes BIGINT NOT NULL, memo TEXT NOT NULL, category TEXT NOT NULL,"
        " service_date TEXT NOT NULL, timeout_seconds BIGINT NOT NULL, created_at TEXT NOT NULL,"
        " deadline TEXT, resolved_at TEXT, reverses_transfer_id TEXT NOT NULL,"
        " reversed_by_transfer_id TEXT NOT NULL, reason TEXT NOT NULL, actor TEXT NOT NULL,"
        " actor_label TEXT NOT NULL, created_position BIGINT NOT NULL, position BIGINT NOT NULL,"
        " PRIMARY KEY (bank_uuid, transfer_id))",
        f"CREATE UNIQUE INDEX IF NOT EXISTS ledger_transfers_by_number"
        f" ON {p}ledger_transfers (bank_uuid, number)",
        # What the expiry sweep looks for: open holds with a deadline, in deadline order.
        f"CREATE INDEX IF NOT EXISTS ledger_transfers_due ON {p}ledger_transfers (deadline)"
        " WHERE status = 'pending' AND deadline IS NOT NULL",
        f"CREATE TABLE IF NOT EXISTS {p}ledger_account_transfers ("
        " bank_uuid TEXT NOT NULL, account_id TEXT NOT NULL, number BIGINT NOT NULL,"
        " transfer_id TEXT NOT NULL, PRIMARY KEY (bank_uuid, account_id, number))",
        f"CREATE TABLE IF NOT EXISTS {p}ledger_requests ("
        " bank_uuid TEXT NOT NULL, request_id TEXT NOT NULL, kind TEXT NOT NULL,"
        " content TEXT NOT NULL, position BIGINT NOT NULL, PRIMARY KEY (bank_uuid, request_id))",
        f"CREATE TABLE IF NOT EXISTS {p}ledger_chain ("
        " bank_uuid TEXT NOT NULL, version BIGINT NOT NULL, chain_hash TEXT NOT NULL,"
        " PRIMARY KEY (bank_uuid, version))",
        f"CREATE TABLE IF NOT EXISTS {p}ledger_snapshots ("
        " bank_uuid TEXT PRIMARY KEY, version BIGINT NOT NULL, chain_head TEXT NOT NULL,"
        f" state {blob_type} NOT NULL, taken_at TEXT NOT NULL)",
        # bank_uuid is the deployment's history id for operator keys (bank_id "").
        f"CREATE TABLE IF NOT EXISTS {p}ledger_api_keys ("
        " key_id TEXT PRIMARY KEY, bank_uuid TEXT NOT NULL, bank_id TEXT NOT NULL,"
        " role TEXT NOT NULL, secret_hash TEXT NOT NULL, label TEXT NOT NULL,"
        " created_at TEXT NOT NULL, expires_at TEXT, created_by TEXT NOT NULL,"
        " revoked_at TEXT, revoked_by TEXT NOT NULL, revoke_reason TEXT NOT NULL,"
        # Where the key was issued in its bank's (or the deployment's) history.
        " position BIGINT NOT NULL)",
        f"CREATE INDEX IF NOT EXISTS ledger_api_keys_by_bank"
        f" ON {p}ledger_api_keys (bank_uuid, position)",
        f"CREATE TABLE IF NOT EXISTS {p}ledger_member_token_keys ("
        " bank_uuid TEXT NOT NULL, kid TEXT NOT NULL, algorithm TEXT NOT NULL,"
        " public_key_pem TEXT NOT NULL, registered_at TEXT NOT NULL, position BIGINT NOT NULL,"
        " PRIMARY KEY (bank_uuid, kid))",
        *list_statements(p),
        *audit_statements(p, blob_type),
        *pool_rows.statements(p),
    ]


# ----------------------------------------------------------------- lists (issue 12)
#
# Every list page is one range scan of one index (two, merged, for an account's transfers
# as payer and as payee), whatever the history's length (ledger/storage/lists.py). The
# indexes below are partial where they can be, to cost the write path little: the
# transfers that are not plainly posted (pending, voided, expired, or posted and then
# reversed) are few beside the posted ones. The list queries repeat each predicate word for
# word, as SQLite uses a partial index only then.
NOT_PLAINLY_POSTED = "NOT (status = 'posted' AND reversed_by_transfer_id = '')"
# One transfer in this many (by number) marks the bank's time: numbers and creation times
# grow together within a bank (timestamps never go backwards), so the marks turn a time
# range into a number range with two small look-ups, for an index 1/128 of the table's size.
# A range's edges are then exact to within 127 transfers, fewer than a page scans
# (limits.list_rows_scanned_per_page_max), so its first page reaches into it.
time_mark_every = 128  # a power of two: the test is a bit mask (no '%', a placeholder)
TIME_MARK = f"(number & {time_mark_every - 1}) = 0"


def list_statements(p: str) -> list[str]:
    return [
        f"CREATE TABLE IF NOT EXISTS {p}ledger_account_metadata ("
        " bank_uuid TEXT NOT NULL, account_id TEXT NOT NULL,"
        # NULL until set; tags are the canonical JSON of an object of strings.
        " label TEXT, tags TEXT, position BIGINT NOT NULL,"
        " PRIMARY KEY (bank_uuid, account_id))",
        f"CREATE INDEX IF NOT EXISTS ledger_accounts_by_kind"
        f" ON {p}ledger_accounts (bank_uuid, kind, number)",
        f"CREATE INDEX IF NOT EXISTS ledger_accounts_by_status"
        f" ON {p}ledger_accounts (bank_uuid, status, number)",
        f"CREATE INDEX IF NOT EXISTS ledger_accounts_by_kind_status"
        f" ON {p}ledger_accounts (bank_uuid, kind, status, number)",
        f"CREATE INDEX IF NOT EXISTS ledger_transfers_marked_by_payer"
        f" ON {p}ledger_transfers (bank_uuid, payer_account_id, status, number)"
        f" WHERE {NOT_PLAINLY_POSTED}",
        f"CREATE INDEX IF NOT EXISTS ledger_transfers_marked_by_payee"
        f" ON {p}ledger_transfers (bank_uuid, payee_account_id, status, number)"
        f" WHERE {NOT_PLAINLY_POSTED}",
        f"CREATE INDEX IF NOT EXISTS ledger_transfers_marked"
        f" ON {p}ledger_transfers (bank_uuid, status, number) WHERE {NOT_PLAINLY_POSTED}",
        # Named after its predicate: another spacing is another index.
        f"CREATE INDEX IF NOT EXISTS ledger_transfers_every_{time_mark_every}th"
        f" ON {p}ledger_transfers (bank_uuid, created_at) WHERE {TIME_MARK}",
    ]


# ----------------------------------------------------------------- audit (issue 10)
#
# Signed checkpoints: at `signed_at`, the bank's history had `chain_head` at `position`,
# signed with Ed25519 over `payload` (ledger/verifier.py says how) by the key `key_id`,
# whose private half is kept outside the database. Neither table is part of the history;
# their rows are checked, never trusted: a checkpoint counts only with a key the auditor
# pinned out of band.
def audit_statements(p: str, blob_type: str) -> list[str]:
    return [
        f"CREATE TABLE IF NOT EXISTS {p}ledger_checkpoints ("
        " bank_uuid TEXT NOT NULL, position BIGINT NOT NULL, chain_head TEXT NOT NULL,"
        " signed_at TEXT NOT NULL, key_id TEXT NOT NULL,"
        f" payload {blob_type} NOT NULL, signature {blob_type} NOT NULL,"
        " PRIMARY KEY (bank_uuid, position))",
        f"CREATE TABLE IF NOT EXISTS {p}ledger_checkpoint_keys ("
        " key_id TEXT PRIMARY KEY, public_key_pem TEXT NOT NULL, first_used_at TEXT NOT NULL)",
    ]

"""Read models built from the event log: the read side of the ledger (issue 4).

- `runner.py` follows the log in batches and applies each event exactly once to one
  projection's tables, recording the position in the same transaction; `db.py` is the views'
  database (SQLite or PostgreSQL).
- `accounts.py` (summaries and statements) and `reports.py` (bank totals, zero-sum check,
  monthly and per-category figures) are the projections; `queries.py` and
  `report_queries.py` read them in plain SQL.
- `registry.py` names the projections and runs a set of them (in `serve`, or in
  `timebank-ledger project`); `reads.py` answers reads at least as fresh as the caller asks
  (read-your-writes), for LedgerViewService.

LedgerService's own reads (GetAccount, ListAccountTransfers, ...) are still served from the
bank writer's in-memory state, which is always current.
"""

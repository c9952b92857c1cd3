"""timebank-ledger: an event-sourced mutual-credit ledger for time banks."""

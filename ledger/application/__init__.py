"""Use cases: the event store, one writer per bank, and the Ledger facade the entrypoints call."""

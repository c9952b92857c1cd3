"""The event store and the index tables: where a bank's history and its look-ups are kept."""

"""Developer tools run with `python -m ledger.tools.<name>`."""

"""Generated code for timebank.ledger.v1; regenerate with `python -m ledger.tools.gen_protos`."""

"""The gRPC entry point: LedgerService (servicer.py) on a server with health and reflection.

Entry points only translate: protobuf in (convert.py), call the application's Ledger,
protobuf out; domain errors become gRPC statuses in one place (errors.py).
"""

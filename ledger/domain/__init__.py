"""The ledger's rules: banks, accounts, transfers; imports nothing from gRPC or the database."""

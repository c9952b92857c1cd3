"""Generated protobuf packages of the timebank API (see protos/ and ledger.tools.gen_protos)."""

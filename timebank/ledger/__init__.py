"""Generated code for the timebank.ledger protobuf package."""

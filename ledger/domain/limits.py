"""Named maxima on every input: ids, strings, amounts, batches and pages."""

from __future__ import annotations

# Ids are chosen by clients; this alphabet keeps them safe in URLs, logs and page tokens.
id_pattern = r"^[A-Za-z0-9][A-Za-z0-9._:-]*$"
id_length_max = 64

bank_name_length_max = 200
memo_length_max = 500
category_length_max = 64
reason_length_max = 500
actor_length_max = 128

# A year of minutes is 525,600; a single transfer of more than ~1,900 years is a typo.
amount_minutes_max = 1_000_000_000
# Limits stay far inside int64 so no sum of balances can overflow.
limit_minutes_max = 1_000_000_000_000

# A pending transfer may be held for at most a year; 0 means "until posted or voided".
pending_timeout_seconds_max = 366 * 24 * 3600

transfers_per_batch_max = 1_000
# New transfers grouped into one TransfersCreated event at most (bounds one stored row).
transfers_per_event_max = 1_000
page_size_default = 50
page_size_max = 1_000

# Access: API key labels, keys a bank may hold, and its identity provider's public keys.
key_label_length_max = 200
api_keys_per_bank_max = 1_000
member_token_keys_per_bank_max = 8  # room for rotation: old and new keys side by side
member_token_kid_length_max = 128
member_token_key_pem_length_max = 4096
member_token_algorithms = ("EdDSA", "ES256")

# Account metadata (issue 12): a display label and a few key/value tags chosen by the bank.
# Personal data has no place here: the history is immutable (see README, "Account metadata").
account_label_length_max = 128
account_tags_max = 16
account_tag_key_length_max = 32
account_tag_value_length_max = 256

# Lists (issue 12). A filter an index does not answer on its own is checked row by row, on
# at most this many rows of the index per page: a page may then hold fewer items than asked
# (even none) and still have a next page. Bounds the cost of a page whatever the history
# (a few milliseconds on PostgreSQL: load_tests/RESULTS.md, "Lists"). More than
# storage.schema.time_mark_every, so a time range's first page reaches into the range.
list_rows_scanned_per_page_max = 300
# total_size is given when the list's own index holds at most this many entries (counted
# with a bounded scan), or when a kept count answers it (a bank's accounts and transfers).
list_total_size_counted_max = 1_000

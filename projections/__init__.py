"""Read models built from the event log (balances, statements, reports); see issue 4.

For now every read is served from the bank writer's in-memory state, which is rebuilt
from the events on load; projections with their own tables come next.
"""

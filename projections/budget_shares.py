"""The share rule of a pooled personal budget: whose minutes a pool holds, to the minute.

Every contributor of a pool has a share: `contributed` (posted into the pool, net of
reversals), `left` (what of it the pool still holds for them) and `used` = contributed -
left (what grants drew from it). The rule, deterministic and conserving every minute:

- A contribution adds to its contributor's share.
- A posted grant is drawn from the shares in proportion to what each has left at the moment
  it posts: integer minutes, largest remainder first, ties by account id (code point order).
  What it took from each share is kept, so that its reversal can give it back.
- A pool whose floor lets it go below zero can grant more than its shares hold: the excess
  is `beyond_shares` (the pool's debt, owed to nobody's share). Minutes that later come in,
  by a contribution or a grant's reversal, repay it first.
- A grant's reversal (after repaying any debt) gives back to each share what the grant took
  from it, no more than that share has used; anything still left over (the debt it had
  run into was repaid since by others) goes to the shares in proportion to what each has used.
- A contribution's reversal takes its minutes back from its contributor's share; if grants
  have used that share, the rest is drawn from the other shares as a grant would be.

So at every moment: no share is negative, sum(left) - beyond_shares equals the pool's
balance (contributed - granted), and beyond_shares > 0 only when every share is spent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def apportion(amount_minutes: int, weights: Mapping[str, int]) -> dict[str, int]:
    """`amount_minutes` split in proportion to the (positive) weights, whose total is at least
    the amount: whole minutes by largest remainder, ties by account id. No part exceeds its
    weight; parts of zero are left out."""
    total = sum(weights.values())
    assert 0 <= amount_minutes <= total, (amount_minutes, total)
    if amount_minutes == 0:
        return {}
    parts: dict[str, int] = {}
    remainders: list[tuple[int, str]] = []
    for account_id, weight in weights.items():
        assert weight > 0, (account_id, weight)
        part, remainder = divmod(amount_minutes * weight, total)
        parts[account_id] = part
        remainders.append((-remainder, account_id))
    # The remainders sum to (amount - sum(parts)) * total, each below total: that many
    # accounts have a remainder above zero, so a part given one more still fits its weight.
    for _, account_id in sorted(remainders)[: amount_minutes - sum(parts.values())]:
        parts[account_id] += 1
    return {account_id: part for account_id, part in parts.items() if part}


class ShareBook:
    """One pool's shares as a batch changes them: the stored values (if loaded) and deltas.

    A contribution needs no stored share (it only adds); a draw, a grant's reversal and a
    contribution's reversal need every share of the pool, so those pools are loaded first.
    """

    def __init__(
        self, beyond_shares_minutes: int, stored: Mapping[str, tuple[int, int]] | None = None
    ) -> None:
        assert beyond_shares_minutes >= 0
        self.beyond_shares_minutes = beyond_shares_minutes
        self.loaded = stored is not None
        # account -> (contributed_minutes, left_minutes) as stored.
        self._stored = dict(stored or {})
        # account -> [contributed delta, left delta]: what the batch writes back.
        self.changes: dict[str, list[int]] = {}

    # ----------------------------------------------------------------- reading

    def accounts(self) -> Iterable[str]:
        return self._stored.keys() | self.changes.keys()

    def contributed_minutes(self, account_id: str) -> int:
        stored = self._stored.get(account_id, (0, 0))[0]
        return stored + self.changes.get(account_id, [0, 0])[0]

    def left_minutes(self, account_id: str) -> int:
        stored = self._stored.get(account_id, (0, 0))[1]
        return stored + self.changes.get(account_id, [0, 0])[1]

    def used_minutes(self, account_id: str) -> int:
        return self.contributed_minutes(account_id) - self.left_minutes(account_id)

    def lefts(self) -> dict[str, int]:
        """Every share with minutes left (the pool must be loaded)."""
        assert self.loaded, "a draw needs every share of the pool"
        found = {account_id: self.left_minutes(account_id) for account_id in self.accounts()}
        return {account_id: left for account_id, left in found.items() if left > 0}

    # ----------------------------------------------------------------- the rule

    def contribute(self, account_id: str, minutes: int) -> None:
        assert minutes > 0
        repaid = min(minutes, self.beyond_shares_minutes)
        self.beyond_shares_minutes -= repaid
        self._change(account_id, minutes, minutes - repaid)

    def draw(self, minutes: int) -> dict[str, int]:
        """A posted grant (or a reversal's shortfall): what it takes from each share."""
        assert minutes > 0
        lefts = self.lefts()
        covered = min(minutes, sum(lefts.values()))
        takes = apportion(covered, lefts)
        for account_id, taken in takes.items():
            self._change(account_id, 0, -taken)
        self.beyond_shares_minutes += minutes - covered
        return takes

    def give_back(self, minutes: int, takes: Mapping[str, int]) -> None:
        """A grant's reversal: `minutes` come back; `takes` is what the grant took."""
        assert minutes > 0
        repaid = min(minutes, self.beyond_shares_minutes)
        self.beyond_shares_minutes -= repaid
        rest = minutes - repaid
        weights = {a: min(t, self.used_minutes(a)) for a, t in takes.items()}
        weights = {a: w for a, w in weights.items() if w > 0}
        rest -= self._credit(min(rest, sum(weights.values())), weights)
        if rest:
            used = {a: self.used_minutes(a) for a in self.accounts()}
            self._credit(rest, {a: u for a, u in used.items() if u > 0})

    def withdraw(self, account_id: str, minutes: int) -> None:
        """A contribution's reversal: its minutes leave the pool and its contributor's share."""
        assert minutes > 0
        assert self.loaded, "a withdrawal may draw on every share of the pool"
        own = min(minutes, self.left_minutes(account_id))
        self._change(account_id, -minutes, -own)
        if minutes > own:
            self.draw(minutes - own)

    # ----------------------------------------------------------------- internals

    def _credit(self, minutes: int, weights: Mapping[str, int]) -> int:
        for account_id, part in apportion(minutes, weights).items():
            self._change(account_id, 0, part)
        return minutes

    def _change(self, account_id: str, contributed_minutes: int, left_minutes: int) -> None:
        change = self.changes.setdefault(account_id, [0, 0])
        change[0] += contributed_minutes
        change[1] += left_minutes
        if self.loaded:
            # Checked where written: no share is negative, none has left more than it gave.
            left = self.left_minutes(account_id)
            assert 0 <= left <= self.contributed_minutes(account_id), (account_id, left)

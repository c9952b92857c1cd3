"""Limit checks that see the effect of earlier, not yet recorded, items of the same linked batch."""

from __future__ import annotations

from ledger.domain.errors import PreconditionFailed
from ledger.domain.state import Account


class LimitOverlay:
    """Per-account changes to the debit and credit exposures, on top of the recorded state."""

    def __init__(self) -> None:
        self._debit_delta_minutes: dict[str, int] = {}
        self._credit_delta_minutes: dict[str, int] = {}

    def check_and_add(
        self, payer: Account, payee: Account, amount_minutes: int, *, pending: bool
    ) -> None:
        """Refuse if the transfer would take either account past a limit; else add its effect."""
        debit_exposure = payer.debit_exposure_minutes + self._debit_delta_minutes.get(
            payer.account_id, 0
        )
        if debit_exposure - amount_minutes < payer.lower_limit_minutes:
            available = max(0, debit_exposure - payer.lower_limit_minutes)
            raise PreconditionFailed(
                "EXCEEDS_LOWER_LIMIT",
                f"account {payer.account_id!r} can pay at most {available} more minutes",
                metadata={"account_id": payer.account_id, "available_minutes": str(available)},
            )
        if payee.upper_limit_minutes is not None:
            credit_exposure = payee.credit_exposure_minutes + self._credit_delta_minutes.get(
                payee.account_id, 0
            )
            if credit_exposure + amount_minutes > payee.upper_limit_minutes:
                room = max(0, payee.upper_limit_minutes - credit_exposure)
                raise PreconditionFailed(
                    "EXCEEDS_UPPER_LIMIT",
                    f"account {payee.account_id!r} can receive at most {room} more minutes",
                    metadata={"account_id": payee.account_id, "room_minutes": str(room)},
                )
        self._add(self._debit_delta_minutes, payer.account_id, -amount_minutes)
        self._add(self._credit_delta_minutes, payee.account_id, amount_minutes)
        if not pending:
            # A posted transfer also moves the balance that the other exposure is based on.
            self._add(self._credit_delta_minutes, payer.account_id, -amount_minutes)
            self._add(self._debit_delta_minutes, payee.account_id, amount_minutes)

    @staticmethod
    def _add(deltas: dict[str, int], account_id: str, amount_minutes: int) -> None:
        deltas[account_id] = deltas.get(account_id, 0) + amount_minutes

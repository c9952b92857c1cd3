"""SQL written once with `?` placeholders, for SQLite as it is and for PostgreSQL translated."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Dialect:
    name: str  # "sqlite" or "postgresql"
    # Qualifies table names: a quoted PostgreSQL schema and a dot, or "".
    prefix: str = ""

    @property
    def postgres(self) -> bool:
        return self.name == "postgresql"

    def table(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def sql(self, statement: str) -> str:
        if not self.postgres:
            return statement
        # Our statements hold no literal '?' or '%', so this translation is exact.
        assert "%" not in statement, statement
        return statement.replace("?", "%s")


SQLITE = Dialect("sqlite")


def postgres(schema: str) -> Dialect:
    quoted = '"' + schema.replace('"', '""') + '"'
    return Dialect("postgresql", f"{quoted}.")

"""Bulk inserts for the gateway's hot path, in the session's transaction: SQLite's ``executemany`` and
PostgreSQL's ``COPY``, straight through the driver.

SQLAlchemy's insert of a list of rows compiles and processes every row in Python (parameters, date and JSON
processors): measured here it was three quarters of storing a 1,000-row batch. The rows written here are
the same ones SQLAlchemy would write (JSON text by :func:`~learning_machine.store.db.dump_json`, SQLite
datetimes in SQLAlchemy's own storage format), so every reader sees no difference. Driver errors come out as
SQLAlchemy's (``IntegrityError``, ``DataError``, ``OperationalError``), which the callers already handle."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Connection, DateTime, Table
from sqlalchemy import exc as sa_exc

from learning_machine.store.db import dump_json

# From this many rows on, PostgreSQL gets COPY (two round trips, then the rows stream); fewer go as one
# INSERT executed per row in one pipeline (one round trip), which is faster for the gateway's single rows.
COPY_ROWS = 50


def insert_rows(connection: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """Insert ``rows`` (dicts with the same keys, column names of ``table``) in the connection's transaction."""
    if not rows:
        return
    columns = list(rows[0])
    # Column by column (one comprehension each, conversions only where a type needs one), then zipped to rows.
    data = [[row[name] for row in rows] for name in columns]
    for index, name in enumerate(columns):
        convert = _converter(table, name, connection.dialect.name)
        if convert is not None:
            data[index] = [convert(value) for value in data[index]]
    values = list(zip(*data, strict=True))
    names = ", ".join(columns)
    postgresql = connection.dialect.name == "postgresql"
    if postgresql and len(values) >= COPY_ROWS:
        _copy(connection.connection.driver_connection, f"COPY {table.name} ({names}) FROM STDIN", values)
        return
    marks = ", ".join(["%s" if postgresql else "?"] * len(columns))
    # Names are the table's own columns (each looked up in it above); values travel as parameters.
    connection.exec_driver_sql(f"INSERT INTO {table.name} ({names}) VALUES ({marks})", values)  # noqa: S608


def _converter(table: Table, name: str, dialect: str) -> Callable[[Any], Any] | None:
    kind = table.columns[name].type
    if isinstance(kind, JSON):
        return _json
    if isinstance(kind, DateTime) and dialect == "sqlite":
        return _SqliteDatetime()
    return None


def _json(value: Any) -> str | None:
    return None if value is None else dump_json(value)


class _SqliteDatetime:
    """SQLAlchemy's SQLite text of a datetime, remembered for the last one (a batch shares one time)."""

    def __init__(self) -> None:
        self.last: tuple[datetime | None, str | None] = (None, None)

    def __call__(self, value: datetime | None) -> str | None:
        if value is None:
            return None
        if value is not self.last[0]:
            self.last = (value, f"{value.year:04d}-{value.month:02d}-{value.day:02d} {value.hour:02d}:"
                                f"{value.minute:02d}:{value.second:02d}.{value.microsecond:06d}")
        return self.last[1]


def _copy(driver_connection: Any, statement: str, values: list[tuple[Any, ...]]) -> None:
    import psycopg

    try:
        with driver_connection.cursor() as cursor, cursor.copy(statement) as copy:
            for row in values:
                copy.write_row(row)
    except psycopg.IntegrityError as exc:
        raise sa_exc.IntegrityError(statement, None, exc) from exc
    except psycopg.DataError as exc:
        raise sa_exc.DataError(statement, None, exc) from exc
    except psycopg.OperationalError as exc:
        raise sa_exc.OperationalError(statement, None, exc) from exc

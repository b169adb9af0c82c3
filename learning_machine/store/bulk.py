"""Bulk inserts for the gateway's hot path, in the session's transaction: SQLite's ``executemany`` and
PostgreSQL's ``COPY``, straight through the driver.

SQLAlchemy's insert of a list of rows compiles and processes every row in Python (parameters, date and JSON
processors): measured here it was three quarters of storing a 1,000-row batch. The rows written here are
the same ones SQLAlchemy would write (JSON text by :func:`~learning_machine.store.db.dump_json`, SQLite
datetimes in SQLAlchemy's own storage format), so every reader sees no difference. Driver errors come out as
SQLAlchemy's (``IntegrityError``, ``DataError``, ``OperationalError``), which the callers already handle."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Connection, DateTime, Table
from sqlalchemy import exc as sa_exc

from learning_machine.store.db import dump_json

# From this many rows on, PostgreSQL gets COPY (two round trips, then the rows stream); fewer go as one INSERT
# executed per row (psycopg pipelines them: one round trip), which is faster for the gateway's single rows.
COPY_ROWS = 50


def insert_rows(connection: Connection, tables: Sequence[tuple[Table, Sequence[dict[str, Any]]]]) -> None:
    """Insert each table's rows (dicts with the same keys, column names of the table), in order (a table whose
    rows reference another's comes after it), in the connection's transaction."""
    postgresql = connection.dialect.name == "postgresql"
    work = [(table, *_values(table, rows, connection.dialect.name)) for table, rows in tables if rows]
    if not postgresql:
        for table, names, values in work:
            connection.exec_driver_sql(_insert(table, names, "?"), values)
        return
    driver: Any = connection.connection.driver_connection
    with _as_sqlalchemy_errors(), driver.cursor() as cursor:
        for table, names, values in work:
            if len(values) >= COPY_ROWS:
                with cursor.copy(f"COPY {table.name} ({', '.join(names)}) FROM STDIN") as copy:
                    for row in values:
                        copy.write_row(row)
            else:
                cursor.executemany(_insert(table, names, "%s"), values)


def _insert(table: Table, names: list[str], mark: str) -> str:
    # Names are the table's own columns (each looked up in it); values travel as parameters.
    return f"INSERT INTO {table.name} ({', '.join(names)}) VALUES ({', '.join([mark] * len(names))})"  # noqa: S608


def _values(table: Table, rows: Sequence[dict[str, Any]], dialect: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """The column names and the rows as tuples, converted as SQLAlchemy would for ``dialect``: column by column
    (one comprehension each, conversions only where a type needs one), then zipped to rows."""
    names = list(rows[0])
    data = [[row[name] for row in rows] for name in names]
    for index, name in enumerate(names):
        convert = _converter(table, name, dialect)
        if convert is not None:
            data[index] = [convert(value) for value in data[index]]
    return names, list(zip(*data, strict=True))


@contextmanager
def _as_sqlalchemy_errors() -> Iterator[None]:
    """psycopg's errors as SQLAlchemy's, which the callers handle (a conflict, a refused value, the server gone)."""
    import psycopg

    try:
        yield
    except psycopg.IntegrityError as exc:
        raise sa_exc.IntegrityError("bulk insert", None, exc) from exc
    except psycopg.DataError as exc:
        raise sa_exc.DataError("bulk insert", None, exc) from exc
    except psycopg.OperationalError as exc:
        raise sa_exc.OperationalError("bulk insert", None, exc) from exc


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

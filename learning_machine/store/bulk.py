"""Bulk inserts for the gateway's hot path, straight through the driver: on SQLite one ``INSERT ... SELECT``
over a JSON array of the rows per table; on PostgreSQL ``COPY``, or for a few rows one statement for every
table (:func:`insert_all`), which may commit by itself.

SQLAlchemy's insert of a list of rows compiles and processes every row in Python (parameters, date and JSON
processors): measured here it was three quarters of storing a 1,000-row batch. The rows written here are
the same ones SQLAlchemy would write (JSON text by :func:`~learning_machine.store.db.dump_json`, SQLite
datetimes in SQLAlchemy's own storage format), so every reader sees no difference. Driver errors come out as
SQLAlchemy's (``IntegrityError``, ``DataError``, ``OperationalError``), which the callers already handle."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, NamedTuple

import orjson
from sqlalchemy import JSON, Connection, DateTime, Table
from sqlalchemy import exc as sa_exc

from learning_machine.store.db import dump_json

# From this many rows on, PostgreSQL gets COPY (two round trips, then the rows stream); fewer go as one INSERT
# executed per row (psycopg pipelines them: one round trip), which is faster for the gateway's single rows.
COPY_ROWS = 50


class Insert(NamedTuple):
    """The rows of one table for :func:`insert_all`, as :func:`insert_columns` takes them: ``columns`` (name ->
    one value per row) and ``constants`` (name -> the one value of every row)."""

    table: Table
    columns: Mapping[str, Sequence[Any]]
    constants: Mapping[str, Any]

    @property
    def rows(self) -> int:
        return len(next(iter(self.columns.values()), ()))


def one_statement(dialect: str, inserts: Sequence[Insert]) -> bool:
    """Whether :func:`insert_all` writes ``inserts`` with one statement, which is atomic alone (so it may run
    outside a transaction, committed by itself): on PostgreSQL when they hold fewer than :data:`COPY_ROWS`
    rows in all. One statement is one round trip to the server; each table's INSERT, a BEGIN and a COMMIT
    would be one each."""
    return dialect == "postgresql" and sum(insert.rows for insert in inserts) < COPY_ROWS


def insert_all(connection: Connection, inserts: Sequence[Insert]) -> None:
    """Insert each table's rows, in order (a table whose rows reference another's comes after it). On
    PostgreSQL, when :func:`one_statement` says so, every table's rows go in one ``INSERT`` with the others as
    data-modifying ``WITH`` parts (foreign keys are checked at the end of the statement, so the order of the
    parts does not matter); otherwise each table is :func:`insert_columns`. In the connection's transaction,
    or committed by the statement itself when the connection commits each statement."""
    inserts = [insert for insert in inserts if insert.rows]
    if not inserts:
        return
    if not one_statement(connection.dialect.name, inserts):
        for insert in inserts:
            insert_columns(connection, insert.table, insert.columns, insert.constants)
        return
    parts: list[str] = []
    params: list[Any] = []
    for insert in inserts:
        names, rows = _driver_rows(insert.table, insert.columns, insert.constants, "postgresql")
        parts.append(_insert(insert.table, names, "%s", len(rows)))
        params += [value for row in rows for value in row]
    *first, last = parts
    statement = (f"WITH {', '.join(f'w{index} AS ({part})' for index, part in enumerate(first))} {last}" if first
                 else last)
    driver: Any = connection.connection.driver_connection
    with _as_sqlalchemy_errors(), driver.cursor() as cursor:
        cursor.execute(statement, params)


def insert_columns(connection: Connection, table: Table, columns: Mapping[str, Sequence[Any]],
                   constants: Mapping[str, Any] | None = None) -> None:
    """Insert rows given column by column (``columns``: name -> one value per row, all of one length) with
    ``constants`` (name -> the one value of every row), in the connection's transaction.

    SQLite gets one ``INSERT ... SELECT`` over a JSON array of the rows (``json_each``): the rows are
    written by orjson and expanded by SQLite, both in C, so the whole insert is one step of the database
    that runs without Python's GIL (other threads go on meanwhile). A JSON value inside a row (a record's
    features) is stored as orjson writes it: the text ``dump_json`` would write, except that a float NaN
    inside it becomes null (the gateway makes every NaN feature null before this anyway). Rows orjson cannot
    write (an integer beyond 64 bits) go through ``executemany`` instead."""
    names = list(columns)
    lengths = {len(values) for values in columns.values()}
    if len(lengths) != 1:
        raise ValueError(f"columns of different lengths for {table.name}: {sorted(lengths)}")
    if not lengths.pop():
        return
    fixed = dict(constants or {})
    dialect = connection.dialect.name
    if dialect != "postgresql":
        try:
            _sqlite_json_insert(connection, table, names, columns, fixed)
            return
        except (TypeError, orjson.JSONEncodeError):  # a value orjson refuses: the exact way below
            pass
    names, values = _driver_rows(table, columns, fixed, dialect)
    if dialect != "postgresql":
        connection.exec_driver_sql(_insert(table, names, "?"), values)
        return
    driver: Any = connection.connection.driver_connection
    with _as_sqlalchemy_errors(), driver.cursor() as cursor:
        if len(values) >= COPY_ROWS:
            with cursor.copy(f"COPY {table.name} ({', '.join(names)}) FROM STDIN") as copy:
                for row in values:
                    copy.write_row(row)
        elif len(values) == 1:  # the gateway's single rows: execute costs a third less CPU than executemany
            cursor.execute(_insert(table, names, "%s"), values[0])
        else:
            cursor.executemany(_insert(table, names, "%s"), values)


def _sqlite_json_insert(connection: Connection, table: Table, names: list[str], columns: Mapping[str, Sequence[Any]],
                        constants: dict[str, Any]) -> None:
    for name in names:
        kind = table.columns[name].type
        if isinstance(kind, DateTime):  # per-row times: not on the hot path
            raise TypeError(f"{name}: per-row datetimes go the exact way")
        if isinstance(kind, JSON) and None in columns[name]:  # SQL NULL, not the JSON text null
            raise TypeError(f"{name}: a missing JSON value goes the exact way")
    # Each row an array; a JSON column's value is taken as JSON text (->), any other as an SQL value (->>).
    picks = [f"value{'->' if isinstance(table.columns[name].type, JSON) else '->>'}{index}"
             for index, name in enumerate(names)]
    fixed = [(name, _converter(table, name, "sqlite")) for name in constants]
    params = [value if convert is None else convert(value) for (_, convert), value in zip(fixed, constants.values(),
                                                                                         strict=True)]
    document = orjson.dumps(list(zip(*(columns[name] for name in names), strict=True))).decode()
    statement = (f"INSERT INTO {table.name} ({', '.join([*names, *constants])}) "  # noqa: S608 - the table's own columns
                 f"SELECT {', '.join([*picks, *['?'] * len(constants)])} FROM json_each(?)")
    connection.exec_driver_sql(statement, (*params, document))


def _driver_rows(table: Table, columns: Mapping[str, Sequence[Any]], constants: Mapping[str, Any], dialect: str,
                 ) -> tuple[list[str], list[tuple[Any, ...]]]:
    """The column names (``columns``' then ``constants``') and the rows as the driver takes them: each row's
    values in that order, the constants repeated, JSON as text and, on SQLite, datetimes in SQLAlchemy's format.
    Every name is looked up in ``table`` (a KeyError for one it does not have)."""
    names = [*columns, *constants]
    count = len(next(iter(columns.values()), ()))
    data = [list(values) for values in columns.values()] + [[value] * count for value in constants.values()]
    for index, name in enumerate(names):
        convert = _converter(table, name, dialect)
        if convert is not None:
            data[index] = [convert(value) for value in data[index]]
    return names, list(zip(*data, strict=True))


def _insert(table: Table, names: list[str], mark: str, rows: int = 1) -> str:
    # Names are the table's own columns (each looked up in it by _driver_rows); values travel as parameters.
    row = f"({', '.join([mark] * len(names))})"
    return f"INSERT INTO {table.name} ({', '.join(names)}) VALUES {', '.join([row] * rows)}"  # noqa: S608


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

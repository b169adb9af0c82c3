"""Engine, sessions and schema migrations of the platform database (SQLite or PostgreSQL by URL)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DataError, DisconnectionError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from learning_machine.errors import BadRequestError, ConfigurationError, ServiceUnavailableError

log = logging.getLogger("learning_machine.store")
MIGRATIONS = Path(__file__).parent / "migrations"
# Not Alembic's default `alembic_version`: MLflow keeps its own history there when both share a database.
VERSION_TABLE = "lm_alembic_version"


def normalise_url(url: str) -> str:
    """``postgresql://`` and ``postgres://`` mean psycopg 3 here (the only PostgreSQL driver installed)."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def safe_url(url: str) -> str:
    """The URL with its password hidden, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a malformed URL must not leak through the error message either
        return "<malformed database URL>"


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for ``url``; SQLite gets its folder created, foreign keys on and a busy timeout.
    Statement parameters never appear in SQLAlchemy's errors or logs (``hide_parameters``): they are patient
    features, and a failed INSERT would otherwise put a whole record into an exception message and the log."""
    url = normalise_url(url)
    kwargs.setdefault("hide_parameters", True)
    kwargs.setdefault("json_serializer", dump_json)
    try:
        parsed = make_url(url)
    except Exception as exc:  # SQLAlchemy raises ArgumentError or ValueError
        raise ConfigurationError(f"LM_DATABASE_URL is not a valid database URL: {safe_url(url)}") from exc
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        # Concurrent gateway threads write: wait for the lock instead of failing with "database is locked".
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if parsed.get_backend_name() != "postgresql":
        raise ConfigurationError(f"unsupported database {parsed.get_backend_name()!r}: use sqlite or postgresql")
    return create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 5}, **kwargs)


def dump_json(value: Any) -> str:
    """JSON text of a column value: orjson (the gateway stores a features object per row, and a 1,000-row
    batch spent milliseconds in ``json.dumps``), with the standard library's exact output where orjson would
    differ: it writes NaN as null (``json.dumps`` keeps NaN, which PostgreSQL refuses and SQLite reads back as
    NaN) and refuses what ``json.dumps`` may accept (integers beyond 64 bits, other key types)."""
    try:
        text = orjson.dumps(value)
    except TypeError:
        return json.dumps(value)
    return json.dumps(value) if b"null" in text else text.decode()


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    # WAL lets the dashboard read while the gateway writes. With WAL, synchronous=NORMAL stays consistent
    # and survives a crash of the process; only a power cut can lose the last commits. It saves an fsync
    # (about half the cost of storing a prediction here); production uses PostgreSQL anyway.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _no_autocheckpoint(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.execute("PRAGMA wal_autocheckpoint=0")


class Checkpointer:
    """Copies SQLite's write-ahead log back into the database file from a thread of its own, so that no
    request's commit does it. By default SQLite checkpoints inside the commit that passes 1,000 WAL pages:
    with 1,000-row prediction batches that was about one commit in seven, each then taking ~13 ms instead of
    0.4 ms (a one-off timing of 60 such commits here: a mean of 1.53 ms against 0.48 ms without it). Each checkpoint is PASSIVE:
    it copies what no reader still needs and never blocks writers. Durability is unchanged: a commit is in
    the WAL either way, and a WAL left behind by a stopped process is replayed when the database opens."""

    def __init__(self, engine: Engine, interval_s: float) -> None:
        self.engine = engine
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoints", daemon=True)
        self._thread.start()

    def checkpoint(self) -> None:
        with self.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.checkpoint()
            except SQLAlchemyError as exc:  # busy or gone: the next round tries again
                log.warning("a WAL checkpoint of the platform database failed: %s",
                            type(getattr(exc, "orig", None) or exc).__name__)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        """Stop the thread after one last checkpoint."""
        self._stop.set()
        self._thread.join(timeout=30)
        try:
            self.checkpoint()
        except SQLAlchemyError:
            pass


class Database:
    """One engine and its session factory; ``transaction()`` is the unit of work (all or nothing).
    ``background_checkpoints`` (SQLite; the gateway's): WAL checkpoints run in a :class:`Checkpointer` thread
    every ``checkpoint_interval_s`` instead of inside commits."""

    def __init__(self, url: str, *, background_checkpoints: bool = False, checkpoint_interval_s: float = 0.5,
                 **engine_kwargs: Any) -> None:
        self.url = normalise_url(url)
        self.engine = make_engine(self.url, **engine_kwargs)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.checkpointer: Checkpointer | None = None
        if background_checkpoints and self.engine.dialect.name == "sqlite" and self.engine.url.database not in (
                None, "", ":memory:"):
            event.listen(self.engine, "connect", _no_autocheckpoint)  # before the first connection
            self.checkpointer = Checkpointer(self.engine, checkpoint_interval_s)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose work is committed at the end, or rolled back entirely on any error."""
        with self.errors(), self.sessions.begin() as session:
            yield session

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        """:meth:`transaction` without the ORM session, for Core statements on the hot path (the gateway's
        predictions): the session's setup and bookkeeping cost more than a one-row insert."""
        with self.errors(), self.engine.begin() as connection:
            yield connection

    def connect(self, *, autocommit: bool = False) -> Connection:
        """A connection from the pool, for the caller to close. ``autocommit``: each statement on it commits by
        itself, for a write that is one statement (atomic alone, :func:`~learning_machine.store.bulk.one_statement`):
        one round trip to the server where a transaction takes three (BEGIN, the statement, COMMIT). This is the
        one place a connection leaves transactions; the pool gives it back to them when it is closed."""
        connection = self.engine.connect()
        if autocommit:
            connection.execution_options(isolation_level="AUTOCOMMIT")
        return connection

    @contextmanager
    def autocommit(self) -> Iterator[Connection]:
        """:meth:`connect` with ``autocommit``, closed at the end; the database's errors as the platform's."""
        with self.errors(), self.connect(autocommit=True) as connection:
            yield connection

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self.errors(), self.sessions() as session:
            yield session

    @contextmanager
    def errors(self) -> Iterator[None]:
        """The database's errors as the platform's: a refused value (400), the database unreachable (503)."""
        try:
            yield
        except DataError as exc:
            raise _refused(exc) from exc
        except (OperationalError, DisconnectionError) as exc:
            raise _unavailable(exc, self.url) from exc

    def ping(self) -> None:
        """Raise :class:`ServiceUnavailableError` unless the database answers."""
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except SQLAlchemyError as exc:
            orig = getattr(exc, "orig", None)
            raise ServiceUnavailableError(f"the database at {safe_url(self.url)} is unreachable "
                                          f"({type(orig or exc).__name__})") from exc

    def upgrade(self) -> None:
        upgrade(self.engine)

    def dispose(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer.stop()
            self.checkpointer = None
        self.engine.dispose()


def _refused(exc: SQLAlchemyError) -> BadRequestError:
    # The validation layer should have refused the value first; this is the backstop, and it names the
    # database's rule, never the value (which may be a patient's).
    orig = getattr(exc, "orig", None)
    reason = str(orig or exc).splitlines()[0][:200] if orig is not None else type(exc).__name__
    return BadRequestError(f"the database refused a value in this request ({type(orig or exc).__name__}: {reason})")


def _unavailable(exc: SQLAlchemyError, url: str) -> ServiceUnavailableError:
    orig = getattr(exc, "orig", None)
    return ServiceUnavailableError(f"the database at {safe_url(url)} failed ({type(orig or exc).__name__})")


def alembic_config(engine: Engine) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # The engine travels in attributes, not as a URL option: ConfigParser would choke on '%' in passwords.
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply every migration up to ``revision`` (idempotent: a current schema is left alone)."""
    from alembic import command

    try:
        command.upgrade(alembic_config(engine), revision)
    except SQLAlchemyError as exc:
        orig = getattr(exc, "orig", None)
        raise ServiceUnavailableError(
            f"migrating the database at {safe_url(engine.url.render_as_string(hide_password=False))} failed: "
            f"{type(orig or exc).__name__}: {orig or exc}") from exc


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision()

"""The data source: send records to the gateway as they would arrive in a clinic (one, N at once, or a
simulation at a given rate with a drift scenario from a given row), and send each outcome later, after
a delay in rows or seconds. Progress is reported; Ctrl-C stops cleanly and says what was sent.

A batch that meets a server error (5xx) or a transport error is sent again, with the same request id, after
a delay that doubles up to a cap; the gateway recognises the id and answers a batch it already stored with
the stored predictions, so a retry after a lost answer stores nothing twice. After ``max_attempts`` the
stream stops and says which rows were not stored."""

from __future__ import annotations

import heapq
import math
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import pandas as pd

from learning_machine.clients.gateway import GatewayError, LearningMachineClient
from learning_machine.data.sources import load_dataset
from learning_machine.errors import LearningMachineError, ServiceUnavailableError

Progress = Callable[[str], None]


@dataclass(frozen=True)
class StreamPlan:
    """How to send: ``rows`` records in batches of ``batch_size`` at ``rate`` rows per second (None: as
    fast as the gateway answers), outcomes ``outcome_delay_rows`` rows or ``outcome_delay_s`` seconds
    after their record."""

    rows: int
    batch_size: int = 1
    rate: float | None = None
    duration_s: float | None = None
    outcome_delay_rows: int | None = 0
    outcome_delay_s: float | None = None
    send_outcomes: bool = True
    drain_outcomes: bool = True
    max_attempts: int = 6
    """Sends of one batch (or outcome) before the stream gives up: the first and up to five resends."""
    backoff_s: float = 0.5
    """Delay before the first resend; it doubles with each resend of the same batch..."""
    max_backoff_s: float = 10.0
    """... up to this."""

    def __post_init__(self) -> None:
        if self.rows < 1 or self.batch_size < 1:
            raise ValueError("rows and batch_size must be at least 1")
        if self.max_attempts < 1 or self.backoff_s < 0 or self.max_backoff_s < 0:
            raise ValueError("max_attempts must be at least 1 and the delays not negative")
        if self.rate is not None and self.rate <= 0:
            raise ValueError("rate must be positive")
        if self.outcome_delay_rows is not None and self.outcome_delay_s is not None:
            raise ValueError("give the outcome delay in rows or in seconds, not both")


@dataclass
class StreamReport:
    """What a stream did."""

    sent: int = 0
    predicted: int = 0
    rejected: int = 0
    outcomes_sent: int = 0
    outcomes_pending: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    stopped_by_error: str | None = None
    resent: int = 0
    """Batches and outcomes sent again after a server or transport error."""
    not_stored: list[str] = field(default_factory=list)
    """Record ids of the batch the stream gave up on (never acknowledged, so not stored)."""
    model_versions: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        text = (f"sent {self.sent:,} rows ({self.predicted:,} predicted, {self.rejected:,} rejected) and "
                f"{self.outcomes_sent:,} outcomes in {self.seconds:.1f} s")
        if self.outcomes_pending:
            text += f"; {self.outcomes_pending:,} outcomes not yet due were not sent"
        if self.resent:
            text += f"; {self.resent:,} resent after errors"
        if self.model_versions:
            text += "; model versions " + ", ".join(f"v{v}: {n:,}" for v, n in sorted(self.model_versions.items()))
        if self.interrupted:
            text = "interrupted: " + text
        if self.stopped_by_error:
            text = f"stopped ({self.stopped_by_error}): " + text
        return text

    def as_dict(self) -> dict[str, Any]:
        return {"sent": self.sent, "predicted": self.predicted, "rejected": self.rejected,
                "outcomes_sent": self.outcomes_sent, "outcomes_pending": self.outcomes_pending,
                "seconds": self.seconds, "interrupted": self.interrupted, "stopped_by_error": self.stopped_by_error,
                "resent": self.resent, "not_stored": self.not_stored, "model_versions": self.model_versions}


def records_from_frame(frame: pd.DataFrame, id_column: str, target: str) -> Iterator[tuple[dict[str, Any], int | None]]:
    """(record without its outcome, outcome) pairs, with missing values as None (JSON null)."""
    columns = [c for c in frame.columns if c != target]
    for row in frame.itertuples(index=False):
        values = row._asdict()
        record = {c: _jsonable(values[c]) for c in columns}
        record[id_column] = str(record[id_column])
        outcome = values.get(target)
        yield record, (None if outcome is None or pd.isna(outcome) else int(outcome))


def _jsonable(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, np.generic):
        value = value.item()
        return None if isinstance(value, float) and math.isnan(value) else value
    return value


def generated_records(rows: int, *, seed: int, scenario: str, drift_start: int, id_prefix: str = "S",
                      id_offset: int = 0) -> Iterator[tuple[dict[str, Any], int | None]]:
    """Records from the synthetic-cohort generator with a drift scenario from ``drift_start``."""
    data = load_dataset("synthetic-cohort", n_rows=rows, seed=seed, scenario=scenario, drift_start=drift_start,
                        id_prefix=id_prefix, id_offset=id_offset)
    return records_from_frame(data.frame, data.spec.record_id.name, data.spec.target.name)


class GaveUp(LearningMachineError):
    """A batch or an outcome met server or transport errors ``max_attempts`` times in a row."""

    status = 503
    code = "stream-gave-up"


def transient(exc: LearningMachineError) -> bool:
    """Worth sending again: the gateway was unreachable or answered with a server error (or 429)."""
    if isinstance(exc, GatewayError):
        return exc.status >= 500 or exc.status == 429
    return isinstance(exc, ServiceUnavailableError)


def send_with_retries(call: Callable[[], Any], what: str, plan: StreamPlan, *, sleep: Callable[[float], None],
                      report: StreamReport, progress: Progress | None = None) -> Any:
    """``call()``, again after each transient error with a doubling delay (capped), ``plan.max_attempts``
    times at most; then :class:`GaveUp` naming ``what`` was not sent. Other errors are raised at once."""
    for attempt in range(1, plan.max_attempts + 1):
        try:
            return call()
        except LearningMachineError as exc:
            if not transient(exc):
                raise
            if attempt == plan.max_attempts:
                raise GaveUp(f"{exc.message}; gave up after {attempt} attempt(s): {what} not stored",
                             detail={"attempts": attempt}) from exc
            delay = min(plan.backoff_s * 2 ** (attempt - 1), plan.max_backoff_s)
            if progress:
                progress(f"{exc.message}; sending {what} again in {delay:.1f} s (attempt {attempt + 1}/"
                         f"{plan.max_attempts})")
            report.resent += 1
            sleep(delay)
    raise AssertionError("unreachable")


def _rows_named(records: list[dict[str, Any]]) -> str:
    ids = [str(r.get("record_id")) for r in records]
    return f"the batch of {len(ids)} row(s) " + (ids[0] if len(ids) == 1 else f"{ids[0]} .. {ids[-1]}")


def run_stream(client: LearningMachineClient, source: Iterator[tuple[dict[str, Any], int | None]], plan: StreamPlan,
               *, progress: Progress | None = None, clock: Callable[[], float] = time.monotonic,
               sleep: Callable[[float], None] = time.sleep) -> StreamReport:
    """Send the source's records by the plan; returns what was sent, also after Ctrl-C or a gateway outage."""
    report = StreamReport()
    pending: list[tuple[float, int, str, int]] = []  # (due, tie-break, record id, outcome), a min-heap
    started = clock()
    last_said = started
    sequence = 0

    def due_key(row_index: int) -> float:
        if plan.outcome_delay_s is not None:
            return clock() + plan.outcome_delay_s
        return float(row_index + (plan.outcome_delay_rows or 0))

    def now_key() -> float:
        return clock() if plan.outcome_delay_s is not None else float(report.sent)

    def flush(everything: bool = False) -> None:
        while pending and (everything or pending[0][0] <= now_key()):
            item = heapq.heappop(pending)
            record_id, outcome = item[2], item[3]
            try:
                send_with_retries(partial(client.outcome, record_id, outcome), f"the outcome of {record_id}", plan,
                                  sleep=sleep, report=report, progress=progress)
            except GatewayError as exc:
                if exc.status != 409:  # 409: a different outcome is already recorded; not ours to overwrite
                    heapq.heappush(pending, item)
                    raise
            except LearningMachineError:
                heapq.heappush(pending, item)  # not sent: counted as pending
                raise
            report.outcomes_sent += 1

    try:
        batch: list[tuple[dict[str, Any], int | None]] = []
        exhausted = False
        while not exhausted and report.sent < plan.rows:
            if plan.duration_s is not None and clock() - started >= plan.duration_s:
                break
            batch = []
            for item in source:
                batch.append(item)
                if len(batch) >= min(plan.batch_size, plan.rows - report.sent):
                    break
            if not batch:
                break
            exhausted = len(batch) < min(plan.batch_size, plan.rows - report.sent)
            if plan.rate is not None:
                wait = started + report.sent / plan.rate - clock()
                if wait > 0:
                    sleep(wait)
            records = [record for record, _ in batch]
            request_id = uuid.uuid4().hex  # the same for every resend of this batch: stored once
            try:
                answers = send_with_retries(partial(client.predict, records, request_id=request_id),
                                            _rows_named(records), plan, sleep=sleep, report=report,
                                            progress=progress)
            except GaveUp as exc:
                report.stopped_by_error = exc.message
                report.not_stored = [str(r.get("record_id")) for r in records]
                break
            except GatewayError as exc:  # the gateway refused the batch (invalid, conflicting): sending again won't help
                if progress:
                    progress(f"the gateway refused {_rows_named(records)} (HTTP {exc.status}): {exc.message}")
                report.rejected += len(batch)
                report.sent += len(batch)
                continue
            for (record, outcome), answer in zip(batch, answers, strict=True):
                report.sent += 1
                report.predicted += 1
                version = str(answer.get("model_version"))
                report.model_versions[version] = report.model_versions.get(version, 0) + 1
                if plan.send_outcomes and outcome is not None:
                    sequence += 1
                    heapq.heappush(pending, (due_key(report.sent), sequence, str(record_id_of(record, answer)),
                                             outcome))
            if plan.send_outcomes:
                flush()
            if progress and clock() - last_said >= 5:
                progress(f"{report.sent:,}/{plan.rows:,} rows sent, {report.outcomes_sent:,} outcomes "
                         f"({report.sent / max(clock() - started, 1e-9):.1f} rows/s)")
                last_said = clock()
        if plan.send_outcomes and plan.drain_outcomes and not report.stopped_by_error:
            if plan.outcome_delay_s is not None and pending:
                sleep(max(0.0, max(p[0] for p in pending) - clock()))  # outcomes are not sent before they are due
            flush(everything=True)
    except KeyboardInterrupt:
        report.interrupted = True
    except LearningMachineError as exc:
        report.stopped_by_error = exc.message
    report.outcomes_pending = len(pending)
    report.seconds = clock() - started
    return report


def record_id_of(record: Mapping[str, Any], answer: Mapping[str, Any]) -> Any:
    return answer.get("record_id") or record.get("record_id")

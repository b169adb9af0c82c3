"""Group commit for predictions: concurrent prediction requests share one model-server call and one database
transaction, and each is answered only once its rows are committed.

Two worker threads form a two-stage pipeline, so that the model server and the database work at the same time:

* the **model stage** takes every request waiting (up to ``max_rows`` records), makes the columns to store
  of their records (:func:`service.prediction_request`), hands the group to the store stage (after the
  answers instead when the group is too small to be worth writing ahead: :func:`service.begins_ahead`),
  then asks the model server once for all their records (:func:`service.predict_records`);
* the **store stage** begins the group's store while the model server works (:func:`service.begin_store`:
  from 50 rows it writes the records into a transaction, on SQLite one statement that runs without Python's
  GIL; on PostgreSQL a smaller group only has its connection checked out, a round trip), waits for the
  answers, adds the predictions of that group and of every group answered meanwhile, commits once
  (:func:`service.store_answers`; a small PostgreSQL group is one statement that commits by itself), then
  answers each request. When the store cannot go on from what was begun (a record stored already, the model
  server taking longer than :data:`WRITE_AHEAD_S`), it is rolled back and the group is stored the ordinary
  way once answered.

A request that waits alone is sent alone, at once: there is no timer, so one client sees no added delay and
many clients see fewer, larger calls. Each request stays all or nothing: a request whose record contradicts a
stored one is refused alone; when the grouped model call fails for a reason that may be one request's
(anything but the model server being down), every request of the group is sent again on its own, so only
the offending one fails. The logic lives in :mod:`learning_machine.gateway.service` and the store; this
module is only the wiring."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from learning_machine.clients.v2 import Answers
from learning_machine.errors import LearningMachineError, ServiceUnavailableError
from learning_machine.gateway import service
from learning_machine.gateway.problems import as_platform_error
from learning_machine.store import repository

if TYPE_CHECKING:
    from learning_machine.gateway.service import GatewayContext

log = logging.getLogger("learning_machine.gateway")


@dataclass(eq=False)
class Job:
    """One prediction request on its way through the stages."""

    records: Sequence[Mapping[str, Any]]
    request_id: str
    retry: bool
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[list[dict[str, Any]]]
    answers: Answers | None = None
    latency_ms: float = 0.0
    columns: repository.PredictionRequest | None = None  # what is stored of its records, made by the model stage
    queued: float = field(default_factory=time.perf_counter)  # when submitted (the wait stage's start)

    def finish(self, result: list[dict[str, Any]] | BaseException) -> None:
        """Hand the result to the request's event loop (from a worker thread). An error no handler expects is
        logged here with the request id and answered as a plain 500 problem (not raised through the app, which
        would make the server drop the client's kept-alive connection)."""
        if isinstance(result, Exception) and not isinstance(result, LearningMachineError):
            # The request id as the record's own field: this runs in a worker thread, outside the request's context.
            log.error("prediction request %s failed", self.request_id, exc_info=result,
                      extra={"request_id": self.request_id})
            result = as_platform_error(result)
        try:
            self.loop.call_soon_threadsafe(_settle, self.future, result)
        except RuntimeError:  # the loop is closed: nobody waits for this answer any more
            pass


def _settle(future: asyncio.Future[list[dict[str, Any]]], result: list[dict[str, Any]] | BaseException) -> None:
    if future.done():  # the client went away; what was stored stays stored (a retry gets it back)
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


_STOP = object()


def _ids(jobs: Sequence[Job], most: int = 20) -> str:
    """The request ids of a group, for a log line about the whole group (each request's own line follows)."""
    ids = ", ".join(job.request_id for job in jobs[:most])
    return ids + (f" and {len(jobs) - most} more" if len(jobs) > most else "")


# How long the store stage holds what it began of a group's store (the records written in an open transaction,
# on SQLite with the database's write lock; or a pooled connection) while the model server answers; past that
# it gives it up and stores the group the ordinary way once answered, so that a slow model server does not hold
# up other writers.
WRITE_AHEAD_S = 0.25


@dataclass(eq=False)
class Group:
    """The requests of one model-server call, handed to the store stage (before the call when it begins their
    store meanwhile); ``answered`` is set once every job has its answers or error."""

    jobs: list[Job]
    answered: threading.Event = field(default_factory=threading.Event)
    unavailable: ServiceUnavailableError | None = None  # the database, found unreachable beginning the store
    answered_at: float = 0.0  # when the model stage was done with it (the store stage's start)

    def answer(self) -> None:
        """Mark every job answered (or failed): the store stage may complete the group."""
        if not self.answered.is_set():
            self.answered_at = time.perf_counter()
            self.answered.set()


class PredictionBatcher:
    """The two stages (threads started on first use) and their queues; :meth:`submit` from the event loop."""

    def __init__(self, ctx: GatewayContext, *, max_rows: int) -> None:
        self.ctx = ctx
        self.max_rows = max_rows
        self._calls: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._stores: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._carry: Job | None = None

    async def submit(self, records: Sequence[Mapping[str, Any]], request_id: str, *, retry: bool = False,
                     ) -> list[dict[str, Any]]:
        """Predict and store ``records`` (validated); the stored predictions, in order, once committed."""
        self._start()
        loop = asyncio.get_running_loop()
        job = Job(records, request_id, retry, loop, loop.create_future())
        self._calls.put(job)
        return await job.future

    def _start(self) -> None:
        if self._threads:
            return
        with self._lock:
            if not self._threads:
                self._threads = [threading.Thread(target=self._guard, args=(stage,), name=f"predictions-{name}",
                                                  daemon=True)
                                 for name, stage in (("model", self._model_stage), ("store", self._store_stage))]
                for thread in self._threads:
                    thread.start()

    def close(self, timeout_s: float = 30) -> None:
        """Finish the requests already queued, then stop the threads."""
        with self._lock:
            threads, self._threads = self._threads, []
        if threads:
            self._calls.put(_STOP)
            for thread in threads:
                thread.join(timeout=timeout_s)

    # -- the stages (worker threads) ---------------------------------------------------------------------
    def _guard(self, stage: Any) -> None:
        try:
            stage()
        except BaseException:  # pragma: no cover - each group's errors are caught in the stage; this is last resort
            log.exception("the prediction worker %s stopped", threading.current_thread().name)
            raise

    def _take(self, first: Any) -> tuple[list[Job], bool]:
        """``first`` and every job waiting behind it, up to ``max_rows`` records; and whether to stop after."""
        group: list[Job] = [first]
        rows = len(first.records)
        while True:
            try:
                job = self._calls.get_nowait()
            except queue.Empty:
                return group, False
            if job is _STOP:
                return group, True
            if rows + len(job.records) > self.max_rows:
                self._carry = job  # the next group starts with it
                return group, False
            group.append(job)
            rows += len(job.records)

    def _model_stage(self) -> None:
        while True:
            first = self._carry if self._carry is not None else self._calls.get()
            self._carry = None
            if first is _STOP:
                break
            group, stop = self._take(first)
            self.ctx.metrics.prediction_stage_seconds.labels("wait").observe(time.perf_counter() - group[0].queued)
            announced: Group | None = None
            try:
                waiting = [job for job in group if not self._replayed(job)]
                if waiting:
                    self.ctx.metrics.group_requests.observe(len(waiting))
                    for job in waiting:
                        job.columns = service.prediction_request(self.ctx, job.records, job.request_id)
                    announced = Group(waiting)
                    early = service.begins_ahead(self.ctx, sum(len(job.records) for job in waiting))
                    if early:
                        self._stores.put(announced)  # the store stage begins storing meanwhile
                    for job, result in zip(waiting, self._predict(waiting), strict=True):
                        if isinstance(result, BaseException):
                            job.finish(result)
                        else:
                            job.answers, job.latency_ms = result
                    if not early:  # handed over answered: one wake-up of the store stage, not two
                        announced.answer()
                        self._stores.put(announced)
            except Exception as exc:  # noqa: BLE001 - a bug must fail this group, not stop the gateway
                log.error("the model stage failed a group of %d request(s): %s", len(group), _ids(group))
                for job in group:
                    job.answers = None
                    job.finish(exc)
            finally:
                if announced is not None:
                    announced.answer()
            if stop:
                break
        self._stores.put(_STOP)

    def _replayed(self, job: Job) -> bool:
        """A caller-chosen request id that is stored already: answer with the stored predictions."""
        if not job.retry:
            return False
        try:
            stored = service.stored_answer(self.ctx, job.records, job.request_id)
        except Exception as exc:  # noqa: BLE001 - the request's own error (a conflict, the database down)
            job.finish(exc)
            return True
        if stored is None:
            return False
        job.finish(stored)
        return True

    def _predict(self, jobs: list[Job]) -> list[tuple[Answers, float] | BaseException]:
        records = [r for job in jobs for r in job.records]
        started = time.perf_counter()
        try:
            answers = service.predict_records(self.ctx, records)
        except ServiceUnavailableError as exc:
            return [exc] * len(jobs)
        except Exception as exc:  # noqa: BLE001 - whose fault it is, each request alone tells
            if len(jobs) == 1:
                return [exc]
            return [one for job in jobs for one in self._predict([job])]
        latency_ms = (time.perf_counter() - started) * 1000
        out: list[tuple[Answers, float] | BaseException] = []
        start = 0
        for job in jobs:
            out.append((answers.part(start, start + len(job.records)), latency_ms))
            start += len(job.records)
        return out

    def _store_stage(self) -> None:
        pending: Group | None = None
        while True:
            group = pending if pending is not None else self._stores.get()
            pending = None
            if group is _STOP:
                break
            ahead = None
            if not group.answered.is_set():  # begin the store while the model server works
                with self.ctx.metrics.prediction_stage_seconds.labels("store_ahead").time():
                    ahead = self._begin_store(group)
                if ahead is not None and not group.answered.wait(WRITE_AHEAD_S):
                    ahead.abandon()  # a slow model server: do not hold the database meanwhile
                    ahead = None
                group.answered.wait()
            groups = [group]
            while True:  # group commit: the groups answered meanwhile share this transaction
                try:
                    more = self._stores.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP or not more.answered.is_set():
                    pending = more
                    break
                groups.append(more)
            self._store(groups, ahead)

    def _begin_store(self, group: Group) -> repository.StoreAhead | None:
        try:
            return service.begin_store(self.ctx, [job.columns for job in group.jobs if job.columns is not None])
        except ServiceUnavailableError as exc:  # answered as it is once the model has answered: no second wait
            group.unavailable = exc
            return None
        except Exception:
            log.exception("beginning the store of a group before its answers failed: %s", _ids(group.jobs))
            return None

    def _store(self, groups: list[Group], ahead: repository.StoreAhead | None) -> None:
        for group in groups:
            if group.unavailable is not None:  # its jobs get the database's error; the groups joined try again
                for job in group.jobs:
                    if job.answers is not None:
                        job.finish(group.unavailable)
                        job.answers = None
        jobs = [job for group in groups for job in group.jobs if job.answers is not None and job.columns is not None]
        try:
            if not jobs:
                return
            requests = [service.answered(job.columns, job.answers, job.latency_ms) for job in jobs
                        if job.columns is not None and job.answers is not None]
            try:
                results: list[Any] = service.store_answers(self.ctx, requests, ahead=ahead)
            except Exception as exc:  # noqa: BLE001 - every request of the group is answered, none hangs
                log.error("the store stage failed a group of %d request(s): %s", len(jobs), _ids(jobs))
                results = [exc] * len(jobs)
            for job, result in zip(jobs, results, strict=True):
                job.finish(result)
            # From the first answers to every job answered: what the clients waited for after the model answered.
            self.ctx.metrics.prediction_stage_seconds.labels("store").observe(
                time.perf_counter() - min(group.answered_at for group in groups))
        finally:
            if ahead is not None:
                ahead.abandon()  # committed already, or not to be: rolled back

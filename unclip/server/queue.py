"""A bounded work queue that runs the pipeline off the event loop.

A request first takes a slot (``reserve``): at most ``max_queue`` requests are in the server at
once, from reading their upload to delivering their images, so memory stays bounded under any
burst; beyond that ``QueueFull`` (answered 429 with ``Retry-After``). Jobs run one batch at a time
on a single worker thread (one pipeline, one device); queued jobs that share a ``key`` are run
together as one batch of at most ``max_batch`` images (a job of more runs alone, and the worker
splits it into pipeline calls of at most ``max_batch``). A job whose client has gone is skipped if
it has not started, and its result dropped if it has.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any


class QueueFull(Exception):
    def __init__(self, retry_after: int):
        super().__init__(f"the queue is full; retry after {retry_after} s")
        self.retry_after = retry_after


class ClientGone(Exception):
    """The client disconnected while its job waited."""


@dataclass(eq=False)
class Job:
    """One request's work. ``run(payloads) -> results`` makes one result per payload; jobs with the
    same non-None ``key`` share a ``run`` and may be batched; ``weight`` is the images it makes."""

    run: Callable[[list[Any]], list[Any]]
    payload: Any = None
    key: Hashable | None = None
    weight: int = 1
    cancelled: bool = False
    future: asyncio.Future | None = field(default=None, repr=False)
    loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False)


class Slot:
    """A reserved place in the queue; ``release`` is idempotent."""

    def __init__(self, queue: WorkQueue):
        self._queue, self._held = queue, True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._queue._release()


class WorkQueue:
    def __init__(self, max_queue: int = 16, max_batch: int = 10, poll_s: float = 0.25):
        if max_queue < 1 or max_batch < 1:
            raise ValueError(f"max_queue and max_batch must be >= 1, got {max_queue} and {max_batch}")
        self.max_queue, self.max_batch, self.poll_s = max_queue, max_batch, poll_s
        self._cond = threading.Condition()
        self._pending: deque[Job] = deque()
        self._slots = 0
        self._seconds_per_job = 1.0  # running estimate, for Retry-After
        self._thread: threading.Thread | None = None
        self._closed = False
        self.batches_run = 0  # statistics (tests, /health)
        self.largest_batch = 0

    # ------------------------------------------------------------------------------------------
    # the event loop's side

    @property
    def in_flight(self) -> int:
        return self._slots

    def reserve(self) -> Slot:
        with self._cond:
            if self._slots >= self.max_queue:
                raise QueueFull(self.retry_after())
            self._slots += 1
        return Slot(self)

    def retry_after(self) -> int:
        return int(min(120, max(1, math.ceil(self._seconds_per_job * max(1, self._slots) / 2))))

    def _release(self) -> None:
        with self._cond:
            self._slots -= 1

    async def submit(self, job: Job, disconnected: Callable[[], Awaitable[bool]] | None = None) -> Any:
        """Run ``job`` on the worker thread and return its result (or raise its exception). Call it
        while holding a ``Slot``. ``disconnected()`` is polled while waiting; when it says the client
        has gone the job is cancelled and ``ClientGone`` raised."""
        job.loop = asyncio.get_running_loop()
        job.future = job.loop.create_future()
        with self._cond:
            if self._closed:
                raise RuntimeError("the work queue is closed")
            self._pending.append(job)
            self._cond.notify()
        self._start_worker()
        try:
            while True:
                done, _ = await asyncio.wait({job.future}, timeout=self.poll_s)
                if done:
                    return job.future.result()
                if disconnected is not None and await disconnected():
                    raise ClientGone()
        except BaseException:
            job.cancelled = True
            raise

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)

    # ------------------------------------------------------------------------------------------
    # the worker thread

    def _start_worker(self) -> None:
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="unclip-worker", daemon=True)
                self._thread.start()

    def _next_batch(self) -> list[Job] | None:
        with self._cond:
            while True:
                while self._pending and self._pending[0].cancelled:
                    self._pending.popleft()
                if self._pending:
                    break
                if self._closed:
                    return None
                self._cond.wait()
            first = self._pending.popleft()
            batch, weight = [first], first.weight
            if first.key is not None:
                for job in list(self._pending):
                    if job.key == first.key and not job.cancelled and weight + job.weight <= self.max_batch:
                        self._pending.remove(job)
                        batch.append(job)
                        weight += job.weight
            return batch

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            start = time.monotonic()
            self._run(batch)
            per_job = (time.monotonic() - start) / len(batch)
            self._seconds_per_job = 0.7 * self._seconds_per_job + 0.3 * per_job
            self.batches_run += 1
            self.largest_batch = max(self.largest_batch, len(batch))

    def _run(self, batch: list[Job]) -> None:
        try:
            results = batch[0].run([job.payload for job in batch])
        except Exception as err:  # noqa: BLE001 - delivered to the waiting requests
            if len(batch) > 1:  # one bad job must not fail the others: run each alone
                for job in batch:
                    self._run([job])
                return
            _deliver(batch[0], error=err)
            return
        for job, result in zip(batch, results):
            _deliver(job, result=result)


def _deliver(job: Job, result: Any = None, error: BaseException | None = None) -> None:
    def settle():
        if job.future.done():
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)

    try:
        job.loop.call_soon_threadsafe(settle)
    except RuntimeError:  # the loop has closed: nobody is waiting
        pass

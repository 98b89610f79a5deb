"""The bounded queue between the event loop and the (synchronous) sampling backends.

Backends block: a local model computes for seconds, and the openai backend waits on its own
thread pool. The server therefore calls them from worker threads, and requests wait in one
bounded queue for a worker:

- A local model (``hf``, ``llamacpp``) has one worker, because one model runs one batch at a
  time. Queued requests with the same backend and sampling settings (and, in adaptive rounds,
  the same first sample index) are merged into one ``backend.sample(prompts, config)`` call
  of at most ``max_batch_prompts`` prompts, so concurrent clients share the model's batches.
- An upstream backend (``openai``) has ``max_concurrent`` workers, each running one request's
  call; the upstream servers batch on their side.
- A request that finds ``max_queue`` requests already waiting is refused at once
  (:class:`QueueFull`, answered 429 with ``Retry-After``), so that overload turns into fast
  refusals rather than ever longer waits.

Cancellation: a job whose client has gone is taken out of the queue if it is still waiting. If
it is running alone on an upstream backend, its :class:`~metricwise.backends.http.Cancellation`
closes its open connections and the call ends within a moment. A local model's batch cannot be
stopped between tokens from outside: it runs to its end (bounded by ``--max_seconds``) and the
gone client's share of the result is dropped; the other requests of the batch get theirs.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures as cf
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from metricwise.backends.http import Cancellation
from metricwise.errors import BackendError, InvalidParameterError
from metricwise.types import SampleSet, SamplingConfig

#: ``call(backend, prompts, config, start, cancel, options) -> one SampleSet per prompt``, run in
#: a worker; ``options`` are extra keyword arguments of the backend's ``sample``.
BackendCall = Callable[
    [Any, list[str], SamplingConfig, int, Cancellation | None, dict[str, Any]], list[SampleSet]
]


class QueueFull(Exception):
    """The queue holds ``max_queue`` waiting requests already."""


@dataclass(eq=False)
class Job:
    """One request's sampling call, waiting in the queue or running."""

    backend: Any
    prompts: list[str]
    config: SamplingConfig
    start: int
    future: asyncio.Future[list[SampleSet]]
    cancel: Cancellation | None = None
    state: str = "queued"  # queued -> running -> done, or cancelled at any point
    batched_with: int = field(default=0)
    #: Extra keyword arguments of ``backend.sample`` (``token_logprobs``), as sorted pairs.
    options: tuple[tuple[str, Any], ...] = ()

    def key(self) -> tuple[int, SamplingConfig, int, tuple[tuple[str, Any], ...]]:
        return (id(self.backend), self.config, self.start, self.options)


class Scheduler:
    """Runs backend calls in worker threads, from a bounded queue, batching where it may.

    Parameters
    ----------
    call:
        How to run one batch (see :data:`BackendCall`).
    workers:
        Backend calls that may run at once.
    batching:
        Merge queued jobs with the same backend, settings and start into one call.
    max_queue:
        Jobs that may wait; :meth:`submit` raises :class:`QueueFull` beyond it.
    max_batch_prompts:
        The most prompts of one merged call (a single job larger than this still runs alone).
    """

    def __init__(
        self,
        call: BackendCall,
        *,
        workers: int,
        batching: bool,
        max_queue: int,
        max_batch_prompts: int,
    ) -> None:
        self._call = call
        self.workers = workers
        self.batching = batching
        self.max_queue = max_queue
        self.max_batch_prompts = max_batch_prompts
        self._queue: collections.deque[Job] = collections.deque()
        self._running = 0
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._executor = cf.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="metricwise-serve"
        )
        self._loop_task: asyncio.Task[None] | None = None
        #: Backend calls made, and how many of them merged several requests (for tests and logs).
        self.calls = 0
        self.merged_calls = 0

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def running(self) -> int:
        return self._running

    def start(self) -> None:
        self._loop_task = asyncio.get_running_loop().create_task(self._dispatch())

    def submit(
        self,
        backend: Any,
        prompts: list[str],
        config: SamplingConfig,
        *,
        start: int = 0,
        cancellable: bool = False,
        options: dict[str, Any] | None = None,
    ) -> Job:
        """Queue one call; raises :class:`QueueFull` when ``max_queue`` jobs wait already."""
        # Jobs in the queue beyond the idle workers are the ones that wait.
        if len(self._queue) - max(0, self.workers - self._running) >= self.max_queue:
            raise QueueFull
        job = Job(
            backend=backend,
            prompts=list(prompts),
            config=config,
            start=start,
            future=asyncio.get_running_loop().create_future(),
            cancel=Cancellation() if cancellable else None,
            options=tuple(sorted((options or {}).items())),
        )
        self._queue.append(job)
        self._wake.set()
        return job

    def cancel(self, job: Job) -> None:
        """The client of ``job`` has gone: drop it if queued, cut its requests if running alone."""
        if job.state == "queued":
            with contextlib.suppress(ValueError):
                self._queue.remove(job)
        elif job.state == "running" and job.cancel is not None and job.batched_with == 0:
            job.cancel.cancel()
        job.state = "cancelled"
        if not job.future.done():
            job.future.cancel()

    async def close(self) -> None:
        """Stop dispatching; jobs still queued fail (the server is going down)."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        while self._queue:
            job = self._queue.popleft()
            if not job.future.done():
                job.future.set_exception(BackendError("The server is shutting down."))
        for task in list(self._tasks):
            task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- dispatch --------------------------------------------------------------------------------
    async def _dispatch(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue and self._running < self.workers:
                jobs = self._take()
                self._running += 1
                task = asyncio.get_running_loop().create_task(self._run(jobs))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def _take(self) -> list[Job]:
        head = self._queue.popleft()
        jobs = [head]
        if self.batching:
            size = len(head.prompts)
            for job in list(self._queue):
                if job.key() == head.key() and size + len(job.prompts) <= self.max_batch_prompts:
                    self._queue.remove(job)
                    jobs.append(job)
                    size += len(job.prompts)
        for job in jobs:
            job.state = "running"
            job.batched_with = len(jobs) - 1
        return jobs

    async def _run(self, jobs: list[Job]) -> None:
        try:
            if len(jobs) > 1:
                self.merged_calls += 1
            try:
                sets = await self._execute(jobs)
            except InvalidParameterError:
                if len(jobs) == 1:
                    raise
                # One request's prompt (too long for the model's context, say) must not fail the
                # others it was batched with: run each alone so the error reaches its own client.
                for job in jobs:
                    try:
                        self._deliver([job], await self._execute([job]))
                    except Exception as exc:
                        self._fail([job], exc)
                return
            self._deliver(jobs, sets)
        except Exception as exc:
            self._fail(jobs, exc)
        finally:
            self._running -= 1
            self._wake.set()

    async def _execute(self, jobs: list[Job]) -> list[SampleSet]:
        head = jobs[0]
        prompts = [p for job in jobs for p in job.prompts]
        cancel = head.cancel if len(jobs) == 1 else None
        self.calls += 1
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor,
            self._call,
            head.backend,
            prompts,
            head.config,
            head.start,
            cancel,
            dict(head.options),
        )

    @staticmethod
    def _deliver(jobs: list[Job], sets: list[SampleSet]) -> None:
        at = 0
        for job in jobs:
            part = sets[at : at + len(job.prompts)]
            at += len(job.prompts)
            if job.state != "cancelled" and not job.future.done():
                job.state = "done"
                job.future.set_result(part)

    @staticmethod
    def _fail(jobs: list[Job], exc: BaseException) -> None:
        for job in jobs:
            # A gone client's job is not failed: nobody would retrieve its exception.
            if job.state != "cancelled" and not job.future.done():
                job.state = "done"
                job.future.set_exception(exc)

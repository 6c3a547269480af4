"""Dynamic batching: HTTP requests that arrive within ``max_wait_s`` of the first waiting one share
one forward pass, up to ``max_batch_size`` inputs.

One worker task takes requests from a queue and runs each batch in a single inference thread (the
event loop stays free to accept requests meanwhile; forwards never overlap, so the fixed torch
thread count is what the model gets). Admission is bounded: beyond ``max_queue`` requests waiting
or running, ``submit`` raises ``Overloaded`` at once (HTTP 503) instead of queueing without limit.
With ``enabled=False`` every request is its own forward pass (the baseline of the load test).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from serve.engine import Item, Predictor


class Overloaded(RuntimeError):
    pass


@dataclass
class _Request:
    items: list[Item]
    future: asyncio.Future


class Batcher:
    def __init__(
        self, predictor: Predictor, max_batch_size: int, max_wait_s: float, max_queue: int, enabled: bool
    ):
        self.predictor = predictor
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.enabled = enabled
        self.pending = 0  # requests admitted and not yet answered
        self.forwards = 0
        self.batched_requests = 0
        self._queue: asyncio.Queue[_Request] = asyncio.Queue()
        self._held: _Request | None = None  # arrived while a batch was full: starts the next one
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._worker: asyncio.Task | None = None

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """After the server stopped taking requests: answer what is queued, then stop."""
        while self.pending:
            await asyncio.sleep(0.01)
        if self._worker is not None:
            self._worker.cancel()
        self._executor.shutdown(wait=True)

    async def submit(self, items: list[Item]) -> list[dict]:
        if self.pending >= self.max_queue:
            raise Overloaded(f"server busy: {self.pending} requests in progress (max_queue {self.max_queue})")
        self.pending += 1
        try:
            request = _Request(items, asyncio.get_running_loop().create_future())
            self._queue.put_nowait(request)
            return await request.future
        finally:
            self.pending -= 1

    async def _next_batch(self) -> list[_Request]:
        first = self._held or await self._queue.get()
        self._held = None
        batch, size = [first], len(first.items)
        if not self.enabled:
            return batch
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        while size < self.max_batch_size:
            try:
                request = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    request = await asyncio.wait_for(self._queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
            if size + len(request.items) > self.max_batch_size:
                self._held = request
                break
            batch.append(request)
            size += len(request.items)
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            items = [item for request in batch for item in request.items]
            try:
                results = await loop.run_in_executor(self._executor, self.predictor.predict, items)
            except Exception as err:  # never kill the worker: the requests of this batch get a 500
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(err)
                continue
            self.forwards += 1
            self.batched_requests += len(batch)
            start = 0
            for request in batch:
                if not request.future.done():  # done: the client went away and the handler was cancelled
                    request.future.set_result(results[start : start + len(request.items)])
                start += len(request.items)

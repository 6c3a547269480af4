"""Seconds per stage, wall and CPU, so throughput can be read per process on a shared machine.

Wall time is what a user waits; CPU time (this process, plus what pool workers report for their
tasks) is what the work costs, and does not grow when other jobs compete for the cores.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Timed:
    value: Any
    cpu_seconds: float


def timed_call(call: tuple[Callable, Any]) -> Timed:
    """Run ``fn(task)`` in a pool worker and report the CPU time it took there."""
    fn, task = call
    start = time.process_time()
    value = fn(task)
    return Timed(value, time.process_time() - start)


class StageClock:
    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)
        self.current = ""

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()  # process_time counts all our threads
        self.current = name
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - wall
            self.cpu[name] += time.process_time() - cpu

    def add_worker_cpu(self, seconds: float) -> None:
        self.cpu[self.current] += seconds

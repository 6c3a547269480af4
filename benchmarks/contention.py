"""How much CPU other processes took while the benchmark ran.

On a shared machine a rate is only as good as the machine was quiet. The load average cannot say
(it is a 1-minute moving average that lags by minutes and counts the benchmark's own threads), so
this measures directly: the CPU time the whole machine spent busy (``/proc/stat``) minus the CPU
time of this process and its finished children (``os.times``; the launcher, ranks and loader
workers of a point are all waited for, so their time is included), divided by the wall time:
the average number of cores other processes kept busy.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

# /proc/stat "cpu" columns that are busy time: user nice system idle iowait irq softirq steal (guest is in user).
BUSY_COLUMNS = (0, 1, 2, 5, 6, 7)


def _machine_busy_seconds() -> float | None:
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    return sum(int(fields[i]) for i in BUSY_COLUMNS) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


class OtherProcessesMeter:
    """Started on construction; ``cores()`` is the average number of cores others used since then."""

    def __init__(self):
        self.wall, self.machine, self.own = time.perf_counter(), _machine_busy_seconds(), _own_seconds()

    def cores(self) -> float | None:
        machine = _machine_busy_seconds()
        if machine is None or self.machine is None:
            return None  # no /proc/stat: not Linux
        others = (machine - self.machine) - (_own_seconds() - self.own)
        return max(0.0, others / (time.perf_counter() - self.wall))

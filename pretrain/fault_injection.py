"""Named crash points, for the fault-tolerance tests to kill a process at an exact moment.

``PRETRAIN_CRASH_AT=<point>[@<rank>]`` makes the process (of that rank only, if given) SIGKILL
itself when it reaches ``crash_point("<point>")``: no cleanup, no flush, as a preempted node or
an OOM kill would. Points: ``step:<N>`` (after optimizer step N), and the phases of the checkpoint
save of step N, ``save:<phase>:<N>`` (see ``pretrain.checkpoint``). A name also matches every point
it is a prefix of up to a ``:`` (``save:before_commit`` = that phase of any save). Unset, this
costs one dict lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "PRETRAIN_CRASH_AT"


def crash_point(point: str) -> None:
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    name, _, rank = wanted.partition("@")
    if (point == name or point.startswith(name + ":")) and (not rank or rank == os.environ.get("RANK", "0")):
        os.kill(os.getpid(), signal.SIGKILL)

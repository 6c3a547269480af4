"""Injected faults, for the fault-tolerance tests: crashes at exact moments, non-finite losses.

``PRETRAIN_CRASH_AT=<point>[@<rank>]`` makes the process (of that rank only, if given) SIGKILL
itself when it reaches ``crash_point("<point>")``: no cleanup, no flush, as a preempted node or
an OOM kill would. Points: ``step:<N>`` (after optimizer step N), and the phases of the checkpoint
save of step N, ``save:<phase>:<N>`` (see ``pretrain.checkpoint``). A name also matches every point
it is a prefix of up to a ``:`` (``save:before_commit`` = that phase of any save).
``PRETRAIN_NONFINITE_LOSS_AT`` makes chosen steps' losses NaN; ``PRETRAIN_GRAD_OVERFLOW_AT`` makes
their gradients overflow 16-bit floats (an fp16 overflow storm); ``PRETRAIN_DISK_ERROR_AT`` makes a
checkpoint write fail as on a full disk. Each takes ``@<rank>`` to hit that rank only, so the tests
can check that all ranks agree on a failure only one of them sees. Unset, each check costs one
dict lookup.
"""

from __future__ import annotations

import errno
import os
import signal

CRASH_ENV = "PRETRAIN_CRASH_AT"
NONFINITE_ENV = "PRETRAIN_NONFINITE_LOSS_AT"
OVERFLOW_ENV = "PRETRAIN_GRAD_OVERFLOW_AT"
DISK_ERROR_ENV = "PRETRAIN_DISK_ERROR_AT"
# Multiplies an injected step's loss before backward: finite in fp32 (losses are ~10, scaled by at
# most 2^32), far beyond fp16's 65504 in every gradient flowing back through the model.
OVERFLOW_FACTOR = 1e20


def _this_rank(wanted: str) -> tuple[str, bool]:
    """``<what>[@<rank>]``: the what, and whether it applies to this process's rank."""
    what, _, rank = wanted.partition("@")
    return what, not rank or rank == os.environ.get("RANK", "0")


def _point_matches(wanted: str | None, point: str) -> bool:
    if not wanted:
        return False
    name, here = _this_rank(wanted)
    return here and (point == name or point.startswith(name + ":"))


def crash_point(point: str) -> None:
    if _point_matches(os.environ.get(CRASH_ENV), point):
        os.kill(os.getpid(), signal.SIGKILL)


def disk_error_point(point: str) -> None:
    """``PRETRAIN_DISK_ERROR_AT=save:<N>[@<rank>]``: this rank's own writes of the step-N
    checkpoint fail with ENOSPC, after DeepSpeed's files are written."""
    if _point_matches(os.environ.get(DISK_ERROR_ENV), point):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f"injected at {point}")


def nonfinite_loss_injected(forward_pass: int) -> bool:
    """``PRETRAIN_NONFINITE_LOSS_AT=<first>[-[<last>]][@<rank>]``: the losses of training forward
    passes first..last of a launch (1-based, inclusive; open-ended with a trailing ``-``) become
    NaN, as a diverging run's would. Without skips or accumulation, forward pass N is optimizer step N."""
    return _in_window(os.environ.get(NONFINITE_ENV), forward_pass)


def grad_overflow_injected(forward_pass: int) -> bool:
    """``PRETRAIN_GRAD_OVERFLOW_AT=<first>[-[<last>]]`` (forward passes, as above): the loss stays
    finite but is multiplied by ``OVERFLOW_FACTOR`` before backward, so the gradients overflow
    fp16 and DeepSpeed's dynamic loss scaler must skip those steps and lower the scale."""
    return _in_window(os.environ.get(OVERFLOW_ENV), forward_pass)


def _in_window(wanted: str | None, forward_pass: int) -> bool:
    if not wanted:
        return False
    window, here = _this_rank(wanted)
    if not here:
        return False
    first, dash, last = window.partition("-")
    return int(first) <= forward_pass and (not dash or not last or forward_pass <= int(last))

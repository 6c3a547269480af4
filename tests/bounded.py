"""Run a command tree (a launcher and its ranks) for at most a bounded time, and leave nothing running.

``subprocess.run(timeout=...)`` kills only the direct child: under ``deepspeed``, ``torchrun`` or
``mpirun`` the ranks are grandchildren and a hung rank outlives the test, holding ports and cores for
the rest of the suite, with no word of where it hung. Here the command starts in a session of its own
with ``PYTHONFAULTHANDLER=1``; on timeout each process of the tree gets SIGABRT in turn, on which a Python
process prints every thread's stack to the shared stderr (``faulthandler``) before it dies, then what
is left gets SIGKILL. The test fails with ``CommandHung``, whose message carries those stacks.

The same clean-up runs when the test is interrupted inside the wait (pytest-timeout, Ctrl-C): the
stacks go to stderr, which pytest shows under the failing test.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

import psutil

ABORT_WAIT_S = 5  # after SIGABRT: time for one process to write its stacks and exit
STACK_TAIL_CHARS = 12_000


class CommandHung(AssertionError):
    """The command ran past its time limit; the message has each process's Python stacks."""


def run_bounded(command: Sequence[str], *, timeout: float, **popen_kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run(command, capture_output=True, text=True, timeout=timeout)``, for trees."""
    return finish_bounded(start_bounded(command, **popen_kwargs), timeout=timeout)


def start_bounded(
    command: Sequence[str],
    *,
    env: dict | None = None,
    preexec_fn: Callable[[], None] | None = None,
    **popen_kwargs,
) -> subprocess.Popen:
    """Start ``command`` in a session of its own, output captured, stacks printed on SIGABRT."""
    full_env = {**(os.environ if env is None else env), "PYTHONFAULTHANDLER": "1"}

    def in_child():
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # SIGABRT must not leave core files behind
        if preexec_fn is not None:
            preexec_fn()

    return subprocess.Popen(
        command,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # the tree is one process group: orphaned ranks are still found
        preexec_fn=in_child,
        **popen_kwargs,
    )


def finish_bounded(proc: subprocess.Popen, *, timeout: float) -> subprocess.CompletedProcess:
    """Wait for a ``start_bounded`` command; past ``timeout``, end its tree and raise CommandHung."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        out, err = end_tree(proc)
        raise CommandHung(
            f"{' '.join(map(str, proc.args[:4]))} ... ran past its {timeout:.0f} s limit and was ended "
            f"with every process's stacks (faulthandler):\n{err[-STACK_TAIL_CHARS:]}"
        ) from None
    except BaseException:  # interrupted while waiting: still leave nothing running
        end_unfinished(proc)
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def end_unfinished(proc: subprocess.Popen) -> None:
    """End what is left of a ``start_bounded`` command, its stacks to stderr; nothing if it is over."""
    if proc.poll() is None or tree_of(proc):
        _, err = end_tree(proc)
        sys.stderr.write(
            f"ended the unfinished command's processes; their stacks:\n{err[-STACK_TAIL_CHARS:]}"
        )


def tree_of(proc: subprocess.Popen) -> list[psutil.Process]:
    """Every live process the command started: its descendants, and any of its session that
    were re-parented away from it (a launcher that died before its ranks)."""
    found = {}
    try:
        for child in psutil.Process(proc.pid).children(recursive=True):
            found[child.pid] = child
    except psutil.NoSuchProcess:
        pass
    for candidate in psutil.process_iter():
        try:
            if candidate.pid != proc.pid and os.getsid(candidate.pid) == proc.pid:
                found[candidate.pid] = candidate
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return list(found.values())


def end_tree(proc: subprocess.Popen) -> tuple[str, str]:
    """SIGABRT to each process of the tree in turn, parents first (stacks, one after another so
    that they do not interleave; a launcher whose rank died first would kill the others before
    they could print), then SIGKILL to what is left; returns the tree's output."""
    for process in sorted(_with_root(proc), key=_started_at):
        _send(process, signal.SIGABRT)
        _wait_gone(process, proc)
    leftovers = [p for p in _with_root(proc) if _alive(p, proc)]
    for process in leftovers:
        _send(process, signal.SIGKILL)
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the session's process group: what the scans could miss
    except (ProcessLookupError, PermissionError):
        pass
    for process in leftovers:
        _wait_gone(process, proc)
    return proc.communicate()


def _wait_gone(process: psutil.Process, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + ABORT_WAIT_S
    while _alive(process, proc) and time.monotonic() < deadline:
        time.sleep(0.05)


def _alive(process: psutil.Process, proc: subprocess.Popen) -> bool:
    """Running and not a zombie; the root is asked through Popen, which reaps it (psutil must not)."""
    if process.pid == proc.pid:
        return proc.poll() is None
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _with_root(proc: subprocess.Popen) -> list[psutil.Process]:
    members = tree_of(proc)
    try:
        return [psutil.Process(proc.pid), *members] if proc.poll() is None else members
    except psutil.NoSuchProcess:
        return members


def _started_at(process: psutil.Process) -> float:
    try:
        return process.create_time()
    except psutil.Error:
        return 0.0


def _send(process: psutil.Process, signum: int) -> None:
    try:
        process.send_signal(signum)
    except psutil.Error:
        pass

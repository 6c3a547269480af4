"""A deadlocked 2-rank launch costs a bounded time, is reported as a failure naming its test with
every rank's stack, and leaves no process behind: under run_bounded's own limit and under
pytest-timeout's (tests/bounded.py). Runs an inner pytest on a file of two hanging tests."""

import os
import sys

import psutil
import pytest
from bounded import CommandHung, run_bounded
from launching import BIN, REPO, fresh_world_env

from pretrain.distributed import free_port

pytestmark = pytest.mark.slow
HANG_S = 12  # both ranks start within ~7 s (the deepspeed launcher imports torch twice first)

INNER = """
import os
import pytest
from bounded import run_bounded

def launch(pids_dir, timeout):
    command = [{deepspeed!r}, "--num_gpus", "2", "--master_port", os.environ[pids_dir + "_PORT"], {script!r}]
    return run_bounded(command, timeout=timeout, env={{**os.environ, "PIDS_DIR": os.environ[pids_dir]}})

def test_ranks_that_never_meet():
    launch("OWN_LIMIT", timeout={hang_s})

@pytest.mark.timeout({hang_s})
def test_ranks_that_never_meet_under_pytest_timeout():
    launch("PYTEST_LIMIT", timeout=600)
"""


def test_hung_ranks_fail_their_test_with_stacks_and_leave_nothing_running(tmp_path):
    inner = tmp_path / "test_inner_hang.py"
    script = str(REPO / "tests" / "hanging_ranks.py")
    inner.write_text(INNER.format(deepspeed=str(BIN / "deepspeed"), script=script, hang_s=HANG_S))
    env = fresh_world_env()
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests"), str(REPO)])
    for name in ("OWN_LIMIT", "PYTEST_LIMIT"):
        (tmp_path / name).mkdir()
        env[name] = str(tmp_path / name)
        env[f"{name}_PORT"] = str(free_port())

    result = run_bounded(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rf", inner.name],
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    report = result.stdout + result.stderr
    assert result.returncode == 1, report  # tests failed: not an error of the run, not a hang of pytest
    assert "2 failed" in report, report
    own, under_pytest_timeout = _sections(
        report, "test_ranks_that_never_meet", "test_ranks_that_never_meet_under"
    )
    assert "CommandHung" in own and f"ran past its {HANG_S} s limit" in own, own
    assert "Timeout" in under_pytest_timeout, under_pytest_timeout
    for section in (own, under_pytest_timeout):  # each rank's Python stack, where it hung
        assert "rank_zero_waits_for_its_peer" in section and "rank_one_never_arrives" in section, section
    for name in ("OWN_LIMIT", "PYTEST_LIMIT"):
        pids = [int(p.read_text()) for p in sorted((tmp_path / name).glob("rank*.pid"))]
        assert len(pids) == 2, f"{name}: both ranks should have started; {report}"
        assert not [pid for pid in pids if _alive(pid)], f"{name}: a rank survived"


def _sections(report: str, *tests: str) -> list[str]:
    """The failure section of each test in pytest's report (between its ``___ name ___`` headers)."""
    marks = [report.index(f"_ {test}") for test in tests]
    ends = [*marks[1:], len(report)]
    return [report[start:end] for start, end in zip(marks, ends)]


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_command_that_finishes_returns_as_subprocess_run_does():
    done = run_bounded([sys.executable, "-c", "import sys; print('out'); sys.exit(3)"], timeout=60)
    assert (done.returncode, done.stdout) == (3, "out\n")
    with pytest.raises(CommandHung, match="ran past its 1 s limit"):
        run_bounded([sys.executable, "-c", "import time; time.sleep(60)"], timeout=1)

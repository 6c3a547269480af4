"""Pretraining under torchrun and under mpirun (README, section 2): the same 2-rank run as under
the deepspeed launcher (the session's shared ZeRO-2 run), to the same losses, bit for bit."""

import socket
from contextlib import contextmanager

import pytest
from exports import LAUNCH_TIMEOUT_S, SAME_KEYS, ZERO2_MLM
from launching import BIN, explain, metrics, run_pretrain

pytestmark = pytest.mark.slow


@contextmanager
def _port_held(port):
    """Hold ``port`` as another job on this node would (if something already holds it, so much the better)."""
    with socket.socket() as sock:
        try:
            sock.bind(("0.0.0.0", port))
            sock.listen()
        except OSError:
            pass
        yield


@pytest.mark.parametrize("launcher", ["torchrun", "mpirun"])
def test_another_launcher_trains_to_the_deepspeed_launchers_losses(launcher, zero2_mlm, mlm_data, tmp_path):
    if not (BIN / launcher).exists():
        pytest.skip(f"{launcher} is not installed next to the interpreter")
    run_dir = tmp_path / "run"
    # 29500 is DeepSpeed's default port; a launch must use the port it is given (MASTER_PORT)
    with _port_held(29500):
        result = run_pretrain(mlm_data, run_dir, *ZERO2_MLM, launcher=launcher, timeout=LAUNCH_TIMEOUT_S)
    assert result.returncode == 0, explain(result)
    assert "2 rank(s)" in result.stdout
    expected = [{k: row.get(k) for k in SAME_KEYS} for row in metrics(zero2_mlm)]
    got = [{k: row.get(k) for k in SAME_KEYS} for row in metrics(run_dir)]
    assert len(got) == 12 and got == expected
    assert metrics(run_dir, "eval")[0]["mlm_loss"] == metrics(zero2_mlm, "eval")[0]["mlm_loss"]

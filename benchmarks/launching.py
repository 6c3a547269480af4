"""Launching one measurement in fresh processes: one Python process, or N ranks under the deepspeed
launcher; a timeout that kills the whole process group; the status of a launch that failed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from pretrain.distributed import free_port

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# Set by an enclosing launcher; a point's own launch must not inherit them.
LAUNCHER_VARS = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_SIZE",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
)
# Exit codes of a point whose process got SIGKILL (on CPU, the kernel's out-of-memory killer): -9 from
# Python's subprocess, 137 through a shell, 247 through the deepspeed launcher (its sys.exit(-9)).
KILLED_CODES = (-signal.SIGKILL, 128 + signal.SIGKILL, 256 - signal.SIGKILL)


def module_command(module: str, args: list[str], ranks: int) -> list[str]:
    """``python -m module args`` for one rank; under ``deepspeed --num_gpus ranks`` for more."""
    if ranks == 1:
        return [sys.executable, "-m", module, *args]
    return [
        str(BIN / "deepspeed"),
        "--num_gpus",
        str(ranks),
        "--master_port",
        str(free_port()),
        "--module",
        module,
        *args,
    ]


def launch(
    command: list[str], log_path: Path, timeout_s: float, env: dict[str, str] | None = None
) -> int | None:
    """Run ``command`` with its output in ``log_path``; the exit code, or None on timeout (then its
    whole process group, launcher and ranks, is killed)."""
    full_env = {key: value for key, value in os.environ.items() if key not in LAUNCHER_VARS}
    full_env.update(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", **(env or {}))
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            command, cwd=REPO, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            return process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return None


def failure(code: int | None, results: list[dict[str, Any]], log_path: Path) -> dict[str, Any]:
    """``status`` (oom / timeout / error) and ``error`` of a launch that did not succeed."""
    if code is None:
        return {"status": "timeout", "error": f"no result within the point timeout; log: {log_path}"}
    failed = [result for result in results if result.get("status") != "ok"]
    if any(result["status"] == "oom" for result in failed):
        return {"status": "oom", "error": next(r["error"] for r in failed if r["status"] == "oom")}
    if code in KILLED_CODES and not failed:
        return {
            "status": "oom",
            "error": "killed by SIGKILL, most likely by the kernel's out-of-memory killer",
        }
    if failed:
        return {"status": "error", "error": failed[0]["error"]}
    return {"status": "error", "error": f"exit {code}: {last_line(log_path)} (log: {log_path})"}


def last_line(log_path: Path) -> str:
    lines = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def read_results(paths: list[Path]) -> list[dict[str, Any]]:
    return [json.loads(path.read_text()) for path in paths if path.is_file()]

"""Launching real pretraining runs from tests: one process, or N ranks through the deepspeed launcher."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bounded import run_bounded

from pretrain.distributed import STRICT_ENV, free_port

REPO = Path(__file__).resolve().parents[1]
LAUNCHER_VARS = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "PRETRAIN_CRASH_AT",
)
BIN = Path(sys.executable).parent
# Every launch checks that the project's collectives get tensors placed on the collective device
# (pretrain/distributed.py, strict mode): the CPU-visible form of "a CPU tensor under NCCL".
STRICT = {STRICT_ENV: "1"}

# Small, fast, learnable: the tiny model on synthetic Markov-chain data (tests/synthetic_data.py).
FAST = [
    "model=tiny",
    "seq_len=64",
    "micro_batch_size=8",
    "log_every=1",
    "eval_every=1000",
    "save_every=1000",
    "schedule.warmup_steps=3",
    "optimizer.lr=2e-3",
    "eval_samples=64",
    "loader.workers=1",
    "threads=1",
    "dist_timeout_s=60",
]


def run_pretrain(
    data_dir: Path,
    run_dir: Path,
    *overrides: str,
    ranks: int = 2,
    env: dict | None = None,
    timeout: float = 240,
    preexec_fn=None,
    entry: tuple[str, ...] = ("-m", "pretrain"),
    launcher: str = "torchrun",
) -> subprocess.CompletedProcess:
    """``entry``: what follows ``python``, e.g. a script that wraps ``pretrain``. ``launcher`` (for
    more than one rank): deepspeed, torchrun or mpirun, each as README shows it.

    torchrun by default: it starts ranks about 5 s sooner than the deepspeed launcher (whose runner
    and launch.py each import torch and deepspeed first), over ~30 launches a suite. The trainer
    does not depend on its launcher: the session's reference run is launched by deepspeed
    (conftest.py) and test_launchers.py checks torchrun and mpirun against it, bit for bit."""
    args = [f"data_dir={data_dir}", f"run_dir={run_dir}", *FAST, *overrides]
    port = str(free_port())
    if ranks == 1:
        command = [sys.executable, *entry]
    elif launcher == "deepspeed":
        script = ["--module", entry[1]] if entry[0] == "-m" else list(entry)
        command = [str(BIN / "deepspeed"), "--num_gpus", str(ranks), "--master_port", port, *script]
    elif launcher == "torchrun":
        command = [str(BIN / "torchrun"), "--nproc_per_node", str(ranks), "--master_port", port, *entry]
    elif launcher == "mpirun":  # ranks read their identity from mpi4py; rank 0 listens on MASTER_PORT
        flags = ["--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-x", f"MASTER_PORT={port}"]
        command = [str(BIN / "mpirun"), "-n", str(ranks), *flags, sys.executable, *entry]
    else:
        raise ValueError(f"unknown launcher {launcher!r}")
    command += args
    full_env = {**fresh_world_env(), "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", **STRICT, **(env or {})}
    # bounded: a hung rank ends the whole launch with every rank's stack, and nothing survives it
    return run_bounded(command, cwd=REPO, env=full_env, timeout=timeout, preexec_fn=preexec_fn)


def fresh_world_env() -> dict[str, str]:
    """This process's environment without the launcher variables, for a child that must make its own
    process group: an in-process test's rank-0 group sets RANK, MASTER_PORT... here and keeps
    listening on that port, so a child inheriting them would fail to bind it (EADDRINUSE)."""
    return {key: value for key, value in os.environ.items() if key not in LAUNCHER_VARS}


def metrics(run_dir: Path, kind: str = "train") -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row for row in rows if row["kind"] == kind]


def sample_log(run_dir: Path, rank: int) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "samples" / f"rank{rank}.jsonl").read_text().splitlines()]


def explain(result: subprocess.CompletedProcess) -> str:
    return (
        f"exit {result.returncode}\n--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}"
    )

"""A 2-rank job that deadlocks, for the test of bounded runs (tests/test_bounded_runs.py).

Launched by ``deepspeed --num_gpus 2``: rank 0 waits for rank 1 to meet it, as in a collective that
one rank never enters; rank 1 never comes. The meeting is a plain socket, not a gloo barrier, so
that the ranks start in a second instead of importing torch: what is tested is how a hung job is
ended, and a rank blocked in a C call that released the GIL (``accept`` here, a collective in real
runs) prints its Python stack on SIGABRT alike. Each rank writes its pid to ``PIDS_DIR`` first, so
that the test can check no rank survives.
"""

import os
import socket
import time
from pathlib import Path


def rank_one_never_arrives():
    while True:
        time.sleep(1)


def rank_zero_waits_for_its_peer():
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.accept()


if __name__ == "__main__":
    rank = int(os.environ["RANK"])
    Path(os.environ["PIDS_DIR"], f"rank{rank}.pid").write_text(str(os.getpid()))
    if rank == 0:
        rank_zero_waits_for_its_peer()
    else:
        rank_one_never_arrives()

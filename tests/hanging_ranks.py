"""A 2-rank job that deadlocks, for the test of bounded runs (tests/test_bounded_runs.py).

Launched by ``deepspeed --num_gpus 2``: rank 0 waits in a gloo barrier for rank 1, which never comes.
Each rank writes its pid to ``PIDS_DIR`` first, so that the test can check no rank survives.
"""

import datetime
import os
import time
from pathlib import Path

import torch.distributed as dist


def rank_one_never_arrives():
    while True:
        time.sleep(1)


def rank_zero_waits_for_its_peer():
    dist.barrier()


if __name__ == "__main__":
    rank = int(os.environ["RANK"])
    Path(os.environ["PIDS_DIR"], f"rank{rank}.pid").write_text(str(os.getpid()))
    dist.init_process_group("gloo", timeout=datetime.timedelta(hours=1))
    if rank == 0:
        rank_zero_waits_for_its_peer()
    else:
        rank_one_never_arrives()

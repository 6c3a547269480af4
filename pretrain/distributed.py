"""Process-group start-up shared by pretraining and fine-tuning.

The same entry point runs under ``deepspeed`` (which sets RANK/WORLD_SIZE/MASTER_*), ``torchrun``,
``mpirun`` (DeepSpeed fills the rank info from mpi4py) and plain ``python`` (a one-rank group on a
free local port). The backend is the accelerator's: NCCL on GPUs, gloo (plus DeepSpeed's
shared-memory op) on CPUs. No code path assumes CUDA.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

DEFAULT_PORT = 29500  # torch's and DeepSpeed's default MASTER_PORT
_LAUNCHER_RANK_VARS = ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID")


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launched_by_mpi_without_torch_env() -> bool:
    return "RANK" not in os.environ and any(v in os.environ for v in _LAUNCHER_RANK_VARS[1:3])


def init_distributed(timeout_s: float = 600.0) -> DistInfo:
    """Join (or create) the process group; ``timeout_s`` bounds every collective.

    The bound matters: when a rank dies, the others fail within ``timeout_s`` instead of the
    30-minute default, so a job scheduler can restart the run from its last checkpoint.
    """
    import deepspeed
    import torch.distributed as dist
    from deepspeed.accelerator import get_accelerator

    if not any(var in os.environ for var in _LAUNCHER_RANK_VARS):
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    if not dist.is_initialized():
        deepspeed.init_distributed(
            dist_backend=get_accelerator().communication_backend_name(),
            auto_mpi_discovery=_launched_by_mpi_without_torch_env(),
            # Under mpirun DeepSpeed sets MASTER_PORT to this, 29500 unless given: without it,
            # two jobs on one node would both listen there and the second would fail.
            distributed_port=int(os.environ.get("MASTER_PORT", DEFAULT_PORT)),
            timeout=timedelta(seconds=timeout_s),
            verbose=False,
        )
    _unlink_shm_allreduce_buffer()
    local_rank = int(os.environ.get("LOCAL_RANK", os.environ.get("OMPI_COMM_WORLD_LOCAL_RANK", "0")))
    accelerator = get_accelerator()
    if accelerator.device_name() != "cpu":
        accelerator.set_device(local_rank)
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank)


def _unlink_shm_allreduce_buffer() -> None:
    """Remove the name of this rank's DeepSpeed shared-memory allreduce buffer, keeping the buffer.

    On CPUs with all ranks on one node, DeepSpeed's shm op creates a 69 MB
    ``/dev/shm/deepspeed_allreduce_buffer_<uid>_<addr>_<port>_<rank>`` per rank and never unlinks
    it: every launch on a new port leaves them behind until /dev/shm (RAM) is full. Once all ranks
    have mapped each other's buffers (they do so inside ``deepspeed.init_distributed``, before the
    barrier), the names can go: the mappings live on until the processes exit, then the memory is
    freed, even after a crash.
    """
    import torch.distributed as dist

    shm = Path("/dev/shm")
    if not shm.is_dir() or not dist.is_initialized():
        return
    name = (
        f"deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR', '')}_"
        f"{os.environ.get('MASTER_PORT', '')}_{dist.get_rank()}"
    )
    if not (shm / name).exists():
        return  # the op is not in use (GPUs, ranks on several nodes, a single process)
    dist.barrier()
    (shm / name).unlink(missing_ok=True)


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()

"""The MPI side of the pipeline: who am I, and the few collectives it needs.

``mpirun -n N python -m data_prep ...`` is recognised from the launcher's environment, and only then
is mpi4py imported (importing it initialises MPI). Without a launcher a ``SingleProcess`` stands in
with the same methods, so the pipeline has one code path. Ranks exchange only small things (plans,
counts, decisions, shard entries); bulk data goes through files in ``<out_dir>``, which must be on a
filesystem every rank sees (it is the output, so it must be anyway).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

# Set by Open MPI's mpirun/prterun, and by MPICH/Intel MPI (Hydra) and Slurm's PMI, respectively.
SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


class SingleProcess:
    rank = 0
    size = 1

    def bcast(self, obj: T) -> T:
        return obj

    def gather(self, obj: T) -> list[T]:
        return [obj]

    def barrier(self) -> None:
        pass

    def abort(self, code: int) -> None:
        raise SystemExit(code)


class MPICluster:
    def __init__(self):
        from mpi4py import MPI

        self._comm = MPI.COMM_WORLD
        self.rank = self._comm.Get_rank()
        self.size = self._comm.Get_size()

    def bcast(self, obj: T) -> T:
        return self._comm.bcast(obj, root=0)

    def gather(self, obj: T) -> list[T] | None:
        """Everyone's ``obj`` in rank order on rank 0, None elsewhere."""
        return self._comm.gather(obj, root=0)

    def barrier(self) -> None:
        self._comm.Barrier()

    def abort(self, code: int) -> None:
        """Stop every rank: one failed rank must not leave the others waiting in a collective."""
        sys.stdout.flush()
        sys.stderr.flush()
        self._comm.Abort(code)


Cluster = SingleProcess | MPICluster


def launched_ranks() -> int:
    for name in SIZE_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 1


def connect() -> Cluster:
    """An ``MPICluster`` when started by an MPI launcher with more than one rank, else ``SingleProcess``."""
    return MPICluster() if launched_ranks() > 1 else SingleProcess()


def on_root(cluster: Cluster, work: Callable[[], T], user_errors: tuple[type[Exception], ...]) -> T:
    """Run ``work`` on rank 0 and give every rank its result; a user error raised there is raised
    on every rank, so all of them stop with the same one-line message and no rank hangs."""
    outcome: tuple[str, Any] | None = None
    if cluster.rank == 0:
        try:
            outcome = ("ok", work())
        except user_errors as err:
            outcome = ("error", err)
    status, value = cluster.bcast(outcome)
    if status == "error":
        raise value
    return value

"""Processes and devices, one home for what every entry point shares: the process group, threads,
precision support, where tensors go, and the collectives through which ranks agree.

The same entry point runs under ``deepspeed`` (which sets RANK/WORLD_SIZE/MASTER_*), ``torchrun``,
``mpirun`` (DeepSpeed fills the rank info from mpi4py) and plain ``python`` (a one-rank group on a
free local port). No code path assumes CUDA.

Collectives on the right device, by construction (a NCCL group rejects CPU tensors, "No backend
type associated with device type cpu", at the first collective that gets one):

* on an accelerator the group has a backend per device type (``cpu:gloo,cuda:nccl``), so even a
  stray CPU tensor has a backend;
* every collective of this project goes through the helpers below (``any_rank``,
  ``any_rank_on_device``, ``all_ranks``, ``all_reduce_sum``, ``reduce_sum``, ``all_gather``), which put their tensors on
  ``collective_device()``, the accelerator's current device;
* ``PRETRAIN_STRICT_COLLECTIVES=1`` (set by the tests for every launch) wraps torch.distributed's
  collectives so that one called from outside torch/DeepSpeed with a tensor these helpers did not
  place raises at once. On a CPU-only machine a misplaced tensor is on the right device by luck;
  the strict check still sees that it bypassed the helpers, which is the bug on a GPU.

Long work on rank 0 alone (a checkpoint converted for another world size, a fine-tuned model
written and synced) is never waited for in a collective bounded by ``dist_timeout_s``, which a
slow shared filesystem could outlast: ``wait_for_main`` lets the other ranks wait in a gloo group
made for that alone at start-up, whose timeout is ``MAIN_WORK_TIMEOUT_S``.
"""

from __future__ import annotations

import os
import socket
import sys
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

DEFAULT_PORT = 29500  # torch's and DeepSpeed's default MASTER_PORT
_LAUNCHER_RANK_VARS = ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID")
_LOCAL_SIZE_VARS = ("LOCAL_SIZE", "LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE")
STRICT_ENV = "PRETRAIN_STRICT_COLLECTIVES"
# How long the other ranks wait for rank 0's long work (wait_for_main). A dead rank 0 ends the
# wait at once all the same: gloo sees its connection close, and launchers stop the others.
MAIN_WORK_TIMEOUT_S = 24 * 3600


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


# ---------------------------------------------------------------------------------------------
# Entry points


def prepare_entry() -> None:
    """What every ``__main__`` does before importing transformers or DeepSpeed."""
    import warnings

    # The model is always a local dir, never a hub download.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # DeepSpeed's ZeRO calls collectives that torch renamed; the warning is theirs to fix, not the user's.
    warnings.filterwarnings(
        "ignore", message=r".*(all_gather_into_tensor|reduce_scatter_tensor).* is deprecated"
    )


def shutdown() -> None:
    """Leave the process group at a clean exit (every ``__main__`` ends with this)."""
    global _wait_group, _wait_group_of
    import torch.distributed as dist

    if not dist.is_initialized():
        return
    if _wait_group is not None:
        # All ranks leave the waiting group together, before the world: a rank tearing its gloo pairs
        # down while another still holds them open aborts that process at exit (std::terminate).
        # The barrier is the world's, bounded by dist_timeout_s: a rank that died does not hold it.
        try:
            barrier()
        finally:
            dist.destroy_process_group(_wait_group)
            _wait_group = _wait_group_of = None
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# The process group


def _launched_by_mpi_without_torch_env() -> bool:
    return "RANK" not in os.environ and any(v in os.environ for v in _LAUNCHER_RANK_VARS[1:3])


def process_group_backend(accelerator) -> str:
    """The accelerator's backend for its device, plus gloo for CPU tensors where that is not the
    same backend (a NCCL-only group has no backend at all for a CPU tensor)."""
    name, backend = accelerator.device_name(), accelerator.communication_backend_name()
    return backend if name == "cpu" or backend == "gloo" else f"cpu:gloo,{name}:{backend}"


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
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    local_rank = int(os.environ.get("LOCAL_RANK", os.environ.get("OMPI_COMM_WORLD_LOCAL_RANK", "0")))
    accelerator = get_accelerator()
    if accelerator.device_name() != "cpu":
        accelerator.set_device(local_rank)  # before any collective: NCCL binds to the current device
    if not dist.is_initialized():
        deepspeed.init_distributed(
            dist_backend=process_group_backend(accelerator),
            auto_mpi_discovery=_launched_by_mpi_without_torch_env(),
            # Under mpirun DeepSpeed sets MASTER_PORT to this, 29500 unless given: without it,
            # two jobs on one node would both listen there and the second would fail.
            distributed_port=int(os.environ.get("MASTER_PORT", DEFAULT_PORT)),
            timeout=timedelta(seconds=timeout_s),
            verbose=False,
        )
    if os.environ.get(STRICT_ENV):
        install_strict_collectives()
    _unlink_shm_allreduce_buffer()
    _make_wait_group()
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
    barrier()
    (shm / name).unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# Threads, precision, devices


def set_threads(threads: int | None) -> None:
    """torch intra-op threads on CPUs: ``threads``, or this machine's cores shared among its ranks
    (several ranks each starting one thread per core would fight over them)."""
    import torch
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() != "cpu":
        return
    local_ranks = int(next((os.environ[v] for v in _LOCAL_SIZE_VARS if os.environ.get(v)), 1))
    torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // local_ranks))


def precision_problem(precision: str) -> str | None:
    """Why DeepSpeed cannot train in ``precision`` on this device (one line), or None."""
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    if precision == "fp16" and not accelerator.is_fp16_supported():
        return (
            f"precision=fp16: DeepSpeed supports no fp16 on this {accelerator.device_name()} "
            f"(a CPU without AVX512-FP16/AMX-FP16); use precision=bf16 or fp32"
        )
    return None


def collective_device():
    """The device collective tensors live on: the accelerator's current device (``cuda:N``, ``cpu``)."""
    import torch
    from deepspeed.accelerator import get_accelerator

    return torch.device(get_accelerator().current_device_name())


def pin_batches() -> bool:
    """Whether loaders should pin host memory: only where a non-blocking copy to a device follows."""
    from deepspeed.accelerator import get_accelerator

    return get_accelerator().device_name() != "cpu" and get_accelerator().is_available()


def peak_memory_bytes() -> int:
    """Peak memory of this process: device memory allocated by torch on a GPU; on CPU the resident
    set high-water mark, which is what has to fit in RAM (it includes the ~0.5 GB of loaded libraries)."""
    import resource

    import torch
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() == "cuda":
        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def to_device(batch: dict[str, Any], device, keys=None) -> dict[str, Any]:
    """The tensors of ``batch`` (those named in ``keys``, or all) on ``device``; the copies do not
    block the host when the batch is in pinned memory (``pin_batches``)."""
    return {
        key: value.to(device, non_blocking=True)
        for key, value in batch.items()
        if (keys is None or key in keys) and hasattr(value, "to")
    }


# ---------------------------------------------------------------------------------------------
# Collectives: every one this project calls


def _world() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_initialized() else 1


_placed: dict[int, weakref.ref] = {}


def _place(tensor, device=None):
    """``tensor`` on ``device`` (default: the collective device), remembered (in strict mode) as
    placed by this module."""
    tensor = tensor.to(device or collective_device())
    if _strict:
        key = id(tensor)
        _placed[key] = weakref.ref(tensor, lambda _ref: _placed.pop(key, None))
    return tensor


def any_rank(flags):
    """Per flag: True on every rank if it is True on any. One collective (and one host sync) for all
    the flags: a bool or a list of bools and 0-d bool tensors (read here, after the collective),
    returned in kind. Every rank must call it at the same point."""
    import torch
    import torch.distributed as dist

    many = isinstance(flags, (list, tuple))
    values = list(flags) if many else [flags]
    if _world() > 1 or any(isinstance(v, torch.Tensor) for v in values):
        device = collective_device()
        tensor = _place(
            torch.stack([torch.as_tensor(v, device=device).reshape(()).to(torch.uint8) for v in values])
        )
        if _world() > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        values = tensor.tolist()
    values = [bool(v) for v in values]
    return values if many else values[0]


def any_rank_on_device(flag):
    """``any_rank`` of one 0-d bool tensor, left on the collective device: no host sync (the result
    steers device work, e.g. a ``torch.where``, or is read later). Every rank must call it at the
    same point."""
    import torch
    import torch.distributed as dist

    tensor = _place(flag.reshape(1).to(torch.uint8))
    if _world() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor[0].bool()


def all_ranks(ok: bool) -> bool:
    """True on every rank if ``ok`` is True on all of them."""
    return not any_rank(not ok)


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(tensor):
    """The sum over ranks of ``tensor`` (a new tensor on the collective device; ``tensor`` may be
    on the host or the device). No host sync: read it when the value is needed."""
    import torch.distributed as dist

    tensor = _place(tensor.clone() if tensor.device == collective_device() else tensor)
    if _world() > 1:
        dist.all_reduce(tensor)
    return tensor


def reduce_sum(values: list[float]) -> list[float]:
    """The sums over ranks of host numbers (float64, exact for counts below 2^53)."""
    import torch

    return all_reduce_sum(torch.tensor(values, dtype=torch.float64)).tolist()


def reduce_max(values: list[int]) -> list[int]:
    """The maxima over ranks of host integers (int64)."""
    import torch
    import torch.distributed as dist

    tensor = _place(torch.tensor(values, dtype=torch.int64))
    if _world() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.tolist()


def all_gather(tensor) -> list:
    """Every rank's ``tensor`` (same shape on all ranks), in rank order, on the collective device."""
    import torch
    import torch.distributed as dist

    tensor = _place(tensor)
    if _world() == 1:
        return [tensor]
    gathered = [_place(torch.empty_like(tensor)) for _ in range(_world())]
    dist.all_gather(gathered, tensor)
    return gathered


_wait_group = None  # gloo, timeout MAIN_WORK_TIMEOUT_S: used only by wait_for_main
_wait_group_of = None  # the process group it was made in (a new one needs its own)


def _make_wait_group() -> None:
    """The group in which ranks wait for rank 0's long work (every rank calls this, at start-up)."""
    global _wait_group, _wait_group_of
    import torch.distributed as dist

    if _world() > 1 and _wait_group_of is not dist.group.WORLD:
        _wait_group = dist.new_group(backend="gloo", timeout=timedelta(seconds=MAIN_WORK_TIMEOUT_S))
        _wait_group_of = dist.group.WORLD


def wait_for_main(work: Callable[[], bool]) -> bool:
    """Rank 0 runs ``work`` (long, on one rank: a conversion, files written and fsynced) while the
    other ranks wait for it outside the ``dist_timeout_s`` bound; returns ``work``'s result on
    every rank. Should ``work`` raise, it raises on rank 0 and the others get False. Every rank
    must call it at the same point."""
    import torch
    import torch.distributed as dist

    if _world() == 1:
        return bool(work())
    _make_wait_group()  # a no-op after init_distributed; here for groups made by others
    ok = False  # rank 0's answer should work raise
    try:
        ok = dist.get_rank() != 0 or bool(work())
    finally:
        flag = _place(torch.tensor([int(not ok)], dtype=torch.int32), torch.device("cpu"))
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=_wait_group)
    return not flag.item()


def main_barrier() -> None:
    """A barrier after work rank 0 did alone (files written, a model copied): the others wait for
    it as long as it takes, outside the ``dist_timeout_s`` bound (``wait_for_main``)."""
    wait_for_main(lambda: True)


# ---------------------------------------------------------------------------------------------
# Strict mode (tests)

_strict = False
_COLLECTIVES = (
    "all_reduce",
    "all_gather",
    "all_gather_into_tensor",
    "reduce_scatter_tensor",
    "reduce",
    "broadcast",
    "gather",
    "scatter",
    "all_to_all_single",
)


class CollectiveDeviceError(RuntimeError):
    """A collective got a tensor that was not placed on the collective device by this module."""


def _check_placed(name: str, caller: str, args, kwargs) -> None:
    import torch

    # the wait group is gloo: its tensors live on the host
    on_host = _wait_group is not None and kwargs.get("group") is _wait_group
    expected = torch.device("cpu") if on_host else collective_device()
    tensors = []
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            tensors.append(value)
        elif isinstance(value, (list, tuple)):
            tensors.extend(v for v in value if isinstance(v, torch.Tensor))
    for tensor in tensors:
        ref = _placed.get(id(tensor))
        if tensor.device != expected or ref is None or ref() is not tensor:
            raise CollectiveDeviceError(
                f"torch.distributed.{name} called from {caller} with a tensor on {tensor.device} that "
                f"pretrain.distributed did not place on the collective device ({expected}); under NCCL "
                f"a CPU tensor fails here. Use pretrain.distributed.any_rank/all_reduce_sum/all_gather"
            )


def install_strict_collectives() -> None:
    """Wrap torch.distributed's collectives to refuse tensors this module did not place (calls
    from torch and DeepSpeed themselves are not checked: their tensors are theirs)."""
    global _strict
    import functools

    import torch.distributed as dist

    if _strict:
        return
    _strict = True
    for name in _COLLECTIVES:
        original = getattr(dist, name, None)
        if original is None:
            continue

        @functools.wraps(original)
        def checked(*args, _name=name, _original=original, **kwargs):
            frame = sys._getframe(1)
            module = frame.f_globals.get("__name__", "")
            if not module.startswith(("torch", "deepspeed")):
                _check_placed(_name, f"{module}:{frame.f_lineno}", args, kwargs)
            return _original(*args, **kwargs)

        setattr(dist, name, checked)

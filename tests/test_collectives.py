"""Collectives and checkpoint agreement on 2 real ranks (gloo, one process each), without a model.

Every collective this project calls must get tensors placed on the collective device by
pretrain.distributed (under NCCL a CPU tensor fails: "No backend type associated with device type
cpu"). Strict mode (PRETRAIN_STRICT_COLLECTIVES, on in every test launch) makes a bypass fail on
a CPU too. The checkpoint save runs against a stand-in engine that writes files the way DeepSpeed
names them, so the test can see which rank fsyncs what, and how the ranks agree on a write error
that only one of them meets.
"""

import json
import os
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from pretrain.distributed import STRICT_ENV, free_port

pytestmark = pytest.mark.slow


class StandInEngine:
    """DeepSpeed's save as far as files go: rank 0 writes the model states, each rank its own
    ZeRO optimizer partition, then all meet in a barrier."""

    def save_checkpoint(self, save_dir, tag, client_state, save_latest):
        from pretrain.distributed import barrier

        rank = torch.distributed.get_rank()
        tag_dir = Path(save_dir) / tag
        tag_dir.mkdir(parents=True, exist_ok=True)
        if rank == 0:
            torch.save({"w": torch.ones(2)}, tag_dir / "mp_rank_00_model_states.pt")
        torch.save({"m": torch.ones(2)}, tag_dir / f"bf16_zero_pp_rank_{rank}_mp_rank_00_optim_states.pt")
        barrier()


def _rank_main(rank: int, port: int, out: str) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), **{STRICT_ENV: "1"},
    )  # fmt: skip
    import torch.distributed as dist

    from pretrain import checkpoint
    from pretrain.checkpoint import CheckpointError, RankState
    from pretrain.distributed import (
        CollectiveDeviceError,
        all_gather,
        all_ranks,
        any_rank,
        init_distributed,
        reduce_sum,
        shutdown,
    )

    init_distributed(timeout_s=120)
    result = {
        "any": any_rank(rank == 1),
        "any_many": any_rank([rank == 0, False, torch.tensor(rank == 1)]),
        "all": all_ranks(rank == 1),
        "sum": reduce_sum([rank + 1.0, 10.0]),
        "gather": [t.tolist() for t in all_gather(torch.tensor([rank, 2 * rank]))],
    }
    try:  # a collective that bypasses the helpers, as checkpoint.py's agreement did
        dist.all_reduce(torch.tensor([1.0]))
        result["bypass"] = "allowed"
    except CollectiveDeviceError as err:
        result["bypass"] = str(err)

    synced = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        name = os.readlink(f"/proc/self/fd/{fd}")
        if Path(name).is_file():
            synced.append(Path(name).name)
        real_fsync(fd)

    os.fsync = recording_fsync
    ckpt_dir = Path(out) / "checkpoints"
    engine, mine = StandInEngine(), RankState(skipped=rank, local_tokens=100 + rank)
    for step in (1, 2):
        checkpoint.save(engine, ckpt_dir, step, {"step": step}, mine, keep_last=1)
    checkpoint.wait_for_pruning()
    os.fsync = real_fsync
    # the atomic write of `latest` goes through a temporary name unique per call
    result["synced"] = sorted({".latest.tmp" if n.startswith(".latest.tmp") else n for n in synced})
    result["dirs_after_keep_last_1"] = sorted(p.name for p in ckpt_dir.iterdir() if p.is_dir())

    # A disk error on rank 1 only: both ranks must fail the save, at once, and keep step 2 as latest.
    os.environ["PRETRAIN_DISK_ERROR_AT"] = "save:3@1"
    started = time.monotonic()
    try:
        checkpoint.save(engine, ckpt_dir, 3, {"step": 3}, mine, keep_last=1)
        result["disk_error"] = "saved"
    except CheckpointError as err:
        result["disk_error"] = str(err)
    result["disk_error_s"] = time.monotonic() - started
    result["latest"] = checkpoint.latest_tag(ckpt_dir)
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    shutdown()


def test_collectives_place_tensors_and_checkpoint_ranks_agree(tmp_path):
    started = time.monotonic()
    mp.spawn(_rank_main, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    print(f"2 ranks: {time.monotonic() - started:.1f}s")
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    for r in (r0, r1):
        assert r["any"] is True and r["any_many"] == [True, False, True] and r["all"] is False
        assert r["sum"] == [3.0, 20.0] and r["gather"] == [[0, 0], [1, 2]]
        assert "did not place on the collective device" in r["bypass"]
        assert "checkpoint step00000003 failed to write" in r["disk_error"]
        assert r["disk_error_s"] < 10, "the ranks agree on the error at once, not at a timeout"
        assert r["latest"] == "step00000002"
    assert r0["dirs_after_keep_last_1"] == ["step00000002"]  # rank 0 pruned, in the background
    assert "No space left on device" in r1["disk_error"] and "on another rank" in r0["disk_error"]
    # Each rank fsyncs what it wrote (on a shared filesystem another client's fsync would not flush it).
    assert r0["synced"] == [".latest.tmp", "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt", "mp_rank_00_model_states.pt",
                            "rank_state_00000.pt", "run_state.json"]  # fmt: skip
    assert r1["synced"] == ["bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt", "rank_state_00001.pt"]


def test_the_process_group_has_a_cpu_backend_beside_nccl():
    """Under NCCL alone a CPU tensor in a collective has no backend at all; gloo serves it."""
    from pretrain.distributed import process_group_backend

    class Accelerator:
        def __init__(self, device, backend):
            self.device, self.backend = device, backend

        def device_name(self):
            return self.device

        def communication_backend_name(self):
            return self.backend

    assert process_group_backend(Accelerator("cuda", "nccl")) == "cpu:gloo,cuda:nccl"
    assert process_group_backend(Accelerator("cpu", "gloo")) == "gloo"
    assert process_group_backend(Accelerator("cpu", "ccl")) == "ccl"


SHORT_TIMEOUT_S, SLOW_S = 2.0, 5.0  # rank 0's work outlasts the process group's timeout


class SlowModel:
    """A model whose save takes longer than the process group's timeout (a slow shared filesystem)."""

    def parameters(self):
        return []

    def save_pretrained(self, directory):
        time.sleep(SLOW_S)
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / "config.json").write_text("{}")


def _slow_main_rank(rank: int, port: int, out: str) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), **{STRICT_ENV: "1"},
    )  # fmt: skip
    from datetime import timedelta
    from types import SimpleNamespace

    import torch.distributed as dist
    from deepspeed.checkpoint import ds_to_universal

    from finetune.outputs import save_model
    from pretrain import checkpoint
    from pretrain.distributed import any_rank, barrier, init_distributed, shutdown

    init_distributed(timeout_s=120)  # rendezvous of two processes that import at their own pace
    dist.distributed_c10d._set_pg_timeout(timedelta(seconds=SHORT_TIMEOUT_S))  # then: dist_timeout_s=2

    def slow_conversion(options):
        time.sleep(SLOW_S)
        (Path(options.output_folder) / "zero").mkdir(parents=True)

    ds_to_universal.main = slow_conversion
    tag_dir = Path(out) / "checkpoints" / "step00000002"
    tag_dir.mkdir(parents=True, exist_ok=True)
    torch.save({}, tag_dir / f"bf16_zero_pp_rank_{rank}_mp_rank_00_optim_states.pt")  # ZeRO partitions
    barrier()
    result = {}
    started = time.monotonic()
    result["universal"] = checkpoint.universal_tag(Path(out) / "checkpoints", "step00000002")
    result["universal_s"] = time.monotonic() - started
    tokenizer = SimpleNamespace(save_pretrained=lambda directory: None)
    started = time.monotonic()
    save_model(SimpleNamespace(module=SlowModel()), tokenizer, Path(out), 0, rank == 0, {"merged": False})
    result["save_s"] = time.monotonic() - started
    result["saved"] = sorted(p.name for p in (Path(out) / "model").iterdir())
    result["after"] = any_rank(False)  # the process group is alive and the ranks in step
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    shutdown()


def test_ranks_wait_for_rank_0s_long_work_beyond_the_collective_timeout(tmp_path):
    """A checkpoint converted for another world size and a fine-tuned model saved, each by rank 0
    alone taking longer than the process group's timeout: rank 1 waits for it (outside that
    timeout) instead of failing its collective."""
    mp.spawn(_slow_main_rank, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        r = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert r["universal"] == "step00000002/universal" and r["universal_s"] >= SLOW_S * (rank == 1)
        assert r["save_s"] >= SLOW_S * (rank == 1) and r["after"] is False
        assert r["saved"] == ["config.json", "finetune.json"]
    assert (tmp_path / "checkpoints" / "step00000002" / "universal" / "zero").is_dir()


def test_background_pruning_leaves_a_newer_checkpoint_being_written_alone(tmp_path):
    """The pruning scheduled by one save can run late (it is in the background, and deleting a
    large checkpoint takes long) while the next save writes: it must not delete that one."""
    from pretrain.checkpoint import _prune

    for name in ("step00000001", "step00000002", "step00000003", ".trash-step00000009-1"):
        (tmp_path / name).mkdir()
    _prune(tmp_path, keep=["step00000002"], saved="step00000002")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step00000002", "step00000003"]

"""Crash-safe checkpoints: a checkpoint is complete or invisible.

Layout under ``<run_dir>/checkpoints/``::

    step00000100/            DeepSpeed's files (model, ZeRO partitions, optimizer, scheduler)
        rank_state_00000.pt  per rank: ``RankState`` (skipped samples, tokens) and the RNG states,
                             plain numbers and tensors (loaded with weights_only)
        run_state.json       step, world size, the global data position, what the run was trained on
        universal/           made on a resume with another world size: DeepSpeed's universal checkpoint
    latest                   the tag of the newest COMPLETE checkpoint

Saving goes: check every rank can write -> DeepSpeed save (ends in a barrier) -> each rank's own
state -> each rank fsyncs the files it wrote -> every rank confirms (all-reduce) -> rank 0
replaces ``latest`` atomically (``data_prep.atomic.write_text_atomic``) -> barrier -> old checkpoints are
pruned by rank 0 in a background thread. Nothing long runs on one rank while the others wait in a
collective (whose timeout, ``dist_timeout_s``, a slow shared filesystem could outlast): the
fsyncs are shared out to the ranks that wrote, and the pruning overlaps the next steps.
DeepSpeed's own ``latest`` is written before the other ranks finish, so it is disabled
(``save_latest=False``). A crash at any point leaves ``latest`` naming the previous complete
checkpoint; a partial directory is never named and is removed by the next save.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from data_prep.atomic import atomic_path, fsync_dir, write_text_atomic
from pretrain.distributed import all_ranks, barrier, wait_for_main
from pretrain.fault_injection import crash_point, disk_error_point

LATEST = "latest"
RUN_STATE = "run_state.json"
_TAG = re.compile(r"^step(\d{8})$")
_TRASH = ".trash-"
# DeepSpeed names each rank's ZeRO files ..._zero_pp_rank_<r>_...; its other files come from rank 0.
_DEEPSPEED_RANK_FILE = re.compile(r"zero_pp_rank_(\d+)_")


@dataclass
class RankState:
    """What each rank resumes with besides the engine and the global data position (in the run
    state): its own counts."""

    skipped: int = 0  # bad samples this rank skipped (against skip_bad_samples)
    local_tokens: int = 0  # real (non-pad) tokens this rank trained on


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message says which and what to do."""


def tag_for(step: int) -> str:
    return f"step{step:08d}"


def rank_state_path(tag_dir: Path, rank: int) -> Path:
    return tag_dir / f"rank_state_{rank:05d}.pt"


def latest_tag(ckpt_dir: str | Path) -> str | None:
    """The tag ``latest`` names, or None for a run that never completed a checkpoint."""
    path = Path(ckpt_dir) / LATEST
    if not path.is_file():
        return None
    tag = path.read_text().strip()
    if not (Path(ckpt_dir) / tag / RUN_STATE).is_file():
        raise CheckpointError(
            f"{path} names {tag!r}, which is missing or incomplete; the checkpoint dir was edited by hand"
        )
    return tag


def complete_tags(ckpt_dir: str | Path) -> list[str]:
    """Every complete checkpoint still on disk, oldest first (a partial one is never named stepN)."""
    directory = Path(ckpt_dir)
    if not directory.is_dir():
        return []
    return sorted(p.name for p in directory.iterdir() if _TAG.match(p.name) and (p / RUN_STATE).is_file())


def read_run_state(ckpt_dir: str | Path, tag: str) -> dict[str, Any]:
    return json.loads((Path(ckpt_dir) / tag / RUN_STATE).read_text())


def _written_by(name: str, rank: int) -> bool:
    match = _DEEPSPEED_RANK_FILE.search(name) or re.match(r"rank_state_(\d+)\.pt$", name)
    return int(match.group(1)) == rank if match else rank == 0


def _fsync_mine(tag_dir: Path, rank: int) -> None:
    """fsync the files this rank wrote (on a shared filesystem, a client's fsync flushes its own
    writes, not another's), then the directory."""
    for path in sorted(tag_dir.rglob("*")):
        if path.is_file() and _written_by(path.name, rank):
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    fsync_dir(tag_dir)


def _describe_write_error(err: Exception) -> str:
    if isinstance(err, OSError):
        return f"{err.strerror or err} ({err.filename})" if err.filename else str(err.strerror or err)
    return str(err).splitlines()[0][:200]


_pruner: ThreadPoolExecutor | None = None
_pruning: list[Future] = []


def _prune(ckpt_dir: Path, keep: list[str], saved: str) -> None:
    """Remove every tag directory up to ``saved`` (the checkpoint just committed) not kept (older
    checkpoints, partial ones from crashed saves) and the ones set aside as trash. Newer ones are
    left alone: running in the background, this may overlap the next save's writing."""
    for child in ckpt_dir.iterdir():
        old_tag = child.is_dir() and _TAG.match(child.name) and child.name not in keep and child.name <= saved
        if old_tag or child.name.startswith(_TRASH):
            shutil.rmtree(child, ignore_errors=True)


def _prune_in_background(ckpt_dir: Path, keep: list[str], saved: str) -> None:
    global _pruner
    if _pruner is None:
        _pruner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prune-checkpoints")
    _pruning.append(_pruner.submit(_prune, ckpt_dir, keep, saved))


def wait_for_pruning() -> None:
    """Let the background pruning finish (before the process exits)."""
    while _pruning:
        _pruning.pop(0).result()


def save(
    engine,
    ckpt_dir: str | Path,
    step: int,
    run_state: dict[str, Any],
    rank_state: RankState,
    keep_last: int,
) -> str:
    """Save a complete checkpoint for ``step`` on every rank; returns its tag. All ranks must call."""
    from deepspeed.accelerator import get_accelerator

    ckpt_dir = Path(ckpt_dir)
    rank = dist.get_rank() if dist.is_initialized() else 0
    tag = tag_for(step)
    tag_dir = ckpt_dir / tag
    try:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        probe = ckpt_dir / f".write_probe_{rank}"
        probe.write_bytes(b"ok")
        probe.unlink()
        ok, problem = True, ""
    except OSError as err:
        ok, problem = False, _describe_write_error(err)
    if not all_ranks(ok):
        raise CheckpointError(
            f"cannot write checkpoint {tag} under {ckpt_dir}: {problem or 'another rank could not write'}; "
            f"the previous checkpoint is intact. Free space or fix permissions, then relaunch to resume"
        )
    if rank == 0 and tag_dir.exists() and latest_tag(ckpt_dir) != tag:
        # Left by a save that crashed, never named by `latest`: renamed aside at once (deleting it
        # could take long), removed with the next pruning.
        tag_dir.rename(ckpt_dir / f"{_TRASH}{tag}-{os.getpid()}")
    barrier()  # nobody writes into the directory before it is clear
    try:
        engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state={"step": step}, save_latest=False)
        disk_error_point(f"save:{step}")
        own = {**asdict(rank_state), "torch_rng": torch.get_rng_state()}
        if get_accelerator().device_name() != "cpu":
            own["accelerator_rng"] = get_accelerator().get_rng_state()
        torch.save(own, rank_state_path(tag_dir, rank))
        if rank == 0:
            (tag_dir / RUN_STATE).write_text(json.dumps(run_state, indent=2))
        _fsync_mine(tag_dir, rank)
        ok, problem = True, ""
    except (OSError, RuntimeError) as err:  # torch.save reports a short write as RuntimeError
        ok, problem = False, _describe_write_error(err)
    crash_point(f"save:before_commit:{step}")
    if not all_ranks(ok):
        raise CheckpointError(
            f"checkpoint {tag} failed to write: {problem or 'on another rank'} (disk full, quota "
            f"or permissions?); `latest` still names the previous complete checkpoint"
        )
    if rank == 0:
        write_text_atomic(ckpt_dir / LATEST, tag)
        crash_point(f"save:after_commit:{step}")
    barrier()  # every rank knows the checkpoint is committed before any goes on
    if rank == 0:
        kept = sorted(
            (
                c.name
                for c in ckpt_dir.iterdir()
                if _TAG.match(c.name) and (c / RUN_STATE).is_file() and c.name <= tag
            ),
            reverse=True,
        )[:keep_last]
        _prune_in_background(ckpt_dir, kept, tag)
    return tag


UNIVERSAL = "universal"  # <tag>/universal/: the checkpoint converted for another world size


def universal_tag(ckpt_dir: str | Path, tag: str) -> str | None:
    """For a resume on another number of ranks: the tag of ``tag`` converted to a DeepSpeed universal
    checkpoint (ZeRO partitions of the optimizer state regrouped by parameter, loadable on any
    data-parallel size), made by rank 0 once; None when the checkpoint holds no partitioned
    optimizer state (ZeRO 0 in fp32), which loads on any world size as it is. All ranks must call."""
    tag_dir = Path(ckpt_dir) / tag
    partitioned = sorted(tag_dir.glob("*zero_pp_rank_*optim_states.pt"))
    if not partitioned:
        return None
    out = tag_dir / UNIVERSAL
    problem = ""

    def convert() -> bool:  # rank 0, while the others wait outside dist_timeout_s: minutes for a large model
        nonlocal problem
        if (out / "zero").is_dir():
            return True
        import argparse
        import contextlib
        import io

        from deepspeed.checkpoint import ds_to_universal

        options = argparse.Namespace(
            input_folder=str(tag_dir),
            num_extract_workers=1,
            num_merge_workers=1,
            keep_temp_folder=False,
            strict=True,
            inject_missing_state=True,  # our engine saves no universal-checkpoint info of its own
        )
        try:
            with atomic_path(out) as staging, contextlib.redirect_stdout(io.StringIO()):
                options.output_folder = str(staging)
                ds_to_universal.main(options)
            (tag_dir / "latest_universal").unlink(missing_ok=True)  # the converter's pointer: unused here
        except Exception as err:  # DeepSpeed's converter raises anything from assertions to OSErrors
            problem = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
            return False
        return True

    if not wait_for_main(convert):
        raise CheckpointError(
            f"cannot convert checkpoint {tag_dir} for another world size ({problem or 'on rank 0'}); "
            "relaunch with the rank count it was saved with"
        )
    return f"{tag}/{UNIVERSAL}"


def _torch_optimizer(engine) -> torch.optim.Optimizer:
    """The torch optimizer inside DeepSpeed's (ZeRO) wrapper, or the engine's own without one."""
    return getattr(engine.optimizer, "optimizer", engine.optimizer)


def _per_group_settings(groups: list[dict]) -> list[dict[str, Any]]:
    """Per optimizer param group, the settings that differ between the groups (weight_decay: 0 for
    biases and LayerNorm, pretrain/optim.py); the shared ones (lr, betas...) are left out."""
    keys = {key for group in groups for key in group if key != "params"}
    differing = [key for key in sorted(keys) if len({repr(group.get(key)) for group in groups}) > 1]
    return [{key: group[key] for key in differing if key in group} for group in groups]


def _repair_universal_load(engine, own_settings: list[dict[str, Any]]) -> None:
    """Undo two slips of DeepSpeed 0.19's ZeRO-3 universal load (stage3.py,
    ``load_hp_checkpoint_state_from_checkpoint_dir_stage3``): it gives every param group the first
    group's settings (weight decay would reach the biases and LayerNorm), and one ``step`` tensor to
    every group's state, which the optimizer increments in place once per group and step (Adam's
    bias correction then runs ahead). Each group gets back its own settings and its own step."""
    optimizer = _torch_optimizer(engine)
    for group, settings in zip(optimizer.param_groups, own_settings, strict=True):
        group.update(settings)
    for values in optimizer.state.values():
        if torch.is_tensor(values.get("step")):
            values["step"] = values["step"].clone()


def load(
    engine, ckpt_dir: str | Path, tag: str, load_tag: str | None = None, same_world: bool = True
) -> RankState | None:
    """Load DeepSpeed state (weights, optimizer, scheduler) from ``load_tag`` (default ``tag``); on
    the world size it was saved with, also this rank's RNG states, returning its ``RankState``;
    None on another world size (the per-rank states belong to the old ranks)."""
    from deepspeed.accelerator import get_accelerator

    rank = dist.get_rank() if dist.is_initialized() else 0
    # read before DeepSpeed's universal load overwrites them (only that load needs them back)
    own_settings = None if same_world else _per_group_settings(_torch_optimizer(engine).param_groups)
    load_path, _ = engine.load_checkpoint(
        str(ckpt_dir), tag=load_tag or tag, load_optimizer_states=True, load_lr_scheduler_states=True
    )
    if load_path is None:
        raise CheckpointError(f"DeepSpeed could not load checkpoint {Path(ckpt_dir) / (load_tag or tag)}")
    if not same_world:
        _repair_universal_load(engine, own_settings)
        return None
    # Only numbers and tensors are stored here, so the safe unpickler suffices.
    own = torch.load(rank_state_path(Path(ckpt_dir) / tag, rank), map_location="cpu", weights_only=True)
    torch.set_rng_state(own["torch_rng"])
    if "accelerator_rng" in own:
        get_accelerator().set_rng_state(own["accelerator_rng"])
    return RankState(**{f.name: own[f.name] for f in fields(RankState)})

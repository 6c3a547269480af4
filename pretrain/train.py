"""Pretraining with DeepSpeed: ``deepspeed [--num_gpus N] --module pretrain --config FILE [key=value ...]``.

``build_run`` makes everything before the first step (process group, data checks, model, DeepSpeed
engine), ``restore`` loads the latest checkpoint into it (``prepare_run`` = both), and ``train`` is
the loop: forward, backward, step, then log, evaluate and checkpoint at their intervals. All plain
functions a test can call.

Host syncs: one per optimizer step, whatever ``grad_accum`` is: the agreement of all ranks, in one
collective read once, on the step's non-finite losses and on the data errors of the next step's
batches (read ahead); losses are summed on the device and read once per log line. Only a
non-finite loss (rare: the batch is replaced) costs a sync more.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from data_prep.manifest import ManifestError, load_manifest, shard_specs, tokenizer_files
from data_prep.storage import DataSource
from data_prep.typed_config import to_yaml
from pretrain import checkpoint
from pretrain.checkpoint import RankState
from pretrain.config import PretrainConfig, resolve_model_config_path
from pretrain.cpu_dropout import use_cpu_dropout
from pretrain.data import DataError, TokenLayout, TrainStream, budget_error, eval_batches, train_loader
from pretrain.deepspeed_json import Resolved, check_with_deepspeed
from pretrain.deepspeed_json import resolve as resolve_deepspeed_json
from pretrain.distributed import (
    DistInfo,
    all_reduce_sum,
    any_rank,
    any_rank_on_device,
    init_distributed,
    peak_memory_bytes,
    precision_problem,
    reduce_max,
    reduce_sum,
    set_threads,
    to_device,
)
from pretrain.ds_config import build_deepspeed_config
from pretrain.export import RUN_MODEL_CONFIG, RUN_TOKENIZER, export_checkpoint
from pretrain.fault_injection import (
    OVERFLOW_FACTOR,
    crash_point,
    grad_overflow_injected,
    nonfinite_loss_injected,
)
from pretrain.flops import BertShape, datasheet_peak_flops, model_flops
from pretrain.init_from import InitFromError, check_tokenizer, load_source_weights, source_config
from pretrain.masking import word_start_table
from pretrain.model import (
    PretrainingObjective,
    bert_config_from_preset,
    build_hf_model,
    compile_encoder_layers,
    set_tf32,
)
from pretrain.model_card import describe_hardware
from pretrain.optim import build_optimizer, param_groups, warmup_decay_schedule
from pretrain.plot import plot_losses
from pretrain.run_log import RunLog, read_metrics

MODEL_INPUTS = (
    "input_ids",
    "attention_mask",
    "token_type_ids",
    "mlm_positions",
    "mlm_labels",
    "next_sentence_label",
)


# Steps DeepSpeed may skip in a row before the run stops. fp16's dynamic loss scale starts at 2^16
# and halves per overflow (hysteresis 2), so ~20 overflows reach a scale of 1; beyond that the
# gradients themselves are not finite.
MAX_OVERFLOWS_IN_A_ROW = 40


class SetupError(RuntimeError):
    """A launch that cannot work as configured: unsupported precision, a run dir of another run."""


class NonFiniteLossError(RuntimeError):
    """The loss stayed NaN/inf for too many consecutive steps."""


@dataclass
class Progress:
    """Where the run stands; saved with every checkpoint (``step``, ``nonfinite_skips`` and the
    global data position in the run state, ``mine`` per rank)."""

    step: int = 0  # optimizer steps applied (an fp16 overflow step is not one: see ``train``)
    position: int = 0  # global batches consumed by all ranks together (pretrain/data.py)
    lane_positions: list[int] | None = None  # each reading lane's sample position (None: fresh start)
    nonfinite_skips: int = 0  # micro-steps skipped for a NaN/inf loss, all ranks agreeing
    consecutive_nonfinite: int = 0
    mine: RankState = field(default_factory=RankState)
    # Training seconds of the launches before this one, up to the checkpoint it resumed from (steps
    # redone after a crash count once), and when this launch's training loop began.
    wall_s_before: float = 0.0
    loop_started: float = field(default_factory=time.perf_counter)

    def wall_s(self) -> float:
        """The run's training wall time so far, over all its launches."""
        return self.wall_s_before + time.perf_counter() - self.loop_started


@dataclass
class Window:
    """Sums over the micro-steps since the last log line: losses on the device (read at log time)."""

    losses: torch.Tensor | None = None  # [loss, mlm_loss, nsp_loss] summed, float64
    micro_steps: int = 0
    steps: int = 0
    tokens: int = 0
    flops: float = 0.0
    started: float = field(default_factory=time.perf_counter)

    def add(self, out: dict[str, torch.Tensor], tokens: int, flops: float) -> None:
        zero = torch.zeros((), device=out["loss"].device)
        parts = (out["loss"], out["mlm_loss"], out.get("nsp_loss", zero))
        losses = torch.stack([part.detach().double() for part in parts])
        self.losses = losses if self.losses is None else self.losses + losses
        self.micro_steps += 1
        self.tokens += tokens
        self.flops += flops


@dataclass
class Run:
    cfg: PretrainConfig
    settings: Resolved  # cfg is settings.cfg: the run config after the DeepSpeed JSON, with sources
    dist: DistInfo
    manifest: dict[str, Any]
    layout: TokenLayout  # layout.seq_len: the data's, checked equal to cfg.seq_len
    shape: BertShape
    engine: Any
    run_dir: Path
    ckpt_dir: Path
    fingerprint: dict[str, Any]
    log: RunLog | None = None
    progress: Progress = field(default_factory=Progress)
    resumed_from: str | None = None
    load_tag: str | None = None  # what DeepSpeed loads: the latest tag, or its universal conversion
    forward_passes: int = 0  # training forward passes of this launch (the fault-injection clock)
    lane_ends: dict[int, int] = field(
        default_factory=dict
    )  # lane -> its position after this rank's last batch
    eval_set: list[dict[str, Any]] | None = None
    ahead: list[tuple[dict[str, Any], bool]] = field(default_factory=list)  # batches read ahead, each
    # with the agreement of all ranks on it: True where some rank's batch there is a data error
    grad_mask: GradientMask | None = None  # drops a non-finite micro-step's gradients (grad_accum > 1)
    peak_flops_per_s: float | None = None  # per rank, for MFU; None where no datasheet figure applies
    lanes: int | None = None  # reading lanes of the training stream (fixed by the run's first launch)
    stream: TrainStream | None = None
    source: DataSource | None = None  # the data dir, local or remote
    fetch_retries: int = 0  # transient fetch failures this rank's loader retried (this launch)
    init_report: str | None = None  # init_from: what was loaded and what initialised (the banner)

    def global_tokens(self) -> int:
        return int(reduce_sum([self.progress.mine.local_tokens])[0])


# ---------------------------------------------------------------------------------------------
# Set-up


def _check_compiler(device_type: str) -> None:
    if device_type == "cpu" and not (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")):
        raise SetupError(
            "compile=true needs a C++ compiler on CPU machines (torch.compile generates C++); "
            "install g++ or set compile=false"
        )


def _check_data(cfg: PretrainConfig, manifest: dict[str, Any], source: DataSource) -> dict[str, bytes]:
    """The data dir matches this run; returns its tokenizer's files (checked against the manifest)."""
    hint = f"regenerate it: python -m data_prep --config configs/prep/NAME.yaml out_dir={cfg.data_dir} seq_len={cfg.seq_len}"
    if int(manifest["seq_len"]) != cfg.seq_len:
        raise ManifestError(
            f"data dir {cfg.data_dir} was prepared for seq_len={manifest['seq_len']}, "
            f"this run has seq_len={cfg.seq_len}; set seq_len={manifest['seq_len']} or {hint}"
        )
    if not manifest["splits"].get("train", {}).get("shards"):
        raise ManifestError(f"data dir {cfg.data_dir} has no train shards; {hint}")
    return tokenizer_files(source, manifest)


def _fingerprint(
    cfg: PretrainConfig, layout: TokenLayout, hf_config, manifest: dict[str, Any]
) -> dict[str, Any]:
    """What a resumed run must share with the saved one: model shape, objective and data."""
    shard_digest = hashlib.sha256(
        "".join(s["sha256"] for s in manifest["splits"]["train"]["shards"]).encode()
    )
    model_keys = (
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "vocab_size",
        "max_position_embeddings",
        "type_vocab_size",
    )
    return {
        "model": {key: getattr(hf_config, key) for key in model_keys},
        "objective": manifest["objective"],
        "seq_len": layout.seq_len,
        "tokenizer_sha256": manifest["tokenizer"]["sha256"],
        "train_shards_sha256": shard_digest.hexdigest(),
        "init_from": cfg.init_from and str(Path(cfg.init_from).resolve()),
    }


def _check_resumable(saved: dict[str, Any], fingerprint: dict[str, Any], run_dir: Path) -> None:
    if "data" not in saved:
        raise SetupError(
            f"run_dir {run_dir} holds a checkpoint of an older format (per-rank data positions, before "
            f"the global one); finish it with the version that wrote it, or use a new run_dir"
        )
    differs = [key for key in fingerprint if saved["fingerprint"].get(key) != fingerprint[key]]
    if differs:
        detail = [
            f"model.{k}" for k, v in fingerprint["model"].items() if saved["fingerprint"]["model"].get(k) != v
        ]
        names = ", ".join(detail + [k for k in differs if k != "model"])
        raise SetupError(
            f"run_dir {run_dir} holds a run with another {names}; use a new run_dir, "
            f"or the model and data_dir it was started with"
        )


def _resume_note(saved: dict[str, Any], cfg: PretrainConfig, world_size: int) -> str | None:
    """One line when the resumed run's shape differs from the saved one (the samples continue exactly)."""
    if saved["world_size"] == world_size and saved["data"]["micro_batch_size"] == cfg.micro_batch_size:
        return None
    before = saved["data"]["global_batch"]
    after = cfg.micro_batch_size * cfg.grad_accum * world_size
    same = "the same samples per step" if before == after else "steps of another size from here"
    return (
        f"note: resuming on {world_size} rank(s), saved on {saved['world_size']}: global batch {before} -> "
        f"{after} samples; the sample order continues at the exact sample, {same}"
    )


def _write_run_files(
    cfg: PretrainConfig, hf_config, run_dir: Path, tokenizer_files: dict[str, bytes]
) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    hf_config.to_json_file(str(run_dir / RUN_MODEL_CONFIG))
    tokenizer = run_dir / RUN_TOKENIZER
    if tokenizer.exists():
        shutil.rmtree(tokenizer)
    _write_tokenizer(tokenizer_files, tokenizer)


def _write_tokenizer(files: dict[str, bytes], directory: Path) -> None:
    for name, data in files.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_bytes(data)


def build_run(cfg: PretrainConfig) -> Run:
    """Process group, data checks, model and DeepSpeed engine: a fresh run, nothing restored yet."""
    from deepspeed.accelerator import get_accelerator

    info = init_distributed(cfg.dist_timeout_s)
    resolved = resolve_deepspeed_json(cfg, info.world_size)  # ConfigError: one line, exit 2
    cfg = resolved.cfg
    set_threads(cfg.threads)
    problem = precision_problem(cfg.precision)
    if problem:
        raise SetupError(f"{problem} (precision from the {resolved.source('precision')})")
    source, manifest, tokenizer = _open_data(cfg)
    hf_config, layout = _model_config(cfg, manifest, tokenizer)
    ds_config = _deepspeed_config(cfg, resolved.deepspeed)
    if cfg.deepspeed_config:
        resolved.warnings += check_with_deepspeed(ds_config, cfg.deepspeed_config)
    run_dir = Path(cfg.run_dir)
    fingerprint = _fingerprint(cfg, layout, hf_config, manifest)
    tag, load_tag = _checkpoint_to_resume(run_dir, fingerprint, info.world_size, ds_config)  # before building
    if info.is_main:
        try:
            _write_run_files(cfg, hf_config, run_dir, tokenizer)
            _write_settings(run_dir, resolved.settings(info.world_size), ds_config)
        except OSError as err:
            raise SetupError(
                f"run_dir {run_dir}: cannot write there ({err.strerror}); choose a writable run_dir"
            ) from None

    device_type = get_accelerator().device_name()
    model, init_report = _build_model(cfg, hf_config, layout, device_type, resuming=tag is not None)
    engine = _build_engine(cfg, model, ds_config, device_type)
    return Run(
        cfg=cfg,
        dist=info,
        manifest=manifest,
        layout=layout,
        shape=BertShape.from_config(hf_config, layout.nsp),
        engine=engine,
        run_dir=run_dir,
        ckpt_dir=run_dir / "checkpoints",
        fingerprint=fingerprint,
        load_tag=load_tag,
        peak_flops_per_s=datasheet_peak_flops(cfg.precision, cfg.tf32),
        source=source,
        init_report=init_report,
        grad_mask=GradientMask(engine.module) if cfg.grad_accum > 1 else None,
        settings=resolved,
    )


def _open_data(cfg: PretrainConfig) -> tuple[DataSource, dict[str, Any], dict[str, bytes]]:
    """The data dir (local or a URL) through its manifest, checked against the run config: returns
    the source, the manifest and the data's tokenizer."""
    loader = cfg.loader
    source = DataSource(
        cfg.data_dir,
        retries=loader.retries,
        backoff_s=loader.retry_backoff_s,
        timeout_s=loader.timeout_s,
        cache_dir=loader.cache_dir,
        cache_bytes=int(loader.cache_gb * 1e9) if loader.cache_gb is not None else None,
    )
    manifest = load_manifest(cfg.data_dir, source)
    tokenizer = _check_data(cfg, manifest, source)
    return source, manifest, tokenizer


def _model_config(
    cfg: PretrainConfig, manifest: dict[str, Any], tokenizer: dict[str, bytes]
) -> tuple[Any, TokenLayout]:
    """The model's BertConfig (from ``init_from`` or a preset, fitted to the data) and the data's
    token layout (with the word-start table for whole-word masking)."""
    layout = TokenLayout.from_manifest(manifest)
    special = manifest["tokenizer"]["special_ids"]
    # The data's tokenizer as local files (the data dir may be a URL), for the checks that load it.
    with tempfile.TemporaryDirectory(prefix="tokenizer-") as tokenizer_dir:
        _write_tokenizer(tokenizer, Path(tokenizer_dir))
        if cfg.masking == "whole_word":  # a per-id table, computed once from the data's tokenizer
            layout = replace(layout, word_starts=word_start_table(tokenizer_dir, layout.vocab_size)[0])
        try:  # a malformed model config, or an init_from that does not fit the data: one line
            if cfg.init_from:
                hf_config = source_config(cfg.init_from, layout.seq_len, cfg.attn_implementation)
                check_tokenizer(cfg.init_from, cfg.data_dir, tokenizer_dir, manifest, hf_config.vocab_size)
            else:
                hf_config = bert_config_from_preset(
                    resolve_model_config_path(cfg.model),
                    layout.vocab_size,
                    special,
                    layout.seq_len,
                    cfg.attn_implementation,
                )
        except ValueError as err:
            raise SetupError(str(err)) from None
    return hf_config, layout


def _deepspeed_config(cfg: PretrainConfig, user_blocks: dict[str, Any]) -> dict:
    """DeepSpeed's config from the resolved run config and what is left of the user's JSON."""
    try:
        return build_deepspeed_config(
            micro_batch_size=cfg.micro_batch_size,
            grad_accum=cfg.grad_accum,
            precision=cfg.precision,
            zero_stage=cfg.zero_stage,
            grad_clip=cfg.grad_clip,
            offload=cfg.offload,
            extra=user_blocks,
        )
    except ValueError as err:
        raise SetupError(str(err)) from None


def _write_settings(run_dir: Path, settings: dict[str, Any], ds_config: dict[str, Any]) -> None:
    """What the run resolved to and where each setting came from, beside config.yaml."""
    (run_dir / "settings.json").write_text(json.dumps(settings, indent=2, default=str) + "\n")
    (run_dir / "deepspeed.json").write_text(json.dumps(ds_config, indent=2) + "\n")


def _checkpoint_to_resume(
    run_dir: Path, fingerprint: dict[str, Any], world_size: int, ds_config: dict[str, Any]
) -> tuple[str | None, str | None]:
    """(latest tag, tag to load) of ``run_dir``, (None, None) for a fresh run. A checkpoint of
    another run is refused; one saved on another world size loads through its universal form
    (ZeRO partitions regrouped), which ``ds_config`` is switched to."""
    tag = checkpoint.latest_tag(run_dir / "checkpoints")
    if tag is None:
        return None, None
    saved = checkpoint.read_run_state(run_dir / "checkpoints", tag)
    _check_resumable(saved, fingerprint, run_dir)
    if saved["world_size"] == world_size:
        return tag, tag
    universal = checkpoint.universal_tag(run_dir / "checkpoints", tag)
    if universal is None:
        return tag, tag
    ds_config["checkpoint"] = {**ds_config.get("checkpoint", {}), "load_universal": True}
    return tag, universal


def _build_model(cfg: PretrainConfig, hf_config, layout: TokenLayout, device_type: str, *, resuming: bool):
    """The pretraining objective around a fresh BERT (the same initial weights on every rank), or
    the ``init_from`` weights for a new run; returns it and what was loaded from the source."""
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    hf_model = build_hf_model(hf_config, nsp=layout.nsp)
    if cfg.activation_checkpointing:  # the recomputation replays the RNG state: same dropout masks
        hf_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.cpu_dropout and device_type == "cpu":
        use_cpu_dropout(hf_model)
    try:  # a checkpoint resumes its own weights later; a new run starts from the source's
        init_report = (
            load_source_weights(hf_model, cfg.init_from).describe()
            if cfg.init_from and not resuming
            else None
        )
    except InitFromError as err:
        raise SetupError(str(err)) from None
    # ZeRO-3 hooks every submodule to gather its partitioned parameters; Dynamo would trace into
    # those hooks and recompile until it gives up, so stage 3 runs eagerly.
    if cfg.compile and cfg.zero_stage < 3:
        _check_compiler(device_type)
        compile_encoder_layers(hf_model)
    model = PretrainingObjective(hf_model, sparse_head=cfg.sparse_mlm_head, loss_kernel=cfg.mlm_loss_kernel)
    return model, init_report


def _build_engine(cfg: PretrainConfig, model, ds_config: dict, device_type: str):
    """The DeepSpeed engine: the optimizer (per device and offload), the warm-up/decay schedule."""
    import deepspeed

    set_tf32(cfg.tf32)
    optimizer = build_optimizer(
        cfg.optimizer.name,
        param_groups(model, cfg.optimizer.weight_decay),
        cfg.optimizer.lr,
        cfg.optimizer.betas,
        cfg.optimizer.eps,
        device_type,
        offload=cfg.offload != "none",
        bias_correction=cfg.optimizer.bias_correction,
        max_trust_ratio=cfg.optimizer.max_trust_ratio,
        min_trust_ratio=cfg.optimizer.min_trust_ratio,
    )
    scheduler = None  # a user JSON's scheduler block: DeepSpeed builds it (pretrain/deepspeed_json.py)
    if "scheduler" not in ds_config:
        schedule = warmup_decay_schedule(
            cfg.schedule.warmup_steps,
            cfg.max_steps,
            cfg.schedule.decay,
            cfg.schedule.power,
            cfg.schedule.end_lr_ratio,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
    )
    return engine


def restore(run: Run) -> None:
    """Load the latest complete checkpoint, if any, into the engine, the progress and the RNGs;
    open the run log at the resumed step."""
    cfg, info = run.cfg, run.dist
    tag = checkpoint.latest_tag(run.ckpt_dir)
    saved = checkpoint.read_run_state(run.ckpt_dir, tag) if tag is not None else None
    if saved is not None:
        mine = checkpoint.load(
            run.engine, run.ckpt_dir, tag, run.load_tag, saved["world_size"] == info.world_size
        )
        if mine is None:  # another world size: the run's totals go to rank 0, fresh per-rank RNG streams
            mine = checkpoint.RankState(
                skipped=saved["data"]["skipped"] if info.is_main else 0,
                local_tokens=saved["tokens"] if info.is_main else 0,
            )
            torch.manual_seed(cfg.seed * 1_000_003 + saved["step"] * 1009 + info.rank)
        run.progress = Progress(
            step=saved["step"],
            position=saved["data"]["position"],
            lane_positions=saved["data"]["lane_positions"],
            nonfinite_skips=saved["nonfinite_skips"],
            mine=mine,
            wall_s_before=saved.get("wall_time_s", 0.0),  # absent in checkpoints of older versions
        )
        run.resumed_from = tag
    run.log = RunLog(
        run.run_dir,
        enabled=info.is_main,
        resume_step=run.progress.step,
        max_steps=cfg.max_steps,
        report_to=cfg.report_to,
        config=cfg.model_dump(mode="json"),
    )
    note = _resume_note(saved, cfg, info.world_size) if saved is not None else None
    if note:
        run.log.print(note)
    run.lanes = saved["data"]["lanes"] if saved is not None else cfg.loader.lanes
    if saved is not None and cfg.loader.lanes not in (None, run.lanes):
        run.log.print(
            f"note: loader.lanes={cfg.loader.lanes} ignored: the run keeps the {run.lanes} lanes it started with"
        )


def prepare_run(cfg: PretrainConfig) -> Run:
    """``build_run`` then ``restore``: a run ready for its next step."""
    run = build_run(cfg)
    restore(run)
    return run


# ---------------------------------------------------------------------------------------------
# One step, evaluation, checkpoint


class GradientMask:
    """Drops the gradients of a backward on the device, without a host sync: while ``keep`` (a 0-d
    bool device tensor) is False, each parameter's incoming gradient becomes zeros before it is
    accumulated. (Scaling the loss by 0 would not do: a NaN loss's gradients stay NaN.)"""

    def __init__(self, module: torch.nn.Module):
        self.keep: torch.Tensor | None = None
        for param in module.parameters():
            if param.requires_grad:
                param.register_hook(self._apply)

    def _apply(self, grad: torch.Tensor) -> torch.Tensor | None:
        return None if self.keep is None else torch.where(self.keep, grad, 0.0)


def _read_ahead(run: Run, batches: Iterator[dict[str, Any]], count: int) -> list[bool]:
    """Read batches until ``count`` wait ahead; returns, per batch read, whether this rank's is a
    data error (for all ranks to agree on: ``_agreed``)."""
    errors = []
    while len(run.ahead) < count:
        batch = next(batches)
        # its bad samples count against the budget after those of the batches before it
        before = sum(queued["skipped"] for queued, _ in run.ahead)
        run.ahead.append((batch, False))
        errors.append(_batch_error(run, batch, before) is not None)
    return errors


def _agreed(run: Run, agreed_errors: list[bool]) -> None:
    """Record the agreement on the batches ``_read_ahead`` just read (the last ones waiting)."""
    start = len(run.ahead) - len(agreed_errors)
    for index, error in enumerate(agreed_errors, start):
        run.ahead[index] = (run.ahead[index][0], error)


def _take(run: Run, batches: Iterator[dict[str, Any]]) -> dict[str, Any]:
    """The next batch to train on, all ranks agreed it is good (reading one, and agreeing, if none waits)."""
    if not run.ahead:
        _agreed(run, any_rank(_read_ahead(run, batches, 1)))
    batch, error = run.ahead.pop(0)
    if error:
        raise DataError(
            _batch_error(run, batch) or "another rank stopped on a data error (its message names the shard)"
        )
    return batch


def _batch_error(run: Run, batch: dict[str, Any], skipped_before: int = 0) -> str | None:
    """Why this rank cannot train on ``batch``: the stream's error, or its bad samples taking this
    rank past the ``skip_bad_samples`` budget (``skipped_before``: those of batches read ahead of
    it, not trained on yet); None when it is good."""
    if "error" in batch:
        return batch["error"]
    skipped = run.progress.mine.skipped + skipped_before + batch["skipped"]
    if skipped > run.cfg.skip_bad_samples:
        return budget_error(batch["skip_reason"], skipped, run.cfg.skip_bad_samples)
    return None


def _forward(run: Run, batches: Iterator[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    batch = _take(run, batches)
    _note_skipped(run, batch)
    out = run.engine(**to_device(batch, run.engine.device, MODEL_INPUTS))
    run.forward_passes += 1
    if nonfinite_loss_injected(run.forward_passes):
        out["loss"] = out["loss"] * float("nan")
    return batch, out


def _backward(
    run: Run, out: dict[str, torch.Tensor], boundary: bool, keep: torch.Tensor | None = None
) -> None:
    """Backward and ``engine.step()``; the step updates the weights at the accumulation ``boundary``
    (set here, not counted by DeepSpeed: a skipped batch's replacement is a micro-step more).
    ``keep``: a device flag; where False, this backward's gradients are dropped (``GradientMask``)."""
    engine = run.engine
    engine.set_gradient_accumulation_boundary(boundary)
    if run.grad_mask is not None:
        run.grad_mask.keep = keep
    overflowing = grad_overflow_injected(run.forward_passes)
    engine.backward(out["loss"] * OVERFLOW_FACTOR if overflowing else out["loss"])
    engine.step()
    if run.grad_mask is not None:
        run.grad_mask.keep = None


def _count_nonfinite(run: Run, nonfinite: bool) -> None:
    """A micro-step's agreed verdict, in order: a non-finite loss is a batch skipped on every rank
    (its gradients dropped); ``max_nonfinite_steps`` of them in a row stop the run."""
    progress = run.progress
    if not nonfinite:
        progress.consecutive_nonfinite = 0
        return
    progress.nonfinite_skips += 1
    progress.consecutive_nonfinite += 1
    run.log.print(
        f"warning: step {progress.step + 1}: non-finite loss on some rank, batch skipped on all "
        f"({progress.consecutive_nonfinite} in a row)"
    )
    if progress.consecutive_nonfinite >= run.cfg.max_nonfinite_steps:
        raise NonFiniteLossError(
            f"loss was NaN/inf for {progress.consecutive_nonfinite} consecutive micro-steps at step {progress.step + 1}; "
            f"stopped without saving, so the last checkpoint is the last good state. Lower optimizer.lr"
            f"{', use precision=bf16' if run.cfg.precision == 'fp16' else ''} or raise schedule.warmup_steps, "
            f"then relaunch to resume"
        )


def optimizer_step(
    run: Run, batches: Iterator[dict[str, Any]]
) -> list[tuple[dict[str, Any], dict[str, torch.Tensor]]]:
    """Forward and backward on ``grad_accum`` good batches, then the optimizer step (which
    DeepSpeed may skip: fp16 overflow). Returns the batches trained on and the model's outputs
    (0-d device tensors, not read here: reading one is a host sync).

    One host sync: all ranks agree, in one collective after the last forward, on the step's
    non-finite losses and on the data errors of the next step's batches (read ahead), so that none
    diverges: a data error stops every rank, a non-finite loss skips that batch on every rank.
    The earlier micro-steps cannot wait for that verdict: their non-finite flags are agreed on the
    device (a collective, no host read) and drop their gradients there (``GradientMask``). A
    skipped batch is replaced by the next one (the rare case that syncs more), so every applied
    step has ``grad_accum`` batches, as without skips.
    """
    accum = run.cfg.grad_accum
    if len(run.ahead) < accum:  # the first step, or after a replacement: read ahead and agree
        _agreed(run, any_rank(_read_ahead(run, batches, accum)))
    trained, verdicts = [], []
    for _ in range(accum - 1):
        batch, out = _forward(run, batches)
        nonfinite = any_rank_on_device(~torch.isfinite(out["loss"].detach()))
        _backward(run, out, boundary=False, keep=~nonfinite)
        trained.append((batch, out))
        verdicts.append(nonfinite)
    batch, out = _forward(run, batches)
    trained.append((batch, out))
    verdicts.append(~torch.isfinite(out["loss"].detach()))
    errors = _read_ahead(run, batches, accum)  # the next step's batches
    agreed = any_rank(verdicts + errors)
    _agreed(run, agreed[accum:])
    nonfinite = agreed[:accum]
    for verdict in nonfinite:
        _count_nonfinite(run, verdict)
    if not any(nonfinite):
        _backward(run, out, boundary=True)
        return trained
    # Rare: replace the skipped batches, agreeing on each one's loss before its backward.
    trained = [pair for pair, verdict in zip(trained, nonfinite) if not verdict]
    if not nonfinite[-1]:
        _backward(run, out, boundary=False)
    while len(trained) < accum:
        batch, out = _forward(run, batches)
        verdict = any_rank(~torch.isfinite(out["loss"].detach()))
        _count_nonfinite(run, verdict)
        if not verdict:
            trained.append((batch, out))
            _backward(run, out, boundary=len(trained) == accum)
    return trained


def _note_skipped(run: Run, batch: dict[str, Any]) -> None:
    """Advance the data position; report bad samples the stream passed over (any rank prints)."""
    progress, mine = run.progress, run.progress.mine
    if batch["skipped"]:
        mine.skipped += batch["skipped"]
        print(
            f"[rank {run.dist.rank}] warning: skipped {batch['skipped']} bad sample(s) "
            f"({mine.skipped} of the skip_bad_samples budget of {run.cfg.skip_bad_samples}): "
            f"{batch['skip_reason']}",
            flush=True,
        )
    # every rank consumes one batch per micro-step: the global batches before this one's round, and its round
    progress.position = batch["batch_index"] - run.dist.rank + run.dist.world_size
    run.lane_ends[batch["lane"]] = batch["lane_end"]
    run.fetch_retries += batch["fetch_retries"]


def evaluate(run: Run) -> dict[str, float] | None:
    """MLM loss / accuracy / perplexity and NSP loss / accuracy on the first ``eval_samples`` valid samples."""
    specs = shard_specs(run.cfg.data_dir, run.manifest, "valid")
    if not specs:
        return None
    if run.eval_set is None:
        run.eval_set = eval_batches(
            specs,
            run.layout,
            rank=run.dist.rank,
            world_size=run.dist.world_size,
            seed=run.cfg.seed,
            micro_batch_size=run.cfg.micro_batch_size,
            mlm_probability=run.cfg.mlm_probability,
            max_samples=run.cfg.eval_samples,
            source=run.source,
        )
    engine = run.engine
    names = ("mlm_loss", "mlm_correct", "mlm_count", "nsp_loss", "nsp_correct", "nsp_count")
    sums = torch.zeros(len(names), dtype=torch.float64, device=engine.device)  # read once, after the loop
    engine.eval()
    with torch.no_grad():
        for batch in run.eval_set:
            out = engine(**to_device(batch, engine.device, MODEL_INPUTS))
            zero = torch.zeros((), device=engine.device)
            values = [  # weighted: a rank whose share ran out repeats a batch with weight 0
                out["mlm_loss"] * out["mlm_count"],
                out["mlm_correct"],
                out["mlm_count"],
                out["nsp_loss"] * out["nsp_count"] if "nsp_loss" in out else zero,
                out.get("nsp_correct", zero),
                out.get("nsp_count", zero),
            ]
            sums += batch["weight"] * torch.stack([v.double() for v in values])
    engine.train()
    mlm_loss_sum, mlm_correct, mlm_count, nsp_loss_sum, nsp_correct, nsp_count = all_reduce_sum(sums).tolist()
    row = {
        "step": run.progress.step,
        "mlm_loss": mlm_loss_sum / mlm_count,
        "mlm_acc": mlm_correct / mlm_count,
        "ppl": math.exp(min(mlm_loss_sum / mlm_count, 50.0)),
    }
    if nsp_count:
        row.update(nsp_loss=nsp_loss_sum / nsp_count, nsp_acc=nsp_correct / nsp_count)
    run.log.eval(row)
    return row


def save(run: Run) -> str:
    progress = run.progress
    shared = {
        "step": progress.step,
        "tokens": run.global_tokens(),
        "nonfinite_skips": progress.nonfinite_skips,
        "wall_time_s": progress.wall_s(),
        "world_size": run.dist.world_size,
        "zero_stage": run.cfg.zero_stage,
        "precision": run.cfg.precision,
        "objective": run.manifest["objective"],
        "fingerprint": run.fingerprint,
        "data": _data_position(run),
    }
    tag = checkpoint.save(run.engine, run.ckpt_dir, progress.step, shared, progress.mine, run.cfg.keep_last)
    run.log.print(f"saved checkpoint {tag}")
    return tag


def _data_position(run: Run) -> dict[str, Any]:
    """Where the global training stream stands, the same on every rank (a collective): each lane's
    position is that of the last batch any rank took from it (positions only grow: MAX)."""
    progress, lanes = run.progress, run.stream.lanes
    positions = list(progress.lane_positions or run.stream.lane_positions)
    for lane, end in run.lane_ends.items():
        positions[lane] = max(positions[lane], end)
    progress.lane_positions = reduce_max(positions)
    cfg = run.cfg
    return {
        "position": progress.position,
        "lanes": lanes,
        "lane_positions": progress.lane_positions,
        "micro_batch_size": cfg.micro_batch_size,
        "global_batch": cfg.micro_batch_size * cfg.grad_accum * run.dist.world_size,
        "skipped": int(reduce_sum([progress.mine.skipped])[0]),  # all ranks
    }


def _log_train(run: Run, window: Window, steps_this_launch: int) -> None:
    """One row: the window's sums over all ranks in one collective, read in one host sync."""
    engine, progress = run.engine, run.progress
    counts = [
        window.micro_steps,
        window.tokens,
        window.flops,
        progress.mine.skipped,
        progress.mine.local_tokens,
        run.fetch_retries + run.source.retries,
    ]
    host = torch.tensor(counts, dtype=torch.float64, device=engine.device)
    losses = (
        window.losses
        if window.losses is not None
        else torch.zeros(3, dtype=torch.float64, device=engine.device)
    )
    loss, mlm, nsp, micro, tokens, flops, skipped, global_tokens, retries = all_reduce_sum(
        torch.cat([losses, host])
    ).tolist()
    elapsed = time.perf_counter() - window.started
    grad_norm = engine.get_global_grad_norm()
    row = {
        "step": progress.step,
        "tokens": int(global_tokens),
        "loss": loss / micro,
        "mlm_loss": mlm / micro,
        "lr": engine.get_lr()[0],
        "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
        "tokens_per_s": tokens / elapsed,
        "model_tflops_per_s": flops / elapsed / 1e12,
        "ms_per_step": 1000 * elapsed / max(1, window.steps),
        "peak_memory_bytes": peak_memory_bytes(),  # this rank's (rank 0 writes the row)
    }
    if run.peak_flops_per_s:
        row["mfu"] = flops / elapsed / (run.peak_flops_per_s * run.dist.world_size)
    if run.layout.nsp:
        row["nsp_loss"] = nsp / micro
    scale = getattr(engine.optimizer, "cur_scale", None) if run.cfg.precision == "fp16" else None
    if scale is not None:
        row.update(loss_scale=float(scale), overflow_steps=int(engine.skipped_steps))
    if progress.nonfinite_skips:
        row["nonfinite_skips"] = progress.nonfinite_skips
    if skipped:
        row["skipped_samples"] = int(skipped)
    if retries:
        row["fetch_retries"] = int(retries)  # transient fetch failures retried, all ranks, this launch
    per_step = (time.perf_counter() - progress.loop_started) / max(1, steps_this_launch)
    run.log.train(row, eta_s=per_step * (run.cfg.max_steps - progress.step))


# ---------------------------------------------------------------------------------------------
# The loop


def train(cfg: PretrainConfig) -> dict[str, Any]:
    """Run (or resume) pretraining to ``cfg.max_steps``; returns the run summary (on every rank)."""
    run = prepare_run(cfg)
    cfg = run.cfg  # resolved against the DeepSpeed JSON
    progress, log = run.progress, run.log
    log.print(_banner(run))
    log.print(run.settings.describe(run.dist.world_size))
    for line in run.settings.warnings:
        log.print(line)
    if run.init_report:  # a continued run: its banner, and the source's quality on this data at step 0
        log.print(run.init_report)
        evaluate(run)
    batches = iter(training_loader(run))
    samples_log = _open_samples_log(run)
    window, start_step, last_eval = Window(), progress.step, None
    progress.loop_started = time.perf_counter()
    overflows_in_a_row = 0
    while progress.step < cfg.max_steps:
        for batch, out in optimizer_step(run, batches):
            lengths = batch["attention_mask"].sum(dim=1).tolist()  # host tensors: no device sync
            flops = model_flops(run.shape, lengths, int(batch["mlm_positions"].numel()))
            window.add(out, batch["num_tokens"], flops)
            progress.mine.local_tokens += batch["num_tokens"]
            if samples_log is not None:  # an audit trail: reads the loss (a host sync) every micro-step
                record = {"step": progress.step + 1, "keys": batch["keys"], "loss": out["loss"].item()}
                samples_log.write(json.dumps(record) + "\n")
        if not run.engine.was_step_applied():  # DeepSpeed skipped the update and the schedule (fp16
            overflows_in_a_row += 1  # overflow, or a non-finite gradient norm): not a step, retried
            if overflows_in_a_row > MAX_OVERFLOWS_IN_A_ROW:
                raise NonFiniteLossError(
                    f"{overflows_in_a_row} optimizer steps in a row were skipped for non-finite gradients "
                    f"at step {progress.step + 1}; lower optimizer.lr"
                    f"{' or use precision=bf16' if run.cfg.precision == 'fp16' else ''}, then relaunch to resume"
                )
            continue
        overflows_in_a_row = 0
        progress.step += 1
        window.steps += 1
        log.advance()
        crash_point(f"step:{progress.step}")
        last = progress.step == cfg.max_steps
        if progress.step % cfg.log_every == 0 or last:
            _log_train(run, window, progress.step - start_step)
            window = Window()
        if progress.step % cfg.eval_every == 0 or last:
            last_eval = evaluate(run) or last_eval
        if progress.step % cfg.save_every == 0 or last:
            save(run)
    return finish(run, last_eval, start_step)


def training_loader(run: Run):
    """The run's training batches from where its progress stands (also what the benchmarks time)."""
    cfg = run.cfg
    run.stream = TrainStream(
        shard_specs(cfg.data_dir, run.manifest, "train"),
        run.layout,
        rank=run.dist.rank,
        world_size=run.dist.world_size,
        seed=cfg.seed,
        micro_batch_size=cfg.micro_batch_size,
        mlm_probability=cfg.mlm_probability,
        start=run.progress.position,
        lanes=run.lanes,
        lane_positions=run.progress.lane_positions,
        skip_budget=cfg.skip_bad_samples - run.progress.mine.skipped,
        source=copy.copy(run.source),  # its own retry count: the loader's are reported through batches
    )
    return train_loader(run.stream, cfg.loader.workers, cfg.loader.prefetch_batches)


def finish(run: Run, last_eval: dict[str, float] | None, start_step: int) -> dict[str, Any]:
    """Summary, loss curve and export (rank 0), after the last checkpoint is complete.

    The summary's sums are the last collective: the export (minutes for a large model on a slow
    filesystem) runs on rank 0 after it, while the other ranks leave, so nobody waits on it in a
    collective with a short timeout.
    """
    elapsed = time.perf_counter() - run.progress.loop_started
    tokens, skipped = reduce_sum([run.progress.mine.local_tokens, run.progress.mine.skipped])
    checkpoint.wait_for_pruning()
    rows = read_metrics(run.run_dir) if run.dist.is_main else []
    train_rows = [row for row in rows if row.get("kind") == "train" and row["step"] > start_step]
    summary = {
        "steps": run.progress.step,
        "tokens": int(tokens),
        "world_size": run.dist.world_size,
        "precision": run.cfg.precision,
        "zero_stage": run.cfg.zero_stage,
        "model": run.cfg.model,
        "resumed_from": run.resumed_from,
        "wall_time_s": elapsed,  # this launch's
        "run_wall_time_s": run.progress.wall_s_before + elapsed,  # all the launches that made this model
        "hardware": describe_hardware(),
        "tokens_per_s": (sum(r["tokens_per_s"] for r in train_rows) / len(train_rows))
        if train_rows
        else None,
        "final_eval": last_eval,
        "nonfinite_skips": run.progress.nonfinite_skips,
        "skipped_samples": int(skipped),
    }
    if run.dist.is_main:
        if rows:
            plot_losses(rows, run.run_dir / "loss.png", title=f"{run.cfg.model} pretraining")
        run.log.finish(summary, run.run_dir / "loss.png" if rows else None)
        if run.cfg.export:
            path = export_checkpoint(run.run_dir, summary={"run": summary})
            run.log.print(f"exported Hugging Face model to {path}")
        (run.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        run.log.print(
            f"done: {run.progress.step} steps, {summary['tokens']:,} tokens in {elapsed:.0f}s this launch"
            + (f", {summary['run_wall_time_s']:.0f}s over all launches" if run.resumed_from else "")
        )
    run.log.close()
    return summary


def _banner(run: Run) -> str:
    cfg, manifest = run.cfg, run.manifest
    train = manifest["splits"]["train"]
    params = sum(
        getattr(p, "ds_numel", p.numel()) for p in run.engine.module.parameters()
    )  # whole, also under ZeRO-3
    where = (
        f"resumed from {run.resumed_from} (step {run.progress.step})" if run.resumed_from else "fresh start"
    )
    return (
        f"pretrain: {f'init_from {cfg.init_from}' if cfg.init_from else cfg.model} ({params / 1e6:.1f}M params, objective {manifest['objective']}) | "
        f"{run.dist.world_size} rank(s), {cfg.precision}, ZeRO-{cfg.zero_stage}"
        f"{', compiled layers' if cfg.compile and cfg.zero_stage < 3 else ''} | global batch "
        f"{cfg.micro_batch_size * cfg.grad_accum * run.dist.world_size} x {run.layout.seq_len} | "
        f"{train['samples']:,} train samples in {len(train['shards'])} shards | {where}"
    )


def _open_samples_log(run: Run):
    if not run.cfg.log_samples:
        return None
    directory = run.run_dir / "samples"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"rank{run.dist.rank}.jsonl"
    if path.exists():  # keep one clean record: drop the steps after the resumed checkpoint
        kept = [
            line
            for line in path.read_text().splitlines()
            if line and json.loads(line)["step"] <= run.progress.step
        ]
        path.write_text("".join(line + "\n" for line in kept))
    return open(path, "a", buffering=1)

"""Pretraining with DeepSpeed: ``deepspeed [--num_gpus N] --module pretrain --config FILE [key=value ...]``.

``prepare_run`` does everything before the first step (process group, data checks, model,
DeepSpeed engine, automatic resume); ``train`` is the loop: forward, backward, step, then log,
evaluate and checkpoint at their intervals. Both are plain functions a test can call.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from data_prep.manifest import TOKENIZER_DIR, ManifestError, load_manifest, sha256_tree
from data_prep.typed_config import to_yaml
from pretrain import checkpoint
from pretrain.config import PretrainConfig, resolve_model_config_path
from pretrain.cpu_dropout import use_cpu_dropout
from pretrain.data import DataError, TokenLayout, TrainStream, eval_batches, shard_specs, train_loader
from pretrain.distributed import DistInfo, init_distributed
from pretrain.ds_config import build_deepspeed_config, read_user_deepspeed_config
from pretrain.export import RUN_MODEL_CONFIG, RUN_TOKENIZER, export_checkpoint
from pretrain.fault_injection import (
    OVERFLOW_FACTOR,
    crash_point,
    grad_overflow_injected,
    nonfinite_loss_injected,
)
from pretrain.flops import BertShape, forward_flops
from pretrain.model import (
    PretrainingObjective,
    bert_config_from_preset,
    build_hf_model,
    compile_encoder_layers,
    set_tf32,
)
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


class SetupError(RuntimeError):
    """A launch that cannot work as configured: unsupported precision, a run dir of another run."""


class NonFiniteLossError(RuntimeError):
    """The loss stayed NaN/inf for too many consecutive steps."""


@dataclass
class Progress:
    """Where the run stands; saved with every checkpoint."""

    step: int = 0
    position: int = 0  # this rank's position in its training stream (samples consumed, incl. skipped)
    skipped: int = 0  # bad samples this rank skipped (against skip_bad_samples)
    local_tokens: int = 0  # real (non-pad) tokens this rank trained on
    nonfinite_skips: int = 0  # micro-steps skipped for a NaN/inf loss, all ranks agreeing
    consecutive_nonfinite: int = 0


@dataclass
class Window:
    """Sums over the micro-steps since the last log line."""

    loss: float = 0.0
    mlm_loss: float = 0.0
    nsp_loss: float = 0.0
    micro_steps: int = 0
    tokens: int = 0
    flops: float = 0.0
    started: float = field(default_factory=time.perf_counter)


@dataclass
class Run:
    cfg: PretrainConfig
    dist: DistInfo
    manifest: dict[str, Any]
    layout: TokenLayout
    shape: BertShape
    engine: Any
    run_dir: Path
    ckpt_dir: Path
    fingerprint: dict[str, Any]
    log: RunLog
    progress: Progress
    resumed_from: str | None
    skipped_at_launch: int = 0
    forward_passes: int = 0  # training forward passes of this launch (the fault-injection clock)
    eval_set: list[dict[str, Any]] | None = None

    def global_tokens(self) -> int:
        return int(_reduce_sum([self.progress.local_tokens], self.engine.device)[0])


# ---------------------------------------------------------------------------------------------
# Set-up


def _set_threads(cfg: PretrainConfig) -> None:
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() != "cpu":
        return
    local_ranks = int(
        os.environ.get("LOCAL_SIZE")
        or os.environ.get("LOCAL_WORLD_SIZE")
        or os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE")
        or 1
    )
    torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // local_ranks))


def _check_compiler(device_type: str) -> None:
    if device_type == "cpu" and not (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")):
        raise SetupError(
            "compile=true needs a C++ compiler on CPU machines (torch.compile generates C++); "
            "install g++ or set compile=false"
        )


def _check_data(cfg: PretrainConfig, manifest: dict[str, Any]) -> None:
    data_dir = Path(cfg.data_dir)
    hint = f"regenerate it: python -m data_prep --config configs/prep/NAME.yaml out_dir={cfg.data_dir} seq_len={cfg.seq_len}"
    if int(manifest["seq_len"]) != cfg.seq_len:
        raise ManifestError(
            f"data dir {cfg.data_dir} was prepared for seq_len={manifest['seq_len']}, "
            f"this run has seq_len={cfg.seq_len}; set seq_len={manifest['seq_len']} or {hint}"
        )
    recorded = manifest["tokenizer"].get("sha256")
    actual = sha256_tree(data_dir / TOKENIZER_DIR)
    if recorded != actual:
        raise ManifestError(
            f"the tokenizer in {data_dir / TOKENIZER_DIR} is not the one its shards were made with "
            f"(sha256 {actual[:12]}... vs manifest {str(recorded)[:12]}...); {hint}"
        )
    if not manifest["splits"].get("train", {}).get("shards"):
        raise ManifestError(f"data dir {cfg.data_dir} has no train shards; {hint}")


def _fingerprint(cfg: PretrainConfig, hf_config, manifest: dict[str, Any]) -> dict[str, Any]:
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
        "seq_len": cfg.seq_len,
        "tokenizer_sha256": manifest["tokenizer"]["sha256"],
        "train_shards_sha256": shard_digest.hexdigest(),
    }


def _check_resumable(
    saved: dict[str, Any], fingerprint: dict[str, Any], world_size: int, run_dir: Path
) -> None:
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
    if saved["world_size"] != world_size:
        raise SetupError(
            f"run_dir {run_dir} was checkpointed with {saved['world_size']} rank(s), this launch has {world_size}: "
            f"resuming on another world size is refused (each rank's data position belongs to its rank); "
            f"relaunch with {saved['world_size']} rank(s)"
        )


def _write_run_files(cfg: PretrainConfig, hf_config, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    hf_config.to_json_file(str(run_dir / RUN_MODEL_CONFIG))
    tokenizer = run_dir / RUN_TOKENIZER
    if tokenizer.exists():
        shutil.rmtree(tokenizer)
    shutil.copytree(Path(cfg.data_dir) / TOKENIZER_DIR, tokenizer)


def prepare_run(cfg: PretrainConfig) -> Run:
    """Process group, data checks, model and engine, and the resume from the latest checkpoint."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    info = init_distributed(cfg.dist_timeout_s)
    _set_threads(cfg)
    if cfg.precision == "fp16" and not get_accelerator().is_fp16_supported():
        raise SetupError(
            "precision=fp16: DeepSpeed supports no fp16 on this device "
            "(a CPU without AVX512-FP16/AMX-FP16); use precision=bf16 or fp32"
        )
    manifest = load_manifest(cfg.data_dir)
    _check_data(cfg, manifest)
    layout = TokenLayout.from_manifest(manifest)
    special = manifest["tokenizer"]["special_ids"]
    try:  # a malformed model or deepspeed JSON: one line
        hf_config = bert_config_from_preset(
            resolve_model_config_path(cfg.model),
            layout.vocab_size,
            special,
            cfg.seq_len,
            cfg.attn_implementation,
        )
        ds_config = build_deepspeed_config(
            micro_batch_size=cfg.micro_batch_size,
            grad_accum=cfg.grad_accum,
            precision=cfg.precision,
            zero_stage=cfg.zero_stage,
            grad_clip=cfg.grad_clip,
            offload=cfg.offload,
            extra=read_user_deepspeed_config(cfg.deepspeed_config),
        )
    except ValueError as err:
        raise SetupError(str(err)) from None
    fingerprint = _fingerprint(cfg, hf_config, manifest)
    run_dir, ckpt_dir = Path(cfg.run_dir), Path(cfg.run_dir) / "checkpoints"
    tag = checkpoint.latest_tag(ckpt_dir)
    if tag is not None:
        _check_resumable(checkpoint.read_run_state(ckpt_dir, tag), fingerprint, info.world_size, run_dir)
    if info.is_main:
        try:
            _write_run_files(cfg, hf_config, run_dir)
        except OSError as err:
            raise SetupError(
                f"run_dir {run_dir}: cannot write there ({err.strerror}); choose a writable run_dir"
            ) from None

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    hf_model = build_hf_model(hf_config, nsp=layout.nsp)
    # ZeRO-3 hooks every submodule to gather its partitioned parameters; Dynamo would trace into
    # those hooks and recompile until it gives up, so stage 3 runs eagerly.
    if cfg.cpu_dropout and get_accelerator().device_name() == "cpu":
        use_cpu_dropout(hf_model)
    if cfg.compile and cfg.zero_stage < 3:
        _check_compiler(get_accelerator().device_name())
        compile_encoder_layers(hf_model)
    model = PretrainingObjective(hf_model, sparse_head=cfg.sparse_mlm_head, loss_kernel=cfg.mlm_loss_kernel)
    device_type = get_accelerator().device_name()
    set_tf32(cfg.tf32)
    optimizer = build_optimizer(
        cfg.optimizer.name,
        param_groups(model, cfg.optimizer.weight_decay),
        cfg.optimizer.lr,
        cfg.optimizer.betas,
        cfg.optimizer.eps,
        device_type,
        offload=cfg.offload != "none",
    )
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

    progress = Progress()
    if tag is not None:
        saved = checkpoint.read_run_state(ckpt_dir, tag)
        own = checkpoint.load(engine, ckpt_dir, tag)
        progress = Progress(
            step=saved["step"],
            position=own["position"],
            skipped=own["skipped"],
            local_tokens=own["local_tokens"],
            nonfinite_skips=saved["nonfinite_skips"],
        )
        torch.set_rng_state(own["torch_rng"])
        if "accelerator_rng" in own:
            get_accelerator().set_rng_state(own["accelerator_rng"])
    log = RunLog(run_dir, enabled=info.is_main, resume_step=progress.step, max_steps=cfg.max_steps)
    return Run(
        cfg=cfg,
        dist=info,
        manifest=manifest,
        layout=layout,
        shape=BertShape.from_config(hf_config, layout.nsp),
        engine=engine,
        run_dir=run_dir,
        ckpt_dir=ckpt_dir,
        fingerprint=fingerprint,
        log=log,
        progress=progress,
        resumed_from=tag,
        skipped_at_launch=progress.skipped,
    )


# ---------------------------------------------------------------------------------------------
# One step, evaluation, checkpoint


def _any_rank(flag: bool, device) -> bool:
    """True on every rank if ``flag`` is True on any (ranks must agree before they diverge)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return flag
    tensor = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def _inputs(batch: dict[str, Any], device) -> dict[str, torch.Tensor]:
    return {key: batch[key].to(device, non_blocking=True) for key in MODEL_INPUTS if key in batch}


def micro_step(run: Run, batches: Iterator[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Forward, backward and (at the accumulation boundary) optimizer step on the next good batch.

    All ranks agree, before diverging, on a data error (stop) and on a non-finite loss (skip this
    batch on every rank; stop after ``max_nonfinite_steps`` in a row), so none is left waiting.
    """
    engine, progress, device = run.engine, run.progress, run.engine.device
    while True:
        batch = next(batches)
        error = batch.get("error")
        if _any_rank(error is not None, device):
            raise DataError(error or "another rank stopped on a data error (its message names the shard)")
        _note_skipped(run, batch)
        out = engine(**_inputs(batch, device))
        run.forward_passes += 1
        if nonfinite_loss_injected(run.forward_passes):
            out["loss"] = out["loss"] * float("nan")
        if not _any_rank(not bool(torch.isfinite(out["loss"].detach())), device):
            overflowing = grad_overflow_injected(run.forward_passes)
            engine.backward(out["loss"] * OVERFLOW_FACTOR if overflowing else out["loss"])
            engine.step()
            progress.consecutive_nonfinite = 0
            return batch, out
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


def _note_skipped(run: Run, batch: dict[str, Any]) -> None:
    """Advance this rank's data position; report bad samples the stream skipped (any rank prints)."""
    progress = run.progress
    skipped = run.skipped_at_launch + batch["skipped"]
    if skipped > progress.skipped:
        print(
            f"[rank {run.dist.rank}] warning: skipped {skipped - progress.skipped} bad sample(s) "
            f"({skipped} of the skip_bad_samples budget of {run.cfg.skip_bad_samples}): {batch['skip_reason']}",
            flush=True,
        )
    progress.position, progress.skipped = batch["stream_end"], skipped


def _reduce_sum(values: list[float], device) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor)
    return tensor.tolist()


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
        )
    engine, device = run.engine, run.engine.device
    sums = [0.0] * 6
    engine.eval()
    with torch.no_grad():
        for batch in run.eval_set:
            out = engine(**_inputs(batch, device))
            w = batch["weight"]
            sums[0] += w * float(out["mlm_loss"]) * int(out["mlm_count"])
            sums[1] += w * int(out["mlm_correct"])
            sums[2] += w * int(out["mlm_count"])
            if "nsp_loss" in out:
                sums[3] += w * float(out["nsp_loss"]) * int(out["nsp_count"])
                sums[4] += w * int(out["nsp_correct"])
                sums[5] += w * int(out["nsp_count"])
    engine.train()
    mlm_loss_sum, mlm_correct, mlm_count, nsp_loss_sum, nsp_correct, nsp_count = _reduce_sum(sums, device)
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
    from deepspeed.accelerator import get_accelerator

    progress = run.progress
    own = {
        "position": progress.position,
        "skipped": progress.skipped,
        "local_tokens": progress.local_tokens,
        "torch_rng": torch.get_rng_state(),
    }
    if get_accelerator().device_name() != "cpu":
        own["accelerator_rng"] = get_accelerator().get_rng_state()
    shared = {
        "step": progress.step,
        "tokens": run.global_tokens(),
        "nonfinite_skips": progress.nonfinite_skips,
        "world_size": run.dist.world_size,
        "zero_stage": run.cfg.zero_stage,
        "precision": run.cfg.precision,
        "objective": run.manifest["objective"],
        "fingerprint": run.fingerprint,
    }
    tag = checkpoint.save(run.engine, run.ckpt_dir, progress.step, shared, own, run.cfg.keep_last)
    run.log.print(f"saved checkpoint {tag}")
    return tag


def _log_train(run: Run, window: Window, run_started: float, steps_this_launch: int) -> None:
    engine, device = run.engine, run.engine.device
    loss, mlm, nsp, micro, tokens, flops, skipped = _reduce_sum(
        [
            window.loss,
            window.mlm_loss,
            window.nsp_loss,
            window.micro_steps,
            window.tokens,
            window.flops,
            run.progress.skipped,
        ],
        device,
    )
    elapsed = time.perf_counter() - window.started
    grad_norm = engine.get_global_grad_norm()
    row = {
        "step": run.progress.step,
        "tokens": run.global_tokens(),
        "loss": loss / micro,
        "mlm_loss": mlm / micro,
        "lr": engine.get_lr()[0],
        "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
        "tokens_per_s": tokens / elapsed,
        "model_tflops_per_s": flops / elapsed / 1e12,
    }
    if run.layout.nsp:
        row["nsp_loss"] = nsp / micro
    scale = getattr(engine.optimizer, "cur_scale", None) if run.cfg.precision == "fp16" else None
    if scale is not None:
        row.update(loss_scale=float(scale), overflow_steps=int(engine.skipped_steps))
    if run.progress.nonfinite_skips:
        row["nonfinite_skips"] = run.progress.nonfinite_skips
    if skipped:
        row["skipped_samples"] = int(skipped)
    per_step = (time.perf_counter() - run_started) / max(1, steps_this_launch)
    run.log.train(row, eta_s=per_step * (run.cfg.max_steps - run.progress.step))


# ---------------------------------------------------------------------------------------------
# The loop


def train(cfg: PretrainConfig) -> dict[str, Any]:
    """Run (or resume) pretraining to ``cfg.max_steps``; returns the run summary (on every rank)."""
    run = prepare_run(cfg)
    progress, log = run.progress, run.log
    log.print(_banner(run))
    stream = TrainStream(
        shard_specs(cfg.data_dir, run.manifest, "train"),
        run.layout,
        rank=run.dist.rank,
        world_size=run.dist.world_size,
        seed=cfg.seed,
        micro_batch_size=cfg.micro_batch_size,
        mlm_probability=cfg.mlm_probability,
        start=progress.position,
        skip_budget=cfg.skip_bad_samples - progress.skipped,
    )
    batches = iter(train_loader(stream, cfg.loader.workers, cfg.loader.prefetch_batches))
    samples_log = _open_samples_log(run)
    window, started, start_step, last_eval = Window(), time.perf_counter(), progress.step, None
    while progress.step < cfg.max_steps:
        for _ in range(cfg.grad_accum):
            batch, out = micro_step(run, batches)
            lengths = batch["attention_mask"].sum(dim=1).tolist()
            window.loss += out["loss"].item()
            window.mlm_loss += out["mlm_loss"].item()
            window.nsp_loss += out["nsp_loss"].item() if "nsp_loss" in out else 0.0
            window.micro_steps += 1
            window.tokens += batch["num_tokens"]
            progress.local_tokens += batch["num_tokens"]
            window.flops += 3 * forward_flops(run.shape, lengths, int(batch["mlm_positions"].numel()))
            if samples_log is not None:
                samples_log.write(
                    json.dumps({"step": progress.step + 1, "keys": batch["keys"], "loss": out["loss"].item()})
                    + "\n"
                )
        progress.step += 1
        log.advance()
        crash_point(f"step:{progress.step}")
        last = progress.step == cfg.max_steps
        if progress.step % cfg.log_every == 0 or last:
            _log_train(run, window, started, progress.step - start_step)
            window = Window()
        if progress.step % cfg.eval_every == 0 or last:
            last_eval = evaluate(run) or last_eval
        if progress.step % cfg.save_every == 0 or last:
            save(run)
    return finish(run, last_eval, started, start_step)


def finish(run: Run, last_eval: dict[str, float] | None, started: float, start_step: int) -> dict[str, Any]:
    """Summary, loss curve and export (rank 0), after the last checkpoint is complete."""
    elapsed = time.perf_counter() - started
    rows = read_metrics(run.run_dir) if run.dist.is_main else []
    train_rows = [row for row in rows if row.get("kind") == "train" and row["step"] > start_step]
    summary = {
        "steps": run.progress.step,
        "tokens": run.global_tokens(),
        "world_size": run.dist.world_size,
        "precision": run.cfg.precision,
        "zero_stage": run.cfg.zero_stage,
        "model": run.cfg.model,
        "resumed_from": run.resumed_from,
        "wall_time_s": elapsed,
        "tokens_per_s": (sum(r["tokens_per_s"] for r in train_rows) / len(train_rows))
        if train_rows
        else None,
        "final_eval": last_eval,
        "nonfinite_skips": run.progress.nonfinite_skips,
        "skipped_samples": int(_reduce_sum([run.progress.skipped], run.engine.device)[0]),
    }
    if run.dist.is_main:
        if rows:
            plot_losses(rows, run.run_dir / "loss.png", title=f"{run.cfg.model} pretraining")
        if run.cfg.export:
            path = export_checkpoint(run.run_dir, summary={"run": summary})
            run.log.print(f"exported Hugging Face model to {path}")
        (run.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        run.log.print(
            f"done: {run.progress.step} steps, {summary['tokens']:,} tokens in {elapsed:.0f}s this launch"
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
        f"pretrain: {cfg.model} ({params / 1e6:.1f}M params, objective {manifest['objective']}) | "
        f"{run.dist.world_size} rank(s), {cfg.precision}, ZeRO-{cfg.zero_stage}"
        f"{', compiled layers' if cfg.compile and cfg.zero_stage < 3 else ''} | global batch "
        f"{cfg.micro_batch_size * cfg.grad_accum * run.dist.world_size} x {cfg.seq_len} | "
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

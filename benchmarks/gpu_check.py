"""The GPU check: one command that shows, on a machine with one GPU, that the GPU path works and how fast.

    make gpu-check                                   # = python -m benchmarks.gpu_check
    python -m benchmarks.gpu_check --dry-run --out /tmp/x   # the same stages on a CPU, tiny sizes (make test runs it)

Stages, in this order, within ``--budget-s`` (default 480 s; a stage that no longer fits is reported
as skipped, never silently dropped):

1. environment: device, versions, and every package the code imports (``benchmarks.gpu_wheels``);
2. the tests that mean something on CUDA (``CUDA_TESTS``: both loss kernels and the objective on
   the GPU against the stock model, fused LAMB against the PyTorch loop, CPU-Adam offload);
3. pretraining on 1 rank, tiny and base, bf16 ZeRO-0, bf16 ZeRO-2, fp16 ZeRO-1 and bf16 ZeRO-3 with
   optimizer and parameters offloaded to the CPU, each with a save,
   a resume that must give the uninterrupted run's losses, and an export that loads
   (``benchmarks.train_check``);
4. the throughput sweep of base at seq 128, micro batch 32 / 64 / 128 / 256, with the plain
   transformers loop side by side on the same GPU and micro batch, for both MLM loss kernels
   (``mlm_loss_kernel`` dense and blockwise) and ``compile`` off and on: tokens/s and MFU against the
   exact device's datasheet peak (``benchmarks.sweep``).

It prints one table and writes ``benchmarks/results/<device>-<date>-gpu-check.{md,json}`` beside the
sweep's own reports; the exit status is 1 when a check failed.

On an air-gapped GPU machine (torch installed, no package index), e.g. the NVIDIA image with torch,
transformers, sentencepiece and mpi4py but no deepspeed, webdataset, hjson or pydantic:

1. on a machine with an index: ``make gpu-wheels`` (``GPU_PYTHON_VERSION=3.12`` by default) writes
   ``dist/gpu-wheels/``: deepspeed built as a pure wheel (``DS_BUILD_OPS=0``: its CUDA ops, fused
   LAMB and CPU Adam, are compiled on first use by ninja + nvcc on the GPU machine) and the wheels of
   every other package our code imports, torch excepted (``python -m benchmarks.gpu_wheels`` lists them);
2. copy the repo and ``dist/gpu-wheels`` to the GPU machine;
3. there: ``python3 -m pip install --no-index --find-links dist/gpu-wheels -r dist/gpu-wheels/requirements.txt``
   (unpinned: pip keeps what is installed already and adds the rest from the folder); without a
   writable site-packages, ``--target /tmp/site`` and ``export PYTHONPATH=/tmp/site:$PWD`` (``--target``
   ignores what is installed, so it puts every wheel there, tested versions that shadow the image's);
4. ``make gpu-check`` (or ``python3 -m benchmarks.gpu_check``) from the repo root; a missing package is
   named in the first row of the table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from benchmarks import train_check
from benchmarks.gpu_wheels import missing_distributions
from benchmarks.launching import REPO, last_line, launch
from benchmarks.machine import device_description, device_name, versions

TESTS_MAX_S = 150.0  # first use of fused LAMB and CPU Adam compiles them (~1 min each)
CUDA_TESTS = ("tests/test_gpu_path.py",)  # its cases run on every visible device, CUDA included


@dataclass
class Plan:
    """The sizes of each stage: the GPU's, or tiny ones for ``--dry-run`` on a CPU."""

    tests: tuple[str, ...]
    train_models: tuple[str, ...]
    train_configs: str  # precision:zero_stage,...
    train_overrides: tuple[str, ...]
    train_steps: int
    train_seq_len: int
    vocab_size: int
    sweep_model: str
    sweep_seq_len: int
    batch_sizes: tuple[int, ...]
    variants: tuple[tuple[str, bool], ...]  # (mlm_loss_kernel, compile); the first runs with the baseline
    warmup_steps: int
    steps: int
    loader_workers: int
    point_timeout_s: float
    notes: list[str] = field(default_factory=list)


GPU_PLAN = Plan(
    tests=CUDA_TESTS,
    train_models=("tiny", "base"),
    # + ZeRO-3 with optimizer and parameters offloaded to the CPU (DeepSpeedCPUAdam)
    train_configs="bf16:0,bf16:2,fp16:1,bf16:3:optimizer+params",
    train_overrides=("micro_batch_size=32", "loader.workers=2"),
    train_steps=6,
    train_seq_len=128,
    vocab_size=30522,
    sweep_model="base",
    sweep_seq_len=128,
    batch_sizes=(32, 64, 128, 256),
    # Both loss kernels without compile, then compile with the CUDA kernel (compiling costs a minute
    # per variant, so the fourth combination is left to a rerun with --variants).
    variants=(("dense", False), ("blockwise", False), ("dense", True)),
    warmup_steps=3,
    steps=10,
    # At 50% MFU of an H100/H200 base takes ~7,000 samples/s (70 GFLOP each): more than one worker gives.
    loader_workers=4,
    point_timeout_s=180.0,
)

DRY_RUN_PLAN = Plan(
    tests=("tests/test_gpu_path.py::test_auto_kernel_is_dense_on_cuda_and_blockwise_elsewhere",),
    train_models=("tiny",),
    train_configs="bf16:0,bf16:2,fp16:1",
    train_overrides=("micro_batch_size=4", "loader.workers=0", "threads=1"),
    train_steps=4,
    train_seq_len=32,
    vocab_size=500,
    sweep_model="tiny",
    sweep_seq_len=32,
    batch_sizes=(4,),
    variants=(("blockwise", False),),  # the dense kernel on CPU: tests/test_gpu_path.py
    warmup_steps=1,
    steps=2,
    loader_workers=1,
    point_timeout_s=120.0,
    notes=[
        "dry run on a CPU: tiny sizes, one sweep variant (the CPU's blockwise loss kernel, no compile: "
        "seconds of C++ compilation per launch); "
        "fp16 runs where DeepSpeed supports fp16 on this CPU (AVX512-FP16/AMX), else is skipped saying why"
    ],
)


class Checks:
    """The rows of the one table, and the time budget."""

    def __init__(self, budget_s: float):
        self.rows: list[dict[str, str]] = []
        self.started = time.perf_counter()
        self.deadline = self.started + budget_s

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def add(self, check: str, configuration: str, status: str, detail: str) -> None:
        self.rows.append({"check": check, "configuration": configuration, "status": status, "detail": detail})
        print(f"gpu-check: {check} | {configuration} | {status} | {detail}", flush=True)

    def failed(self) -> bool:
        return any(row["status"] in ("failed", "error") for row in self.rows)

    def table(self) -> str:
        lines = ["| check | configuration | status | numbers |", "| --- | --- | --- | --- |"]
        lines += [
            f"| {r['check']} | {r['configuration']} | {r['status']} | {r['detail']} |" for r in self.rows
        ]
        return "\n".join(lines)


def check_environment(checks: Checks) -> bool:
    missing = missing_distributions()
    detail = ", ".join(f"{name} {version}" for name, version in versions().items() if version)
    if missing:
        checks.add(
            "environment",
            device_description(),
            "error",
            f"missing packages: {', '.join(missing)}; install the wheels of `make gpu-wheels` "
            f"(see python -m benchmarks.gpu_check --help)",
        )
        return False
    checks.add("environment", device_description(), "ok", detail)
    return True


def run_tests(checks: Checks, plan: Plan, work: Path) -> None:
    log = work / "tests.log"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *plan.tests]
    code = launch(command, log, timeout_s=max(30.0, min(TESTS_MAX_S, checks.left() - 60)))
    summary = last_line(log)
    status = "ok" if code == 0 else ("error" if code is None else "failed")
    checks.add("tests", " ".join(Path(test).stem for test in plan.tests), status, summary)
    if status != "ok":
        _show_tail(log)


def _show_tail(log: Path, lines: int = 40) -> None:
    """The end of a failed stage's log: the work dir with the full log is removed at the end."""
    print(f"--- last {lines} lines of {log.name} ---")
    print("\n".join(log.read_text(errors="replace").splitlines()[-lines:]))
    print("---", flush=True)


def run_training(checks: Checks, plan: Plan, work: Path) -> None:
    from benchmarks.synthetic_shards import write_synthetic_data_dir

    data = write_synthetic_data_dir(
        work / "train-data", seq_len=plan.train_seq_len, vocab_size=plan.vocab_size, train_shards=4
    )
    for model in plan.train_models:
        configuration = f"{model}, 1 rank, seq {plan.train_seq_len}, {plan.train_steps} steps"
        if checks.left() < 30:
            checks.add("pretrain", configuration, "skipped", "out of the time budget")
            continue
        out, log = work / f"train-{model}.json", work / f"train-{model}.log"
        command = train_check.command_line(
            data,
            model,
            plan.train_configs,
            plan.train_steps,
            work / "train-runs",
            out,
            [f"seq_len={plan.train_seq_len}", *plan.train_overrides],
        )
        code = launch(command, log, timeout_s=max(30.0, checks.left() - 30))
        results = json.loads(out.read_text()) if out.is_file() else []
        for result in results:
            offload = "" if result.get("offload", "none") == "none" else f", offload {result['offload']}"
            name = f"{model} {result['precision']} ZeRO-{result['zero_stage']}{offload}: save, resume, export"
            if result["status"] in ("ok", "failed"):
                same = (
                    "bitwise equal"
                    if result["losses_bitwise_equal"]
                    else f"max rel diff {result['loss_max_rel_diff']:.1e}"
                )
                detail = (
                    f"resumed from {result['resumed_from']}; losses after it {same}"
                    f" (first/last {result['losses'][0]:.4f}/{result['losses'][-1]:.4f}); export loads: "
                    f"{result['export_loads']}, max weight diff {result['export_max_weight_diff']:.1e}; "
                    f"{result['seconds']:.0f} s"
                )
            else:
                detail = result.get("error", "")
            checks.add("pretrain", name, result["status"], detail)
        if code != 0 or any(result["status"] != "ok" for result in results):
            _show_tail(log)
        if code != 0:
            checks.add("pretrain", configuration, "error", f"exit {code}: {last_line(log)}")


def run_sweeps(checks: Checks, plan: Plan, out_dir: Path, work: Path, precision: str) -> list[dict[str, Any]]:
    from benchmarks.sweep import run_sweep
    from benchmarks.throughput import parse_args

    results = []
    for index, (kernel, compiled) in enumerate(plan.variants):
        name = f"{plan.sweep_model} seq {plan.sweep_seq_len} {precision} ZeRO-0, {kernel} CE, compile {'on' if compiled else 'off'}"
        if checks.left() < (60 if index == 0 else 45):
            checks.add("sweep", name, "skipped", "out of the time budget")
            continue
        tag = f"gpu-check-{kernel}-ce{'-compiled' if compiled else ''}"
        argv = [
            "--model",
            plan.sweep_model,
            "--seq-len",
            str(plan.sweep_seq_len),
            "--batch-sizes",
            ",".join(map(str, plan.batch_sizes)),
            "--precision",
            precision,
            "--zero-stage",
            "0",
            "--ranks",
            "1",
            "--vocab-size",
            str(plan.vocab_size),
            "--warmup-steps",
            str(plan.warmup_steps),
            "--steps",
            str(plan.steps),
            "--loader-workers",
            str(plan.loader_workers),
            "--point-timeout-s",
            str(min(plan.point_timeout_s, max(30.0, checks.left()))),
            "--out",
            str(out_dir),
            "--tag",
            tag,
            "--set",
            f"mlm_loss_kernel={kernel}",
            "--set",
            f"compile={'true' if compiled else 'false'}",
            *(["--baseline"] if index == 0 else []),
        ]
        args = parse_args(argv)
        args.argv = argv
        result, json_path = run_sweep(args)
        results.append(result)
        for point in result["points"]:
            configuration = f"{name}, micro batch {point['micro_batch_size']}"
            if point["status"] != "ok":
                checks.add("sweep", configuration, "error", f"{point['status']}: {point['error']}")
                continue
            detail = (
                f"{point['tokens_per_s']:,.0f} tokens/s, MFU {point['mfu']:.1%}, "
                f"{point['step_time_s'] * 1e3:.1f} ms/step, {point['peak_memory_bytes'] / 2**30:.1f} GiB"
            )
            if point.get("baseline_status") == "ok":
                detail += (
                    f"; baseline {point['baseline_tokens_per_s']:,.0f} tokens/s, MFU {point['baseline_mfu']:.1%}, "
                    f"ours x{point['speedup']:.2f}; first loss {point['initial_loss']:.4f} vs "
                    f"{point['baseline_initial_loss']:.4f}"
                )
            elif "baseline_status" in point:
                detail += f"; baseline {point['baseline_status']}: {point['baseline_error']}"
            checks.add("sweep", configuration, "ok", detail)
        if result["loader_samples_per_s"] is not None:
            checks.add(
                "loader",
                name,
                "ok",
                f"{result['loader_samples_per_s']:,.0f} samples/s per rank alone, {result['loader_headroom']:.0f}x "
                f"what the trainer consumed at micro batch {result['best_micro_batch_size']}",
            )
        print(f"gpu-check: sweep report {json_path}", flush=True)
    return results


def write_report(
    checks: Checks, plan: Plan, out_dir: Path, dry_run: bool, sweeps: list[dict[str, Any]]
) -> Path:
    device = device_name(len(os.sched_getaffinity(0)))
    stem = f"{device}-{datetime.date.today().isoformat()}-gpu-check{'-dry-run' if dry_run else ''}"
    out_dir.mkdir(parents=True, exist_ok=True)
    elapsed = time.perf_counter() - checks.started
    header = [
        f"# GPU check on {device_description()} ({datetime.date.today().isoformat()})",
        "",
        f"`python -m benchmarks.gpu_check{' --dry-run' if dry_run else ''}`: {elapsed:.0f} s. "
        + " ".join(plan.notes),
        "",
    ]
    (out_dir / f"{stem}.md").write_text("\n".join(header) + checks.table() + "\n")
    (out_dir / f"{stem}.json").write_text(
        json.dumps(
            {
                "device": device,
                "device_description": device_description(),
                "dry_run": dry_run,
                "seconds": elapsed,
                "versions": versions(),
                "rows": checks.rows,
                "sweeps": [sweep["command"] for sweep in sweeps],
            },
            indent=2,
        )
        + "\n"
    )
    return out_dir / f"{stem}.md"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_check",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__[__doc__.index("On an air-gapped") :],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="every stage on a CPU with the tiny model and sizes"
    )
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="report directory")
    parser.add_argument(
        "--budget-s", type=float, default=480.0, help="time budget of the whole check (default 480)"
    )
    parser.add_argument("--precision", choices=("bf16", "fp16", "fp32"), default="bf16", help="of the sweep")
    parser.add_argument(
        "--variants",
        help="sweep variants as kernel:on|off (compile),...; the first runs with the baseline (e.g. blockwise:on)",
    )
    parser.add_argument(
        "--skip",
        default="",
        help="comma-separated stages to leave out: tests, train, sweep (e.g. to rerun one)",
    )
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        parser.error(
            "no CUDA device is visible; run on a GPU machine, or pass --dry-run to rehearse on a CPU"
        )
    plan = DRY_RUN_PLAN if args.dry_run else GPU_PLAN
    if args.variants:
        try:
            chosen = [item.split(":") for item in args.variants.split(",")]
            plan.variants = tuple((kernel, {"on": True, "off": False}[mode]) for kernel, mode in chosen)
        except (ValueError, KeyError):
            parser.error(f"--variants {args.variants!r}: give kernel:on|off,..., e.g. dense:off,blockwise:on")
    skip = {stage for stage in re.split(r"[,\s]+", args.skip) if stage}
    checks = Checks(args.budget_s)
    sweeps: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        if check_environment(checks):
            if "tests" not in skip:
                run_tests(checks, plan, work)
            if "train" not in skip:
                run_training(checks, plan, work)
            if "sweep" not in skip:
                sweeps = run_sweeps(checks, plan, args.out, work, args.precision)
        report = write_report(checks, plan, args.out, args.dry_run, sweeps)
    print()
    print(checks.table())
    print(f"\n{time.perf_counter() - checks.started:.0f} s; wrote {report} (+ .json)")
    if checks.failed():
        raise SystemExit(1)


if __name__ == "__main__":
    main()

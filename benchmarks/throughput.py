"""Throughput sweep over micro-batch sizes: tokens/s, MFU and HFU of the real pretraining step,
side by side with a plain transformers loop.

    python -m benchmarks.throughput --model mini --seq-len 128 --batch-sizes 8,16,32 --precision bf16 \\
        --zero-stage 0 --ranks 1 [--data-dir D] [--baseline] --out benchmarks/results

Each point is its own launch (``benchmarks.step_worker``, under the deepspeed launcher for
``--ranks`` > 1), so every point starts from a fresh process and an out-of-memory point fails alone;
the sweep ends at the first failed point. With ``--baseline`` the same point is then run by the
plain loop in ``benchmarks.baseline``. Without ``--data-dir`` the shards are generated with BERT's
length distribution (``benchmarks.synthetic_shards``).

Per point, with T the median step time over the timed steps (warm-up excluded; the median, not
the mean, so that a step stalled by another process on the machine does not move it) and the
per-step counts averaged over the timed steps and summed over ranks:

    tokens_per_s         = real (non-pad) tokens / T
    padded_tokens_per_s  = B * L * ranks / T          (L: the batch's padded length)
    samples_per_s        = B * ranks / T
    model_tflops_per_s   = model FLOPs / T
    mfu = model FLOPs / T / peak        hfu = hardware FLOPs / T / peak

FLOPs (``pretrain/flops.py``; matmuls only, 2 per multiply-add), for a sequence of n tokens with
hidden h, FFN f, l layers, vocabulary V and m positions through the MLM head:

    forward  = l n (8h^2 + 4hf)  +  4 l n^2 h  +  m (2h^2 + 2hV)  +  (2h^2 + 4h)
               encoder matmuls     attention      MLM head           NSP head
    training = 3 x forward (the backward pass costs twice the forward)

Model FLOPs (MFU) count what the objective needs: n the real length, m the masked positions.
Hardware FLOPs (HFU) count what ran: n the padded length L, m the positions the MLM head ran on:
the masked ones for our trainer, all B*L for the stock baseline, whose full-vocabulary head makes
its HFU high and its MFU low. The peak is ``benchmarks.gemm_probe``'s: on GPU the datasheet figure,
on CPU a matmul probe run before and after the sweep (the higher reading counts).

A shared machine makes every rate lower and noisier, so the CPU time other processes took is
measured for the sweep and for each point (``benchmarks.contention``) and shown beside the rates.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.contention import OtherProcessesMeter
from benchmarks.gemm_probe import peak_flops
from benchmarks.loader_bench import loader_samples_per_s
from benchmarks.synthetic_shards import BERT_VOCAB_SIZE, write_synthetic_data_dir
from data_prep.manifest import ManifestError, load_manifest
from data_prep.typed_config import ConfigError
from pretrain.config import load_pretrain_config, resolve_model_config_path
from pretrain.distributed import free_port, precision_problem
from pretrain.flops import utilisation

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# Set by an enclosing launcher; a point's own launch must not inherit them.
LAUNCHER_VARS = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_SIZE",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
)
NEVER = (
    10**9
)  # save_every / eval_every / log_every / max_steps of a run that must never save, evaluate or decay
# Exit codes of a point whose process got SIGKILL (on CPU, the kernel's out-of-memory killer): -9 from
# Python's subprocess, 137 through a shell, 247 through the deepspeed launcher (its sys.exit(-9)).
KILLED_CODES = (-signal.SIGKILL, 128 + signal.SIGKILL, 256 - signal.SIGKILL)
# Fraction of the cores that other processes may use during a sweep before the report calls the machine busy.
BUSY_FRACTION = 0.1
CPU_ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile")


# ---------------------------------------------------------------------------------------------
# The machine


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _cpu_info() -> tuple[str, list[str]]:
    """The CPU model name and the matmul-relevant ISA extensions it has (Linux /proc/cpuinfo)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine(), []
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    flags = set(fields.get("flags", "").split())
    return fields.get("model name", platform.machine()), [flag for flag in CPU_ISA_FLAGS if flag in flags]


def device_name(cores: int) -> str:
    """``nvidia-h100-80gb-hbm3`` for a GPU, ``cpu-<model>-<cores>c`` for a CPU."""
    if torch.cuda.is_available():
        return _slug(torch.cuda.get_device_name())
    return f"cpu-{_slug(_cpu_info()[0])}-{cores}c"


def _git_commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


# ---------------------------------------------------------------------------------------------
# Launching one point


def _launch(command: list[str], log_path: Path, timeout_s: float) -> int | None:
    """Run ``command`` with its output in ``log_path``; the exit code, or None on timeout (then its
    whole process group, launcher and ranks, is killed)."""
    env = {key: value for key, value in os.environ.items() if key not in LAUNCHER_VARS}
    env.update(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            return process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return None


def _failure(code: int | None, results: list[dict[str, Any]], log_path: Path) -> dict[str, Any]:
    """``status`` (oom / timeout / error) and ``error`` of a launch that did not succeed."""
    if code is None:
        return {"status": "timeout", "error": f"no result within the point timeout; log: {log_path}"}
    failed = [result for result in results if result.get("status") != "ok"]
    if any(result["status"] == "oom" for result in failed):
        return {"status": "oom", "error": next(r["error"] for r in failed if r["status"] == "oom")}
    if code in KILLED_CODES and not failed:
        return {
            "status": "oom",
            "error": "killed by SIGKILL, most likely by the kernel's out-of-memory killer",
        }
    if failed:
        return {"status": "error", "error": failed[0]["error"]}
    lines = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    return {
        "status": "error",
        "error": f"exit {code}: {lines[-1] if lines else 'no output'} (log: {log_path})",
    }


def _read_results(paths: list[Path]) -> list[dict[str, Any]]:
    return [json.loads(path.read_text()) for path in paths if path.is_file()]


def summarise(records_by_process: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """Rates of one point from the timed steps of every process (ranks, or the one baseline process).

    Ranks step in lockstep (gradients are all-reduced every step), so a step lasts as long as its
    slowest rank: step i's time is the maximum over ranks.
    """
    steps = len(records_by_process[0])
    step_seconds = [max(records[i]["seconds"] for records in records_by_process) for i in range(steps)]

    def per_step(key: str) -> float:
        return sum(record[key] for records in records_by_process for record in records) / steps

    median = statistics.median(step_seconds)
    p10, p90 = np.percentile(step_seconds, [10, 90])
    return {
        "tokens_per_s": per_step("tokens") / median,
        "padded_tokens_per_s": per_step("padded_tokens") / median,
        "samples_per_s": per_step("samples") / median,
        "step_time_s": median,
        "step_time_p10_s": float(p10),
        "step_time_p90_s": float(p90),
        "model_tflops_per_s": per_step("model_flops") / median / 1e12,
        "model_flops_per_step": per_step("model_flops"),
        "hardware_flops_per_step": per_step("hardware_flops"),
        "masked_positions_per_step": per_step("masked"),
        "step_times_s": step_seconds,
    }


def add_utilisation(point: dict[str, Any], peak: float) -> None:
    """MFU and HFU of ours and of the baseline against ``peak`` (the baseline runs on the same cores, all of them)."""
    for prefix in ("", "baseline_"):
        if point.get(prefix + "status") == "ok":
            seconds = point[prefix + "step_time_s"]
            point[prefix + "mfu"] = utilisation(point[prefix + "model_flops_per_step"], seconds, peak)
            point[prefix + "hfu"] = utilisation(point[prefix + "hardware_flops_per_step"], seconds, peak)


class Sweep:
    """The settings every point shares, and the launch of one point."""

    def __init__(self, args: argparse.Namespace, data_dir: Path, work_dir: Path):
        self.args, self.data_dir, self.work_dir = args, data_dir, work_dir
        self.baseline_failed = False

    def overrides(self, micro_batch_size: int, run_dir: Path, threads: int) -> list[str]:
        """The ``PretrainConfig`` of a point, for the trainer and the baseline alike."""
        args = self.args
        return [
            f"data_dir={self.data_dir}",
            f"run_dir={run_dir}",
            f"model={args.model}",
            f"seq_len={args.seq_len}",
            f"micro_batch_size={micro_batch_size}",
            "grad_accum=1",
            f"precision={args.precision}",
            f"zero_stage={args.zero_stage}",
            f"threads={threads}",
            f"seed={args.seed}",
            f"loader.workers={args.loader_workers}",
            "export=false",
            f"save_every={NEVER}",
            f"eval_every={NEVER}",
            f"log_every={NEVER}",
            f"max_steps={NEVER}",
            *args.set,
        ]

    def point(self, micro_batch_size: int) -> dict[str, Any]:
        args = self.args
        directory = self.work_dir / f"b{micro_batch_size}"
        directory.mkdir()
        weights = directory / "initial_weights.pt"
        with_baseline = args.baseline and not self.baseline_failed
        steps = ["--warmup-steps", str(args.warmup_steps), "--steps", str(args.steps)]
        worker = [
            "--out",
            str(directory),
            *steps,
            *(["--save-initial-weights", str(weights)] if with_baseline else []),
            *self.overrides(micro_batch_size, directory / "run", args.threads),
        ]
        if args.ranks == 1:
            command = [sys.executable, "-m", "benchmarks.step_worker", *worker]
        else:
            command = [
                str(BIN / "deepspeed"),
                "--num_gpus",
                str(args.ranks),
                "--master_port",
                str(free_port()),
                "--module",
                "benchmarks.step_worker",
                *worker,
            ]
        log = directory / "worker.log"
        code = _launch(command, log, args.point_timeout_s)
        ranks = _read_results([directory / f"rank{rank}.json" for rank in range(args.ranks)])
        point: dict[str, Any] = {
            "micro_batch_size": micro_batch_size,
            "global_batch_size": micro_batch_size * args.ranks,
        }
        if code != 0 or len(ranks) != args.ranks or any(r["status"] != "ok" for r in ranks):
            return {**point, **_failure(code, ranks, log)}
        point.update(status="ok", **summarise([rank["steps"] for rank in ranks]))
        point.update(
            peak_memory_bytes=max(rank["peak_memory_bytes"] for rank in ranks),
            peak_memory_bytes_all_ranks=sum(rank["peak_memory_bytes"] for rank in ranks),
            initial_loss=ranks[0]["initial_loss"],
            model_parameters=ranks[0]["model_parameters"],
            threads_per_rank=ranks[0]["threads"],
        )
        if with_baseline:
            point.update(self.baseline_point(micro_batch_size, directory, weights, point["tokens_per_s"]))
        return point

    def baseline_point(
        self, micro_batch_size: int, directory: Path, weights: Path, tokens_per_s: float
    ) -> dict[str, Any]:
        """The plain loop on the same global batch, all the trainer's cores, the same initial weights."""
        args = self.args
        out, log = directory / "baseline.json", directory / "baseline.log"
        command = [
            sys.executable,
            "-m",
            "benchmarks.baseline",
            "--out",
            str(out),
            "--global-batch",
            str(micro_batch_size * args.ranks),
            "--ranks",
            str(args.ranks),
            "--warmup-steps",
            str(args.warmup_steps),
            "--steps",
            str(args.steps),
            "--initial-weights",
            str(weights),
            *self.overrides(micro_batch_size, directory / "run", args.threads * args.ranks),
        ]
        code = _launch(command, log, args.point_timeout_s)
        results = _read_results([out])
        if code != 0 or not results or results[0]["status"] != "ok":
            self.baseline_failed = True  # a larger batch would fail the same way
            return {f"baseline_{key}": value for key, value in _failure(code, results, log).items()}
        result = results[0]
        summary = summarise([result["steps"]])
        fields = {f"baseline_{key}": value for key, value in summary.items()}
        fields.update(
            baseline_status="ok",
            baseline_peak_memory_bytes=result["peak_memory_bytes"],
            baseline_initial_loss=result["initial_loss"],
            baseline_threads=result["threads"],
            speedup=tokens_per_s / summary["tokens_per_s"],
        )
        return fields


# ---------------------------------------------------------------------------------------------
# Reports


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.2f} GiB"


def _step_ms(point: dict[str, Any], prefix: str = "") -> str:
    return (
        f"{point[prefix + 'step_time_s'] * 1e3:.0f} [{point[prefix + 'step_time_p10_s'] * 1e3:.0f}-"
        f"{point[prefix + 'step_time_p90_s'] * 1e3:.0f}]"
    )


def progress_line(point: dict[str, Any]) -> str:
    head = f"micro batch {point['micro_batch_size']:>4}"
    if point["status"] != "ok":
        return f"{head} | {point['status']}: {point['error']}"
    others = f" | other processes {_cores(point['other_processes_cores'])} cores"
    line = (
        f"{head} | {point['tokens_per_s']:>9,.0f} tokens/s ({point['padded_tokens_per_s']:,.0f} padded) | "
        f"{point['samples_per_s']:,.1f} samples/s | step {_step_ms(point)} ms | "
        f"{point['model_tflops_per_s']:.3f} TFLOP/s MFU {point['mfu']:.1%} HFU {point['hfu']:.1%} | "
        f"{_gib(point['peak_memory_bytes'])}"
    )
    if point.get("baseline_status") == "ok":
        line += f" | baseline {point['baseline_tokens_per_s']:,.0f} tokens/s, ours x{point['speedup']:.2f}"
    elif "baseline_status" in point:
        line += f" | baseline {point['baseline_status']}: {point['baseline_error']}"
    return line + others


def busy_machine(result: dict[str, Any]) -> bool:
    others = result["other_processes_cores"]
    return others is not None and others > BUSY_FRACTION * result["cores"]


def _cores(value: float | None) -> str:
    return "?" if value is None else f"{value:.2f}"


def markdown_report(result: dict[str, Any]) -> str:
    ok = [point for point in result["points"] if point["status"] == "ok"]
    lines = [
        f"# Throughput: {result['model']}, seq {result['seq_len']}, {result['precision']}, ZeRO-{result['zero_stage']}, "
        f"{result['ranks']} rank(s) on {result['device']} ({result['date']})",
        "",
        f"- Peak: {result['peak_flops'] / 1e12:.3f} TFLOP/s ({result['peak_source']}).",
        f"- Threads: {result['threads_per_rank']} per rank; the baseline {result['baseline_threads']}. "
        f"Steps: {result['warmup_steps']} warm-up + {result['timed_steps']} timed per point.",
        f"- Data: {result['data']}.",
        *(
            [f"- Trainer overrides: `{' '.join(result['trainer_overrides'])}`."]
            if result.get("trainer_overrides")
            else []
        ),
        f"- Other processes kept {_cores(result['other_processes_cores'])} of {result['cores']} cores busy on average "
        f"during the sweep (CPU time of the machine minus the benchmark's own).",
    ]
    if busy_machine(result):
        lines.append(
            "- **Busy machine**: these rates are lower and noisier than on an idle machine, most of all with "
            "several threads per process; the column 'others' shows the points it disturbed."
        )
    lines += [
        "",
        "| micro batch | tokens/s | padded tokens/s | samples/s | step ms median [p10-p90] | TFLOP/s | MFU | HFU "
        "| peak memory | baseline tokens/s | speedup | others (cores) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for point in result["points"]:
        if point["status"] != "ok":
            lines.append(
                f"| {point['micro_batch_size']} | {point['status']} | | | | | | | | | | "
                f"{_cores(point['other_processes_cores'])} |"
            )
            continue
        baseline = (
            f"{point['baseline_tokens_per_s']:,.0f} | x{point['speedup']:.2f}"
            if point.get("baseline_status") == "ok"
            else f"{point.get('baseline_status', '-')} | -"
        )
        lines.append(
            f"| {point['micro_batch_size']} | {point['tokens_per_s']:,.0f} | {point['padded_tokens_per_s']:,.0f} "
            f"| {point['samples_per_s']:,.1f} | {_step_ms(point)} | {point['model_tflops_per_s']:.3f} "
            f"| {point['mfu']:.1%} | {point['hfu']:.1%} | {_gib(point['peak_memory_bytes'])} | {baseline} "
            f"| {_cores(point['other_processes_cores'])} |"
        )
    with_baseline = [point for point in ok if point.get("baseline_status") == "ok"]
    if with_baseline:
        lines += [
            "",
            "Baseline: plain transformers `BertForPreTraining` loop (stock loss with its full-vocabulary MLM head, "
            "`torch.optim.AdamW`, autocast), same global batch and initial weights. Initial loss: the first batch at "
            "the initial weights, dropout off.",
            "",
            "| micro batch | baseline step ms median [p10-p90] | baseline MFU | baseline HFU | baseline peak memory "
            "| initial loss ours | initial loss baseline |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for point in with_baseline:
            lines.append(
                f"| {point['micro_batch_size']} | {_step_ms(point, 'baseline_')} | {point['baseline_mfu']:.1%} "
                f"| {point['baseline_hfu']:.1%} | {_gib(point['baseline_peak_memory_bytes'])} "
                f"| {point['initial_loss']:.4f} | {point['baseline_initial_loss']:.4f} |"
            )
    if result["loader_samples_per_s"] is not None:
        lines += [
            "",
            f"Input pipeline alone: {result['loader_samples_per_s']:,.0f} samples/s per rank "
            f"({result['loader_workers']} worker(s)) at micro batch {result['best_micro_batch_size']}, where "
            f"each trainer rank consumes {result['trainer_samples_per_s_per_rank']:,.1f} samples/s: "
            f"{result['loader_headroom']:.0f}x headroom.",
        ]
    lines += ["", f"Command: `{result['command']}`", ""]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [point for point in result["points"] if point["status"] == "ok"]
    figure, axes = plt.subplots(figsize=(7, 4.5))
    sizes = [point["micro_batch_size"] for point in ok]
    axes.plot(sizes, [point["tokens_per_s"] for point in ok], "o-", label="ours (DeepSpeed, sparse MLM head)")
    base = [point for point in ok if point.get("baseline_status") == "ok"]
    if base:
        axes.plot(
            [point["micro_batch_size"] for point in base],
            [point["baseline_tokens_per_s"] for point in base],
            "s--",
            label="plain transformers loop",
        )
    axes.set_xscale("log", base=2)
    axes.set_xticks(sizes, [str(size) for size in sizes])
    axes.set_ylim(bottom=0)
    axes.set_xlabel("micro batch size (per rank)")
    axes.set_ylabel("tokens/s (non-pad, all ranks)")
    axes.set_title(
        f"{result['model']} seq {result['seq_len']} {result['precision']} ZeRO-{result['zero_stage']} "
        f"x{result['ranks']} on {result['device']}",
        fontsize=10,
    )
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_reports(result: dict[str, Any], out_dir: Path) -> Path:
    """``<device>-<date>-<model>-<precision>-zero<k>-r<ranks>`` .json, .md and .png in ``out_dir``; returns the JSON path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = (
        f"{result['device']}-{result['date']}-{_slug(Path(result['model']).stem)}-{result['precision']}"
        f"-zero{result['zero_stage']}-r{result['ranks']}"
        + (f"-{_slug(result['tag'])}" if result.get("tag") else "")
    )
    json_path = out_dir / f"{stem}.json"
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / f"{stem}.md").write_text(markdown_report(result))
    if any(point["status"] == "ok" for point in result["points"]):
        plot(result, out_dir / f"{stem}.png")
    return json_path


# ---------------------------------------------------------------------------------------------
# The sweep


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.throughput", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--model",
        default="mini",
        help="model preset (configs/model) or BertConfig JSON (default %(default)s)",
    )
    parser.add_argument("--seq-len", type=int, default=128, help="default %(default)s")
    parser.add_argument(
        "--batch-sizes",
        help="comma-separated micro-batch sizes per rank (default: powers of two from 1 to --max-batch-size)",
    )
    parser.add_argument(
        "--max-batch-size", type=int, default=64, help="cap of the default sweep (default %(default)s)"
    )
    parser.add_argument(
        "--precision", choices=("fp32", "fp16", "bf16"), default="bf16", help="default %(default)s"
    )
    parser.add_argument("--zero-stage", type=int, choices=(0, 1, 2, 3), default=0, help="default %(default)s")
    parser.add_argument(
        "--ranks",
        type=int,
        default=1,
        help="processes on this machine: GPUs, or CPU ranks sharing the cores (default %(default)s)",
    )
    parser.add_argument("--threads", type=int, help="torch threads per rank (default: cores // ranks)")
    parser.add_argument("--data-dir", type=Path, help="a prepared data dir (default: generated shards)")
    parser.add_argument(
        "--vocab-size",
        type=int,
        default=BERT_VOCAB_SIZE,
        help="vocabulary of generated shards (default %(default)s)",
    )
    parser.add_argument(
        "--baseline", action="store_true", help="also run the plain transformers loop at each point"
    )
    parser.add_argument(
        "--warmup-steps", type=int, default=3, help="untimed steps per point (default %(default)s)"
    )
    parser.add_argument("--steps", type=int, default=10, help="timed steps per point (default %(default)s)")
    parser.add_argument(
        "--loader-workers",
        type=int,
        default=1,
        help="DataLoader workers per rank, loader.workers (default %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=1234, help="data order, masks and initial weights (default %(default)s)"
    )
    parser.add_argument(
        "--point-timeout-s",
        type=float,
        default=1800.0,
        help="a point running longer fails as 'timeout' (default %(default)s)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results"), help="report directory (default %(default)s)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a pretrain config override for our trainer, e.g. --set sparse_mlm_head=false (repeatable)",
    )
    parser.add_argument("--tag", default="", help="suffix of the report file names, to keep variants apart")
    args = parser.parse_args(argv)
    if args.batch_sizes:
        try:
            args.batch_sizes = [int(size) for size in args.batch_sizes.split(",")]
        except ValueError:
            parser.error(f"--batch-sizes {args.batch_sizes!r}: give comma-separated integers, e.g. 8,16,32")
    else:
        args.batch_sizes = [
            2**k for k in range(args.max_batch_size.bit_length()) if 2**k <= args.max_batch_size
        ]
    if (
        not args.batch_sizes
        or min(args.batch_sizes) < 1
        or args.ranks < 1
        or args.steps < 1
        or args.warmup_steps < 0
    ):
        parser.error("batch sizes, --ranks and --steps must be >= 1 and --warmup-steps >= 0")
    # Problems a user can cause are refused here, before minutes of probing and launching.
    try:
        resolve_model_config_path(args.model)
        if args.data_dir is not None:
            prepared_len = load_manifest(args.data_dir)["seq_len"]
            if prepared_len != args.seq_len:
                parser.error(
                    f"--data-dir {args.data_dir} was prepared for seq_len {prepared_len}; pass --seq-len {prepared_len}"
                )
        load_pretrain_config(None, ["data_dir=.", "run_dir=.", *args.set])  # a typo in --set fails here
    except (FileNotFoundError, ManifestError, ConfigError) as err:
        parser.error(str(err))
    problem = precision_problem(args.precision)  # the trainer's own test
    if problem:
        parser.error(problem)
    args.cores = len(os.sched_getaffinity(0))
    args.threads = args.threads or max(1, args.cores // args.ranks)
    return args


def probe_peak(args: argparse.Namespace) -> dict[str, Any]:
    """One measurement of the peak, with the cores other processes took meanwhile."""
    meter = OtherProcessesMeter()
    peak = peak_flops(args.precision, threads_per_rank=args.threads, ranks=args.ranks)
    return {
        "flops_per_s": peak.flops_per_s,
        "source": peak.source,
        "other_processes_cores": meter.cores(),
        "per_size_flops_per_s": {str(size): rate for size, rate in peak.per_size.items()},
    }


def run_sweep(args: argparse.Namespace) -> tuple[dict[str, Any], Path]:
    """Probe the peak, measure every point, the loader at the best one, probe again; write the reports.

    A probe that another process disturbed reads low and would inflate MFU, so the peak is probed
    before and after the sweep and the higher reading is the peak of the reports.
    """
    sweep_meter = OtherProcessesMeter()
    device = device_name(args.cores)
    probes = [probe_peak(args)]
    print(
        f"throughput: {args.model}, seq {args.seq_len}, {args.precision}, ZeRO-{args.zero_stage}, {args.ranks} rank(s) "
        f"x {args.threads} thread(s) on {device}; peak {probes[0]['flops_per_s'] / 1e12:.3f} TFLOP/s "
        f"({probes[0]['source']})",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench-") as work:
        work_dir = Path(work)
        if args.data_dir is None:
            data_dir = write_synthetic_data_dir(
                work_dir / "data", seq_len=args.seq_len, vocab_size=args.vocab_size
            )
            data = (
                f"generated shards (benchmarks.synthetic_shards): Zipf token ids over {args.vocab_size} ids, "
                f"90% of examples at seq_len, 10% short, NSP labels 50/50"
            )
        else:
            data_dir, data = args.data_dir.resolve(), str(args.data_dir)
        sweep = Sweep(args, data_dir, work_dir)
        points = []
        for micro_batch_size in args.batch_sizes:
            point_meter = OtherProcessesMeter()  # which points other processes disturbed
            points.append({**sweep.point(micro_batch_size), "other_processes_cores": point_meter.cores()})
            add_utilisation(points[-1], probes[0]["flops_per_s"])
            print(progress_line(points[-1]), flush=True)
            if points[-1]["status"] != "ok":
                break
        ok = [point for point in points if point["status"] == "ok"]
        best = max(ok, key=lambda point: point["tokens_per_s"]) if ok else None
        loader_rate = None
        if best is not None:
            cfg = load_pretrain_config(
                None, sweep.overrides(best["micro_batch_size"], work_dir / "loader", args.threads)
            )
            torch.set_num_threads(args.threads)
            loader_rate = loader_samples_per_s(cfg, args.ranks)
    if probes[0]["per_size_flops_per_s"]:  # measured, not a datasheet figure
        probes.append(probe_peak(args))
    peak = max(probes, key=lambda probe: probe["flops_per_s"])
    for point in points:
        add_utilisation(point, peak["flops_per_s"])
    cpu_model, cpu_isa = _cpu_info()
    trainer_rate = best["samples_per_s"] / args.ranks if best else None
    result = {
        "device": device,
        "device_description": torch.cuda.get_device_name() if torch.cuda.is_available() else cpu_model,
        "cpu_isa": cpu_isa,
        "cores": args.cores,
        "date": datetime.date.today().isoformat(),
        "model": args.model,
        "model_parameters": ok[0]["model_parameters"] if ok else None,
        "seq_len": args.seq_len,
        "precision": args.precision,
        "zero_stage": args.zero_stage,
        "ranks": args.ranks,
        "threads_per_rank": args.threads,
        "baseline_threads": args.threads * args.ranks if args.baseline else None,
        "warmup_steps": args.warmup_steps,
        "timed_steps": args.steps,
        "data": data,
        "peak_flops": peak["flops_per_s"],
        "peak_source": peak["source"]
        + (", the higher of the probes before and after the sweep" if len(probes) > 1 else ""),
        "gemm_probes": probes,
        "loader_samples_per_s": loader_rate,
        "loader_workers": args.loader_workers,
        "best_micro_batch_size": best["micro_batch_size"] if best else None,
        "trainer_samples_per_s_per_rank": trainer_rate,
        "loader_headroom": loader_rate / trainer_rate if best else None,
        "other_processes_cores": sweep_meter.cores(),
        "versions": {
            "torch": torch.__version__,
            "deepspeed": _version("deepspeed"),
            "transformers": _version("transformers"),
            "python": platform.python_version(),
        },
        "git_commit": _git_commit(),
        "command": "python -m benchmarks.throughput " + " ".join(args.argv),
        "trainer_overrides": args.set,
        "tag": args.tag,
        "points": points,
    }
    json_path = write_reports(result, args.out)
    if peak is not probes[0]:
        print(
            f"peak re-probed after the sweep: {peak['flops_per_s'] / 1e12:.3f} TFLOP/s; the reports' MFU and HFU "
            f"are against it (the lines above, against the first probe)"
        )
    if best is not None:
        print(
            f"loader alone: {loader_rate:,.0f} samples/s per rank at micro batch {best['micro_batch_size']}, "
            f"trainer consumes {trainer_rate:,.1f} per rank ({result['loader_headroom']:.0f}x headroom)"
        )
    print(f"wrote {json_path} (+ .md, .png)")
    return result, json_path


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    args.argv = argv
    result, _ = run_sweep(args)
    if not any(point["status"] == "ok" for point in result["points"]):
        raise SystemExit(f"error: no point completed: {result['points'][0]['error']}")


if __name__ == "__main__":
    main()

"""The sweep itself: the peak, one fresh launch per micro-batch size (ours, then the baseline), the
loader alone at the best point, the peak again; then the reports.

Per point, with T the median step time over the timed steps (warm-up excluded; the median, not
the mean, so that a step stalled by another process on the machine does not move it) and the
per-step counts averaged over the timed steps and summed over ranks:

    tokens_per_s         = real (non-pad) tokens / T
    padded_tokens_per_s  = B * L * ranks / T          (L: the batch's padded length)
    samples_per_s        = B * ranks / T
    model_tflops_per_s   = model FLOPs / T
    mfu = model FLOPs / T / (peak per device x devices)      hfu: the same with hardware FLOPs

A device is one GPU, or on a CPU the cores one rank uses. So MFU is per GPU (the FLOPs of all
ranks over the peaks of all GPUs), and the baseline, which runs in one process, is measured
against what it ran on: one GPU at the trainer's per-GPU micro batch, or on a CPU all the cores
the trainer's ranks shared, at the trainer's global batch (CPU ranks share one machine, so the
fair comparison there is the same work on the same cores).
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.contention import OtherProcessesMeter
from benchmarks.gemm_probe import peak_flops
from benchmarks.launching import failure, launch, module_command, read_results
from benchmarks.loader_bench import loader_samples_per_s
from benchmarks.machine import cpu_info, device_description, device_name, git_commit, versions
from benchmarks.reports import progress_line, write_reports
from benchmarks.synthetic_shards import write_synthetic_data_dir
from pretrain.config import load_pretrain_config
from pretrain.flops import utilisation

NEVER = (
    10**9
)  # save_every / eval_every / log_every / max_steps of a run that must never save, evaluate or decay


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


def baseline_devices(ranks: int, on_gpu: bool) -> int:
    """What the baseline runs on, in devices: one GPU; on a CPU all the cores of the trainer's ranks."""
    return 1 if on_gpu else ranks


def add_utilisation(point: dict[str, Any], peak_per_device: float, ranks: int, on_gpu: bool) -> None:
    """MFU and HFU of ours (over ``ranks`` devices) and of the baseline (over what it ran on), and the
    speedup per device: ours per GPU against the baseline's one GPU; on a CPU, the same cores."""
    devices = {"": ranks, "baseline_": baseline_devices(ranks, on_gpu)}
    for prefix, count in devices.items():
        if point.get(prefix + "status") == "ok":
            seconds, peak = point[prefix + "step_time_s"], peak_per_device * count
            point[prefix + "mfu"] = utilisation(point[prefix + "model_flops_per_step"], seconds, peak)
            point[prefix + "hfu"] = utilisation(point[prefix + "hardware_flops_per_step"], seconds, peak)
            point[prefix + "tokens_per_s_per_device"] = point[prefix + "tokens_per_s"] / count
    if point.get("status") == "ok" and point.get("baseline_status") == "ok":
        point["speedup"] = point["tokens_per_s_per_device"] / point["baseline_tokens_per_s_per_device"]


class Sweep:
    """The settings every point shares, and the launch of one point."""

    def __init__(self, args: argparse.Namespace, data_dir: Path, work_dir: Path):
        self.args, self.data_dir, self.work_dir = args, data_dir, work_dir
        self.baseline_failed = False
        self.on_gpu = torch.cuda.is_available()

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
        worker = [
            "--out",
            str(directory),
            "--warmup-steps",
            str(args.warmup_steps),
            "--steps",
            str(args.steps),
            *(["--save-initial-weights", str(weights)] if with_baseline else []),
            *self.overrides(micro_batch_size, directory / "run", args.threads),
        ]
        log = directory / "worker.log"
        code = launch(module_command("benchmarks.step_worker", worker, args.ranks), log, args.point_timeout_s)
        ranks = read_results([directory / f"rank{rank}.json" for rank in range(args.ranks)])
        point: dict[str, Any] = {
            "micro_batch_size": micro_batch_size,
            "global_batch_size": micro_batch_size * args.ranks,
        }
        if code != 0 or len(ranks) != args.ranks or any(r["status"] != "ok" for r in ranks):
            return {**point, **failure(code, ranks, log)}
        point.update(status="ok", **summarise([rank["steps"] for rank in ranks]))
        point.update(
            peak_memory_bytes=max(rank["peak_memory_bytes"] for rank in ranks),
            peak_memory_bytes_all_ranks=sum(rank["peak_memory_bytes"] for rank in ranks),
            initial_loss=ranks[0]["initial_loss"],
            model_parameters=ranks[0]["model_parameters"],
            threads_per_rank=ranks[0]["threads"],
        )
        if with_baseline:
            point.update(self.baseline_point(micro_batch_size, directory, weights))
        return point

    def baseline_point(self, micro_batch_size: int, directory: Path, weights: Path) -> dict[str, Any]:
        """The plain loop from the same initial weights: on one GPU at the per-GPU micro batch, or on a
        CPU on all the trainer's cores at its global batch (``baseline_devices``)."""
        args = self.args
        devices = baseline_devices(args.ranks, self.on_gpu)
        out, log = directory / "baseline.json", directory / "baseline.log"
        command = [
            sys.executable,
            "-m",
            "benchmarks.baseline",
            "--out",
            str(out),
            "--global-batch",
            str(micro_batch_size * devices),
            "--ranks",
            str(args.ranks),
            "--warmup-steps",
            str(args.warmup_steps),
            "--steps",
            str(args.steps),
            "--initial-weights",
            str(weights),
            *self.overrides(micro_batch_size, directory / "run", args.threads * devices),
        ]
        code = launch(command, log, args.point_timeout_s)
        results = read_results([out])
        if code != 0 or not results or results[0]["status"] != "ok":
            self.baseline_failed = True  # a larger batch would fail the same way
            return {f"baseline_{key}": value for key, value in failure(code, results, log).items()}
        result = results[0]
        fields = {f"baseline_{key}": value for key, value in summarise([result["steps"]]).items()}
        fields.update(
            baseline_status="ok",
            baseline_peak_memory_bytes=result["peak_memory_bytes"],
            baseline_initial_loss=result["initial_loss"],
            baseline_threads=result["threads"],
            baseline_devices=devices,
        )
        return fields


def probe_peak(args: argparse.Namespace) -> dict[str, Any]:
    """One measurement of the peak per device, with the cores other processes took meanwhile."""
    meter = OtherProcessesMeter()
    peak = peak_flops(args.precision, threads_per_rank=args.threads, tf32=args.tf32)
    return {
        "flops_per_s": peak.flops_per_s,
        "source": peak.source,
        "other_processes_cores": meter.cores(),
        "per_size_flops_per_s": {str(size): rate for size, rate in peak.per_size.items()},
    }


def run_sweep(args: argparse.Namespace) -> tuple[dict[str, Any], Path]:
    """Probe the peak, measure every point, the loader at the best one, probe again; write the reports.

    A probe that another process disturbed reads low and would inflate MFU, so on a CPU the peak is
    probed before and after the sweep and the higher reading is the peak of the reports.
    """
    sweep_meter = OtherProcessesMeter()
    device = device_name(args.cores)
    on_gpu = torch.cuda.is_available()
    probes = [probe_peak(args)]
    print(
        f"throughput: {args.model}, seq {args.seq_len}, {args.precision}, ZeRO-{args.zero_stage}, {args.ranks} rank(s) "
        f"x {args.threads} thread(s) on {device}; peak per device {probes[0]['flops_per_s'] / 1e12:.3f} TFLOP/s "
        f"({probes[0]['source']})",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench-") as work:
        work_dir = Path(work)
        data_dir, data = _sweep_data(args, work_dir)
        sweep = Sweep(args, data_dir, work_dir)
        points = _measure_points(args, sweep, probes[0]["flops_per_s"], on_gpu)
        ok = [point for point in points if point["status"] == "ok"]
        best = max(ok, key=lambda point: point["tokens_per_s"]) if ok else None
        loader_rate = _loader_rate(args, sweep, best, work_dir) if best is not None else None
    if probes[0]["per_size_flops_per_s"]:  # measured, not a datasheet figure
        probes.append(probe_peak(args))
    peak = max(probes, key=lambda probe: probe["flops_per_s"])
    for point in points:
        add_utilisation(point, peak["flops_per_s"], args.ranks, on_gpu)
    trainer_rate = best["samples_per_s"] / args.ranks if best else None
    result = {
        **_setup_fields(args, device, on_gpu, data),
        "model_parameters": ok[0]["model_parameters"] if ok else None,
        "peak_flops_per_device": peak["flops_per_s"],
        "peak_flops": peak["flops_per_s"] * args.ranks,
        "peak_source": peak["source"]
        + (", the higher of the probes before and after the sweep" if len(probes) > 1 else ""),
        "gemm_probes": probes,
        "loader_samples_per_s": loader_rate,
        "loader_workers": args.loader_workers,
        "best_micro_batch_size": best["micro_batch_size"] if best else None,
        "trainer_samples_per_s_per_rank": trainer_rate,
        "loader_headroom": loader_rate / trainer_rate if best else None,
        "other_processes_cores": sweep_meter.cores(),
        "versions": versions(),
        "git_commit": git_commit(),
        "command": "python -m benchmarks.throughput " + " ".join(args.argv),
        "trainer_overrides": args.set,
        "tag": args.tag,
        "points": points,
    }
    json_path = write_reports(result, args.out)
    _print_summary(result, peak, probes[0], best, json_path)
    return result, json_path


def _sweep_data(args: argparse.Namespace, work_dir: Path) -> tuple[Path, str]:
    """The data dir to measure on (--data-dir, or generated shards) and its description."""
    if args.data_dir is not None:
        return args.data_dir.resolve(), str(args.data_dir)
    data_dir = write_synthetic_data_dir(work_dir / "data", seq_len=args.seq_len, vocab_size=args.vocab_size)
    return data_dir, (
        f"generated shards (benchmarks.synthetic_shards): Zipf token ids over {args.vocab_size} ids, "
        f"90% of examples at seq_len, 10% short, NSP labels 50/50"
    )


def _measure_points(
    args: argparse.Namespace, sweep: Sweep, peak: float, on_gpu: bool
) -> list[dict[str, Any]]:
    """Each micro-batch size in a fresh launch, in order; the first that fails ends the sweep."""
    points = []
    for micro_batch_size in args.batch_sizes:
        point_meter = OtherProcessesMeter()  # which points other processes disturbed
        points.append({**sweep.point(micro_batch_size), "other_processes_cores": point_meter.cores()})
        add_utilisation(points[-1], peak, args.ranks, on_gpu)
        print(progress_line(points[-1]), flush=True)
        if points[-1]["status"] != "ok":
            break
    return points


def _loader_rate(args: argparse.Namespace, sweep: Sweep, best: dict[str, Any], work_dir: Path) -> float:
    """Samples/s per rank of the loader alone, at the best point's micro batch."""
    cfg = load_pretrain_config(
        None, sweep.overrides(best["micro_batch_size"], work_dir / "loader", args.threads)
    )
    torch.set_num_threads(args.threads)
    return loader_samples_per_s(cfg, args.ranks)


def _setup_fields(args: argparse.Namespace, device: str, on_gpu: bool, data: str) -> dict[str, Any]:
    """What was measured, where and how: the report's fields that do not depend on the outcome."""
    cpu_model, cpu_isa = cpu_info()
    return {
        "device": device,
        "device_description": device_description(),
        "device_type": "cuda" if on_gpu else "cpu",
        "cpu_model": cpu_model,
        "cpu_isa": cpu_isa,
        "cores": args.cores,
        "date": datetime.date.today().isoformat(),
        "model": args.model,
        "seq_len": args.seq_len,
        "precision": args.precision,
        "zero_stage": args.zero_stage,
        "ranks": args.ranks,
        "threads_per_rank": args.threads,
        "baseline_devices": baseline_devices(args.ranks, on_gpu) if args.baseline else None,
        "baseline_threads": args.threads * baseline_devices(args.ranks, on_gpu) if args.baseline else None,
        "warmup_steps": args.warmup_steps,
        "timed_steps": args.steps,
        "data": data,
    }


def _print_summary(result: dict[str, Any], peak: dict, first_probe: dict, best, json_path: Path) -> None:
    if peak is not first_probe:
        print(
            f"peak re-probed after the sweep: {peak['flops_per_s'] / 1e12:.3f} TFLOP/s per device; the reports' "
            f"MFU and HFU are against it (the lines above, against the first probe)"
        )
    if best is not None:
        print(
            f"loader alone: {result['loader_samples_per_s']:,.0f} samples/s per rank at micro batch "
            f"{best['micro_batch_size']}, trainer consumes {result['trainer_samples_per_s_per_rank']:,.1f} per rank "
            f"({result['loader_headroom']:.0f}x headroom)"
        )
    print(f"wrote {json_path} (+ .md, .png)")

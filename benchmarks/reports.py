"""The sweep's reports: the progress line per point, the Markdown table, the tokens/s plot, and the
``<device>-<date>-<model>-<precision>-zero<k>-r<ranks>[-tag]`` .json/.md/.png files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.machine import slug

# Fraction of the cores that other processes may use during a sweep before the report calls the machine busy.
BUSY_FRACTION = 0.1


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
        f"- Peak per device: {result['peak_flops_per_device'] / 1e12:.3f} TFLOP/s ({result['peak_source']}); "
        f"MFU and HFU are per device (all ranks' FLOPs over all devices' peaks).",
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
            "`torch.optim.AdamW`, autocast) from the same initial weights, in one process: "
            + (
                "on one GPU at the per-GPU micro batch; speedup = our tokens/s per GPU / its tokens/s. "
                if result.get("device_type") == "cuda"
                else "on all the cores the trainer's ranks shared, at the trainer's global batch. "
            )
            + "Initial loss: the first batch at the initial weights, dropout off.",
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
        f"{result['device']}-{result['date']}-{slug(Path(result['model']).stem)}-{result['precision']}"
        f"-zero{result['zero_stage']}-r{result['ranks']}"
        + (f"-{slug(result['tag'])}" if result.get("tag") else "")
    )
    json_path = out_dir / f"{stem}.json"
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / f"{stem}.md").write_text(markdown_report(result))
    if any(point["status"] == "ok" for point in result["points"]):
        plot(result, out_dir / f"{stem}.png")
    return json_path

"""Time to quality: this project's trainer beside the Hugging Face Trainer, scored by one referee.

    python -m benchmarks.time_to_quality --data DIR --model tiny --steps 600 --seeds 1,2,3 \\
        [--batch 64] [--ranks 2] [--lr 2e-3] [--checkpoints 6] [--precision bf16] \\
        [--referee-samples 2048] [--work DIR] [--out benchmarks/results]

Both sides train the same model preset from scratch on the same MLM data dir (the same token
sequences), at the same global batch, with AdamW (betas 0.9/0.999, eps 1e-6, weight decay 0.01),
10% linear warm-up then linear decay, clipping at 1.0: this project as ``--ranks`` ranks of
``batch / ranks`` under ZeRO-1 (ZeRO-0 on one rank), the Trainer (``benchmarks.hf_trainer_mlm``,
``run_mlm.py``'s recipe) as one process on all the cores. Each saves ``--checkpoints`` evenly spaced
checkpoints.

**The referee** loads every checkpoint of both sides as ``BertForMaskedLM`` in fp32 and scores the
first ``--referee-samples`` sequences of the valid split under one fixed masking (the same masked
positions and replacements for every model): its loss per masked token. A checkpoint's time is
when its files were written, counted from the side's launch: start-up, data loading and saving
are paid on both sides.

Reported (``OUT/<device>-<date>-time-to-quality-<model>.{json,md,png}``): per side, the launch's
wall seconds, training tokens/s, the final referee loss (mean ± sample std over seeds); the time
this project takes to reach the Trainer's final referee loss, per seed (linear between checkpoints)
and as a fraction of the Trainer's wall time; referee loss against wall time as a plot. Every
finished (side, seed) is kept in ``--work`` and skipped when the command is run again, so a long
measurement can run in pieces; with ``--piece-s S`` a Trainer run longer than S seconds is itself
cut into launches of S seconds (each ends with a checkpoint; the next resumes from it), its time
the sum of its launches, their start-ups included.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import torch

from benchmarks.baseline import stock_labels
from benchmarks.hf_trainer_mlm import PIECE_DONE, PRECISIONS, mlm_only_layout
from benchmarks.launching import last_line, launch, module_command
from benchmarks.machine import device_description, device_name, git_commit, versions
from data_prep.manifest import shard_specs
from pretrain.data import TokenLayout, eval_batches

SIDES = ("ours", "hf-trainer")
REFEREE_SEED = 20231  # the referee's one masking of the valid split, whatever the runs' seeds


def _written_at(directory: Path) -> float:
    """When a checkpoint was complete: the newest write time of its files."""
    return max(path.stat().st_mtime for path in directory.rglob("*") if path.is_file())


def _save_every(args: argparse.Namespace) -> int:
    return max(1, args.steps // args.checkpoints)


def _timed_launch(command: list[str], log: Path, timeout_s: float) -> tuple[int, float, float]:
    """Run one launch of a side (output in ``log``): its exit status, start and end wall-clock times."""
    started = time.time()
    code = launch(command, log, timeout_s)
    return code, started, time.time()


def _our_command(args: argparse.Namespace, seed: int, run_dir: Path, seq_len: int) -> list[str]:
    save_every = _save_every(args)
    overrides = [
        f"data_dir={args.data}",
        f"run_dir={run_dir}",
        f"model={args.model}",
        f"seq_len={seq_len}",
        f"micro_batch_size={args.batch // args.ranks}",
        "grad_accum=1",
        f"max_steps={args.steps}",
        f"precision={args.precision}",
        f"zero_stage={1 if args.ranks > 1 else 0}",
        f"optimizer.lr={args.lr}",
        "optimizer.betas=[0.9, 0.999]",
        "optimizer.eps=1e-6",
        "optimizer.weight_decay=0.01",
        f"schedule.warmup_steps={round(0.1 * args.steps)}",
        "schedule.decay=linear",
        "grad_clip=1.0",
        f"seed={seed}",
        f"save_every={save_every}",
        f"keep_last={args.checkpoints + 1}",
        f"eval_every={args.steps}",
        "eval_samples=64",  # its own end-of-run evaluation: kept small, the referee scores instead
        f"log_every={save_every}",
        "export=false",
        "report_to=[]",
    ]
    return module_command("pretrain", overrides, args.ranks)


def run_ours(args: argparse.Namespace, seed: int, work: Path, seq_len: int) -> dict[str, Any]:
    """Launch this project's trainer; its checkpoints exported to HF models for the referee."""
    from pretrain.checkpoint import complete_tags
    from pretrain.export import export_checkpoint

    run_dir = work / "run"
    command = _our_command(args, seed, run_dir, seq_len)
    code, started, finished = _timed_launch(command, work / "launch.log", args.timeout_s)
    if code != 0:
        raise RuntimeError(f"this project's run (seed {seed}) failed: {last_line(work / 'launch.log')}")
    summary = json.loads((run_dir / "summary.json").read_text())
    checkpoints = []
    for tag in complete_tags(run_dir / "checkpoints"):
        at = _written_at(run_dir / "checkpoints" / tag) - started
        model_dir = export_checkpoint(run_dir, tag, out=work / "models" / tag)
        checkpoints.append({"step": int(tag.removeprefix("step")), "at_s": at, "model": str(model_dir)})
    return {
        "wall_s": finished - started,
        "tokens_per_s": summary["tokens"] / summary["wall_time_s"],
        "checkpoints": checkpoints,
    }


def run_hf(args: argparse.Namespace, seed: int, work: Path) -> dict[str, Any] | None:
    """Launch the Hugging Face Trainer's MLM recipe in one process on all cores; None when this launch
    was a piece (``--piece-s``) and the run goes on at the next one."""
    out = work / "run"
    command = [
        sys.executable,
        "-m",
        "benchmarks.hf_trainer_mlm",
        f"--data={args.data}",
        f"--out={out}",
        f"--model={args.model}",
        f"--steps={args.steps}",
        f"--batch={args.batch}",
        f"--lr={args.lr}",
        f"--seed={seed}",
        f"--save-steps={_save_every(args)}",
        f"--precision={args.precision}",
    ]
    if args.piece_s:
        command.append(f"--stop-after-s={args.piece_s}")
    launches_path = work / "launches.json"
    pieces = json.loads(launches_path.read_text()) if launches_path.is_file() else []
    log = work / f"launch-{len(pieces) + 1}.log"
    code, started, finished = _timed_launch(command, log, args.timeout_s)
    pieces.append({"started": started, "finished": finished})
    # on record even when it failed: its time was spent, and its checkpoints are resumed from
    launches_path.write_text(json.dumps(pieces, indent=2) + "\n")
    if code not in (0, PIECE_DONE):
        raise RuntimeError(f"the HF Trainer run (seed {seed}) failed: {last_line(log)}")
    if code == PIECE_DONE:
        print(f"time_to_quality: hf-trainer, seed {seed}: {last_line(log)}", flush=True)
        return None
    result = json.loads((out / "result.json").read_text())
    checkpoints = sorted(
        (
            {
                "step": int(path.name.split("-")[1]),
                "at_s": _run_time(pieces, _written_at(path)),
                "model": str(path),
            }
            for path in out.glob("checkpoint-*")
        ),
        key=lambda row: row["step"],
    )
    return {
        "wall_s": sum(piece["finished"] - piece["started"] for piece in pieces),
        "tokens_per_s": result["tokens"] / result["train_runtime_s"],
        "pieces": len(pieces),
        "checkpoints": checkpoints,
    }


def _run_time(pieces: list[dict[str, float]], moment: float) -> float:
    """Seconds of the run's own time at wall-clock ``moment``: the launches before its one in full,
    then its own launch up to it (the gaps between launches do not count; their start-ups do)."""
    elapsed = 0.0
    for piece in pieces:
        if moment <= piece["finished"]:
            return elapsed + max(0.0, moment - piece["started"])
        elapsed += piece["finished"] - piece["started"]
    return elapsed


class Referee:
    """One fixed masking of the valid split; the MLM loss per masked token of any HF BERT."""

    def __init__(self, data_dir: str, manifest: dict[str, Any], layout: TokenLayout, samples: int):
        specs = shard_specs(data_dir, manifest, "valid")
        if not specs:
            raise SystemExit(f"error: {data_dir} has no valid split; the referee scores on it")
        self.batches = eval_batches(
            specs,
            layout,
            rank=0,
            world_size=1,
            seed=REFEREE_SEED,
            micro_batch_size=64,
            mlm_probability=0.15,
            max_samples=samples,
        )

    @torch.no_grad()
    def loss(self, model_dir: str) -> float:
        from transformers import BertForMaskedLM

        model = BertForMaskedLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
        total, count = 0.0, 0
        for batch in self.batches:
            if not batch["weight"]:
                continue
            labels = stock_labels(batch)
            logits = model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                token_type_ids=batch["token_type_ids"],
            ).logits
            total += float(
                torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum")
            )
            count += int((labels != -100).sum())
        return total / count


def time_to_reach(points: list[dict[str, Any]], target: float) -> float | None:
    """When the referee loss first reaches ``target``, linear between checkpoints (from 0 s at the
    launch, where no checkpoint is assumed to reach it); None if it never does."""
    previous = None
    for point in points:
        if point["referee_loss"] <= target:
            if previous is None:
                return point["at_s"]
            span = previous["referee_loss"] - point["referee_loss"]
            share = (previous["referee_loss"] - target) / span if span > 0 else 1.0
            return previous["at_s"] + share * (point["at_s"] - previous["at_s"])
        previous = point
    return None


def mean_curve(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The seeds' checkpoints averaged step by step (time and referee loss), at the steps every run
    has: "mean of the seeds" as a curve, which reaches a target even where one seed alone does not."""
    by_step = [{point["step"]: point for point in run["checkpoints"]} for run in runs]
    steps = set.intersection(*(set(points) for points in by_step))
    return [
        {
            "step": step,
            "at_s": statistics.fmean(points[step]["at_s"] for points in by_step),
            "referee_loss": statistics.fmean(points[step]["referee_loss"] for points in by_step),
        }
        for step in sorted(steps)
    ]


def measure(
    args: argparse.Namespace, side: str, seed: int, referee: Referee, seq_len: int
) -> dict[str, Any] | None:
    """One (side, seed), from its saved result when it finished before; None while a Trainer run in
    pieces is unfinished."""
    work = Path(args.work) / f"{args.model}-{args.steps}" / f"{side}-seed{seed}"
    saved = work / "measured.json"
    if saved.is_file():
        print(f"time_to_quality: {side}, seed {seed}: measured earlier, kept ({saved})", flush=True)
        return json.loads(saved.read_text())
    if (work / "launches.json").is_file():  # a Trainer run in pieces: each launch's time is on record
        print(f"time_to_quality: {side}, seed {seed}: resuming the run in pieces", flush=True)
    else:
        if work.exists():  # an interrupted measurement: start it over (a resumed run's times would be wrong)
            shutil.rmtree(work)
        work.mkdir(parents=True)
        print(f"time_to_quality: {side}, seed {seed} ...", flush=True)
    run = run_ours(args, seed, work, seq_len) if side == "ours" else run_hf(args, seed, work)
    if run is None:
        return None
    for point in run["checkpoints"]:
        point["referee_loss"] = referee.loss(point["model"])
    run.update(side=side, seed=seed, final_referee_loss=run["checkpoints"][-1]["referee_loss"])
    saved.write_text(json.dumps(run, indent=2) + "\n")  # last: a partial measurement is never kept
    print(
        f"time_to_quality: {side}, seed {seed}: {run['wall_s']:.0f} s, {run['tokens_per_s']:,.0f} tokens/s, "
        f"referee loss {run['final_referee_loss']:.4f}",
        flush=True,
    )
    return run


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per side the means and spreads; our time to the Trainer's final referee loss (its mean over
    seeds), per seed and on our seed-mean curve, and as a fraction of the Trainer's mean wall time."""
    sides: dict[str, Any] = {}
    for side in SIDES:
        mine = [run for run in runs if run["side"] == side]
        if not mine:
            continue
        wall, wall_std = _mean_std([run["wall_s"] for run in mine])
        speed, speed_std = _mean_std([run["tokens_per_s"] for run in mine])
        loss, loss_std = _mean_std([run["final_referee_loss"] for run in mine])
        sides[side] = {
            "seeds": [run["seed"] for run in mine],
            "wall_s": [wall, wall_std],
            "tokens_per_s": [speed, speed_std],
            "final_referee_loss": [loss, loss_std],
        }
    if "ours" in sides and "hf-trainer" in sides:
        target = sides["hf-trainer"]["final_referee_loss"][0]
        ours = [run for run in runs if run["side"] == "ours"]
        reached = [time_to_reach(run["checkpoints"], target) for run in ours]
        sides["ours"]["time_to_hf_final_loss_s"] = reached
        hf_wall = sides["hf-trainer"]["wall_s"][0]
        if all(value is not None for value in reached):
            sides["ours"]["time_to_hf_final_loss_fraction"] = statistics.fmean(reached) / hf_wall
        on_mean = time_to_reach(mean_curve(ours), target)
        sides["ours"]["mean_curve_time_to_hf_final_loss_s"] = on_mean
        if on_mean is not None:
            sides["ours"]["mean_curve_time_to_hf_final_loss_fraction"] = on_mean / hf_wall
    return sides


def markdown(result: dict[str, Any]) -> str:
    setup = result["setup"]
    lines = [
        f"# Time to quality: {setup['model']}, {setup['steps']} steps, this project vs the Hugging Face Trainer",
        "",
        f"{result['device']}; commit {result['commit']}; {result['date']}. Data `{setup['data']}`, global batch "
        f"{setup['batch']} x {setup['seq_len']}, AdamW lr {setup['lr']}, 10% warm-up, linear decay, {setup['precision']}; "
        f"this project on {setup['ranks']} rank(s), the Trainer in one process. Referee: BertForMaskedLM fp32, "
        f"MLM loss per masked token on {setup['referee_samples']} valid sequences, one fixed masking.",
        "",
        "| side | seeds | wall s | tokens/s | final referee loss | time to the Trainer's final loss |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for side, row in result["sides"].items():
        reach = "-"
        if side == "ours" and "time_to_hf_final_loss_s" in row:
            times = ", ".join(
                "not reached" if t is None else f"{t:.0f} s" for t in row["time_to_hf_final_loss_s"]
            )
            fraction = row.get("time_to_hf_final_loss_fraction")
            reach = times + (f" ({fraction:.2f} of the Trainer's wall time)" if fraction is not None else "")
            on_mean = row.get("mean_curve_time_to_hf_final_loss_s")
            reach += "; the seed-mean curve: " + (
                "not reached"
                if on_mean is None
                else f"{on_mean:.0f} s ({row['mean_curve_time_to_hf_final_loss_fraction']:.2f} of the Trainer's wall time)"
            )
        lines.append(
            f"| {side} | {len(row['seeds'])} | {row['wall_s'][0]:.0f} ± {row['wall_s'][1]:.0f} | "
            f"{row['tokens_per_s'][0]:,.0f} ± {row['tokens_per_s'][1]:,.0f} | "
            f"{row['final_referee_loss'][0]:.4f} ± {row['final_referee_loss'][1]:.4f} | {reach} |"
        )
    lines += ["", "Every checkpoint (seconds from launch, referee loss):", ""]
    for run in result["runs"]:
        points = ", ".join(
            f"{p['step']}: {p['at_s']:.0f} s {p['referee_loss']:.4f}" for p in run["checkpoints"]
        )
        lines.append(f"- {run['side']} seed {run['seed']}: {points}")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    colors = {"ours": "tab:blue", "hf-trainer": "tab:orange"}
    for run in result["runs"]:
        points = run["checkpoints"]
        axes.plot(
            [p["at_s"] for p in points],
            [p["referee_loss"] for p in points],
            marker="o",
            color=colors[run["side"]],
            alpha=0.8,
            label=f"{run['side']} seed {run['seed']}",
        )
    axes.set_xlabel("wall seconds from launch")
    axes.set_ylabel("referee MLM loss (valid, fixed masking)")
    axes.set_title(
        f"{result['setup']['model']}, {result['setup']['steps']} steps: referee loss against wall time"
    )
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.time_to_quality", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--data", required=True, help="an mlm data dir (data_prep objective=mlm) with a valid split"
    )
    parser.add_argument("--model", default="tiny", help="a preset of configs/model")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--seeds", default="1", help="comma-separated, e.g. 1,2,3")
    parser.add_argument("--batch", type=int, default=64, help="global batch (sequences per optimizer step)")
    parser.add_argument(
        "--ranks", type=int, default=2, help="this project's ranks (the batch is split across them)"
    )
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--checkpoints", type=int, default=6, help="evenly spaced checkpoints per run")
    parser.add_argument("--precision", choices=PRECISIONS, default="bf16")
    parser.add_argument("--referee-samples", type=int, default=2048)
    parser.add_argument("--sides", default=",".join(SIDES), help="which sides to run: ours, hf-trainer")
    parser.add_argument("--timeout-s", type=float, default=3600, help="bound on one launch")
    parser.add_argument(
        "--piece-s",
        type=float,
        help="the Trainer side stops after so many seconds with a checkpoint and resumes at the next "
        "run of the command; its wall time is the sum of its launches (default: one launch)",
    )
    parser.add_argument(
        "--work", default="runs/time_to_quality", help="runs, checkpoints and per-run results"
    )
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    if args.batch % args.ranks:
        parser.error(f"--batch {args.batch} must divide among --ranks {args.ranks}")
    sides = [side.strip() for side in args.sides.split(",")]
    if unknown := set(sides) - set(SIDES):
        parser.error(f"unknown --sides {sorted(unknown)}; use {', '.join(SIDES)}")
    seeds = [int(seed) for seed in args.seeds.split(",")]

    manifest, layout = mlm_only_layout(args.data)
    referee = Referee(args.data, manifest, layout, args.referee_samples)
    measured = [measure(args, side, seed, referee, layout.seq_len) for seed in seeds for side in sides]
    runs = [run for run in measured if run is not None]
    if len(runs) < len(measured):
        print(
            f"time_to_quality: {len(measured) - len(runs)} Trainer run(s) stopped after a --piece-s piece; "
            "run the same command again to go on (no report until every run is complete)"
        )
        return
    result = {
        "setup": {
            "data": args.data,
            "model": args.model,
            "steps": args.steps,
            "batch": args.batch,
            "seq_len": layout.seq_len,
            "ranks": args.ranks,
            "lr": args.lr,
            "precision": args.precision,
            "referee_samples": args.referee_samples,
        },
        "device": device_description(),
        "commit": git_commit(),
        "date": date.today().isoformat(),
        "versions": versions(),
        "sides": summarize(runs),
        "runs": runs,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = (
        out
        / f"{device_name(torch.get_num_threads())}-{result['date']}-time-to-quality-{args.model}-{args.steps}"
    )
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(result))
    plot(result, stem.with_suffix(".png"))
    print(markdown(result))
    print(f"wrote {stem}.{{json,md,png}}")


if __name__ == "__main__":
    main()

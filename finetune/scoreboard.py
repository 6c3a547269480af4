"""The scoreboard's report: the suite's run records -> suite.json, suite.md and suite.png.

Statistics, as the papers of the field report them: each task's dev and test metric as mean ± sample
std over the seeds that finished (their number shown), and for each base the difference to its
random-init twin, paired by seed (same seed = same data order, subset and head initialisation), with
a 95% Student-t interval over the paired differences. The test metric of a run is the one read once,
for the grid point and checkpoint selected on dev. A dev-only suite (``--dev-only``: a recipe lever
measured on dev with test sealed) compares, pairs and plots the dev metric instead.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.atomic import write_json_atomic, write_text_atomic
from pretrain.model_card import training_time

REPORT_FORMAT = "bert-finetune-suite/1"
RANDOM_SUFFIX = " (random init)"


@dataclass(frozen=True)
class ModelRow:
    """One row of the table: a base model, or its random-init twin."""

    label: str
    path: str
    init: str  # "pretrained" or "random"
    pretraining: str  # what the model's card records of its pretraining cost; "" for a twin

    @property
    def name(self) -> str:
        return self.label + (RANDOM_SUFFIX if self.init == "random" else "")


def pretraining_cost(model_dir: Path) -> str:
    """Tokens, steps and time of the pretraining run, from the export's training_summary.json
    (pretrain/export.py); "not recorded" for checkpoints made elsewhere."""
    path = model_dir / "training_summary.json"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "not recorded"
    run = record.get("run") or {}
    tokens, steps, (wall, _) = (
        record.get("tokens") or run.get("tokens"),
        record.get("step"),
        training_time(run),
    )
    parts = []
    if tokens:
        parts.append(f"{tokens / 1e6:.1f}M tokens")
    if steps:
        parts.append(f"{steps:,} steps")
    if wall:
        parts.append(f"{wall / 60:.0f} min on {run.get('world_size', '?')} x {run.get('hardware', '?')}")
    return ", ".join(parts) or "not recorded"


def mean_std(values: list[float]) -> dict[str, Any] | None:
    if not values:
        return None
    array = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(array.mean()),
        "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0,
        "n": len(array),
    }


def paired_difference(base: dict[int, float], twin: dict[int, float]) -> dict[str, Any] | None:
    """Mean of base - twin over the seeds both finished, with a 95% t-interval (none for one seed)."""
    seeds = sorted(set(base) & set(twin))
    if not seeds:
        return None
    differences = np.array([base[seed] - twin[seed] for seed in seeds], dtype=np.float64)
    result = {"mean": float(differences.mean()), "n": len(seeds), "seeds": seeds, "low": None, "high": None}
    if len(seeds) > 1:
        from scipy.stats import t

        half = float(t.ppf(0.975, len(seeds) - 1) * differences.std(ddof=1) / math.sqrt(len(seeds)))
        result.update(low=result["mean"] - half, high=result["mean"] + half)
    return result


def _by_seed(
    records: list[dict], label: str, init: str, task: str, metric: str, split: str
) -> dict[int, float]:
    return {
        r["seed"]: r[split][metric]
        for r in records
        if (r["model"], r["init"], r["task"], r["status"]) == (label, init, task, "ok")
    }


def summarize(rows: list[ModelRow], tasks: dict[str, str], records: list[dict], split: str = "test") -> dict:
    """suite.json's body: per row and task the dev/test statistics, per base the paired differences and
    per entity type the F1, on ``split`` ("dev" for a dev-only suite, whose runs have no test)."""
    table = []
    for row in rows:
        cells = {}
        for task in tasks:
            mine = [r for r in records if (r["model"], r["init"], r["task"]) == (row.label, row.init, task)]
            done = [r for r in mine if r["status"] == "ok"]
            cells[task] = {
                "dev": mean_std([r["dev"][tasks[task]] for r in done]),
                "test": mean_std([r["test"][tasks[task]] for r in done if "test" in r]),
                "failed": sum(r["status"] == "failed" for r in mine),
            }
            typed = [r["per_type_f1"][split] for r in done if "per_type_f1" in r]
            if typed:
                cells[task][f"{split}_f1_per_type"] = {
                    kind: mean_std([scores[kind] for scores in typed if kind in scores])
                    for kind in sorted({kind for scores in typed for kind in scores})
                }
        table.append({"model": row.label, "init": row.init, "path": row.path, "cells": cells})
    differences = []
    for row in rows:
        if row.init != "pretrained" or not any(r.label == row.label and r.init == "random" for r in rows):
            continue
        by_task = {
            task: paired_difference(
                _by_seed(records, row.label, "pretrained", task, metric, split),
                _by_seed(records, row.label, "random", task, metric, split),
            )
            for task, metric in tasks.items()
        }
        differences.append({"model": row.label, "tasks": by_task})
    return {"table": table, "pretrained_minus_random": differences}


def _cell(stats: dict | None, failed: int) -> str:
    if stats is None:
        text = "-"
    elif stats["n"] == 1:  # one seed has no spread to show
        text = f"{stats['mean']:.3f} (1)"
    else:
        text = f"{stats['mean']:.3f} ± {stats['std']:.3f} ({stats['n']})"
    return text + (f", {failed} failed" if failed else "")


def _difference(stats: dict | None) -> str:
    if stats is None:
        return "-"
    if stats["low"] is None:
        return f"{stats['mean']:+.3f} (1 seed: no interval)"
    return f"{stats['mean']:+.3f} [{stats['low']:+.3f}, {stats['high']:+.3f}] ({stats['n']})"


def compared_split(report: dict) -> str:
    """The split a report compares rows on: test, or dev where the suite ran with test sealed."""
    return "dev" if report.get("dev_only") else "test"


def _per_type_tables(report: dict) -> list[str]:
    """For each entity task, F1 per entity type: the micro F1 is dominated by the frequent types, and a
    base's gain often shows in a rare one (ORG spans)."""
    split = compared_split(report)
    lines = []
    for task in report["tasks"]:
        cells = [entry["cells"][task].get(f"{split}_f1_per_type") for entry in report["summary"]["table"]]
        kinds = sorted({kind for typed in cells if typed for kind in typed})
        if not kinds:
            continue
        lines += [
            "",
            f"## {task}: {split} F1 per entity type",
            "",
            "| model | " + " | ".join(kinds) + " |",
            "|" + " --- |" * (len(kinds) + 1),
        ]
        for row, typed in zip(report["models"], cells):
            lines.append(
                f"| {row['name']} | " + " | ".join(_cell((typed or {}).get(kind), 0) for kind in kinds) + " |"
            )
    return lines


def render_markdown(report: dict) -> str:
    tasks, rows = report["tasks"], report["models"]
    progress = report["progress"]
    split = compared_split(report)
    splits = ("dev",) if split == "dev" else ("dev", "test")
    lines = ["# Fine-tuning scoreboard", ""]
    if progress["done"] < progress["planned"]:
        lines += [
            f"**Partial: {progress['done']} of {progress['planned']} runs finished**; rerun the same "
            "command to complete it (finished runs are kept).",
            "",
        ]
    lines += [
        f"Seeds {', '.join(map(str, report['seeds']))}. Each cell: the task's metric, mean ± sample std over "
        "the seeds that finished (their number in brackets). Every run selects its grid point and "
        "checkpoint on dev and "
        + (
            "reads test once, for the selected model."
            if split == "test"
            else "**the test split was not read** (`--dev-only`: a recipe lever measured on dev)."
        ),
        "",
    ]
    head = ["model", "pretraining"] + [
        f"{task} {spec['metric']} {name}" for task, spec in tasks.items() for name in splits
    ]
    lines += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for row, entry in zip(rows, report["summary"]["table"]):
        cells = [
            _cell(entry["cells"][task][name], entry["cells"][task]["failed"] if name == splits[-1] else 0)
            for task in tasks
            for name in splits
        ]
        lines.append(
            "| " + " | ".join([row["name"], row["pretraining"] or "none (random weights)", *cells]) + " |"
        )
    differences = report["summary"]["pretrained_minus_random"]
    if differences:
        lines += [
            "",
            f"## Pretrained minus random init ({split} metric, paired by seed)",
            "",
            "Mean difference, 95% Student-t interval over the paired seeds, (number of pairs).",
            "",
            "| model | " + " | ".join(f"{task} {spec['metric']}" for task, spec in tasks.items()) + " |",
            "|" + " --- |" * (len(tasks) + 1),
        ]
        for entry in differences:
            lines.append(
                f"| {entry['model']} | "
                + " | ".join(_difference(entry["tasks"][task]) for task in tasks)
                + " |"
            )
    lines += _per_type_tables(report)
    lines += [
        "",
        "## Runs",
        "",
        "| model | task | seed | status | selected | dev | test | minutes |",
        "|" + " --- |" * 8,
    ]
    for record in report["runs"]:
        metric = tasks[record["task"]]["metric"]
        name = record["model"] + (RANDOM_SUFFIX if record["init"] == "random" else "")
        if record["status"] == "ok":
            dev, test, selected = (
                f"{record['dev'][metric]:.4f}",
                f"{record['test'][metric]:.4f}" if "test" in record else "not read",
                record["selected"],
            )
        else:
            dev, test, selected = "-", "-", f"error: {record['error']}"
        minutes = f"{record['wall_time_s'] / 60:.1f}"
        lines.append(
            f"| {name} | {record['task']} | {record['seed']} | {record['status']} | {selected} | {dev} | {test} | {minutes} |"
        )
    lines += ["", "## Tasks", ""]
    for task, spec in tasks.items():
        grid = ", ".join(f"{key} {values}" for key, values in spec["grid"].items()) or "none"
        lines.append(
            f"- **{task}** (`{spec['file']}`): {spec['description']} Metric: {spec['metric']}; grid: {grid}."
        )
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> Path:
    """suite.png: per task, a bar per model row at its test (dev-only: dev) mean, the std over seeds as
    error bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks, rows, split = list(report["tasks"]), report["models"], compared_split(report)
    width = 0.8 / max(len(rows), 1)
    figure, axes = plt.subplots(figsize=(max(6.0, 2.2 * len(tasks)), 4.0))
    for index, (row, entry) in enumerate(zip(rows, report["summary"]["table"])):
        stats = [entry["cells"][task][split] for task in tasks]
        axes.bar(
            [position + index * width for position in range(len(tasks))],
            [s["mean"] if s else 0.0 for s in stats],
            width,
            yerr=[s["std"] if s else 0.0 for s in stats],
            capsize=3,
            label=row["name"],
        )
    axes.set_xticks([position + width * (len(rows) - 1) / 2 for position in range(len(tasks))])
    axes.set_xticklabels([f"{task}\n{report['tasks'][task]['metric']} ({split})" for task in tasks])
    axes.set_ylim(0, 1)
    axes.set_ylabel(f"{split} metric, mean ± std over seeds")
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def write_reports(out: Path, report: dict, with_plot: bool) -> None:
    """suite.json and suite.md (atomically, after every run: a kill leaves the last complete pair), and
    suite.png at the end."""
    write_json_atomic(out / "suite.json", report)
    write_text_atomic(out / "suite.md", render_markdown(report))
    if with_plot:
        plot(report, out / "suite.png")

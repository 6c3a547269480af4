"""``make demo``: the whole pipeline on the embedded corpus, offline, with one summary at the end.

1. a labelled task from the environment's docstrings (which package wrote them; pretrain.docstring_task),
2. ``python -m data_prep`` on the pydocs corpus, minus the task's valid and test modules,
3. ``deepspeed --num_gpus N --module pretrain`` on the tiny model (2 CPU ranks here, the GPUs where present),
   which exports a Hugging Face model at the end,
4. ``python -m finetune`` from that export and, for contrast, from random weights,
5. a summary on the console and ``<out>/report.md`` with the loss curve.

Each stage runs through its real command line, as a user would type it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from pretrain.docstring_task import LABELS, build_docstring_task

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


class StageFailed(RuntimeError):
    pass


def _run(stage: str, command: list[str]) -> float:
    print(f"\n=== {stage}: {' '.join(command)}", flush=True)
    started = time.perf_counter()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(command, cwd=REPO, env=env)
    if result.returncode != 0:
        raise StageFailed(f"{stage} failed (exit {result.returncode}); its output is above")
    return time.perf_counter() - started


def _default_ranks() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 2


def _prep_config(out: Path, held_out: list[str], max_docs: int | None, samples_per_shard: int | None) -> Path:
    config = yaml.safe_load((REPO / "configs" / "prep" / "demo.yaml").read_text())
    config["out_dir"] = str(out / "data")
    config["pydocs"]["exclude"] = held_out
    if max_docs is not None:
        config["pydocs"]["max_docs"] = max_docs
    if samples_per_shard is not None:
        config["samples_per_shard"] = samples_per_shard
    path = out / "prep.yaml"
    path.write_text(
        "# Written by `python -m pretrain.demo` from configs/prep/demo.yaml: the task's valid and\n"
        "# test modules are excluded so that no text the classifier is tested on is pretrained on.\n"
        + yaml.safe_dump(config, sort_keys=False)
    )
    return path


def _finetune(out: Path, init: str, epochs: float | None) -> tuple[dict, float]:
    target = out / f"finetune-{init}"
    command = [
        sys.executable,
        "-m",
        "finetune",
        "--config",
        "configs/finetune/demo.yaml",
        f"model={out / 'pretrain' / 'export'}",
        f"init={init}",
        f"out_dir={target}",
        f"train_file={out / 'task' / 'train.tsv'}",
        f"valid_file={out / 'task' / 'valid.tsv'}",
        f"test_file={out / 'task' / 'test.tsv'}",
    ]
    if epochs is not None:
        command.append(f"epochs={epochs}")
    seconds = _run(f"fine-tune ({init} init)", command)
    return json.loads((target / "eval.json").read_text()), seconds


def _split_scores(report: dict, split: str) -> tuple[float, float]:
    scores = report["splits"][split]
    return scores["accuracy"], scores["macro_f1"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pretrain.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/demo", help="where everything goes (default runs/demo)")
    parser.add_argument(
        "--ranks", type=int, default=None, help="pretraining ranks (default: GPUs, else 2 CPU ranks)"
    )
    parser.add_argument("--pretrain-steps", type=int, help="override configs/pretrain/demo.yaml max_steps")
    parser.add_argument("--max-docs", type=int, help="cap the pydocs documents of the pretraining corpus")
    parser.add_argument(
        "--samples-per-shard",
        type=int,
        help="override configs/prep/demo.yaml (small corpora need small shards)",
    )
    parser.add_argument(
        "--task-per-class",
        type=int,
        nargs=3,
        metavar=("TRAIN", "VALID", "TEST"),
        help="examples per label in each split of the fine-tuning task",
    )
    parser.add_argument("--finetune-epochs", type=float, help="override configs/finetune/demo.yaml epochs")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ranks = args.ranks or _default_ranks()
    started = time.perf_counter()
    try:
        print(f"=== labelled task: which package wrote a docstring ({', '.join(LABELS)})", flush=True)
        per_class = (
            dict(zip(("train", "valid", "test"), args.task_per_class)) if args.task_per_class else None
        )
        task = build_docstring_task(out / "task", per_class=per_class)
        print(
            f"    {sum(task.counts['train'].values())} train / {sum(task.counts['valid'].values())} valid / "
            f"{sum(task.counts['test'].values())} test examples; {len(task.held_out_modules)} held-out modules "
            f"excluded from pretraining",
            flush=True,
        )

        prep_s = _run(
            "data_prep",
            [
                sys.executable,
                "-m",
                "data_prep",
                "--config",
                str(_prep_config(out, task.held_out_modules, args.max_docs, args.samples_per_shard)),
            ],
        )
        if (out / "pretrain").exists():  # the demo is a fresh pipeline: its data may have changed since
            print(f"    removing the previous demo run {out / 'pretrain'}", flush=True)
            shutil.rmtree(out / "pretrain")
        pretrain_command = [
            str(BIN / "deepspeed"),
            "--num_gpus",
            str(ranks),
            "--log_level",
            "warning",
            "--module",
            "pretrain",
            "--config",
            "configs/pretrain/demo.yaml",
            f"data_dir={out / 'data'}",
            f"run_dir={out / 'pretrain'}",
        ]
        if args.pretrain_steps:
            pretrain_command.append(f"max_steps={args.pretrain_steps}")
        pretrain_s = _run(f"pretrain ({ranks} ranks)", pretrain_command)
        pretrained, pretrained_s = _finetune(out, "pretrained", args.finetune_epochs)
        scratch, scratch_s = _finetune(out, "random", args.finetune_epochs)
    except StageFailed as err:
        print(f"\ndemo: {err}", file=sys.stderr)
        raise SystemExit(1) from None

    summary = {
        "data": json.loads((out / "data" / "report.json").read_text()),
        "pretrain": json.loads((out / "pretrain" / "summary.json").read_text()),
        "finetune": {"pretrained": pretrained, "random": scratch},
        "seconds": {
            "prep": prep_s,
            "pretrain": pretrain_s,
            "finetune_pretrained": pretrained_s,
            "finetune_random": scratch_s,
            "total": time.perf_counter() - started,
        },
        "task": task.counts,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    report = _report(out, summary)
    (out / "report.md").write_text(report)
    shutil.copyfile(out / "pretrain" / "loss.png", out / "loss.png")
    print("\n" + report)


def _report(out: Path, s: dict) -> str:
    data, pre = s["data"], s["pretrain"]
    evaluation = pre.get("final_eval") or {}
    docs = data.get("documents", {})
    lines = [
        "# Demo report",
        "",
        "## Data (data_prep on the pydocs corpus)",
        f"- documents in {docs.get('in', '?')}, kept {docs.get('kept', '?')}; "
        f"train examples {data.get('examples', {}).get('train', '?')}, valid {data.get('examples', {}).get('valid', '?')}",
        f"- prep wall time {s['seconds']['prep']:.0f} s",
        "",
        "## Pretraining (tiny BERT, MLM + NSP)",
        f"- {pre['steps']} steps, {pre['tokens']:,} tokens, {pre['world_size']} ranks, {pre['precision']}, "
        f"ZeRO-{pre['zero_stage']}, {pre['tokens_per_s'] or 0:,.0f} tokens/s",
        f"- final eval: MLM accuracy {evaluation.get('mlm_acc', float('nan')):.3f}, perplexity "
        f"{evaluation.get('ppl', float('nan')):.1f}, NSP accuracy {evaluation.get('nsp_acc', float('nan')):.3f}",
        "- loss curve: ![loss](loss.png)",
        "",
        "## Fine-tuning: which package wrote a docstring (" + ", ".join(LABELS) + ")",
        "",
        "| init | valid accuracy | valid macro F1 | test accuracy | test macro F1 |",
        "| --- | --- | --- | --- | --- |",
    ]
    for init in ("pretrained", "random"):
        report = s["finetune"][init]
        (va, vf), (ta, tf) = _split_scores(report, "valid"), _split_scores(report, "test")
        lines.append(f"| {init} | {va:.3f} | {vf:.3f} | {ta:.3f} | {tf:.3f} |")
    lines += [
        "",
        f"Chance is {1 / len(LABELS):.2f}. Total wall time {s['seconds']['total'] / 60:.1f} min.",
        "",
        "## Artefacts",
        f"- prepared data: `{out / 'data'}` (manifest.json, tokenizer/, shards/, report.json)",
        f"- pretraining run: `{out / 'pretrain'}` (metrics.jsonl, tb/, checkpoints/, loss.png)",
        f"- Hugging Face export: `{out / 'pretrain' / 'export'}`",
        f"- fine-tuned classifiers: `{out / 'finetune-pretrained'}`, `{out / 'finetune-random'}` (eval.json, predictions.tsv)",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

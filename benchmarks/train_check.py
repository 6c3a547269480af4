"""Pretraining on one rank, checked end to end: a save, a resume that gives the same losses as the
uninterrupted run, and an export that loads. The GPU check's training stage (``benchmarks.gpu_check``).

``python -m benchmarks.train_check --data-dir D --model tiny --configs bf16:0,bf16:2,fp16:1 --out FILE``

For each ``precision:zero_stage[:offload]``, in this one process:

1. the uninterrupted run: ``steps`` optimizer steps with a checkpoint every ``steps // 2`` and the
   export at the end;
2. the resumed run: a copy of that run dir as it stood after the middle checkpoint (that checkpoint
   named by ``checkpoints/latest``, the later one and the export removed), trained again to
   ``steps``: it resumes from the middle and must log the same losses for the remaining steps;
3. both exports: the resumed one loads with ``AutoModelForPreTraining`` and gives finite MLM logits,
   and its weights equal the uninterrupted run's.

On a CPU the losses and weights are equal bit for bit. On a GPU some backward kernels accumulate
with atomics (attention), so two runs may differ in the last bits: the check reports the largest
differences and passes within ``LOSS_RTOL`` / ``WEIGHT_ATOL``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pretrain.distributed import precision_problem

os.environ.setdefault("HF_HUB_OFFLINE", "1")

LOSS_RTOL = 1e-3
WEIGHT_ATOL = 1e-3


def _copy_as_of(run_dir: Path, copy: Path, step: int) -> None:
    """``copy``: ``run_dir`` as it stood right after its checkpoint of ``step`` was complete."""
    from pretrain import checkpoint

    keep = checkpoint.tag_for(step)

    def ignored(directory: str, names: list[str]) -> list[str]:
        if Path(directory) == run_dir:
            return [name for name in names if name in ("export", "summary.json", "loss.png")]
        if Path(directory) == run_dir / "checkpoints":
            return [name for name in names if name.startswith("step") and name != keep]
        return []

    shutil.copytree(run_dir, copy, ignore=ignored)
    (copy / "checkpoints" / checkpoint.LATEST).write_text(keep)  # the README's layout: the tag, nothing else


def _losses(run_dir: Path) -> dict[int, float]:
    from pretrain.run_log import read_metrics

    return {row["step"]: row["loss"] for row in read_metrics(run_dir) if row.get("kind") == "train"}


def _export_check(uninterrupted: Path, resumed: Path) -> dict[str, Any]:
    """The resumed export loads with transformers and runs; its weights against the uninterrupted one's."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForPreTraining

    model = AutoModelForPreTraining.from_pretrained(resumed, local_files_only=True)
    ids = torch.randint(5, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(input_ids=ids).prediction_logits
    theirs, ours = load_file(uninterrupted / "model.safetensors"), load_file(resumed / "model.safetensors")
    diff = max((theirs[key].float() - ours[key].float()).abs().max().item() for key in theirs)
    return {
        "export_loads": bool(torch.isfinite(logits).all()) and set(theirs) == set(ours),
        "export_max_weight_diff": diff,
    }


def check_config(
    data_dir: Path,
    work: Path,
    model: str,
    precision: str,
    zero_stage: int,
    steps: int,
    overrides: list[str],
    offload: str = "none",
) -> dict[str, Any]:

    from pretrain.config import load_pretrain_config
    from pretrain.train import train

    result: dict[str, Any] = {
        "model": model,
        "precision": precision,
        "zero_stage": zero_stage,
        "offload": offload,
    }
    problem = precision_problem(precision)
    if problem:
        return {**result, "status": "skipped", "error": problem}
    middle = steps // 2
    common = [
        f"data_dir={data_dir}",
        f"model={model}",
        f"precision={precision}",
        f"zero_stage={zero_stage}",
        f"offload={offload}",
        f"max_steps={steps}",
        f"save_every={middle}",
        "keep_last=5",
        "log_every=1",
        f"eval_every={steps}",
        "schedule.warmup_steps=2",
        *overrides,
    ]
    uninterrupted, resumed = work / "uninterrupted", work / "resumed"
    started = time.perf_counter()
    try:
        train(load_pretrain_config(None, [*common, f"run_dir={uninterrupted}"]))
        _copy_as_of(uninterrupted, resumed, middle)
        summary = train(load_pretrain_config(None, [*common, f"run_dir={resumed}"]))
        want, got = _losses(uninterrupted), _losses(resumed)
        after = [step for step in sorted(want) if step > middle]
        loss_diff = max(abs(got[step] - want[step]) / abs(want[step]) for step in after)
        result.update(
            resumed_from=summary["resumed_from"],
            steps=steps,
            losses=[want[step] for step in sorted(want)],
            resumed_losses=[got[step] for step in after],
            losses_bitwise_equal=all(got[step] == want[step] for step in after),
            loss_max_rel_diff=loss_diff,
            **_export_check(uninterrupted / "export", resumed / "export"),
        )
        passed = (
            summary["resumed_from"] is not None
            and sorted(got) == sorted(want)
            and loss_diff <= LOSS_RTOL
            and result["export_loads"]
            and result["export_max_weight_diff"] <= WEIGHT_ATOL
        )
        result["status"] = "ok" if passed else "failed"
    except Exception as err:  # one configuration failing must not hide the others
        traceback.print_exc()
        result.update(status="error", error=f"{type(err).__name__}: {err}")
    result["seconds"] = time.perf_counter() - started
    shutil.rmtree(work, ignore_errors=True)  # base: ~8 GB of checkpoints and exports per configuration
    return result


def command_line(
    data_dir: Path, model: str, configs: str, steps: int, work: Path, out: Path, overrides: Sequence[str] = ()
) -> list[str]:
    """``python -m benchmarks.train_check ...`` in a fresh process, as the GPU check and the tests run it."""
    return [
        sys.executable,
        "-m",
        "benchmarks.train_check",
        "--data-dir",
        str(data_dir),
        "--model",
        model,
        "--configs",
        configs,
        "--steps",
        str(steps),
        "--work",
        str(work),
        "--out",
        str(out),
        *overrides,
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.train_check", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--data-dir", required=True, type=Path)
    parser.add_argument("--model", required=True)
    parser.add_argument(
        "--configs", default="bf16:0,bf16:2,fp16:1", help="precision:zero_stage[:offload],..."
    )
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps; resumed from the middle")
    parser.add_argument("--work", required=True, type=Path, help="run dirs go here")
    parser.add_argument("--out", required=True, type=Path, help="result JSON (a list, one per config)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="more PretrainConfig keys")
    args = parser.parse_args(argv)
    results = []
    for item in args.configs.split(","):
        precision, zero_stage, *offload = item.split(":")
        work = args.work / f"{args.model}-{precision}-zero{zero_stage}-{'-'.join(offload) or 'none'}"
        results.append(
            check_config(
                args.data_dir,
                work,
                args.model,
                precision,
                int(zero_stage),
                args.steps,
                args.overrides,
                offload=offload[0] if offload else "none",
            )
        )
        args.out.write_text(json.dumps(results, indent=2) + "\n")  # what finished survives a crash
        print(
            f"train_check: {json.dumps({k: v for k, v in results[-1].items() if 'losses' not in k})}",
            flush=True,
        )

    from pretrain.distributed import shutdown

    shutdown()


if __name__ == "__main__":
    main()

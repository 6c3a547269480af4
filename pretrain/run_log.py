"""Where a run's numbers go: ``metrics.jsonl``, the console and the ``report_to`` trackers
(TensorBoard, W&B, CSV: ``pretrain/tracking.py``), rank 0 only.

``metrics.jsonl`` holds one JSON object per log step (``kind: train``) and per evaluation
(``kind: eval``). On resume the rows past the resumed step (written after the last checkpoint by
the run that crashed) are dropped, and TensorBoard and the CSV files drop them too, so all hold
one clean trajectory.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from data_prep.atomic import write_text_atomic
from pretrain.tracking import Tracker

METRICS = "metrics.jsonl"


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a crash
            continue
    return rows


def _truncate_after(path: Path, step: int) -> None:
    rows = [row for row in read_metrics(path.parent) if row.get("step", 0) <= step]
    write_text_atomic(path, "".join(json.dumps(row) + "\n" for row in rows))


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class RunLog:
    def __init__(
        self,
        run_dir: Path,
        enabled: bool,
        resume_step: int,
        max_steps: int,
        report_to: list[str] = ("tensorboard",),
        config: dict[str, Any] | None = None,
    ):
        self.enabled = enabled
        self.path = run_dir / METRICS
        self.max_steps = max_steps
        self.tracker = None
        self.bar = None
        if not enabled:
            return
        if self.path.exists():
            _truncate_after(self.path, resume_step)
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(
                total=max_steps, initial=resume_step, unit="step", dynamic_ncols=True, leave=False
            )
        self.tracker = Tracker(
            run_dir, list(report_to), enabled, config=config, resume_step=resume_step, say=self.print
        )

    def _write(self, row: dict[str, Any]) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps(row) + "\n")
        self.tracker.log(row)

    def print(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def advance(self, steps: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(steps)

    def train(self, row: dict[str, Any], eta_s: float) -> None:
        if not self.enabled:
            return
        self._write({"kind": "train", **row})
        parts = [f"step {row['step']}/{self.max_steps}", f"loss {row['loss']:.4f}"]
        if "nsp_loss" in row:
            parts[-1] += f" (mlm {row['mlm_loss']:.3f} nsp {row['nsp_loss']:.3f})"
        parts += [f"lr {row['lr']:.2e}", f"gnorm {row['grad_norm']:.2f}"]
        if row.get("loss_scale") is not None:
            parts.append(f"scale {row['loss_scale']:g} (overflows {row['overflow_steps']})")
        parts += [f"{row['tokens_per_s']:,.0f} tok/s", f"{row['ms_per_step']:.0f} ms/step"]
        if "mfu" in row:
            parts.append(f"MFU {row['mfu']:.1%}")
        parts += [f"mem {row['peak_memory_bytes'] / 2**30:.2f} GiB", f"ETA {format_duration(eta_s)}"]
        self.print(" | ".join(parts))

    def eval(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._write({"kind": "eval", **row})
        text = f"eval step {row['step']} | mlm loss {row['mlm_loss']:.4f} acc {row['mlm_acc']:.4f} ppl {row['ppl']:.2f}"
        if "nsp_acc" in row:
            text += f" | nsp loss {row['nsp_loss']:.4f} acc {row['nsp_acc']:.4f}"
        self.print(text)

    def finish(self, summary: dict[str, Any], loss_plot: Path | None) -> None:
        """The run's summary and loss plot to the trackers."""
        if self.tracker is not None:
            self.tracker.summary(summary)
            if loss_plot is not None:
                self.tracker.image("loss_plot", loss_plot)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tracker is not None:
            self.tracker.close()

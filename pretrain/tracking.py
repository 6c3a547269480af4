"""Experiment tracking: a run's resolved config, metric rows, final results and loss plot, sent to
the backends of ``report_to`` (any of tensorboard, wandb, csv) by rank 0 only.

- tensorboard: ``<dir>/tb/`` events; scalars ``<kind>/<name>``, the config and summary as text,
  the loss plot as an image. On resume, events past the resumed step are purged.
- wandb: a Weights & Biases run with ``dir=<dir>`` (files under ``<dir>/wandb/``). The mode is
  ``WANDB_MODE`` when set; otherwise online only when an API key is configured and the server
  answers, else offline: a local run dir that ``wandb sync <dir>/wandb/offline-run-*`` uploads
  later. ``WANDB_PROJECT`` (default ``bert-pretrain``) and ``WANDB_ENTITY`` choose the project.
- csv: ``<dir>/csv/<kind>.csv`` per row kind (train, eval, final), columns fixed by the kind's first
  row; ``csv/summary.csv`` (key, value) at the end. On resume, rows past the resumed step are dropped.

A backend that cannot start or fails later (wandb not installed, a bad key, a full disk) prints one
warning line and is dropped; training never stops for reporting.

DeepSpeed has tensorboard/wandb/csv monitors of its own; they are not used: they log only the
engine's loss, learning rate and loss scale, per sample count, with no evaluation, config or
figures, and a wandb failure inside ``deepspeed.initialize`` would stop the run.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from data_prep.atomic import open_atomic

REPORTERS = ("tensorboard", "wandb", "csv")


def check_report_to(names: list[str]) -> list[str]:
    """For the configs' validators: a one-line error naming the unknown backend."""
    unknown = [name for name in names if name not in REPORTERS]
    if unknown:
        raise ValueError(f"unknown report_to {unknown[0]!r}; use any of {', '.join(REPORTERS)}")
    return list(dict.fromkeys(names))


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _numbers(row: dict[str, Any]) -> dict[str, float]:
    """The row's numbers, named ``<kind>/<name>`` (``<kind>/<split>/<name>`` when the row has a split,
    as fine-tuning's final rows on valid and test at the same step)."""
    prefix = "/".join(str(row[key]) for key in ("kind", "split") if key in row)
    return {
        f"{prefix}/{key}": value
        for key, value in row.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step"
    }


class _TensorBoard:
    def __init__(self, run_dir: Path, resume_step: int, fresh: bool):
        from torch.utils.tensorboard import SummaryWriter

        if fresh:
            shutil.rmtree(run_dir / "tb", ignore_errors=True)
        self.writer = SummaryWriter(str(run_dir / "tb"), purge_step=resume_step + 1 if resume_step else None)

    def config(self, config: dict) -> None:
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=2) + "\n```")

    def row(self, row: dict) -> None:
        for key, value in _numbers(row).items():
            self.writer.add_scalar(key, value, row["step"])
        self.writer.flush()

    def summary(self, values: dict) -> None:
        self.writer.add_text("summary", "```\n" + json.dumps(values, indent=2, default=str) + "\n```")

    def image(self, name: str, path: Path) -> None:
        import matplotlib.image

        self.writer.add_image(name, matplotlib.image.imread(str(path))[..., :3], dataformats="HWC")

    def close(self) -> None:
        self.writer.close()


def _wandb_mode() -> tuple[str, str]:
    """(mode, why): online needs a configured key (WANDB_API_KEY or ~/.netrc / $NETRC, where
    ``wandb login`` puts it) and a server that answers within 3 s."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"], "WANDB_MODE"
    import netrc
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai")
    try:
        stored = netrc.netrc(os.environ.get("NETRC")).authenticators(url.hostname or "")
    except (OSError, netrc.NetrcParseError):
        stored = None
    if not (os.environ.get("WANDB_API_KEY") or stored):
        return "offline", "no API key configured"
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=3).close()
    except OSError:
        return "offline", f"{url.hostname} cannot be reached"
    return "online", "API key and server found"


class _Wandb:
    def __init__(self, run_dir: Path, name: str, config: dict, say):
        os.environ.setdefault("WANDB_SILENT", "true")  # its banners would bury the training log
        import wandb

        mode, why = _wandb_mode()
        self.wandb = wandb
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "bert-pretrain"),
            entity=os.environ.get("WANDB_ENTITY"),
            name=name,
            dir=str(run_dir),
            config=config,
            mode=mode,
        )
        if mode == "offline":
            say(
                f"wandb: offline ({why}); upload later with: wandb sync {self.run.dir.rsplit('/files', 1)[0]}"
            )
        else:
            say(f"wandb: {mode} run {getattr(self.run, 'url', None) or self.run.id}")

    def config(self, config: dict) -> None:
        pass  # given to wandb.init

    def row(self, row: dict) -> None:
        self.run.log(_numbers(row), step=row["step"])

    def summary(self, values: dict) -> None:
        self.run.summary.update(_flatten(values))

    def image(self, name: str, path: Path) -> None:
        self.run.log({name: self.wandb.Image(str(path))})

    def close(self) -> None:
        self.run.finish()
        # finish() returns before W&B's service process has written the run's records to disk;
        # teardown waits for it, so the run dir is complete (for `wandb sync`) when training ends.
        self.wandb.teardown()


class _Csv:
    def __init__(self, run_dir: Path, resume_step: int, fresh: bool):
        self.dir = run_dir / "csv"
        if fresh:
            shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.columns: dict[str, list[str]] = {}
        for path in self.dir.glob("*.csv"):
            if path.name == "summary.csv":
                continue
            with path.open(newline="") as handle:
                rows = list(csv.DictReader(handle))
                columns = list(rows[0]) if rows else []
            if resume_step and columns:  # the rows a crashed launch wrote after its last checkpoint
                kept = [row for row in rows if float(row["step"]) <= resume_step]
                self._rewrite(path, columns, kept)
                self.columns[path.stem] = columns
            else:
                path.unlink()

    @staticmethod
    def _rewrite(path: Path, columns: list[str], rows: list[dict]) -> None:
        with open_atomic(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, columns)
            writer.writeheader()
            writer.writerows(rows)

    def config(self, config: dict) -> None:
        pass  # the run dir's config.yaml already holds it

    def row(self, row: dict) -> None:
        kind = str(row["kind"])
        path = self.dir / f"{kind}.csv"
        new = kind not in self.columns
        if new:
            self.columns[kind] = list(row)
        with path.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, self.columns[kind], extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)

    def summary(self, values: dict) -> None:
        with (self.dir / "summary.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["key", "value"])
            writer.writerows(_flatten(values).items())

    def image(self, name: str, path: Path) -> None:
        pass  # the plot is a file of the run dir already

    def close(self) -> None:
        pass


class Tracker:
    """Fan-out to the ``report_to`` backends; a no-op when ``enabled`` is false (ranks > 0).

    ``fresh``: a new run in a dir that may hold an older one's reports (fine-tuning): they are
    removed. Otherwise (pretraining) reports continue from ``resume_step``.
    """

    def __init__(
        self,
        run_dir: str | Path,
        report_to: list[str],
        enabled: bool,
        config: dict | None = None,
        name: str | None = None,
        resume_step: int = 0,
        fresh: bool = False,
        say=None,
    ):
        self.say = say or (lambda text: print(text, file=sys.stderr, flush=True))
        self.backends: dict[str, Any] = {}
        if not enabled:
            return
        run_dir = Path(run_dir)
        name = name or run_dir.resolve().name
        makers = {
            "tensorboard": lambda: _TensorBoard(run_dir, resume_step, fresh),
            "wandb": lambda: _Wandb(run_dir, name, config or {}, self.say),
            "csv": lambda: _Csv(run_dir, resume_step, fresh),
        }
        for backend in check_report_to(list(report_to)):
            try:
                self.backends[backend] = makers[backend]()
            except Exception as err:
                self._warn(backend, "cannot start", err)
        if config is not None:
            self._each("config", config)

    def _warn(self, backend: str, what: str, err: BaseException) -> None:
        if isinstance(err, ImportError):
            reason = f"{err.name or backend} is not installed (pip install {err.name or backend})"
        else:
            lines = str(err).strip().splitlines()
            reason = f"{type(err).__name__}: {lines[0] if lines else ''}"
        self.say(f"warning: report_to {backend} {what} ({reason}); training goes on without it")

    def _each(self, method: str, *args) -> None:
        for backend, target in list(self.backends.items()):
            try:
                getattr(target, method)(*args)
            except Exception as err:
                self._warn(backend, f"failed in {method}", err)
                self.backends.pop(backend)

    def log(self, row: dict[str, Any]) -> None:
        """One metrics row: ``kind`` (train, eval, final) and ``step`` plus numbers."""
        self._each("row", row)

    def summary(self, values: dict[str, Any]) -> None:
        """The run's final results (nested dicts are flattened with ``/``)."""
        self._each("summary", values)

    def image(self, name: str, path: str | Path) -> None:
        self._each("image", name, Path(path))

    def close(self) -> None:
        self._each("close")
        self.backends.clear()

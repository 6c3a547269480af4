"""Task files of the scoreboard (``python -m finetune.suite``): a task is configuration, not code.

A task file is YAML with three keys::

    description: GLUE SST-2, binary sentiment      # one line, shown in suite.md
    finetune:                                      # fine-tuning keys (finetune/config.py) other than
      train_file: ../shared/data/sst2/train.tsv    #   the ones the suite sets per run (model, init,
      valid_file: ../shared/data/sst2/dev.tsv      #   out_dir, seed, seeds)
      test_file: ../shared/data/sst2/test.tsv
      metric: accuracy
      max_train_samples: 5000                      # the train-row budget
    grid:                                          # optional: a list per key; every combination is
      lr: [1.0e-4, 5.0e-4]                         #   trained and the best on the validation metric kept

``--tasks sst2`` names ``configs/suite/sst2.yaml``; a path to any ``.yaml`` file works too. Relative
data paths are relative to the directory the command runs in, as in every config of the project.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from data_prep.typed_config import ConfigError, Section, build_config, read_yaml
from finetune.config import FinetuneConfig

TASKS_DIR = Path(__file__).resolve().parents[1] / "configs" / "suite"
# Set by the suite for each run; a task file that sets one is refused.
PER_RUN_KEYS = ("model", "init", "out_dir", "seed", "seeds")
# Placeholders that let a task's keys be checked before any model or run is known.
_CHECK_ONLY = {"model": ".", "out_dir": "."}


class TaskFile(Section):
    """One task of the scoreboard (the YAML file's keys)."""

    description: str = ""
    """One line for suite.md: what the task is and which splits are dev and test."""
    finetune: dict[str, Any]
    """Fine-tuning keys (finetune/config.py) other than model, init, out_dir, seed, seeds."""
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    """Fine-tuning keys to select on the validation metric: each a list of values, every combination tried."""


@dataclass(frozen=True, eq=False)  # identity: a loaded task is one object per invocation
class Task:
    name: str
    path: Path
    spec: TaskFile

    @property
    def metric(self) -> str:
        return self.data_config().selection_metric

    def data_config(self) -> FinetuneConfig:
        """The task's settings at its first grid point, without a model: for its files, columns and
        metric, which no grid point changes."""
        return self.config_for(self.points()[0], **_CHECK_ONLY)

    def points(self) -> list[dict[str, Any]]:
        """The grid's combinations, in file order ([{}] without a grid)."""
        keys = list(self.spec.grid)
        return [dict(zip(keys, values)) for values in itertools.product(*self.spec.grid.values())]

    def config_for(self, point: dict[str, Any], **per_run: Any) -> FinetuneConfig:
        try:
            return build_config(FinetuneConfig, {**self.spec.finetune, **point, **per_run})
        except ConfigError as err:
            raise ConfigError(f"task {self.name} ({self.path}): {err}") from None


def point_label(point: dict[str, Any]) -> str:
    """A grid point as a directory name: ``lr-0.0005_epochs-3`` (``default`` without a grid)."""
    return "_".join(f"{key}-{value}" for key, value in point.items()) or "default"


def available() -> list[str]:
    return sorted(path.stem for path in TASKS_DIR.glob("*.yaml"))


def load_task(name_or_path: str) -> Task:
    """A task by name (configs/suite/NAME.yaml) or by path, checked against the fine-tuning keys."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = TASKS_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"task {name_or_path!r}: no file {path}; name one of {', '.join(available())} "
            f"or give the path of a task .yaml"
        )
    spec = build_config(TaskFile, read_yaml(path))
    name = path.stem
    fixed = [key for key in PER_RUN_KEYS if key in spec.finetune or key in spec.grid]
    if fixed:
        raise ConfigError(
            f"task {name} ({path}) sets {', '.join(fixed)}: the suite sets those per run; remove them"
        )
    empty = [key for key, values in spec.grid.items() if not values]
    if empty:
        raise ConfigError(f"task {name} ({path}): grid key {empty[0]!r} lists no values")
    task = Task(name, path, spec)
    for point in task.points():  # every combination is a valid config, before anything runs
        task.config_for(point, **_CHECK_ONLY)
    return task

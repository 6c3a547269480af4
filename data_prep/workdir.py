"""``<out_dir>/.work/<key>/``: intermediate results, so an interrupted run resumes where it stopped.

The key hashes everything the results depend on: the config (less the knobs that do not change
results: ``workers``, ``progress``), the inputs' names, sizes and mtimes, and ``WORK_FORMAT``. A
re-run with the same key skips finished chunks; any other key removes the old work dir and
starts clean. Every file is written whole under a temporary name and renamed, so a file that
exists is complete. The directory is removed after a successful run.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.atomic import open_atomic, write_json_atomic
from data_prep.config import PrepConfig

WORK_DIR = ".work"
WORK_FORMAT = 1  # bump when the intermediate files change meaning
RESULT_NEUTRAL_KEYS = ("workers", "progress")


def work_key(config: PrepConfig, input_fingerprint: list[Any]) -> str:
    settings = config.model_dump(mode="json", exclude=set(RESULT_NEUTRAL_KEYS))
    blob = json.dumps([WORK_FORMAT, settings, input_fingerprint], sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def save_arrays(path: Path, **arrays: np.ndarray) -> None:
    """Intermediate arrays, written whole then renamed (no fsync: a crash restarts the chunk)."""
    with open_atomic(path, "wb", durable=False) as handle:
        np.savez(handle, **arrays)


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as stored:
        return {name: stored[name] for name in stored.files}


def save_json(path: Path, obj: Any) -> None:
    """Compact JSON, written whole then renamed (intermediate files: no indentation, no fsync).
    ASCII-escaped, so lone surrogates survive the trip."""
    write_json_atomic(path, obj, indent=None, durable=False)


def load_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


class WorkDir:
    """Names of the intermediate files; one per chunk and stage, plus a few global ones."""

    def __init__(self, out_dir: Path, key: str):
        self.parent = out_dir / WORK_DIR
        self.root = self.parent / key

    def prepare(self) -> bool:
        """Create the dir, removing work of other keys; True when earlier work of this key exists."""
        resumed = self.root.is_dir()
        if self.parent.is_dir():
            for other in self.parent.iterdir():
                if other != self.root:
                    shutil.rmtree(other) if other.is_dir() else other.unlink()
        for sub in ("pydocs", "clean", "examples"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        return resumed

    def remove(self) -> None:
        shutil.rmtree(self.parent, ignore_errors=True)

    @property
    def plan(self) -> Path:
        return self.root / "plan.json"

    def pydocs_docs(self, index: int) -> Path:
        return self.root / "pydocs" / f"{index:06d}.json"

    def clean_docs(self, chunk: int) -> Path:
        return self.root / "clean" / f"{chunk:06d}.docs.json"

    def clean_signatures(self, chunk: int) -> Path:
        return self.root / "clean" / f"{chunk:06d}.minhash.npz"

    def clean_meta(self, chunk: int) -> Path:
        return self.root / "clean" / f"{chunk:06d}.meta.json"

    def decisions(self, chunk: int) -> Path:
        return self.root / "clean" / f"{chunk:06d}.decisions.json"

    @property
    def tokenizer_info(self) -> Path:
        return self.root / "tokenizer.json"

    def train_examples(self, chunk: int) -> Path:
        return self.root / "examples" / f"{chunk:06d}.train.npz"

    def valid_documents(self, chunk: int) -> Path:
        return self.root / "examples" / f"{chunk:06d}.valid-docs.npz"

    def examples_meta(self, chunk: int) -> Path:
        return self.root / "examples" / f"{chunk:06d}.meta.json"

    @property
    def valid_examples(self) -> Path:
        return self.root / "examples" / "valid.npz"

"""The demo's labelled task, from the same offline source as its corpus: which package wrote a docstring.

Every docstring of at least ``min_chars`` characters in the modules of a few installed packages
(numpy, scipy, matplotlib, torch) is an example, labelled with its top-level package: a real
property of the text, learnable from its vocabulary and style. Whole modules go to one split
(seeded hash of the module name), and the valid and test modules are returned as
``held_out_modules`` so the demo excludes them from the pretraining corpus: no text the classifier
is tested on was seen in pretraining.
"""

from __future__ import annotations

import functools
import hashlib
import multiprocessing
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from data_prep.pydocs import iter_pydocs

LABELS = ("matplotlib", "numpy", "scipy", "torch")
SPLIT_FRACTIONS = (("train", 0.7), ("valid", 0.1), ("test", 0.2))


@dataclass
class DocstringTask:
    files: dict[str, Path]
    held_out_modules: list[str]
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> label -> examples


def split_of(module: str, seed: int) -> str:
    """Train / valid / test for a module, from a hash of its name: stable across runs and machines."""
    digest = hashlib.sha256(f"{seed}:{module}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") / 2**64
    for split, fraction in SPLIT_FRACTIONS:
        if point < fraction:
            return split
        point -= fraction
    return SPLIT_FRACTIONS[-1][0]


def _one_line(text: str) -> str:
    return " ".join(text.split())


def build_docstring_task(
    out_dir: str | Path,
    *,
    labels=LABELS,
    per_class: dict[str, int] | None = None,
    min_chars: int = 80,
    seed: int = 0,
) -> DocstringTask:
    """Write ``train.tsv``, ``valid.tsv``, ``test.tsv`` (``label<TAB>text``) under ``out_dir``.

    ``per_class`` caps the examples per label and split (a seeded sample), keeping the classes
    balanced and the fine-tuning short.
    """
    # Few labels per class: where pretraining matters (with thousands, a model from scratch catches up).
    per_class = per_class or {"train": 250, "valid": 150, "test": 300}
    found = {split: {label: [] for label in labels} for split, _ in SPLIT_FRACTIONS}
    held_out: list[str] = []
    # Parsing the packages' ~5,000 source files is most of the time (~20 s on one core): on every
    # core, in order (imap), so the result is the same as one process's.
    with multiprocessing.get_context("spawn").Pool(os.cpu_count() or 1) as pool:
        parse = functools.partial(pool.imap, chunksize=16)
        for doc in iter_pydocs(include=list(labels), map_fn=parse):
            split = split_of(doc.module, seed)
            if split != "train":
                held_out.append(doc.module)
            label = doc.module.split(".")[0]
            found[split][label].extend(_one_line(text) for text in doc.docstrings if len(text) >= min_chars)
    missing = [label for label in labels if not found["train"][label]]
    if missing:
        raise RuntimeError(f"the docstring task needs the packages {missing} installed in this environment")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    files, counts = {}, {}
    for split, _ in SPLIT_FRACTIONS:
        rows = []
        for label in labels:
            texts = sorted(set(found[split][label]))
            rng.shuffle(texts)
            rows += [(label, text) for text in texts[: per_class[split]]]
        rng.shuffle(rows)
        path = out_dir / f"{split}.tsv"
        path.write_text(
            "label\ttext\n" + "".join(f"{label}\t{text}\n" for label, text in rows), encoding="utf-8"
        )
        files[split] = path
        counts[split] = {label: sum(1 for row in rows if row[0] == label) for label in labels}
    return DocstringTask(files=files, held_out_modules=sorted(set(held_out)), counts=counts)

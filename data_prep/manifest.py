"""Contract 1: the prepared data directory's versioned format, shared by writer and readers.

``data_prep`` writes ``<data_dir>/manifest.json`` last and atomically; ``pretrain`` and
``data_prep verify`` read it through ``load_manifest``, which checks the format loudly and says how
to regenerate. This module is the public surface other stages may import from ``data_prep``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

FORMAT = "bert-pretrain-wds/1"
MANIFEST_NAME = "manifest.json"
TOKENIZER_DIR = "tokenizer"
SPLITS = ("train", "valid")

# Members of one sample in a shard (``<key>.<ext>``); keys hold no dots.
TOKENS_EXT = "tokens.npy"  # unpadded ids: [CLS] A [SEP] B [SEP] (mlm+nsp) or [CLS] text [SEP] (mlm)
NSP_EXT = "nsp.cls"  # ASCII "0" (B follows A) or "1" (B is random), as HF's next_sentence_label
SAMPLE_EXTS = frozenset({TOKENS_EXT, NSP_EXT})

OBJECTIVES = ("mlm+nsp", "mlm")
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # at ids 0..4 when trained here

REGENERATE_HINT = "regenerate it with: python -m data_prep --config configs/prep/NAME.yaml out_dir=DIR"


class ManifestError(ValueError):
    """The data directory is missing, incomplete or of another format; the message says how to fix it."""


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def sha256_tree(directory: str | Path) -> str:
    """One digest over every file below ``directory`` (relative names and contents, sorted)."""
    directory = Path(directory)
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(path.relative_to(directory).as_posix().encode())
        digest.update(b"\0")
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write JSON through a temporary file and ``os.replace``, so readers see all of it or nothing."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(obj, handle, indent=2, sort_keys=False)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def build_manifest(
    data_dir: str | Path,
    *,
    objective: str,
    seq_len: int,
    token_dtype: str,
    vocab_size: int,
    special_ids: dict[str, int],
    shards: dict[str, list[dict[str, Any]]],
    samples_per_shard: int,
    prep_config: dict[str, Any],
) -> dict[str, Any]:
    """The manifest of a data dir whose tokenizer and shards are written: ``shards`` maps each split
    to its shard entries (``path`` relative to the data dir, ``samples``, ``tokens``, ``bytes``,
    ``sha256``), which are listed in path order with their totals."""
    splits = {}
    for split in SPLITS:
        entries = sorted(shards.get(split, []), key=lambda entry: entry["path"])
        splits[split] = {
            "shards": entries,
            "samples": sum(entry["samples"] for entry in entries),
            "tokens": sum(entry["tokens"] for entry in entries),
            "bytes": sum(entry["bytes"] for entry in entries),
            "samples_per_shard": samples_per_shard,
        }
    return {
        "format": FORMAT,
        "objective": objective,
        "seq_len": seq_len,
        "token_dtype": token_dtype,
        "tokenizer": {
            "path": TOKENIZER_DIR,
            "vocab_size": vocab_size,
            "special_ids": special_ids,
            "sha256": sha256_tree(Path(data_dir) / TOKENIZER_DIR),
        },
        "splits": splits,
        "prep_config": prep_config,
    }


def load_manifest(data_dir: str | Path) -> dict[str, Any]:
    """Read and check ``<data_dir>/manifest.json``; raise ``ManifestError`` with a fix on any mismatch."""
    data_dir = Path(data_dir)
    path = data_dir / MANIFEST_NAME
    if not data_dir.is_dir():
        raise ManifestError(f"data dir {str(data_dir)!r} does not exist; {REGENERATE_HINT}")
    if not path.is_file():
        raise ManifestError(
            f"{str(path)!r} is missing, so {str(data_dir)!r} is not a complete prepared data dir "
            f"(an interrupted data_prep leaves none); {REGENERATE_HINT}"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ManifestError(f"{str(path)!r} is unreadable ({err}); {REGENERATE_HINT}") from None
    found = manifest.get("format") if isinstance(manifest, dict) else None
    if found != FORMAT:
        raise ManifestError(
            f"{str(path)!r} has format {found!r}, this code reads {FORMAT!r}; {REGENERATE_HINT}"
        )
    for key in ("objective", "seq_len", "tokenizer", "splits"):
        if key not in manifest:
            raise ManifestError(f"{str(path)!r} lacks the key {key!r}; {REGENERATE_HINT}")
    if manifest["objective"] not in OBJECTIVES:
        raise ManifestError(
            f"{str(path)!r} has objective {manifest['objective']!r}, not one of {OBJECTIVES}; {REGENERATE_HINT}"
        )
    return manifest


def shard_paths(data_dir: str | Path, manifest: dict[str, Any], split: str) -> list[Path]:
    """Absolute paths of one split's shards, in manifest order."""
    entries = manifest["splits"].get(split, {}).get("shards", [])
    return [Path(data_dir) / entry["path"] for entry in entries]

"""Small prepared data dirs (Contract 1) made from generated token streams, for trainer tests.

The text is a random Markov chain over a small word vocabulary (each word has four successors,
words Zipf-distributed as in natural text), so masked tokens are predictable from their frequency
and neighbours, and the MLM loss falls within a few dozen steps. Writing goes through the same public pieces data_prep uses (manifest helpers,
plain tar members), independent of data_prep's pipeline so trainer tests stay fast.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np

from benchmarks.synthetic_shards import write_word_level_tokenizer
from data_prep.atomic import write_json_atomic
from data_prep.manifest import (
    MANIFEST_NAME,
    NSP_EXT,
    SPECIAL_TOKENS,
    TOKENIZER_DIR,
    TOKENS_EXT,
    build_manifest,
    load_manifest,
    sha256_file,
    shard_specs,
)

N_SPECIAL = len(SPECIAL_TOKENS)  # [PAD] [UNK] [CLS] [SEP] [MASK] = 0..4
PAD, UNK, CLS, SEP, MASK = range(N_SPECIAL)


def _zipf_words(rng: np.random.Generator, vocab_size: int, size) -> np.ndarray:
    """Word ids with Zipf-like frequencies (rank r has weight 1/r), as in natural text."""
    weights = 1.0 / np.arange(1, vocab_size - N_SPECIAL + 1)
    return N_SPECIAL + rng.choice(vocab_size - N_SPECIAL, size=size, p=weights / weights.sum())


def markov_tokens(
    rng: np.random.Generator, vocab_size: int, length: int, successors: np.ndarray
) -> np.ndarray:
    out = np.empty(length, dtype=np.int64)
    out[0] = _zipf_words(rng, vocab_size, 1)[0]
    for i in range(1, length):
        out[i] = successors[out[i - 1] - N_SPECIAL, rng.integers(0, successors.shape[1])]
    return out


def make_examples(
    n: int, *, seed: int, vocab_size: int, seq_len: int, nsp: bool
) -> list[tuple[np.ndarray, int | None]]:
    rng = np.random.default_rng(seed)
    successors = _zipf_words(np.random.default_rng(0), vocab_size, (vocab_size - N_SPECIAL, 4))
    examples = []
    for _ in range(n):
        total = int(rng.integers(seq_len // 2, seq_len - 2)) if rng.random() < 0.3 else seq_len - 3
        if nsp:
            a_len = int(rng.integers(1, total))
            a = markov_tokens(rng, vocab_size, a_len, successors)
            label = int(rng.random() < 0.5)
            b = markov_tokens(rng, vocab_size, total - a_len, successors)
            if label == 0:  # B continues A's chain
                b = markov_tokens(np.random.default_rng(int(a[-1])), vocab_size, total - a_len, successors)
            ids = np.concatenate([[CLS], a, [SEP], b, [SEP]])
            examples.append((ids.astype(np.uint16), label))
        else:
            ids = np.concatenate([[CLS], markov_tokens(rng, vocab_size, total + 1, successors), [SEP]])
            examples.append((ids.astype(np.uint16), None))
    return examples


def _member(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(payload), 0, 0o644
    tar.addfile(info, io.BytesIO(payload))


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def write_shard(path: Path, index: int, examples, extra_members: dict[str, bytes] | None = None) -> dict:
    """Write one shard; ``extra_members`` (name -> bytes) lets tests plant hostile members."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tokens = 0
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for i, (ids, label) in enumerate(examples):
            key = f"{index:06d}_{i:06d}"
            _member(tar, f"{key}.{TOKENS_EXT}", npy_bytes(ids))
            if label is not None:
                _member(tar, f"{key}.{NSP_EXT}", str(label).encode())
            tokens += int(ids.size)
        for name, payload in (extra_members or {}).items():
            _member(tar, name, payload)
    return {
        "path": "",
        "samples": len(examples),
        "tokens": tokens,
        "bytes": path.stat().st_size,
        "sha256": sha256_file(path),
    }


def make_data_dir(
    root: Path,
    *,
    train_shards: int = 4,
    samples_per_shard: int = 64,
    valid_samples: int = 64,
    vocab_size: int = 200,
    seq_len: int = 64,
    nsp: bool = True,
    seed: int = 0,
) -> Path:
    """A complete data dir; returns its path."""
    root.mkdir(parents=True, exist_ok=True)
    write_word_level_tokenizer(root / TOKENIZER_DIR, vocab_size, seq_len)
    shards: dict[str, list[dict]] = {}
    for split, count, number in (
        ("train", train_shards * samples_per_shard, train_shards),
        ("valid", valid_samples, 1),
    ):
        examples = make_examples(
            count, seed=seed + (split == "valid"), vocab_size=vocab_size, seq_len=seq_len, nsp=nsp
        )
        per = -(-count // number)
        shards[split] = []
        for index in range(number):
            relative = f"shards/{split}/synthetic-{index:06d}.tar"
            entry = write_shard(root / relative, index, examples[index * per : (index + 1) * per])
            shards[split].append({**entry, "path": relative})
    manifest = build_manifest(
        root,
        objective="mlm+nsp" if nsp else "mlm",
        seq_len=seq_len,
        token_dtype="uint16",
        vocab_size=vocab_size,
        special_ids={"pad": PAD, "unk": UNK, "cls": CLS, "sep": SEP, "mask": MASK},
        shards=shards,
        samples_per_shard=samples_per_shard,
        prep_config={"synthetic": True, "seed": seed},
    )
    write_json_atomic(root / MANIFEST_NAME, manifest)
    return root


def train_stream(data_dir, *, seed, micro_batch_size, rank=0, world_size=1, source=None, **kwargs):
    """The training stream of ``data_dir`` (a path or, with ``source``, a URL) as the trainer builds
    it, for rank ``rank`` of ``world_size``; ``kwargs`` are TrainStream's other arguments."""
    from pretrain.data import TokenLayout, TrainStream

    manifest = load_manifest(data_dir, source)
    return TrainStream(
        shard_specs(data_dir, manifest, "train"),
        TokenLayout.from_manifest(manifest),
        rank=rank,
        world_size=world_size,
        seed=seed,
        micro_batch_size=micro_batch_size,
        mlm_probability=0.15,
        source=source,
        **kwargs,
    )

"""Strict reading of ``bert-pretrain-wds/1`` shards: checked, and never executing their content.

A shard is read whole and its sha256 compared with the manifest's; WebDataset's tar iterator then
groups the members into samples by key (``tar_file_expander`` + ``group_by_keys``, the first stages
of ``wds.WebDataset``) but its decoders are not used: they would unpickle ``.pyd``/``.pickle``
members. Decoding is ours: only ``<key>.tokens.npy`` (``allow_pickle=False``) and ``<key>.nsp.cls``
are accepted. Anything else (pickle members, path-traversal names, out-of-range ids) marks the
sample bad; members that are not regular files (links) are never read, so their sample misses a
member or the shard its promised count. Nothing is ever unpickled or written to disk.
"""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from webdataset.tariterators import group_by_keys, tar_file_expander

from data_prep.manifest import NSP_EXT, SAMPLE_EXTS, TOKENS_EXT

_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
WHOLE_SHARD = "*"  # BadSample.key of the samples of a shard that failed as a whole
VERIFY_HINT = (
    "run `python -m data_prep verify DATA_DIR` to list bad shards, and regenerate them with data_prep"
)


class ShardError(RuntimeError):
    """A shard or sample failed a check; the message names the shard, the sample and the check."""


@dataclass(frozen=True)
class Sample:
    key: str
    tokens: np.ndarray  # [n] token ids, unpadded
    nsp_label: int | None


@dataclass(frozen=True)
class BadSample:
    shard: str
    key: str
    reason: str

    def describe(self) -> str:
        return (
            self.reason
            if self.key == WHOLE_SHARD
            else f"shard {self.shard} sample {self.key!r}: {self.reason}"
        )


@dataclass(frozen=True)
class ShardSpec:
    """What the manifest promises about one shard."""

    path: Path
    sha256: str
    samples: int


@dataclass(frozen=True)
class SampleRules:
    """What every sample must satisfy."""

    nsp: bool
    vocab_size: int
    seq_len: int
    cls_id: int


def _parse_sample(key: str, members: dict[str, bytes], rules: SampleRules) -> Sample:
    unexpected = sorted(set(members) - SAMPLE_EXTS)
    if unexpected:
        raise ValueError(f"unexpected member(s) {unexpected} (only {sorted(SAMPLE_EXTS)} are read)")
    if TOKENS_EXT not in members:
        raise ValueError(f"missing member .{TOKENS_EXT}")
    try:
        tokens = np.load(io.BytesIO(members[TOKENS_EXT]), allow_pickle=False)
    except ValueError as err:  # also raised for pickled object arrays, which are refused
        raise ValueError(f".{TOKENS_EXT} is not a plain NumPy array ({err})") from None
    if tokens.ndim != 1 or tokens.dtype.kind not in "iu":
        raise ValueError(f".{TOKENS_EXT} must be a 1-D integer array, got {tokens.dtype} {tokens.shape}")
    if not 2 <= tokens.size <= rules.seq_len:
        raise ValueError(f"{tokens.size} tokens, outside 2..seq_len={rules.seq_len}")
    low, high = int(tokens.min()), int(tokens.max())
    if low < 0 or high >= rules.vocab_size:
        raise ValueError(
            f"token id {high if high >= rules.vocab_size else low} outside the vocabulary [0, {rules.vocab_size})"
        )
    if int(tokens[0]) != rules.cls_id:
        raise ValueError(f"does not start with [CLS] (id {rules.cls_id})")
    nsp_label = None
    if rules.nsp:
        if NSP_EXT not in members:
            raise ValueError(f"missing member .{NSP_EXT} (the objective is mlm+nsp)")
        text = members[NSP_EXT].strip()
        if text not in (b"0", b"1"):
            raise ValueError(f".{NSP_EXT} must be 0 or 1, got {text[:20]!r}")
        nsp_label = int(text)
    return Sample(key=key, tokens=tokens.astype(np.int64), nsp_label=nsp_label)


def read_shard(spec: ShardSpec, rules: SampleRules) -> list[Sample | BadSample]:
    """All samples of one shard in stored order; bad samples are returned as ``BadSample``.

    A shard whose bytes do not match the manifest's sha256 (truncated, flipped, replaced) or that is
    not a readable tar raises ``ShardError``: none of its samples can be trusted.
    """
    name = spec.path.name
    try:
        data = spec.path.read_bytes()
    except OSError as err:
        raise ShardError(f"shard {spec.path}: cannot be read ({err.strerror}); {VERIFY_HINT}") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != spec.sha256:
        raise ShardError(
            f"shard {spec.path}: sha256 {digest[:12]}... does not match the manifest's {spec.sha256[:12]}... "
            f"(truncated or corrupted); {VERIFY_HINT}"
        )
    try:
        groups = list(group_by_keys(tar_file_expander([{"url": name, "stream": io.BytesIO(data)}])))
    except (tarfile.TarError, EOFError, ValueError) as err:  # ValueError: a member repeated within a sample
        raise ShardError(
            f"shard {spec.path}: not a readable tar ({err.args[0] if err.args else err}); {VERIFY_HINT}"
        ) from None
    # WebDataset starts a new sample whenever the key changes; a key whose members are not adjacent
    # (a planted extra member, say) is merged back, so the check below sees all of them.
    by_key: dict[str, dict[str, bytes]] = {}
    repeated: dict[str, str] = {}
    for group in groups:
        members = by_key.setdefault(group["__key__"], {})
        for ext, value in group.items():
            if ext.startswith("__"):
                continue
            if ext in members:
                repeated[group["__key__"]] = f"member .{ext} appears twice"
            members[ext] = value
    samples: list[Sample | BadSample] = []
    for key, members in by_key.items():
        if not _KEY.match(key):
            names = sorted(f"{key}.{ext}" for ext in members)[:3]
            samples.append(
                BadSample(
                    name,
                    f"<{key[:60]}>",
                    f"refused member name(s) {names} (not a plain file named <key>.<ext>)",
                )
            )
        elif key in repeated:
            samples.append(BadSample(name, key, repeated[key]))
        else:
            try:
                samples.append(_parse_sample(key, members, rules))
            except ValueError as err:
                samples.append(BadSample(name, key, str(err)))
    if len(samples) != spec.samples:
        raise ShardError(
            f"shard {spec.path}: holds {len(samples)} samples, the manifest says {spec.samples}; {VERIFY_HINT}"
        )
    return samples

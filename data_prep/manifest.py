"""The data contract: the prepared data dir's versioned format, shared by its writer and readers.

``data_prep`` writes ``<data_dir>/manifest.json`` last and atomically; ``pretrain`` and
``data_prep verify`` read it through ``load_manifest``, which checks the format loudly and says how
to regenerate. Also here: the shard member names and key pattern, the one rule set every sample
must satisfy (``check_sample``), the one shard reader (``read_shard``, WebDataset's tar iterator,
never unpickling); its files are written through ``data_prep.atomic``. docs/contracts.md describes
the layout in prose. This module is the public surface other stages may import from ``data_prep``.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from data_prep.storage import DataSource, FetchError, join

FORMAT = "bert-pretrain-wds/1"
MANIFEST_NAME = "manifest.json"
TOKENIZER_DIR = "tokenizer"
SPLITS = ("train", "valid")

# Members of one sample in a shard (``<key>.<ext>``); keys hold no dots.
TOKENS_EXT = "tokens.npy"  # unpadded ids: [CLS] A [SEP] B [SEP] (mlm+nsp) or [CLS] text [SEP] (mlm)
NSP_EXT = "nsp.cls"  # ASCII "0" (B follows A) or "1" (B is random), as HF's next_sentence_label
SAMPLE_EXTS = frozenset({TOKENS_EXT, NSP_EXT})
KEY_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")  # ``<shard:06d>_<sample:06d>`` when written here

OBJECTIVES = ("mlm+nsp", "mlm")
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # at ids 0..4 when trained here

REGENERATE_HINT = "regenerate it with: python -m data_prep --config configs/prep/NAME.yaml out_dir=DIR"


VERIFY_HINT = (
    "run `python -m data_prep verify DATA_DIR` to list bad shards, and regenerate them with data_prep"
)
WHOLE_SHARD = "*"  # BadSample.key of the samples of a shard that failed as a whole


class ManifestError(ValueError):
    """The data directory is missing, incomplete or of another format; the message says how to fix it."""


class ShardError(RuntimeError):
    """A shard failed as a whole (sha256, unreadable tar, sample count); the message names it."""


def sample_key(shard_index: int, sample_index: int) -> str:
    """``000003_000017`` = shard 3, sample 17: unique within a split, no dots (WebDataset splits on them)."""
    return f"{shard_index:06d}_{sample_index:06d}"


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def _tree_digest(file_digests: dict[str, str]) -> str:
    digest = hashlib.sha256()
    for name in sorted(file_digests, key=PurePosixPath):
        digest.update(name.encode())
        digest.update(b"\0")
        digest.update(file_digests[name].encode())
    return digest.hexdigest()


def sha256_tree(directory: str | Path) -> str:
    """One digest over every file below ``directory`` (relative names and contents, sorted)."""
    directory = Path(directory)
    files = (p for p in directory.rglob("*") if p.is_file())
    return _tree_digest({p.relative_to(directory).as_posix(): sha256_file(p) for p in files})


def sha256_files(files: dict[str, bytes]) -> str:
    """``sha256_tree`` of a directory held in memory as ``{relative name: bytes}``."""
    return _tree_digest({name: hashlib.sha256(data).hexdigest() for name, data in files.items()})


def tokenizer_files(source: DataSource, manifest: dict[str, Any]) -> dict[str, bytes]:
    """The tokenizer dir of a data dir (local or remote), checked against the manifest's sha256."""
    tokenizer = manifest["tokenizer"]
    try:
        files = source.tree(tokenizer["path"], tokenizer.get("files"))
    except (OSError, FetchError) as err:
        raise ManifestError(
            f"the tokenizer of {source.root} cannot be read ({err}); {REGENERATE_HINT}"
        ) from None
    if not files or sha256_files(files) != tokenizer.get("sha256"):
        raise ManifestError(
            f"the tokenizer in {source.location(tokenizer['path'])} is not the one its shards were made "
            f"with (sha256 {sha256_files(files)[:12]}... vs manifest {str(tokenizer.get('sha256'))[:12]}...); "
            f"{REGENERATE_HINT}"
        )
    return files


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
            "files": sorted(
                (
                    p.relative_to(Path(data_dir) / TOKENIZER_DIR).as_posix()
                    for p in (Path(data_dir) / TOKENIZER_DIR).rglob("*")
                    if p.is_file()
                ),
                key=PurePosixPath,
            ),
        },
        "splits": splits,
        "prep_config": prep_config,
    }


def load_manifest(data_dir: str | Path, source: DataSource | None = None) -> dict[str, Any]:
    """Read and check ``<data_dir>/manifest.json`` (a path or URL, read through ``source`` when
    given); raise ``ManifestError`` with a fix on any mismatch."""
    source = source or DataSource(data_dir)
    path = source.location(MANIFEST_NAME)
    if not source.remote and not Path(data_dir).is_dir():
        raise ManifestError(f"data dir {str(data_dir)!r} does not exist; {REGENERATE_HINT}")
    if not source.remote and not Path(path).is_file():
        raise ManifestError(
            f"{str(path)!r} is missing, so {str(data_dir)!r} is not a complete prepared data dir "
            f"(an interrupted data_prep leaves none); {REGENERATE_HINT}"
        )
    try:
        manifest = json.loads(source.read_text(MANIFEST_NAME))
    except (OSError, FetchError, UnicodeDecodeError, json.JSONDecodeError) as err:
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


def shard_paths(data_dir: str | Path, manifest: dict[str, Any], split: str) -> list[Path | str]:
    """Locations of one split's shards (paths, or URLs for a remote data dir), in manifest order."""
    entries = manifest["splits"].get(split, {}).get("shards", [])
    return [join(data_dir, entry["path"]) for entry in entries]


# ---------------------------------------------------------------------------------------------
# Samples: one rule set, one reader


@dataclass(frozen=True)
class SampleRules:
    """What every sample of a data dir must satisfy, from its manifest."""

    nsp: bool
    vocab_size: int
    seq_len: int
    cls_id: int
    sep_id: int
    dtype: str

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> SampleRules:
        special = manifest["tokenizer"]["special_ids"]
        return cls(
            nsp=manifest["objective"] == "mlm+nsp",
            vocab_size=int(manifest["tokenizer"]["vocab_size"]),
            seq_len=int(manifest["seq_len"]),
            cls_id=int(special["cls"]),
            sep_id=int(special["sep"]),
            dtype=str(manifest["token_dtype"]),
        )


@dataclass(frozen=True)
class Sample:
    key: str
    tokens: np.ndarray  # [n] token ids (int64), unpadded
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
    """What the manifest promises about one shard; ``path`` is a local path or a URL."""

    path: Path | str
    sha256: str
    samples: int

    @property
    def name(self) -> str:
        return str(self.path).rstrip("/").rsplit("/", 1)[-1]


def shard_specs(data_dir: str | Path, manifest: dict[str, Any], split: str) -> list[ShardSpec]:
    entries = manifest["splits"].get(split, {}).get("shards", [])
    return [
        ShardSpec(path=path, sha256=entry["sha256"], samples=int(entry["samples"]))
        for path, entry in zip(shard_paths(data_dir, manifest, split), entries)
    ]


def load_tokens(data: bytes) -> np.ndarray:
    """A ``.npy`` member; pickled (object) arrays are refused with ``ValueError``."""
    return np.load(io.BytesIO(data), allow_pickle=False)


def check_sample(key: str, members: dict[str, bytes], rules: SampleRules) -> Sample:
    """The sample if it is a BERT sample of this data dir, else ``ValueError`` naming the failed check.

    A sample is ``[CLS] A [SEP]`` (mlm) or ``[CLS] A [SEP] B [SEP]`` (mlm+nsp, with an NSP label "0"
    or "1") with non-empty segments, at most ``seq_len`` ids of the manifest's dtype, all below
    ``vocab_size``; its members are exactly the objective's (``tokens.npy``, and ``nsp.cls``).
    """
    wanted = {TOKENS_EXT, NSP_EXT} if rules.nsp else {TOKENS_EXT}
    unexpected = sorted(set(members) - wanted)
    if unexpected:
        raise ValueError(f"unexpected member(s) {unexpected} (only {sorted(wanted)} are read)")
    missing = sorted(wanted - set(members))
    if missing:
        objective = " (the objective is mlm+nsp)" if missing == [NSP_EXT] else ""
        raise ValueError(f"missing member .{missing[0]}{objective}")
    nsp_label = None
    if rules.nsp:
        text = members[NSP_EXT].strip()
        if text not in (b"0", b"1"):
            raise ValueError(f".{NSP_EXT} must be 0 or 1, got {text[:20]!r}")
        nsp_label = int(text)
    try:
        tokens = load_tokens(members[TOKENS_EXT])
    except ValueError as err:  # also raised for pickled object arrays, which are refused
        raise ValueError(f".{TOKENS_EXT} is not a plain NumPy array ({err})") from None
    if tokens.ndim != 1 or tokens.dtype != np.dtype(rules.dtype):
        raise ValueError(
            f".{TOKENS_EXT} is {tokens.dtype} {tokens.shape}, expected a 1-D {rules.dtype} array"
        )
    if tokens.size > rules.seq_len:
        raise ValueError(f"{tokens.size} tokens, more than seq_len={rules.seq_len}")
    if tokens.size and int(tokens.max()) >= rules.vocab_size:
        raise ValueError(f"token id {int(tokens.max())} outside the vocabulary [0, {rules.vocab_size})")
    separators = [int(i) for i in np.flatnonzero(tokens == rules.sep_id)]
    bounds = [0, *separators]
    segments = 2 if rules.nsp else 1
    if (
        not tokens.size
        or int(tokens[0]) != rules.cls_id
        or len(separators) != segments
        or separators[-1] != tokens.size - 1
        or any(b - a < 2 for a, b in zip(bounds, bounds[1:]))
    ):
        layout = "[CLS] A [SEP] B [SEP]" if rules.nsp else "[CLS] A [SEP]"
        raise ValueError(
            f"not {layout} with non-empty segments (cls id {rules.cls_id}, sep id {rules.sep_id}; "
            f"starts {tokens[:3].tolist()}, ends {tokens[-3:].tolist()}, {tokens.size} tokens)"
        )
    return Sample(key=key, tokens=tokens.astype(np.int64), nsp_label=nsp_label)


def tar_samples(data: bytes, name: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """``(key, {extension: bytes})`` per sample of a tar held in memory, grouped by WebDataset's tar
    iterator (``tar_file_expander`` + ``group_by_keys``, the first stages of ``wds.WebDataset``);
    its decoders are not used, since they would unpickle ``.pyd``/``.pickle`` members. Members that
    are not regular files (links) are skipped by WebDataset and never read; names are not checked
    here (``parse_shard`` does). Raises ``tarfile.TarError``/``EOFError``/``ValueError`` on a
    broken tar or a member repeated within one group."""
    from webdataset.tariterators import group_by_keys, tar_file_expander

    for group in group_by_keys(tar_file_expander([{"url": name, "stream": io.BytesIO(data)}])):
        yield group["__key__"], {ext: value for ext, value in group.items() if not ext.startswith("__")}


def parse_shard(data: bytes, name: str, rules: SampleRules) -> list[Sample | BadSample]:
    """Every sample of a shard's bytes in stored order, checked; bad ones come back as ``BadSample``.
    A tar that cannot be read raises ``ShardError``."""
    try:
        groups = list(tar_samples(data, name))
    except (tarfile.TarError, EOFError, ValueError) as err:  # ValueError: a member repeated within a sample
        raise ShardError(
            f"shard {name}: not a readable tar ({err.args[0] if err.args else err}); {VERIFY_HINT}"
        ) from None
    # WebDataset starts a new sample whenever the key changes; a key whose members are not adjacent
    # (a planted extra member, say) is merged back, so the checks see all of them.
    by_key: dict[str, dict[str, bytes]] = {}
    repeated: dict[str, str] = {}
    for key, group in groups:
        members = by_key.setdefault(key, {})
        for ext, value in group.items():
            if ext in members:
                repeated[key] = f"member .{ext} appears twice"
            members[ext] = value
    samples: list[Sample | BadSample] = []
    for key, members in by_key.items():
        if not KEY_PATTERN.match(key):
            names = sorted(f"{key}.{ext}" for ext in members)[:3]
            reason = f"refused member name(s) {names} (not a plain file named <key>.<ext>)"
            samples.append(BadSample(name, f"<{key[:60]}>", reason))
        elif key in repeated:
            samples.append(BadSample(name, key, repeated[key]))
        else:
            try:
                samples.append(check_sample(key, members, rules))
            except ValueError as err:
                samples.append(BadSample(name, key, str(err)))
    return samples


def sha256_mismatch(spec: ShardSpec, data: bytes) -> str | None:
    """The one-line problem if ``data`` is not the shard the manifest lists, else None."""
    digest = hashlib.sha256(data).hexdigest()
    if digest == spec.sha256:
        return None
    return (
        f"shard {spec.path}: sha256 {digest[:12]}... does not match the manifest's {spec.sha256[:12]}... "
        f"(truncated or corrupted)"
    )


def read_shard(spec: ShardSpec, rules: SampleRules, data: bytes | None = None) -> list[Sample | BadSample]:
    """All samples of one shard in stored order (``data``: its bytes, when already fetched).

    A shard whose bytes do not match the manifest's sha256 (truncated, flipped, replaced), that is
    not a readable tar or that holds another number of samples raises ``ShardError``: none of its
    samples can be trusted. Nothing is ever unpickled or written to disk.
    """
    if data is None:
        try:
            data = Path(spec.path).read_bytes()
        except OSError as err:
            raise ShardError(f"shard {spec.path}: cannot be read ({err.strerror}); {VERIFY_HINT}") from None
    problem = sha256_mismatch(spec, data)
    if problem:
        raise ShardError(f"{problem}; {VERIFY_HINT}")
    samples = parse_shard(data, spec.name, rules)
    if len(samples) != spec.samples:
        raise ShardError(
            f"shard {spec.path}: holds {len(samples)} samples, the manifest says {spec.samples}; {VERIFY_HINT}"
        )
    return samples

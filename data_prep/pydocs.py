"""The embedded corpus ``pydocs``: the documentation text of the running Python environment.

One document per module file of the standard library and site-packages: its module, class and
function docstrings in source order, each docstring kept only the first time it is seen (licence
headers and copied docstrings repeat across modules). The interactive-help topics of the stdlib
(``pydoc_data.topics``, the text behind ``help("assert")``) are one document each.

Sources are read with ``ast``, never imported: importing thousands of modules is slow and runs
their side effects. Files are visited in module-name order, so the corpus is the same on every run
for a given environment. ``python -m data_prep.pydocs`` prints its size.
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import hashlib
import os
import re
import sys
import sysconfig
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

TOPICS_MODULE = "pydoc_data.topics"
SKIPPED_DIRS = frozenset({"__pycache__", "test", "tests", "idle_test"})
PARSE_BATCH = 256  # module files handed to ``map_fn`` at a time


@dataclass(frozen=True)
class ModuleDoc:
    """One pydocs document: ``source_id`` is ``pydocs:<module>`` (``pydocs:pydoc_data.topics:<topic>``)."""

    source_id: str
    module: str
    docstrings: tuple[str, ...]

    @property
    def text(self) -> str:
        return "\n\n".join(self.docstrings)


@dataclass(frozen=True)
class ModuleFile:
    module: str
    path: Path


@dataclass(frozen=True)
class Extracted:
    """What one module file yields: its docstrings in source order, or why it was skipped."""

    module: str
    path: Path
    docstrings: tuple[str, ...] = ()
    topics: tuple[tuple[str, str], ...] = ()
    error: str | None = None


def source_roots() -> list[Path]:
    """The stdlib and site-packages directories of the running interpreter (not the working dir)."""
    paths = sysconfig.get_paths()
    roots: list[Path] = []
    for name in ("stdlib", "platstdlib", "purelib", "platlib"):
        root = Path(paths[name])
        if root.is_dir() and root not in roots:
            roots.append(root)
    return roots


def module_pattern(patterns: Iterable[str]) -> re.Pattern | None:
    """One regex for module-name globs; a glob also matches the submodules of what it matches
    (``json`` matches ``json`` and ``json.decoder``). None when there are no globs."""
    globs = [g for pattern in patterns for g in (pattern, pattern + ".*")]
    return re.compile("|".join(fnmatch.translate(g) for g in globs)) if globs else None


def module_matches(module: str, patterns: Iterable[str]) -> bool:
    pattern = module_pattern(patterns)
    return pattern is not None and pattern.match(module) is not None


def _is_test_file(name: str) -> bool:
    return name.startswith("test_") or name.endswith("_test") or name == "conftest"


def list_module_files(include: Sequence[str] = (), exclude: Sequence[str] = ()) -> list[ModuleFile]:
    """Module files of the environment, sorted by module name; the first root wins a name clash,
    as in import order (stdlib before site-packages)."""
    roots = [str(root) for root in source_roots()]
    found: dict[str, str] = {}
    for root in roots:
        other_roots = set(roots) - {root}
        stack: list[tuple[str, tuple[str, ...]]] = [(root, ())]
        while stack:
            directory, package = stack.pop()
            try:
                entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
            except OSError:
                continue
            for entry in entries:
                name = entry.name
                if entry.is_dir():
                    if name not in SKIPPED_DIRS and name.isidentifier() and entry.path not in other_roots:
                        stack.append((entry.path, package + (name,)))
                elif name.endswith(".py") and name[:-3].isidentifier() and not _is_test_file(name[:-3]):
                    parts = package if name == "__init__.py" else package + (name[:-3],)
                    if parts:
                        found.setdefault(".".join(parts), entry.path)
    keep, drop = module_pattern(include), module_pattern(exclude)
    return [
        ModuleFile(module, Path(found[module]))
        for module in sorted(found)
        if (keep is None or keep.match(module)) and (drop is None or not drop.match(module))
    ]


def _docstrings_in_source_order(node: ast.AST) -> Iterator[str]:
    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        doc = ast.get_docstring(node, clean=True)
        if doc and doc.strip():
            yield doc
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.stmt):  # classes and functions only live in statements
            yield from _docstrings_in_source_order(child)


def _topics(tree: ast.Module) -> tuple[tuple[str, str], ...]:
    """``pydoc_data/topics.py`` is one ``topics = {...}`` literal: read it without importing."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "topics" for t in node.targets
        ):
            topics = ast.literal_eval(node.value)
            return tuple(sorted((str(k), str(v)) for k, v in topics.items()))
    return ()


def extract(file: ModuleFile) -> Extracted:
    """Parse one module file; any failure (Python 2 syntax, undecodable source) becomes ``error``."""
    try:
        tree = ast.parse(file.path.read_bytes(), filename=str(file.path))
        if file.module == TOPICS_MODULE:
            return Extracted(file.module, file.path, topics=_topics(tree))
        return Extracted(file.module, file.path, docstrings=tuple(_docstrings_in_source_order(tree)))
    except (SyntaxError, ValueError, OSError, RecursionError, MemoryError) as err:
        return Extracted(file.module, file.path, error=f"{type(err).__name__}: {err}".splitlines()[0][:200])


def iter_pydocs(
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    max_docs: int | None = None,
    map_fn: Callable[[Callable[[ModuleFile], Extracted], list[ModuleFile]], Iterable[Extracted]] = map,
    on_skip: Callable[[Extracted], None] | None = None,
) -> Iterator[ModuleDoc]:
    """The pydocs documents in canonical order.

    ``include`` / ``exclude`` are module-name globs (see ``module_matches``); ``max_docs`` caps the
    count. ``map_fn`` must keep order (``map``, ``Pool.imap``): parsing runs wherever it says, the
    first-occurrence dedup of docstrings runs here, in order, so the result does not depend on it.
    ``on_skip`` receives the files that could not be parsed.
    """
    if max_docs is not None and max_docs <= 0:
        return
    seen: set[bytes] = set()

    def first_time(text: str) -> bool:
        digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        if digest in seen:
            return False
        seen.add(digest)
        return True

    def parsed() -> Iterator[Extracted]:
        # In batches: a pool's imap queues every task at once, and would go on parsing the whole
        # environment after max_docs is reached, delaying whatever the pool is given next.
        files = list_module_files(include, exclude)
        for start in range(0, len(files), PARSE_BATCH):
            yield from map_fn(extract, files[start : start + PARSE_BATCH])

    produced = 0
    for result in parsed():
        if result.error is not None:
            if on_skip is not None:
                on_skip(result)
            continue
        if result.topics:
            docs = [
                ModuleDoc(f"pydocs:{result.module}:{name}", result.module, (text,))
                for name, text in result.topics
                if text.strip() and first_time(text)
            ]
        else:
            kept = tuple(doc for doc in result.docstrings if first_time(doc))
            docs = [ModuleDoc(f"pydocs:{result.module}", result.module, kept)] if kept else []
        for doc in docs:
            yield doc
            produced += 1
            if max_docs is not None and produced >= max_docs:
                return


def main(argv: Sequence[str] | None = None) -> None:
    """Print the size of the pydocs corpus of this environment."""
    parser = argparse.ArgumentParser(prog="python -m data_prep.pydocs", description=main.__doc__)
    parser.add_argument("--include", nargs="*", default=[], help="module-name globs to keep")
    parser.add_argument("--exclude", nargs="*", default=[], help="module-name globs to leave out")
    parser.add_argument("--max-docs", type=int, default=None)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    skipped: list[Extracted] = []
    docs = chars = nbytes = 0
    packages: set[str] = set()
    for doc in iter_pydocs(args.include, args.exclude, args.max_docs, on_skip=skipped.append):
        text = doc.text
        docs += 1
        chars += len(text)
        nbytes += len(text.encode("utf-8", "surrogatepass"))
        packages.add(doc.module.split(".")[0])
    seconds = time.perf_counter() - start
    print(f"pydocs on Python {sys.version.split()[0]} ({', '.join(str(r) for r in source_roots())}):")
    print(
        f"  {docs} documents from {len(packages)} top-level packages, {nbytes / 1e6:.1f} MB "
        f"({chars} characters); {len(skipped)} files skipped as unparsable; read in {seconds:.1f} s"
    )


if __name__ == "__main__":
    main()

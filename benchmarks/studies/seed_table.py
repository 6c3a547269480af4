"""Mean ± std over fine-tuning seeds, one table row per base: ``python -m benchmarks.studies.seed_table ROW=DIR,DIR,... ...``.

Each DIR is a ``finetune`` out_dir; its ``eval.json`` holds the dev ("valid") and test
accuracy of the checkpoint selected on dev. Rows print as a Markdown table (sample std, n-1).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def seed_stats(dirs: list[Path]) -> dict[str, tuple[float, float, int]]:
    """split -> (mean, std, n) of accuracy over the runs' eval.json."""
    stats = {}
    for split in ("valid", "test"):
        values = [json.loads((d / "eval.json").read_text())["splits"][split]["accuracy"] for d in dirs]
        stats[split] = (
            statistics.mean(values),
            statistics.stdev(values) if len(values) > 1 else 0.0,
            len(values),
        )
    return stats


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args or any("=" not in a for a in args):
        print(
            "usage: python -m benchmarks.studies.seed_table NAME=OUT_DIR,OUT_DIR,... [NAME=...]",
            file=sys.stderr,
        )
        raise SystemExit(2)
    print("| base | SST-2 dev | SST-2 test | seeds |")
    print("| --- | ---: | ---: | ---: |")
    for arg in args:
        name, _, dirs = arg.partition("=")
        try:
            stats = seed_stats([Path(d) for d in dirs.split(",") if d])
        except (OSError, KeyError, json.JSONDecodeError) as err:
            print(f"error: {name}: {err} (is every run finished, with its eval.json?)", file=sys.stderr)
            raise SystemExit(1) from None
        (dev, dev_sd, n), (test, test_sd, _) = stats["valid"], stats["test"]
        print(f"| {name} | {dev:.4f} ± {dev_sd:.4f} | {test:.4f} ± {test_sd:.4f} | {n} |")


if __name__ == "__main__":
    main()

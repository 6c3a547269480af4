"""Progress bars for the long steps: MB/s from tqdm's byte counter, documents/s in the postfix."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm


def bars_wanted(requested: bool, rank: int) -> bool:
    """Bars only on a terminal, and only on rank 0 (N ranks would interleave N bars)."""
    return requested and rank == 0 and sys.stderr.isatty()


class Progress:
    def __init__(self, description: str, total: int | None, enabled: bool, item: str = "docs"):
        self.item = item
        self.count = 0
        self.start = time.perf_counter()
        self.bar = tqdm(
            total=total,
            desc=description,
            unit="B",
            unit_scale=True,
            unit_divisor=1000,
            disable=not enabled,
            dynamic_ncols=True,
            leave=True,
        )

    def update(self, nbytes: int, items: int) -> None:
        self.count += items
        self.bar.update(nbytes)
        if not self.bar.disable:
            rate = self.count / max(time.perf_counter() - self.start, 1e-9)
            self.bar.set_postfix_str(f"{self.count} {self.item}, {rate:,.0f} {self.item}/s", refresh=False)

    def close(self) -> None:
        self.bar.close()

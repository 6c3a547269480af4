"""The loss curve of a run (``loss.png``): train loss per log step, eval MLM/NSP loss per evaluation
(a fine-tuning run's rows have no MLM/NSP parts: its train and validation loss are drawn)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_losses(rows: list[dict[str, Any]], out: str | Path, title: str = "pretraining loss") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [row for row in rows if row.get("kind") == "train"]
    evals = [row for row in rows if row.get("kind") == "eval"]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    pretraining = bool(train) and "mlm_loss" in train[0]
    if train:
        label = "train loss (MLM + NSP)" if pretraining and "nsp_loss" in train[0] else "train loss"
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], label=label, lw=1.2)
    if pretraining:
        ax.plot(
            [r["step"] for r in train],
            [r["mlm_loss"] for r in train],
            label="train MLM loss",
            lw=1,
            alpha=0.7,
        )
    if evals and "mlm_loss" not in evals[0]:
        ax.plot([r["step"] for r in evals], [r["loss"] for r in evals], "o-", label="validation loss", ms=4)
    elif evals:
        ax.plot([r["step"] for r in evals], [r["mlm_loss"] for r in evals], "o-", label="eval MLM loss", ms=4)
        if "nsp_loss" in evals[0]:
            ax.plot(
                [r["step"] for r in evals], [r["nsp_loss"] for r in evals], "s--", label="eval NSP loss", ms=4
            )
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out)
    plt.close(fig)
    return out

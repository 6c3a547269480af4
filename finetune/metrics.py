"""Classification metrics from gold and predicted class ids, with NumPy only.

For class c, with TP/FP/FN counted from the confusion matrix C (rows gold, columns predicted):
    precision_c = TP / (TP + FP) = C[c, c] / sum_g C[g, c]
    recall_c    = TP / (TP + FN) = C[c, c] / sum_p C[c, p]
    f1_c        = 2 * precision_c * recall_c / (precision_c + recall_c)
A ratio whose denominator is 0 (a class never predicted, or absent) is 0, as scikit-learn's
``zero_division=0``. Macro F1 is the unweighted mean of f1_c over the classes that occur in the
gold labels or the predictions (scikit-learn's default label set), so a class missing from a small
split neither helps nor hurts. Accuracy = trace(C) / sum(C).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from finetune.tag_schemes import seqeval_inputs


def confusion_matrix(gold: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """[num_classes, num_classes] counts; entry [g, p] = rows of gold class g predicted as p."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (gold, predicted), 1)
    return matrix


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    return np.divide(numerator, denominator, out=np.zeros(len(numerator)), where=denominator > 0)


def classification_report(gold: np.ndarray, predicted: np.ndarray, class_names: Sequence[str]) -> dict:
    """Accuracy, macro F1, per-class precision/recall/F1/support and the confusion matrix (JSON-ready)."""
    matrix = confusion_matrix(gold, predicted, len(class_names))
    true_positives = np.diag(matrix).astype(np.float64)
    support = matrix.sum(axis=1)
    predicted_count = matrix.sum(axis=0)
    precision = _ratio(true_positives, predicted_count)
    recall = _ratio(true_positives, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
    occurring = (support > 0) | (predicted_count > 0)
    return {
        "rows": int(matrix.sum()),
        "accuracy": float(true_positives.sum() / max(1, matrix.sum())),
        "macro_f1": float(f1[occurring].mean()) if occurring.any() else 0.0,
        "per_class": {
            name: {
                "precision": float(precision[c]),
                "recall": float(recall[c]),
                "f1": float(f1[c]),
                "support": int(support[c]),
            }
            for c, name in enumerate(class_names)
        },
        "confusion_matrix": {"labels": list(class_names), "rows_gold_columns_predicted": matrix.tolist()},
    }


def format_reports(reports: dict[str, dict], class_names: Sequence[str]) -> str:
    """The console table: one line per split, then precision/recall/F1 per split and class."""
    width = max(len("class"), *(len(name) for name in class_names))
    lines = [f"{'split':<6} {'rows':>6} {'accuracy':>8} {'macro_f1':>8} {'loss':>7}"]
    for split, report in reports.items():
        lines.append(
            f"{split:<6} {report['rows']:>6} {report['accuracy']:>8.4f} {report['macro_f1']:>8.4f} "
            f"{report.get('loss', float('nan')):>7.4f}"
        )
    lines.append(f"{'split':<6} {'class':<{width}} {'precision':>9} {'recall':>7} {'f1':>7} {'support':>7}")
    for split, report in reports.items():
        for name in class_names:
            scores = report["per_class"][name]
            lines.append(
                f"{split:<6} {name:<{width}} {scores['precision']:>9.4f} {scores['recall']:>7.4f} "
                f"{scores['f1']:>7.4f} {scores['support']:>7}"
            )
    return "\n".join(lines)


def _ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their average rank (as Spearman's rho needs)."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.arange(1, len(values) + 1)
    unique, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return (sums / counts)[inverse]


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(), y - y.mean()
    denominator = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denominator) if denominator > 0 else 0.0  # constant predictions: 0


def regression_report(gold: np.ndarray, predicted: np.ndarray) -> dict:
    """MSE, Pearson's r and Spearman's rho (Pearson on average ranks) of predictions vs gold."""
    gold, predicted = gold.astype(np.float64), predicted.astype(np.float64)
    return {
        "rows": len(gold),
        "mse": float(np.mean((predicted - gold) ** 2)),
        "pearson": _pearson(gold, predicted),
        "spearman": _pearson(_ranks(gold), _ranks(predicted)),
    }


def entity_report(gold: list[list[str]], predicted: list[list[str]], scheme: str = "bio") -> dict:
    """Entity-level precision/recall/F1 (exact type and span), per type and micro-averaged, by seqeval
    with the spans of the tags' scheme (finetune/tag_schemes.py: bio by conlleval's rules, the others
    strictly); plus word-level tag accuracy."""
    from seqeval.metrics import accuracy_score
    from seqeval.metrics import classification_report as seqeval_report

    accuracy = float(accuracy_score(gold, predicted))
    gold, predicted, rules = seqeval_inputs(gold, predicted, scheme)
    per_type = seqeval_report(gold, predicted, output_dict=True, zero_division=0, **rules)
    micro = per_type.pop("micro avg")
    for average in ("macro avg", "weighted avg"):
        per_type.pop(average, None)
    return {
        "sentences": len(gold),
        "words": sum(map(len, gold)),
        "precision": float(micro["precision"]),
        "recall": float(micro["recall"]),
        "f1": float(micro["f1-score"]),
        "entities": int(micro["support"]),
        "accuracy": accuracy,
        "per_type": {
            name: {
                "precision": float(scores["precision"]),
                "recall": float(scores["recall"]),
                "f1": float(scores["f1-score"]),
                "support": int(scores["support"]),
            }
            for name, scores in sorted(per_type.items())
        },
    }


def summarize_seeds(reports: list) -> object:
    """Mean and sample std (ddof=1) over seeds of every number in equal-shaped reports; lists
    (confusion matrices) and strings are left out."""
    first = reports[0]
    if isinstance(first, dict):
        summary = {}
        for key in first:
            value = summarize_seeds([report[key] for report in reports])
            if value is not None:
                summary[key] = value
        return summary
    if isinstance(first, (int, float)) and not isinstance(first, bool):
        values = np.array(reports, dtype=np.float64)
        std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        return {"mean": float(values.mean()), "std": std}
    return None

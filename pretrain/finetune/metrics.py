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

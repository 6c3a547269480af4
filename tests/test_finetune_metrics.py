"""Fine-tuning metrics against counts worked out by hand."""

import numpy as np
import pytest

from finetune.metrics import classification_report, confusion_matrix, format_reports


def test_confusion_matrix_rows_are_gold_columns_predicted():
    gold = np.array([0, 0, 1, 2, 2, 2])
    predicted = np.array([0, 1, 1, 2, 0, 2])
    assert confusion_matrix(gold, predicted, 3).tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


def test_report_matches_hand_computed_scores():
    gold = np.array([0, 0, 1, 2, 2, 2])
    predicted = np.array([0, 1, 1, 2, 0, 2])
    report = classification_report(gold, predicted, ["a", "b", "c"])
    # a: TP 1, predicted 2, support 2 -> P 1/2, R 1/2; b: TP 1, predicted 2, support 1 -> P 1/2, R 1;
    # c: TP 2, predicted 2, support 3 -> P 1, R 2/3.
    f1 = {"a": 0.5, "b": 2 / 3, "c": 0.8}
    assert report["accuracy"] == pytest.approx(4 / 6)
    assert report["per_class"]["b"]["precision"] == pytest.approx(0.5)
    assert report["per_class"]["b"]["recall"] == pytest.approx(1.0)
    assert report["per_class"]["c"]["recall"] == pytest.approx(2 / 3)
    assert {name: scores["f1"] for name, scores in report["per_class"].items()} == pytest.approx(f1)
    assert report["macro_f1"] == pytest.approx(sum(f1.values()) / 3)
    assert report["per_class"]["c"]["support"] == 3


def test_absent_class_counts_zero_and_is_left_out_of_macro_f1():
    gold = np.array([0, 0, 1, 1])
    predicted = np.array([0, 0, 1, 0])
    report = classification_report(gold, predicted, ["a", "b", "never"])
    assert report["per_class"]["never"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    f1_a, f1_b = 2 * (2 / 3) * 1 / (2 / 3 + 1), 2 * 1 * 0.5 / 1.5
    assert report["macro_f1"] == pytest.approx((f1_a + f1_b) / 2)


def test_table_has_a_row_per_split_and_class():
    report = classification_report(np.array([0, 1]), np.array([0, 1]), ["neg", "pos"])
    table = format_reports({"valid": report, "test": report}, ["neg", "pos"]).splitlines()
    assert len(table) == 1 + 2 + 1 + 4
    assert table[1].split()[:4] == ["valid", "2", "1.0000", "1.0000"]

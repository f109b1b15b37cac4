"""Pure sampling logic: class weights, balance repeats, false-positive selection with exact counts."""

import numpy as np

from medray.train.sampling import (
    balance_plan,
    balance_repeats,
    class_weights,
    positive_index,
    repeat_indices,
    select_false_positives,
)


def test_class_weights_inverse_frequency():
    w = class_weights([300, 100])
    assert np.allclose(w, [400 / 600, 400 / 200])
    assert np.isclose((w * [300, 100]).sum(), 400)  # total weight equals the number of rows
    assert class_weights([10, 0, 30])[1] == 0


def test_balance_repeats_matches_largest_class():
    assert balance_repeats([300, 100]).tolist() == [1, 3]
    assert balance_repeats([50, 50]).tolist() == [1, 1]


def test_select_false_positives_exact():
    scores = np.array([0.9, 0.2, 0.7, 0.95, 0.6, 0.4, 0.8])
    labels = np.array([0, 0, 0, 1, 0, 0, 1])  # 0 = negative; index 3 and 6 are true positives
    chosen = select_false_positives(scores, labels, negative_label=0, threshold=0.6)
    assert chosen.tolist() == [0, 2, 4]  # highest score first; 0.6 counts (>=)
    assert select_false_positives(scores, labels, 0, 0.6, max_count=2).tolist() == [0, 2]
    assert select_false_positives(scores, labels, 0, 0.99).tolist() == []


def test_repeat_indices_k_times():
    out = repeat_indices(np.array([4, 1]), 3)
    assert out.tolist() == [4, 4, 4, 1, 1, 1]


def test_positive_index_binary_and_errors():
    import pytest

    from medray.errors import ConfigError

    assert positive_index(["normal", "tumor"], "normal", None) == 1
    with pytest.raises(ConfigError, match="negative_class 'stroma' is not one of"):
        positive_index(["normal", "tumor"], "stroma", None)
    with pytest.raises(ConfigError, match="positive_class must be set"):
        positive_index(["a", "b", "c"], "a", None)


def test_repeat_rows_by_class_balances_minority():
    import pyarrow as pa

    from medray.train.sampling import repeat_rows_by_class

    table = pa.table({"label_name": ["normal", "tumor", "normal", "normal"], "source": ["a", "b", "c", "d"]})
    out = repeat_rows_by_class(table, dict(zip(["normal", "tumor"], balance_repeats([3, 1]).tolist())))
    assert out.column("source").to_pylist() == ["a", "b", "b", "b", "c", "d"]


def test_balance_plan_by_class_name():
    assert balance_plan({"normal": 64, "tumor": 16}) == {"normal": 1, "tumor": 4}
    assert balance_plan({"a": 10, "b": 0, "c": 25}) == {"a": 2, "b": 1, "c": 1}  # round(2.5) = 2

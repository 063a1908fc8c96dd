"""Metrics against hand-computed values."""

import numpy as np
import pytest

from esccs.metrics import confusion, evaluate, scores


def test_scores_match_hand_computation():
    y = [0, 0, 0, 1, 1, 2]
    p = [0, 0, 1, 1, 2, 2]
    cm = confusion(y, p, 3)
    assert cm.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    s = scores(cm)
    assert s["oa"] == pytest.approx(4 / 6)
    pe = (3 * 2 + 2 * 2 + 1 * 2) / 36  # sum over classes of (true count * predicted count) / n^2
    assert s["kappa"] == pytest.approx((4 / 6 - pe) / (1 - pe))
    f1 = [2 * 2 / (3 + 2), 2 * 1 / (2 + 2), 2 * 1 / (1 + 2)]
    assert s["f1"] == pytest.approx(f1)
    assert s["macro_f1"] == pytest.approx(np.mean(f1))


def test_absent_class_is_left_out_of_macro_f1_and_strata_split_by_cover():
    res = evaluate([0, 1, 1, 0], [0, 1, 0, 0], 3, coverage=[0.0, 0.5, 0.99, 1.0])
    assert res["overall"]["f1"][2] is None
    assert set(res["strata"]) == {"clear", "partial", "complete"}
    assert res["strata"]["complete"]["n"] == 2 and res["strata"]["complete"]["oa"] == pytest.approx(0.5)
    assert res["strata"]["clear"]["oa"] == 1.0
    assert sum(b["n"] for b in res["bins"].values()) == 4

"""Bench intervals and paired comparisons against hand computation."""

from __future__ import annotations

import math

import pytest

from fedcmi.bench.stats import paired_difference, t_interval, verdict


def test_t_interval_by_hand():
    iv = t_interval([1.0, 2.0, 3.0])
    # mean 2, sample sd 1, n 3: t(0.975, 2) = 4.302653 -> half width 4.302653 / sqrt(3)
    assert iv.mean == 2.0 and iv.n == 3
    assert iv.half_width == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)
    assert iv.text() == "2.000 ± 2.484"
    single = t_interval([0.7])
    assert single.n == 1 and math.isnan(single.half_width) and single.text() == "0.700"  # no "± 0.000"
    assert t_interval([float("nan")]).text() == "–"


def test_paired_difference_uses_common_seeds_and_gives_verdicts():
    a = {0: 0.70, 1: 0.72, 2: 0.69, 3: 0.71, 9: 0.1}
    b = {0: 0.60, 1: 0.63, 2: 0.60, 3: 0.60}
    diff = paired_difference(a, b)
    assert diff.n == 4 and diff.mean == pytest.approx(0.0975)
    assert verdict(diff) == "better" and verdict(paired_difference(b, a)) == "worse"
    noisy = paired_difference({0: 0.7, 1: 0.5, 2: 0.9}, {0: 0.6, 1: 0.6, 2: 0.6})
    assert verdict(noisy) == "tie"  # mean +0.1 but the interval straddles 0
    assert verdict(paired_difference({0: 1.0}, {0: 0.0})) == "n/a (1 seed)"  # one seed: no verdict, not a tie
    assert verdict(paired_difference({0: 1.0}, {1: 0.0})) == "n/a (no common seed)"


def test_paired_p_value_and_holm_by_hand():
    """Differences 1, 2, 3: mean 2, sd 1, t = 2 / (1 / sqrt 3) = 3.464 with 2 df, two-sided p = 0.0742 (table
    value); Holm over p = 0.01, 0.04, 0.03: 0.03, max(0.03, 2 x 0.03) = 0.06, max(0.06, 0.04) = 0.06."""
    import math

    from fedcmi.bench.stats import holm, paired_p_value, rules_out

    a, b = {0: 2.0, 1: 4.0, 2: 6.0}, {0: 1.0, 1: 2.0, 2: 3.0}
    assert paired_p_value(a, b) == pytest.approx(0.0742, abs=5e-4)
    assert math.isnan(paired_p_value({0: 1.0}, {0: 0.0}))
    adjusted = holm({"x": 0.01, "y": 0.04, "z": 0.03, "none": math.nan})
    assert adjusted["x"] == pytest.approx(0.03) and adjusted["z"] == pytest.approx(0.06)
    assert adjusted["y"] == pytest.approx(0.06) and math.isnan(adjusted["none"])
    diff = paired_difference(a, b)  # 2 ± t(0.975, 2) x 1 / sqrt 3 = 2 ± 2.484
    assert rules_out(diff) == f"between {2 - diff.half_width:+.3f} and {2 + diff.half_width:+.3f}"
    assert diff.half_width == pytest.approx(4.303 / math.sqrt(3), abs=1e-3)

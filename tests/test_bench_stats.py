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

"""Embedded data sets: shapes, determinism, fixed split, and a real modality imbalance."""

from __future__ import annotations

import numpy as np
from datasets import Dataset

from fedcmi.bench.centralized_imbalance import imbalance_report
from fedcmi.data.embedded import digits_cg, synthetic_av


def test_synthetic_av_shapes_labels_and_determinism():
    d = synthetic_av(num_classes=4, train_size=200, test_size=80)
    assert isinstance(d.train, Dataset) and len(d.train) == 200 and len(d.test) == 80
    assert d.modalities == ("audio", "visual")
    assert d.shapes() == ((1, 20, 24), (3, 16, 16))
    xa, xb, y = d.arrays("train")
    assert set(np.unique(y)) == {0, 1, 2, 3}
    xa2, _, _ = synthetic_av(num_classes=4, train_size=200, test_size=80).arrays("train")
    assert np.array_equal(xa, xa2)


def test_signal_parameters_control_separability():
    """Class means of the signal-free modality are indistinguishable; with signal they separate."""
    d = synthetic_av(num_classes=3, train_size=1500, test_size=30, signal_a=0.8, signal_b=0.0)
    xa, xb, y = d.arrays("train")

    def between_class_spread(x):
        means = np.stack([x[y == c].mean(axis=0) for c in range(3)])
        return float(np.linalg.norm(means - means.mean(axis=0)))

    assert between_class_spread(xa) > 5 * between_class_spread(xb)


def test_digits_cg_split_is_fixed():
    d1, d2 = digits_cg(), digits_cg()
    assert d1.modalities == ("gray", "colour")
    assert len(d1.train) + len(d1.test) == 1797
    assert np.array_equal(d1.arrays("test")[2], d2.arrays("test")[2])
    assert d1.shapes() == ((1, 8, 8), (3, 8, 8))


def test_imbalance_is_real_on_synthetic_av():
    """Centralized joint training: visual through the joint model falls clearly below visual alone."""
    rep = imbalance_report(synthetic_av(), epochs=5)
    assert rep.alone["audio"] > rep.alone["visual"]  # audio dominates
    assert rep.weak == "visual"
    assert rep.in_joint["visual"] < rep.alone["visual"] - 0.15


def test_imbalance_is_real_on_digits_cg():
    rep = imbalance_report(digits_cg(), epochs=8)
    assert rep.weak == "colour"
    assert rep.in_joint["colour"] < rep.alone["colour"] - 0.15

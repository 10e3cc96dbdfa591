"""Tests of the linear probes and linear CKA (probe.py) on codes whose answers are known by construction."""
from collections import Counter

import pytest
import torch

from lib import probe


def codes(n, d=16, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def chance_of(train_labels, test_labels):
    """The chance accuracy probe.py defines, counted here by hand: the share of the test labels that are the
    most common class of the training labels."""
    majority, _ = Counter(int(v) for v in train_labels).most_common(1)[0]
    return sum(int(v) == majority for v in test_labels) / len(test_labels)


def shuffled(counts, seed):
    """Class labels with exactly counts[c] of class c, in a random order."""
    labels = torch.cat([torch.full((n,), float(c)) for c, n in enumerate(counts)])
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))]


def test_probe_reads_linear_attributes_off_the_code_and_not_noise():
    z_train, z_test = codes(400), codes(200, seed=1)
    w = torch.randn(16, generator=torch.Generator().manual_seed(2))
    labels = lambda z, noise: {"size": z @ w, "side": (z[:, 0] > 0).float(), "noise": noise}  # noqa: E731
    about = {"size": {"kind": "continuous", "classes": None}, "side": {"kind": "class", "classes": 2},
             "noise": {"kind": "continuous", "classes": None}}
    out = probe.probe(z_train, labels(z_train, codes(400, 1, seed=3)[:, 0]), z_test, labels(z_test, codes(200, 1, seed=4)[:, 0]), about)
    a = out["attributes"]
    assert a["size"]["r2"] > 0.99  # an exactly linear attribute (the ridge penalty costs a little)
    assert a["side"]["accuracy"] > 0.95  # a half-space: linearly separable
    assert a["side"]["chance"] == pytest.approx(chance_of((z_train[:, 0] > 0).float(), (z_test[:, 0] > 0).float()), abs=1e-12)
    assert abs(a["noise"]["r2"]) < 0.1  # independent of the code: nothing to read
    assert out["accuracy"] == pytest.approx(a["side"]["accuracy"])  # the only class attribute
    assert out["r2"] == pytest.approx((a["size"]["r2"] + a["noise"]["r2"]) / 2)  # the per-image mean is the mean R^2
    assert out["r2_se"] > 0 and out["accuracy_se"] > 0


def test_chance_is_the_test_share_of_the_training_majority_class():
    # imbalanced labels whose shares differ between the splits, so that every other reading of "chance" (the
    # minority class, 1/classes, the share in the training labels, the majority of the test labels) is another number
    train = {"rare": shuffled([320, 80], seed=7), "shade": shuffled([120, 80, 200], seed=8)}  # 80/20; majority: class 2 (50%)
    test = {"rare": shuffled([140, 60], seed=9), "shade": shuffled([90, 60, 50], seed=10)}  # 70/30; majority: class 0 (45%)
    z_train, z_test = codes(400), codes(200, seed=1)
    train["size"], test["size"] = z_train[:, 0], z_test[:, 0]  # a continuous attribute: no part of the mean chance accuracy
    about = {"rare": {"kind": "class", "classes": 2}, "shade": {"kind": "class", "classes": 3},
             "size": {"kind": "continuous", "classes": None}}
    out = probe.probe(z_train, train, z_test, test, about)
    a = out["attributes"]
    expected = {name: chance_of(train[name], test[name]) for name in ("rare", "shade")}
    assert expected == {"rare": pytest.approx(0.7), "shade": pytest.approx(0.25)}  # the labels are as built
    for name in ("rare", "shade"):
        assert a[name]["chance"] == pytest.approx(expected[name], abs=1e-12), name
    assert out["chance_accuracy"] == pytest.approx((expected["rare"] + expected["shade"]) / 2, abs=1e-12)
    assert a["size"]["chance"] == 0.0


def test_linear_cka_is_one_under_rotation_and_scale_and_small_for_unrelated_codes():
    z = codes(500)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(5)))
    assert probe.linear_cka(z, 3.0 * z @ q + 1.0) == pytest.approx(1.0, abs=1e-9)
    assert probe.linear_cka(z, codes(500, seed=6)) < 0.1
    assert probe.linear_cka(z, z[:, :8]) == pytest.approx(0.7, abs=0.1)  # half of the directions kept

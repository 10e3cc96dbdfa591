"""Tests of the linear probes and linear CKA (probe.py) on codes whose answers are known by construction."""
import pytest
import torch

from lib import probe


def codes(n, d=16, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_probe_reads_linear_attributes_off_the_code_and_not_noise():
    z_train, z_test = codes(400), codes(200, seed=1)
    w = torch.randn(16, generator=torch.Generator().manual_seed(2))
    labels = lambda z, noise: {"size": z @ w, "side": (z[:, 0] > 0).float(), "noise": noise}  # noqa: E731
    about = {"size": {"kind": "continuous", "classes": None}, "side": {"kind": "class", "classes": 2},
             "noise": {"kind": "continuous", "classes": None}}
    out = probe.probe(z_train, labels(z_train, codes(400, 1, seed=3)[:, 0]), z_test, labels(z_test, codes(200, 1, seed=4)[:, 0]), about)
    a = out["attributes"]
    assert a["size"]["r2"] > 0.99  # an exactly linear attribute (the ridge penalty costs a little)
    assert a["side"]["accuracy"] > 0.95 and 0.3 < a["side"]["chance"] < 0.7  # a half-space: linearly separable
    assert abs(a["noise"]["r2"]) < 0.1  # independent of the code: nothing to read
    assert out["accuracy"] == pytest.approx(a["side"]["accuracy"])  # the only class attribute
    assert out["r2"] == pytest.approx((a["size"]["r2"] + a["noise"]["r2"]) / 2)  # the per-image mean is the mean R^2
    assert out["r2_se"] > 0 and out["accuracy_se"] > 0


def test_linear_cka_is_one_under_rotation_and_scale_and_small_for_unrelated_codes():
    z = codes(500)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(5)))
    assert probe.linear_cka(z, 3.0 * z @ q + 1.0) == pytest.approx(1.0, abs=1e-9)
    assert probe.linear_cka(z, codes(500, seed=6)) < 0.1
    assert probe.linear_cka(z, z[:, :8]) == pytest.approx(0.7, abs=0.1)  # half of the directions kept

"""Tests of function-space similarity (function_space.py)."""
import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import curves
import data
import eval_curve
import fit_curve
import function_space
import train_ae
from conftest import tiny_args
from lib.files import UserError, load_ae, load_curve, save_ae

FLAGS = ["--t-points", "5", "--bn-images", "32", "--images", "8", "--eval-batch-size", "64"]
FGE_ITERATIONS = (2, 6, 10)


@pytest.fixture(scope="module")
def inputs(endpoints, tmp_path_factory):
    """Every kind of network: a third run (seed 2, 2 epochs) with 2 snapshots per epoch, a curve between
    the two conftest endpoints with its point at t = 0.5 saved by eval_curve.py, and 3 FGE members
    (the first endpoint, perturbed) as ensemble.py labels them. Paths by name."""
    tmp = tmp_path_factory.mktemp("fs_inputs")
    run = tmp / "run" / "mse_s2.pt"  # the endpoints' data cache, so all share one data config
    train_ae.main(["--seed", "2", "--out", str(run), "--snapshots", "2", *tiny_args(endpoints[0].parent, **{"--epochs": 2})])
    curve = tmp / "curves" / "curve.pt"
    fit_curve.main(["--a", str(endpoints[0]), "--b", str(endpoints[1]), "--epochs", "1", "--lr", "3e-3",
                    "--batch-size", "16", "--bn-images", "32", "--out", str(curve)])
    eval_curve.main(["--ckpt", str(curve), "--num_points", "2", "--columns", "2", "--bn-images", "32", "--train-images", "8",
                     "--test-images", "8", "--images", "2", "--save-t", "0.5"])
    model, ckpt = load_ae(endpoints[0])
    torch.manual_seed(0)
    for k, iteration in enumerate(FGE_ITERATIONS):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
        config = {**ckpt["config"], "fge_member": {"from": str(endpoints[0]), "index": k, "iteration": iteration}}
        save_ae(tmp / "fge" / f"member{k}.pt", model, config, {})
    return {"run": run, "curve": curve, "point": tmp / "curves" / "curve.eval.t0.500.pt", "fge": tmp / "fge"}


@pytest.fixture(scope="module")
def result(endpoints, inputs, tmp_path_factory):
    """One run over all of them: files, folders (one level deep, the curve file inside skipped) and --curves."""
    out = tmp_path_factory.mktemp("fs_out") / "fs"
    ckpts = [*map(str, endpoints), str(inputs["run"].parent), str(inputs["curve"].parent), str(inputs["fge"])]
    return out, function_space.main(["--ckpts", *ckpts, "--curves", str(inputs["curve"]), *FLAGS, "--out", str(out)])


def reconstruct(model, config):
    """Brute force: BatchNorm recomputed on the first 32 training images, then the first 8 validation images
    and the model's reconstructions of them (eval mode), flattened per network."""
    curves.update_bn(model, data.batches(data.load_split(config["data"], "train")[:32], 64))
    model.eval()
    x = next(data.batches(data.load_split(config["data"], "valid")[:8], 64))
    with torch.no_grad():
        return x.double().reshape(-1), model(x).double().reshape(-1)


def test_kinds_groups_and_positions_are_read_from_the_configs(result, endpoints, inputs):
    _, r = result
    at = {name: i for i, name in enumerate(r["names"])}
    snaps = sorted(str(p) for p in inputs["run"].with_suffix(".snapshots").iterdir())
    assert [r["kinds"][at[s]] for s in snaps] == ["snapshot"] * 4
    assert [r["positions"][at[s]] for s in snaps] == [0.5, 1.0, 1.5, 2.0]
    run = at[str(inputs["run"])]
    assert r["kinds"][run] == "endpoint" and r["positions"][run] == 2.0
    assert {r["groups"][at[s]] for s in snaps} == {r["groups"][run]} == {"seed 2"}  # one trajectory
    assert [r["kinds"][at[str(p)]] for p in endpoints] == ["endpoint", "endpoint"] and r["groups"][at[str(endpoints[1])]] == "seed 1"
    point = at[str(inputs["point"])]
    assert r["kinds"][point] == "curve point" and r["positions"][point] == 0.5 and r["group_types"][point] == "curve"
    members = [at[str(inputs["fge"] / f"member{k}.pt")] for k in range(3)]
    assert [r["kinds"][i] for i in members] == ["fge member"] * 3 and [r["positions"][i] for i in members] == list(FGE_ITERATIONS)
    assert str(inputs["curve"]) not in at  # the curve file in the folder was skipped: it is no autoencoder
    for path in ("curve", "segment"):
        rows = [i for i, k in enumerate(r["kinds"]) if k == f"{path} point" and r["sources"][i] == str(inputs["curve"])]
        assert [r["positions"][i] for i in rows] == [0.0, 0.25, 0.5, 0.75, 1.0]
    n = len(r["names"])
    assert n == 2 + 5 + 1 + 3 + 10
    seen = []  # groups are contiguous
    for g in r["groups"]:
        if not seen or seen[-1] != g:
            assert g not in seen
            seen.append(g)


def test_disagreement_is_symmetric_and_matches_brute_force(result, endpoints, inputs):
    _, r = result
    d = np.asarray(r["matrices"]["disagreement"])
    assert np.array_equal(d, d.T) and np.all(np.diag(d) == 0) and np.all(d >= 0)
    at = {name: i for i, name in enumerate(r["names"])}
    picked = {at[str(endpoints[0])]: load_ae(endpoints[0]), at[str(endpoints[1])]: load_ae(endpoints[1]),
              at[str(inputs["point"])]: load_ae(inputs["point"])}
    net, ckpt = load_curve(inputs["curve"])
    picked[at[f"{inputs['curve']}:curve@t=0.750"]] = (net.export(0.75), ckpt)
    brute = {i: reconstruct(model, c["config"]) for i, (model, c) in picked.items()}
    for i, (x, ri) in brute.items():
        assert r["mse"][i] == pytest.approx((ri - x).pow(2).mean().item(), rel=1e-5)
        for j, (_, rj) in brute.items():
            assert d[i, j] == pytest.approx((ri - rj).pow(2).mean().item(), rel=1e-5, abs=1e-12)
    mse = np.asarray(r["mse"])
    ratio = np.asarray(r["matrices"]["ratio_to_error"])
    assert np.allclose(ratio, d / ((mse[:, None] + mse[None, :]) / 2), rtol=1e-12, atol=0)


def test_gram_formulas_equal_direct_pairwise_sums():
    torch.manual_seed(0)
    rows = torch.rand(4, 1000) + 5  # a large common offset: centring keeps the differences exact
    gram = function_space.gram64(rows, center=True, chunk=300)
    direct = np.array([[(a.double() - b.double()).pow(2).mean().item() for b in rows] for a in rows])
    assert np.allclose(function_space.distance_matrix(gram, 1000), direct, rtol=1e-10, atol=1e-15)
    w = torch.randn(6)
    cos = function_space.cosine_matrix(torch.stack([w, w, -w, 3 * w, torch.randn(6)]))
    assert np.allclose(cos[:4, :4], [[1, 1, -1, 1], [1, 1, -1, 1], [-1, -1, 1, -1], [1, 1, -1, 1]], atol=1e-12)
    assert np.allclose(np.diag(cos), 1, atol=1e-12) and abs(cos[0, 4]) < 1


def test_weight_cosine_and_a_network_compared_with_itself(result, inputs):
    _, r = result
    cos = np.asarray(r["matrices"]["weight_cosine"])
    assert np.allclose(np.diag(cos), 1, atol=1e-12) and np.allclose(cos, cos.T) and np.all(cos <= 1 + 1e-12)
    at = {name: i for i, name in enumerate(r["names"])}
    # the last snapshot of the final epoch is the final model: the same weights and the same function
    last, final = at[str(inputs["run"].with_suffix(".snapshots") / "step000008.pt")], at[str(inputs["run"])]
    assert cos[last, final] == pytest.approx(1, abs=1e-12)
    assert r["matrices"]["disagreement"][last][final] == pytest.approx(0, abs=1e-12)
    assert r["matrices"]["weight_cosine"][at[str(inputs["run"].with_suffix(".snapshots") / "step000002.pt")]][final] < 1 - 1e-6


def test_disagreement_along_t_starts_at_zero_and_ends_at_the_endpoints(result, endpoints, inputs):
    _, r = result
    along = r["disagreement_t"][str(inputs["curve"])]
    assert along["t"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    d = np.asarray(r["matrices"]["disagreement"])
    at = {name: i for i, name in enumerate(r["names"])}
    a, b = at[str(endpoints[0])], at[str(endpoints[1])]
    for path in ("curve", "segment"):
        assert along[path]["to_start"][0] == 0 and along[path]["to_end"][-1] == 0
        assert along[path]["to_start"][-1] == pytest.approx(d[a, b], rel=1e-6)  # phi(1) is endpoint B
        assert all(v > 0 for v in along[path]["to_start"][1:])
        # phi(0) is endpoint A itself (every network's BatchNorm is recomputed on the same images)
        assert d[at[f"{inputs['curve']}:{path}@t=0.000"], a] == pytest.approx(0, abs=1e-12)
    assert along["curve"]["to_start"][2] == d[at[f"{inputs['curve']}:curve@t=0.500"], at[f"{inputs['curve']}:curve@t=0.000"]]


def test_summary_means_are_those_of_the_pairs_of_each_category(result):
    _, r = result
    s = r["summary"]
    assert {k: (s[k] or {}).get("count") for k in function_space.CATEGORIES} == {
        "endpoints": 3, "curve": 3, "segment": 3, "fge": 3, "snapshots": 6}  # curve: t = .25, .5, .75 (ends left out)
    d = np.asarray(r["matrices"]["disagreement"])
    curve = [i for i, k in enumerate(r["kinds"]) if k == "curve point" and r["group_types"][i] == "curve"
             and r["sources"][i].endswith("curve.pt") and 0 < r["positions"][i] < 1]
    values = [d[i, j] for i in curve for j in curve if i < j]
    assert s["curve"]["disagreement"]["mean"] == pytest.approx(np.mean(values), rel=1e-12)
    assert s["curve"]["disagreement"]["se"] == pytest.approx(np.std(values, ddof=1) / np.sqrt(3), rel=1e-9)
    ends = [i for i, k in enumerate(r["kinds"]) if k == "endpoint"]
    assert s["endpoints"]["weight_cosine"]["mean"] == pytest.approx(
        np.mean([r["matrices"]["weight_cosine"][i][j] for i in ends for j in ends if i < j]), rel=1e-12)
    assert s["endpoints_over_curve"] == pytest.approx(s["endpoints"]["disagreement"]["mean"] / np.mean(values), rel=1e-12)
    assert s["endpoints_over_fge"] == pytest.approx(s["endpoints"]["disagreement"]["mean"] / s["fge"]["disagreement"]["mean"])
    # small perturbations of one endpoint disagree far less than independent endpoints do
    assert s["fge"]["disagreement"]["mean"] < s["endpoints"]["disagreement"]["mean"]


def test_outputs_land_in_out_and_the_json_is_the_result(result):
    out, r = result
    saved = json.loads((out / "function_space.json").read_text())
    assert saved["format"] == "aemc-function-space-v1" and saved == json.loads(json.dumps(r))
    n = len(saved["names"])
    for key in ("kinds", "groups", "positions", "mse", "sources"):
        assert len(saved[key]) == n, key
    assert all(np.shape(m) == (n, n) for m in saved["matrices"].values()) and np.shape(saved["embedding"]["xy"]) == (n, 2)
    assert saved["embedding"]["method"] == "tsne" and saved["settings"]["images"] == 8 and saved["settings"]["bn_images"] == 32
    assert saved["files"] == {"heatmaps_png": "heatmaps.png", "embedding_png": "embedding.png", "disagreement_t_png": "disagreement_t.png"}
    for name in saved["files"].values():
        with Image.open(out / name) as png:
            assert png.format == "PNG" and png.size[0] > 400


def test_without_curves_missing_categories_are_null_and_pca_is_deterministic(endpoints, tmp_path):
    args = ["--ckpts", *map(str, endpoints), "--embedding", "pca", *FLAGS]
    first = function_space.main([*args, "--out", str(tmp_path / "a")])
    again = function_space.main([*args, "--out", str(tmp_path / "b")])
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["embedding.png", "function_space.json", "heatmaps.png"]
    s = first["summary"]
    assert s["endpoints"]["count"] == 1 and s["endpoints"]["disagreement"]["se"] is None
    assert all(s[k] is None for k in ("curve", "segment", "fge", "snapshots", "endpoints_over_curve", "endpoints_over_fge"))
    assert first["matrices"] == again["matrices"] and first["embedding"] == again["embedding"] and first["disagreement_t"] == {}
    gram = np.random.default_rng(0).normal(size=(6, 20))
    gram = gram @ gram.T
    assert np.array_equal(function_space.embedding(gram, "tsne")[0], function_space.embedding(gram, "tsne")[0])


def test_bad_input_is_refused_in_one_line(endpoints, inputs, tmp_path, monkeypatch):
    wide = tmp_path / "wide.pt"
    train_ae.main(["--seed", "3", "--out", str(wide), *tiny_args(tmp_path, **{"--width": 6})])
    out = tmp_path / "fs"
    with pytest.raises(UserError, match="different architectures") as e:
        function_space.main(["--ckpts", str(endpoints[0]), str(wide), *FLAGS, "--out", str(out)])
    assert str(endpoints[0]) in str(e.value) and str(wide) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError, match="curves go to --curves"):
        function_space.main(["--ckpts", str(endpoints[0]), str(inputs["curve"]), *FLAGS, "--out", str(out)])
    with pytest.raises(UserError, match="only 1 network"):
        function_space.main(["--ckpts", str(endpoints[0]), *FLAGS, "--out", str(out)])
    monkeypatch.setitem(sys.modules, "sklearn.manifold", None)  # as if scikit-learn were not installed
    with pytest.raises(UserError, match="pip install scikit-learn") as e:
        function_space.main(["--ckpts", *map(str, endpoints), *FLAGS, "--out", str(out)])
    assert "\n" not in str(e.value)
    assert not out.exists()
